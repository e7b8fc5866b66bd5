"""Shared by the training and command-line tests: a tiny training run (as a TrainConfig and as command-line
arguments), the console called in this process, and the check of a one-line error."""
from fast_timesformer.train.config import TrainConfig

# one block, 16x16 frames in 2x2 patches of 8: a few CPU steps take well under a second
MODEL = '{"dim": 32, "depth": 1, "heads": 2, "dim_head": 16, "patch_size": 8, "mlp_ratio": 2.0}'
# the run of tiny_run on the command line (add --steps and --out); ARGS[:-5] leaves out the device and logging
ARGS = ["--model", MODEL, "--frames", "4", "--image-size", "16", "--train-samples", "12", "--eval-samples", "4",
        "--batch", "4", "--lr", "3e-3", "--warmup", "1", "--device", "cpu", "--no-progress", "--log-every", "1"]


def tiny_run(out, **kw) -> TrainConfig:
    """A 4-step moving-shapes run on the CPU writing to ``out`` (3 steps an epoch); ``kw`` overrides."""
    base = dict(model=MODEL, num_frames=4, image_size=16, train_samples=12, eval_samples=4, batch=4, steps=4,
                lr=3e-3, warmup=1, device="cpu", out_dir=str(out), progress=False, log_every=1, seed=0)
    return TrainConfig(**{**base, **kw})


def run_cli(args, capsys):
    """``fast-timesformer ARGS`` in this process: (exit code, stdout, stderr)."""
    from fast_timesformer.cli import console

    rc = console(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_error_line(err, *parts) -> str:
    """``err`` is one ``fast-timesformer: error: ...`` line, no traceback, holding every one of ``parts``;
    returns the message."""
    assert err.count("\n") == 1 and err.startswith("fast-timesformer: error: ") and "Traceback" not in err, err
    for p in parts:
        assert p in err, (p, err)
    return err[len("fast-timesformer: error: "):-1]
