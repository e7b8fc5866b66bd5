"""Faults during training (issue 9): damaged checkpoints, a missing CUDA device, bad numbers, finished runs,
interrupts (real signals, in and out of process), full disks. Tiny synthetic runs: a few steps each."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import ARGS, one_error_line, run_cli, tiny_run

from fast_timesformer.errors import (
    CorruptCheckpointError,
    DeviceUnavailableError,
    TrainingInterrupted,
    WriteFailedError,
)
from fast_timesformer.train import checkpoint as ckpt
from fast_timesformer.train.config import TrainConfig
from fast_timesformer.train.trainer import Trainer


def same_state(a: Trainer, b: Trainer) -> None:
    """Bit for bit: the same computation in the same order on the same machine."""
    for k, v in a.module.state_dict().items():
        assert torch.equal(v, b.module.state_dict()[k]), k
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    for pid in sa:
        for key in sa[pid]:
            assert torch.equal(sa[pid][key], sb[pid][key]), (pid, key)


def metric_steps(path, split="train"):
    return [json.loads(x)["step"] for x in open(path).read().splitlines() if json.loads(x)["split"] == split]


# ---- damaged checkpoints --------------------------------------------------------------------------
def test_damaged_checkpoints_for_resume_and_predict(tmp_path, capsys):
    Trainer(tiny_run(tmp_path / "run", steps=2)).fit()
    good = (tmp_path / "run" / "last.safetensors").read_bytes()
    cases = {"truncated": (good[: len(good) // 2], "the checkpoint is truncated: its header describes more data"),
             "garbage": (b"PK\x03\x04 not a checkpoint at all" * 40, "not a readable safetensors checkpoint"),
             "empty": (b"", "the checkpoint file is empty (0 bytes)")}
    for name, (blob, problem) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(blob)
        with pytest.raises(CorruptCheckpointError) as info:
            Trainer(tiny_run(tmp_path / "other", resume=str(path)))
        assert str(info.value) == f"{path}: {info.value.problem}" and problem in str(info.value)
        for text in (str(info.value),):
            assert "pickle" not in text and "trust" not in text and "\n" not in text
        rc, _, err = run_cli(["predict", str(tmp_path / "clip.mp4"), "--checkpoint", str(path)], capsys)
        assert rc == 2
        one_error_line(err, str(path), problem)
        assert "pickle" not in err and "trust" not in err


def test_resume_auto_uses_the_previous_checkpoint_when_last_is_damaged(tmp_path, capsys):
    out = tmp_path / "run"
    Trainer(tiny_run(out, steps=6, save_every=1)).fit(stop_at=3)
    last, prev = out / "last.safetensors", out / "previous.safetensors"
    assert ckpt.read_metadata(str(last))["step"] == 3 and ckpt.read_metadata(str(prev))["step"] == 2
    last.write_bytes(last.read_bytes()[:1000])  # damaged: cut short
    capsys.readouterr()

    # an explicit --resume of the damaged file names the whole one before it
    with pytest.raises(CorruptCheckpointError, match=r"truncated or damaged.*previous\.safetensors \(step 2\), is whole: "
                                                     r"--resume .*previous\.safetensors continues from there"):
        Trainer(tiny_run(out, steps=6, save_every=1, resume=str(last)))
    # --resume auto says so, in one line, and continues from it
    t = Trainer(tiny_run(out, steps=6, save_every=1, resume="auto"))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{last}: the checkpoint is truncated or damaged" in err
    assert f"resuming from the checkpoint before it, {prev} (step 2)" in err
    assert t.step == 2
    t.fit(stop_at=3)  # overwrites the damaged last; the good previous is not replaced by the damaged file
    assert ckpt.read_metadata(str(last))["step"] == 3 and ckpt.read_metadata(str(prev))["step"] == 2
    assert metric_steps(out / "metrics.jsonl") == [1, 2, 3]  # step 3 once, though it ran twice

    # the resumed run equals the straight one, bit for bit
    t.fit()
    straight = Trainer(tiny_run(tmp_path / "straight", steps=6, save_every=1))
    straight.fit()
    same_state(t, straight)

    last.write_bytes(b"")
    prev.write_bytes(b"junk")
    with pytest.raises(CorruptCheckpointError, match=r"empty \(0 bytes\); the checkpoint before it, .* is damaged too"):
        Trainer(tiny_run(out, steps=6, resume="auto"))


# ---- device, numbers, finished runs ---------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: nothing to refuse")
def test_cuda_asked_for_on_a_machine_without_it(tmp_path, capsys):
    with pytest.raises(DeviceUnavailableError, match="--device cuda: no CUDA device on this machine"):
        Trainer(tiny_run(tmp_path, device="cuda"))
    rc, _, err = run_cli(["train", *ARGS[:-5], "--steps", "1", "--device", "cuda", "--out", str(tmp_path)], capsys)
    assert rc == 2
    one_error_line(err, "--device cuda: no CUDA device on this machine")
    rc, _, err = run_cli(["predict", str(tmp_path / "clip.mp4"), "--checkpoint", str(tmp_path / "x.safetensors"),
                          "--device", "cuda"], capsys)
    assert rc == 2
    one_error_line(err, "--device cuda: no CUDA device on this machine")


@pytest.mark.parametrize("option,value,message", [
    ("--epochs", "-1", "--epochs must be a whole number >= 1, got -1"),
    ("--steps", "0", "--steps must be a whole number >= 1, got 0"),
    ("--batch", "0", "--batch must be a whole number >= 1, got 0"),
    ("--accum", "-2", "--accum must be a whole number >= 1, got -2"),
    ("--lr", "0", "--lr must be a number > 0, got 0.0"),
    ("--lr", "nan", "--lr must be a number > 0, got nan"),
    ("--workers", "-1", "--workers must be a whole number >= 0, got -1"),
    ("--save-every", "-5", "--save-every must be a whole number >= 0, got -5"),
    ("--log-every", "0", "--log-every must be a whole number >= 1, got 0"),
    ("--warmup", "-0.1", "--warmup must be a number >= 0, got -0.1"),
    ("--warmup", "50", "--warmup 50 steps is longer than the run (3 steps)"),
    ("--min-lr-ratio", "2", "--min-lr-ratio must be a number >= 0 and <= 1, got 2.0"),
    ("--clip-grad", "-1", "--clip-grad must be a number > 0 (or 0 for no clipping), got -1.0"),
    ("--weight-decay", "-1", "--weight-decay must be a number >= 0, got -1.0"),
    ("--frames", "0", "--frames must be a whole number >= 1, got 0"),
    ("--attn-dropout", "1.5", "--attn-dropout must be a number >= 0 and < 1, got 1.5"),
    ("--stop-at", "0", "--stop-at must be a whole number >= 1, got 0"),
])
def test_numeric_options_are_checked_with_one_true_sentence(tmp_path, capsys, option, value, message):
    length = [] if option in ("--epochs", "--steps") else ["--epochs", "1"]
    rc, _, err = run_cli(["train", *ARGS, *length, option, value, "--out", str(tmp_path)], capsys)
    assert rc == 2
    one_error_line(err, message)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_resuming_a_finished_run_says_it_is_complete(tmp_path, capsys):
    args = ["train", *ARGS, "--steps", "2", "--out", str(tmp_path)]
    assert run_cli(args, capsys)[0] == 0
    rc, out, err = run_cli(args + ["--resume", "auto"], capsys)
    assert rc == 0 and err == ""
    assert out == f"the run is complete: step 2 of 2; checkpoint {tmp_path / 'last.safetensors'}\n"


def test_checkpoints_respect_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        ckpt.atomic_save_file({"a": torch.zeros(2)}, str(tmp_path / "a.safetensors"), {"k": "v"})
        os.umask(0o002)
        ckpt.atomic_save_file({"a": torch.zeros(2)}, str(tmp_path / "b.safetensors"), {"k": "v"})
    finally:
        os.umask(old)
    assert (tmp_path / "a.safetensors").stat().st_mode & 0o777 == 0o640  # not mkstemp's 0600
    assert (tmp_path / "b.safetensors").stat().st_mode & 0o777 == 0o664


# ---- interrupts -----------------------------------------------------------------------------------
@pytest.fixture
def sigint_default():
    """Python's own SIGINT handler for the test: a test run started as a background job inherits SIGINT
    ignored, and what the trainer restores (or a second Ctrl-C falls back to) is whatever was there."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_interrupt_in_process_saves_a_consistent_checkpoint_and_resume_is_exact(tmp_path, monkeypatch,
                                                                               sigint_default):
    """A real SIGINT, delivered while step 2's metrics are written (with gradient accumulation and dropout):
    the run stops after step 2 with a checkpoint there; resuming gives the straight run bit for bit, and
    metrics.jsonl holds every step once."""
    kw = dict(steps=5, accum=2, attn_dropout=0.1, drop_path=0.2, save_every=0)
    run = tmp_path / "run"
    t = Trainer(tiny_run(run, **kw))
    log = t._log

    def log_and_signal(record):
        log(record)
        if record.get("split") == "train" and record["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(t, "_log", log_and_signal)
    with pytest.raises(TrainingInterrupted) as info:
        t.fit()
    e = info.value
    assert (e.signum, e.exit_code, e.step) == (signal.SIGINT, 130, 2)
    assert str(e) == (f"interrupted by SIGINT at step 2 of 5: checkpoint saved to {run / 'last.safetensors'} "
                      "(--resume auto with the same --out continues the run)")
    assert ckpt.read_metadata(str(run / "last.safetensors"))["step"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back

    (run / "metrics.jsonl").open("a").write('{"split": "train", "step": 3, "loss": 1.0}\n{"split": "tr')
    torch.manual_seed(99)  # the RNG state in between must not matter
    resumed = Trainer(tiny_run(run, resume="auto", **kw))
    resumed.fit()
    straight = Trainer(tiny_run(tmp_path / "straight", **kw))
    straight.fit()
    same_state(resumed, straight)
    assert metric_steps(run / "metrics.jsonl") == [1, 2, 3, 4, 5]


def _wait_for_metrics(path, proc, timeout=120):
    start = time.time()
    while time.time() - start < timeout:
        if path.exists() and '"split": "train"' in path.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError("no metrics line in time")


def test_an_interrupted_run_leaves_no_dataloader_worker_running(tmp_path, monkeypatch):
    """While the TrainingInterrupted is still held (its traceback keeps fit()'s frame), no DataLoader worker
    may be alive: workers ignore SIGTERM, so one left for interpreter exit makes multiprocessing's exit
    hook SIGTERM it and wait for it forever (a hang seen about once in 15 real-signal runs). And a worker
    starts with SIGINT/SIGTERM blocked, so a signal to the group while it forks cannot kill it."""
    import multiprocessing

    t = Trainer(tiny_run(tmp_path / "run", steps=50, workers=1))
    log = t._log
    seen = {}

    def log_and_signal(record):
        log(record)
        if record.get("split") == "train" and record["step"] == 1:
            seen["workers"] = len(multiprocessing.active_children())
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(t, "_log", log_and_signal)
    with pytest.raises(TrainingInterrupted) as info:
        t.fit()
    assert info.value.signum == signal.SIGTERM
    assert seen["workers"] >= 1  # the worker was running when the signal came
    alive = [p for p in multiprocessing.active_children() if p.is_alive()]
    assert alive == [], f"DataLoader workers still running after the interrupt: {alive}"


_MASK_AT_WORKER_START: set = set()


def _record_mask_then_init(worker_id):
    """Runs first in the worker: what the worker was started with, then the trainer's own init."""
    from fast_timesformer.train import guards

    _MASK_AT_WORKER_START.update(signal.pthread_sigmask(signal.SIG_BLOCK, []))
    guards.worker_init(worker_id)


class _WorkerSignalState(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, i):  # runs in the worker, after the init above
        return torch.tensor([signal.SIGTERM in _MASK_AT_WORKER_START, signal.SIGINT in _MASK_AT_WORKER_START,
                             signal.getsignal(signal.SIGTERM) == signal.SIG_IGN,
                             signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])])


def test_workers_start_with_the_stop_signals_blocked():
    """_start_workers forks with SIGINT/SIGTERM blocked, so the worker holds them blocked from its first
    instruction until _worker_init ignores and unblocks them; this process's own mask is restored."""
    from torch.utils.data import DataLoader

    from fast_timesformer.train import guards

    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    loader = DataLoader(_WorkerSignalState(), batch_size=None, num_workers=1, worker_init_fn=_record_mask_then_init)
    (term_blocked, int_blocked, ignored, still_blocked), = [x.tolist() for x in guards.start_workers(loader)]
    assert term_blocked and int_blocked  # blocked from the start
    assert ignored and not still_blocked  # then ignored and unblocked by _worker_init
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_real_signal_to_the_command_line(tmp_path, sig):
    """``fast-timesformer train`` (with a DataLoader worker) in a subprocess gets SIGINT or SIGTERM after its
    first metrics line, sent to its whole process group as Ctrl-C or a job scheduler does: it prints one
    line naming the checkpoint, exits 128 + signal, and resuming from it continues exactly."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "fast_timesformer.cli", "train", *ARGS, "--steps", "100000", "--workers", "1",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _wait_for_metrics(out / "metrics.jsonl", proc)
        os.killpg(proc.pid, sig)  # the run and its DataLoader worker
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, (proc.returncode, stderr[-2000:])
    name = signal.Signals(sig).name
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    meta = ckpt.read_metadata(str(out / "last.safetensors"))
    step = meta["step"]
    assert stderr == (f"fast-timesformer: interrupted by {name} at step {step} of 100000: checkpoint saved to "
                      f"{out / 'last.safetensors'} (--resume auto with the same --out continues the run)\n")
    assert metric_steps(out / "metrics.jsonl") == list(range(1, step + 1))
    if sig != signal.SIGINT:
        return
    # the same run in this process: resume to step + 2 and compare with a straight run to there
    import argparse

    from fast_timesformer.train.cli import _add_train_args, config_from_args

    p = argparse.ArgumentParser()
    _add_train_args(p)
    cfg = config_from_args(p.parse_args([*ARGS, "--steps", "100000", "--workers", "1", "--out", str(out),
                                         "--resume", "auto"]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocess (OMP_NUM_THREADS=1): the same reduction order
    try:
        resumed = Trainer(cfg)
        assert resumed.step == step
        resumed.fit(stop_at=step + 2)
        straight = Trainer(TrainConfig(**{**cfg.to_dict(), "resume": None, "out_dir": str(tmp_path / "straight")}))
        straight.fit(stop_at=step + 2)
    finally:
        torch.set_num_threads(threads)
    same_state(resumed, straight)


# ---- full disks -----------------------------------------------------------------------------------
def test_a_failing_checkpoint_write_keeps_the_last_good_one(tmp_path, capsys, monkeypatch):
    args = ["train", *ARGS, "--steps", "3", "--save-every", "1", "--out", str(tmp_path)]
    assert run_cli(args + ["--stop-at", "1"], capsys)[0] == 0
    last = tmp_path / "last.safetensors"
    before = last.read_bytes()

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 100)  # half written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    rc, _, err = run_cli(args + ["--resume", "auto"], capsys)
    assert rc == 2
    one_error_line(err, f"{last}: could not write the checkpoint (no space left on the device); the "
                               "checkpoint there before is unchanged")
    assert last.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [".lock", "last.safetensors", "metrics.jsonl"]  # no temporary file left
    with pytest.raises(WriteFailedError):
        ckpt.atomic_save_file({"a": torch.zeros(1)}, str(last), {})
    monkeypatch.undo()
    assert metric_steps(tmp_path / "metrics.jsonl") == [1, 2]  # step 2 logged before its save failed
    t = Trainer(tiny_run(tmp_path, resume="auto", steps=3, save_every=1, eval_samples=4, train_samples=12))
    assert t.step == 1 and metric_steps(tmp_path / "metrics.jsonl") == [1]


def test_a_failing_metrics_write_leaves_no_partial_line(tmp_path, monkeypatch):
    t = Trainer(tiny_run(tmp_path, steps=3))
    t.fit(stop_at=1)
    before = (tmp_path / "metrics.jsonl").read_bytes()
    real_write = os.write

    def full_disk(fd, data):
        if bytes(data[:9]) == b'{"split":':
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(WriteFailedError) as info:
        t.fit()
    monkeypatch.undo()
    assert str(info.value) == (f"{tmp_path / 'metrics.jsonl'}: could not append to the metrics (no space left on "
                               "the device); the records before are unchanged")
    assert (tmp_path / "metrics.jsonl").read_bytes() == before


def test_resume_auto_without_a_checkpoint_replaces_the_old_metrics(tmp_path, capsys):
    """(A fresh start without --resume in a used folder is refused: tests/test_train.py.)"""
    Trainer(tiny_run(tmp_path, steps=2)).fit()
    for name in ("last.safetensors", "best.safetensors"):
        os.remove(tmp_path / name)  # the metrics alone are left
    capsys.readouterr()
    Trainer(tiny_run(tmp_path, steps=2, resume="auto")).fit()  # nothing to resume: a new run, from step 0
    err = capsys.readouterr().err
    assert err == (f"fast-timesformer: {tmp_path / 'metrics.jsonl'} held records of an earlier run, but --resume auto "
                   f"found no checkpoint in {tmp_path} to continue: this run starts at step 0 and replaces them\n")
    assert metric_steps(tmp_path / "metrics.jsonl") == [1, 2] and metric_steps(tmp_path / "metrics.jsonl", "eval") == [2]


def test_a_second_ctrl_c_acts_at_once_and_says_what_is_saved(tmp_path, capsys, monkeypatch, sigint_default):
    log = Trainer._log

    def log_and_signal_twice(self, record):
        log(self, record)
        if record.get("split") == "train" and record["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # a copy arriving with the first (torchrun forwards one): no effect
            time.sleep(1.1)
            os.kill(os.getpid(), signal.SIGINT)  # raises KeyboardInterrupt here, as a second Ctrl-C does

    monkeypatch.setattr(Trainer, "_log", log_and_signal_twice)
    rc, _, err = run_cli(["train", *ARGS, "--steps", "6", "--save-every", "1", "--out", str(tmp_path)], capsys)
    assert rc == 130 and "Traceback" not in err
    assert err == (f"fast-timesformer: interrupted at once at step 2 (a second Ctrl-C); the last checkpoint is "
                   f"{tmp_path / 'last.safetensors'} (step 1)\n")
