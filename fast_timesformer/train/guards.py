"""What stops a run cleanly: a signal (SIGINT, SIGTERM) and a video that cannot be read.

SIGINT and SIGTERM during ``Trainer.fit()`` set a flag (:class:`StopSignals`) that is looked at before each
optimizer step (so after a completed one, never mid-accumulation; under DDP the flag is all-reduced so every
process stops at the same step): the run saves ``last.safetensors`` at that step and raises
:class:`~fast_timesformer.errors.TrainingInterrupted` (the CLI exits 130 / 143). A second signal, a second
or more after the first, acts at once.

A video that cannot be decoded during training (in a DataLoader worker or not) becomes a :class:`Failed`
batch instead of an exception (:class:`Guarded`, :func:`collate`), so that every process can agree to stop
at the same step; the run then stops the same way, with one
:class:`~fast_timesformer.errors.BadVideoError` line, after a checkpoint.

DataLoader workers ignore both signals (:func:`worker_init`) and are started with them blocked
(:func:`start_workers`): the main process stops after the step and then shuts them down.
"""
from __future__ import annotations

import signal
import threading
import time

from torch.utils.data import Dataset, default_collate

from ..errors import BadVideoError, FastTimesformerError

__all__ = ["Failed", "Guarded", "collate", "worker_init", "start_workers", "PeerFailed", "peer_failed",
           "StopSignals"]


class Failed:
    """What a batch becomes when one of its videos cannot be read: the (path, problem) pairs. Returned
    instead of raised, so that it crosses from a DataLoader worker intact (a worker's exception comes back
    re-wrapped with its traceback as text) and every process can agree to stop at the same step."""

    def __init__(self, problems):
        self.problems = list(problems)


class Guarded(Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            return self.dataset[index]
        except BadVideoError as e:
            return Failed(e.problems)


def collate(items):
    problems = [p for item in items if isinstance(item, Failed) for p in item.problems]
    return Failed(problems) if problems else default_collate(items)


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def worker_init(_worker_id: int) -> None:
    """DataLoader workers leave SIGINT and SIGTERM to the main process, which stops after the step and then
    shuts them down (Ctrl-C, or a scheduler's SIGTERM, reaches the whole process group; a worker killed by
    it would make the main process fail with a DataLoader error instead of saving). A worker whose main
    process is gone exits by itself (PyTorch's watchdog). The worker was started with these signals
    blocked (:func:`start_workers`), so one that arrived while it started is dropped here, not fatal."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def start_workers(loader):
    """``iter(loader)`` with SIGINT/SIGTERM blocked while the workers are forked: a signal sent to the
    process group in that window would otherwise kill a worker before :func:`worker_init` runs. This
    process receives such a signal when the block is lifted (it is pending, not lost)."""
    if not loader.num_workers or not hasattr(signal, "pthread_sigmask") \
            or threading.current_thread() is not threading.main_thread():
        return iter(loader)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class PeerFailed(FastTimesformerError):
    pass


def peer_failed() -> PeerFailed:
    return PeerFailed("another process could not read its videos (its own error line names them)")


class StopSignals:
    """While active, SIGINT and SIGTERM set ``signum`` instead of interrupting; a second signal, a second or
    more after the first, acts at once (the previous handler's action: a KeyboardInterrupt or termination).
    Copies that arrive together are one signal: Ctrl-C under torchrun reaches a process both from the
    terminal and from the torchrun agent, which forwards it. Only in the main thread (elsewhere Python
    cannot install handlers, and the flag stays 0)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    AGAIN_AFTER_S = 1.0

    def __init__(self):
        self.signum = 0
        self._first = 0.0
        self._old: dict = {}

    def _handler(self, signum, frame):
        if self.signum:
            if time.monotonic() - self._first < self.AGAIN_AFTER_S:
                return
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.signum, self._first = signum, time.monotonic()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False
