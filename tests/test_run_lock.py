"""One run folder, one writer (issue 20, family 4): a run holds a lock on its folder; a second process gets
one line naming the holder; a lock left by a killed process is taken over, saying whose it was."""
import gc
import os
import signal
import subprocess
import sys

import pytest
from helpers import MODEL

from fast_timesformer.train.config import TrainConfig
from fast_timesformer.train.run_folder import LOCK, RunFolder
from fast_timesformer.train.trainer import Trainer

ARGS = ["--model", MODEL, "--frames", "4", "--image-size", "16", "--train-samples", "8", "--eval-samples", "4",
        "--batch", "4", "--lr", "3e-3", "--warmup", "0", "--device", "cpu", "--no-progress", "--steps", "2"]

HOLD = ("import sys\nfrom fast_timesformer.train.run_folder import RunFolder\nfolder = RunFolder(sys.argv[1])\n"
        "folder.lock()\nprint('locked', flush=True)\nsys.stdin.read()\n")


@pytest.fixture
def holder(tmp_path):
    """Another process that holds the lock of tmp_path/run until it is killed."""
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        yield out, p
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_a_second_process_is_refused_naming_the_holder(holder, capsys):
    from fast_timesformer.cli import console

    out, p = holder
    rc = console(["train", *ARGS, "--out", str(out), "--resume", "auto"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith(f"fast-timesformer: error: {out} is in use by process {p.pid} on ")
    assert err.rstrip().endswith("wait for it to finish, or use another --out")
    assert not (out / "metrics.jsonl").exists()  # the refused run wrote nothing


def test_a_lock_left_by_a_killed_process_is_taken_over(holder, capsys):
    from fast_timesformer.cli import console

    out, p = holder
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert (out / LOCK).exists()  # the file stays; the lock died with its process
    rc = console(["train", *ARGS, "--out", str(out), "--resume", "auto"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f"{out}: took over the lock left by process {p.pid} on " in err and "which no longer runs" in err


def test_the_lock_lives_as_long_as_the_trainer(tmp_path):
    out = tmp_path / "run"
    t = Trainer(TrainConfig(model=MODEL, num_frames=4, image_size=16, train_samples=8, eval_samples=4, batch=4,
                            steps=2, device="cpu", out_dir=str(out), progress=False))
    r = subprocess.run([sys.executable, "-c", HOLD, str(out)], capture_output=True, text=True, input="")
    assert r.returncode != 0 and "RunFolderBusyError" in r.stderr and f"process {os.getpid()} on " in r.stderr
    again = RunFolder(str(out))
    again.lock()  # this process may take it again (one script, several trainers in turn)
    del t, again
    gc.collect()
    r = subprocess.run([sys.executable, "-c", HOLD, str(out)], capture_output=True, text=True, input="")
    assert r.returncode == 0 and r.stdout.strip() == "locked", r.stderr  # released with the trainer
