"""The run's folder: its checkpoints, its metrics file, and what a new run does with an earlier run's files.

``out_dir`` holds ``last.safetensors`` (the latest checkpoint), ``previous.safetensors`` (the one before it:
each save of ``last`` keeps the one it replaces; ``--resume auto`` falls back to it, saying so, when ``last``
is damaged), ``best.safetensors`` (the best evaluation) and ``metrics.jsonl`` (one JSON record per line;
``--metrics`` puts it elsewhere). A resumed run drops the records past its checkpoint's step, so each step
is logged once.

A used folder. A run started afresh (no ``resume``) in an ``out_dir`` that holds an earlier run's checkpoints
(last, previous, best) or a metrics file with records is refused with :class:`EarlierRunError` (one line
naming the folder, its files and the ways out: ``--resume auto``, ``--overwrite``), and nothing is touched.
With ``overwrite`` the earlier files stay as they are until the new run writes its first
``last.safetensors`` (meanwhile its metrics go to ``<metrics>.new`` and a best checkpoint of that same step to
``best.safetensors.new``); that write replaces ``last``, then ``best`` and the metrics are moved into place and
the earlier ``previous`` is removed. A crash or failure before it leaves the earlier run whole and resumable;
an interrupt before the first optimizer step saves nothing (an interrupt later saves, and so replaces).

One run folder, one writer. A run takes the folder's lock (:meth:`RunFolder.lock`: ``fcntl.flock`` on
``<out_dir>/.lock``, which records the holder) before it writes anything; a second process gets
:class:`~fast_timesformer.errors.RunFolderBusyError`, one line naming the holder. The operating system
drops the lock when its process ends, however it ends (``kill -9`` included), so a lock file left by a
dead process is free: the next run takes it over and says whose it was. Within one process the lock is
shared (several :class:`Trainer` objects of one script may use one folder in turn) and released when the
last of them is gone.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
import weakref
from typing import Callable, Optional

from ..errors import CorruptCheckpointError, FastTimesformerError, RunFolderBusyError, WriteFailedError
from ..outputs import check_output_dir
from . import checkpoint as ckpt
from .config import TrainConfig

__all__ = ["RunFolder", "EarlierRunError", "earlier_run_files", "describe_files", "LAST", "PREVIOUS", "BEST",
           "METRICS", "PENDING"]


LAST, PREVIOUS, BEST, METRICS = "last.safetensors", "previous.safetensors", "best.safetensors", "metrics.jsonl"
PENDING = ".new"  # suffix of the files an overwriting run writes before its first checkpoint
LOCK = ".lock"


class _Held:
    """This process's hold on one folder's lock: the open lock file; closing it releases the lock."""

    def __init__(self, real: str, fd: int):
        self.real, self.fd = real, fd

    def __del__(self):  # the last RunFolder (so the last Trainer) of this folder in this process is gone
        _HELD.pop(self.real, None)
        try:
            os.ftruncate(self.fd, 0)  # released in order: no holder left on record (a killed process leaves one)
        except OSError:
            pass
        os.close(self.fd)


_HELD: "weakref.WeakValueDictionary[str, _Held]" = weakref.WeakValueDictionary()  # real path -> this process's hold


class EarlierRunError(FastTimesformerError, FileExistsError):
    """A run started afresh (no ``resume``) in a folder that holds an earlier run's checkpoints or metrics,
    without ``overwrite``; nothing was changed. ``.folder`` and ``.files`` (paths); the one-line message
    names them and the ways out."""

    def __init__(self, folder, files, message: str):
        self.folder, self.files, self.message = str(folder), [str(f) for f in files], message
        FastTimesformerError.__init__(self, message)

    def __str__(self) -> str:  # OSError would format (errno, strerror); ours is the one sentence
        return self.message


def _holder(fd: int) -> str:
    """What a lock file says about the process that took it ("process 123 on host (since ...)")."""
    try:
        return os.pread(fd, 512, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def earlier_run_files(out_dir: str, metrics: Optional[str] = None) -> list[str]:
    """What an earlier run left that a new run in ``out_dir`` would replace: its checkpoints (last, previous,
    best) and a metrics file with records (``metrics``: its path; default ``<out_dir>/metrics.jsonl``)."""
    found = [p for p in (os.path.join(out_dir, n) for n in (LAST, PREVIOUS, BEST)) if os.path.exists(p)]
    metrics = metrics or os.path.join(out_dir, METRICS)
    if os.path.isfile(metrics) and os.path.getsize(metrics):
        found.append(metrics)
    return found


def describe_files(out_dir: str, files: list[str]) -> str:
    """"last.safetensors at step 40, best.safetensors at step 30, metrics.jsonl": names inside ``out_dir``
    (a path for one outside it), a checkpoint's step, or "unreadable"."""
    folder = os.path.abspath(out_dir)
    parts = []
    for path in files:
        name = os.path.basename(path) if os.path.dirname(os.path.abspath(path)) == folder else str(path)
        if path.endswith(".safetensors"):
            readable = ckpt.check_checkpoint(path) is None
            name += f" at step {ckpt.read_metadata(path).get('step')}" if readable else " (unreadable)"
        parts.append(name)
    return ", ".join(parts)


class RunFolder:
    """The files of one run: ``out_dir`` and the metrics file (``metrics``; default
    ``<out_dir>/metrics.jsonl``). ``replacing``: the earlier run's files that this run replaces at its first
    checkpoint (empty: no overwrite pending)."""

    def __init__(self, out_dir: str, metrics: Optional[str] = None):
        self.out_dir = out_dir
        self.metrics_path = metrics or os.path.join(out_dir, METRICS)
        self.replacing: list[str] = []

    def lock(self) -> Optional[str]:
        """Take this folder's lock (creating the folder) for as long as this object lives (a Trainer's run
        folder: the trainer's life) or the process runs; returns the description of the dead process whose
        lock file it took over, or None. A live holder in another process raises
        :class:`~fast_timesformer.errors.RunFolderBusyError` naming it."""
        real = os.path.realpath(self.out_dir)
        held = _HELD.get(real)
        if held is not None:
            self._held = held
            return None
        check_output_dir(self.out_dir, create=True)
        path = os.path.join(self.out_dir, LOCK)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(fd)
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise WriteFailedError(path, f"cannot lock the run folder ({e.strerror or e})") from None
            raise RunFolderBusyError(self.out_dir, holder or "another process") from None
        stale = _holder(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (f"process {os.getpid()} on {socket.gethostname()} (since "
                       f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())})").encode(), 0)
        self._held = _HELD[real] = _Held(real, fd)
        return stale

    @property
    def last_path(self) -> str:
        return os.path.join(self.out_dir, LAST)

    @property
    def previous_path(self) -> str:
        return os.path.join(self.out_dir, PREVIOUS)

    @property
    def best_path(self) -> str:
        return os.path.join(self.out_dir, BEST)

    @property
    def metrics_file(self) -> str:
        """Where records go now: the metrics file, or its pending twin while an overwrite is pending."""
        return self.metrics_path + PENDING if self.replacing else self.metrics_path

    def earlier_run(self, cfg: TrainConfig, note: Callable[[str], None]) -> list[str]:
        """A fresh start of ``cfg``: the earlier run's files in the folder. Without ``overwrite`` they make the run
        refuse (:class:`EarlierRunError`, naming them and the ways out); with it they are returned, to be
        replaced when this run saves its first checkpoint."""
        files = earlier_run_files(self.out_dir, self.metrics_path)
        if not files:
            return []
        what = describe_files(self.out_dir, files)
        if cfg.overwrite:
            note(f"--overwrite: {self.out_dir} holds an earlier run ({what}); they stay as they are until this "
                 f"run saves its first checkpoint, which replaces them (until then its metrics go to "
                 f"{self.metrics_path}{PENDING})")
            return files
        resumable = next((p for p in (self.last_path, self.previous_path)
                          if os.path.exists(p) and ckpt.check_checkpoint(p) is None), None)
        if resumable is None:
            resume = "it has no checkpoint --resume auto could continue"
        else:
            meta = ckpt.read_metadata(resumable)
            diff = cfg.differences(meta.get("config", {}))
            step, total = meta.get("step"), (meta.get("scheduler") or {}).get("total_steps")
            if not diff and total is not None and step >= total:
                resume = f"it is complete (step {step} of {total})"
            elif diff:
                resume = (f"--resume auto would continue it only with its own settings (these differ: "
                          f"{', '.join(TrainConfig.option(k) for k in diff)})")
            else:
                resume = f"--resume auto continues it from step {step}"
                if resumable == self.previous_path:
                    resume += f" ({PREVIOUS}: {LAST} is not whole)"
        where, other = self.out_dir, "--out"
        if os.path.dirname(os.path.abspath(self.metrics_path)) != os.path.abspath(self.out_dir):
            where += f" (with --metrics {self.metrics_path})"
            inside = [f for f in files if f != self.metrics_path]
            other = "--out and --metrics" if inside else "--metrics"
        raise EarlierRunError(self.out_dir, files, (
            f"{where} already holds an earlier run ({what}): {resume}; --overwrite starts this run afresh "
            f"and replaces those files when it saves its first checkpoint (they stay as they are until then); "
            f"or give another {other}"))

    def auto_checkpoint(self, note: Callable[[str], None]) -> Optional[str]:
        """``--resume auto``: last.safetensors if whole; else previous.safetensors (saying so); None if
        neither exists (a fresh start)."""
        last, prev = self.last_path, self.previous_path
        if not os.path.exists(last) and not os.path.exists(prev):
            return None
        problem = ckpt.check_checkpoint(last) if os.path.exists(last) else "is missing (a save was interrupted)"
        if problem is None:
            return last
        if os.path.exists(prev) and ckpt.check_checkpoint(prev) is None:
            step = ckpt.read_metadata(prev).get("step")
            note(f"{last}: {problem}; resuming from the checkpoint before it, {prev} (step {step})")
            return prev
        why = (f"the checkpoint before it, {prev}, is damaged too" if os.path.exists(prev)
               else "there is no earlier checkpoint")
        raise CorruptCheckpointError(last, f"{problem}; {why} (--overwrite instead of --resume starts the run "
                                           "afresh)")

    def append(self, record: dict) -> None:
        """Append one JSON line (``record`` and the time) to the metrics file; a failed write (disk full) leaves the file as it was
        and raises :class:`WriteFailedError`."""
        data = (json.dumps({**record, "time": time.time()}) + "\n").encode()
        path = self.metrics_file
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as e:
            raise WriteFailedError(path, f"cannot open the metrics file ({e.strerror or e})") from None
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            except OSError as e:
                try:
                    os.ftruncate(fd, start)  # no half line: the records before stay readable
                except OSError:
                    pass
                why = "no space left on the device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
                raise WriteFailedError(path, f"could not append to the metrics ({why}); the "
                                                          "records before are unchanged") from None
        finally:
            os.close(fd)

    def truncate_metrics(self, step: int) -> None:
        """Drop metrics records past ``step`` (logged after the checkpoint being resumed was written) and any
        partial last line, so that the continued run logs each step once."""
        if not os.path.isfile(self.metrics_path):
            return
        with open(self.metrics_path) as f:
            lines = f.read().splitlines(keepends=True)
        keep = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if not isinstance(record, dict) or record.get("step", 0) <= step:
                keep.append(line if line.endswith("\n") else line + "\n")
        if keep == lines:
            return
        folder = os.path.dirname(os.path.abspath(self.metrics_path))
        tmp = os.path.join(folder, f".{os.path.basename(self.metrics_path)}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w") as f:
                f.writelines(keep)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.metrics_path)
        except OSError as e:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise WriteFailedError(self.metrics_path, f"could not rewrite the metrics up to step {step} "
                                                      f"({e.strerror or e}); the file is unchanged") from None

    def replace_earlier_run(self) -> None:
        """This overwriting run's first last.safetensors has just replaced the earlier run's: move its pending
        best checkpoint and metrics into place and remove the rest of the earlier run (its previous.safetensors,
        a best or metrics file this run has not written yet)."""
        for final in (self.best_path, self.metrics_path):
            try:
                if os.path.exists(final + PENDING):
                    os.replace(final + PENDING, final)
                elif final in self.replacing and os.path.exists(final):
                    os.remove(final)
            except OSError as e:
                raise WriteFailedError(final, f"could not replace the earlier run's file ({e.strerror or e}); "
                                              f"this run's checkpoint is {self.last_path}") from None
        if self.previous_path in self.replacing and os.path.exists(self.previous_path):
            try:
                os.remove(self.previous_path)
            except OSError as e:
                raise WriteFailedError(self.previous_path, f"could not remove the earlier run's checkpoint "
                                                           f"({e.strerror or e})") from None

    def resume_path(self, resume: str, note: Callable[[str], None]) -> tuple[Optional[str], bool]:
        """The checkpoint that ``--resume`` (a path, or ``"auto"``: :meth:`auto_checkpoint`) continues, and
        whether it is this folder's own whole ``last.safetensors`` (then the next save keeps it as
        ``previous``). ``(None, False)``: ``auto`` found nothing, a fresh start. A damaged ``last`` named
        explicitly raises, pointing to a whole ``previous`` next to it."""
        if resume == "auto":
            path = self.auto_checkpoint(note)
            return path, path is not None and path == self.last_path
        try:
            ckpt.read_metadata(resume)
        except CorruptCheckpointError as e:
            prev = os.path.join(os.path.dirname(resume), PREVIOUS)
            if os.path.basename(resume) == LAST and os.path.exists(prev) and ckpt.check_checkpoint(prev) is None:
                step = ckpt.read_metadata(prev).get("step")
                raise CorruptCheckpointError(resume, f"{e.problem}; the checkpoint before it, {prev} (step {step}), "
                                                     f"is whole: --resume {prev} continues from there") from None
            raise
        return resume, os.path.abspath(resume) == os.path.abspath(self.last_path)
