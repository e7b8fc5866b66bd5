"""``fast-timesformer train | predict | experiment``."""
from __future__ import annotations

import argparse
import ast
import gc
import json
import os
import sys

from ..backends.spec import DEFAULT_BACKEND

__all__ = ["add_subcommands", "config_from_args"]


def _key_value(text: str):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass  # a plain string
    return key, value


def _add_train_args(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("model")
    from ..activation_memory import DEFAULT as DEFAULT_MEMORY
    from ..activation_memory import MODES as MEMORY_MODES
    from ..backends import list_backends
    from ..models.registry import PRESETS
    from ..schemes import list_schemes

    m.add_argument("--model", default="tiny",
                   help=f"a registered model name (the presets {', '.join(PRESETS)} or any name `fast-timesformer "
                        "models` lists), a JSON object of constructor arguments or a .json file (default: tiny)")
    m.add_argument("--scheme", default="divided_space_time",
                   help="a registered scheme: " + ", ".join(list_schemes()) + " (default: divided_space_time)")
    m.add_argument("--scheme-option", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="scheme option, e.g. window=1,3,3 for neighborhood (frames, patch rows, patch "
                        "columns; repeatable)")
    m.add_argument("--backend", default=DEFAULT_BACKEND,
                   help="attention backend for every step, or per step: 'time=regular,space=performer' "
                        "(registered: " + ", ".join(list_backends()) + ", auto)")
    m.add_argument("--backend-option", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="backend option for every step, e.g. nb_features=64, or for one step, e.g. "
                        "space.nb_features=64 (repeatable)")
    m.add_argument("--attn-dropout", type=float, default=None)
    m.add_argument("--ff-dropout", type=float, default=None)
    m.add_argument("--drop-path", type=float, default=None)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="moving-shapes",
                   help="moving-shapes (classification), bouncing (future-frame prediction), a folder "
                        "root/<class>/<video> (optionally with train/ and val/ sub-folders) or a list file of "
                        "'PATH LABEL' lines (label: class index or name; `fast-timesformer data` writes them)")
    d.add_argument("--data-root", default=None,
                   help="list file: the folder its paths are relative to (default: the list file's folder)")
    d.add_argument("--classes", dest="classes_file", default=None,
                   help="list file: class names, one a line (default: the training list's labels: indices "
                        "0..max, or the sorted names)")
    d.add_argument("--val-dataset", default=None,
                   help="list file: the evaluation list (default: a held-out split, --val-fraction)")
    d.add_argument("--frames", dest="num_frames", type=int, default=8)
    d.add_argument("--image-size", type=int, default=32)
    d.add_argument("--num-classes", type=int, default=4, help="moving-shapes: 2 or 4")
    d.add_argument("--target-frames", dest="num_target_frames", type=int, default=2, help="bouncing: K")
    d.add_argument("--train-samples", type=int, default=1024, help="size of a synthetic training set")
    d.add_argument("--eval-samples", type=int, default=256, help="size of a synthetic evaluation set")
    d.add_argument("--val-fraction", type=float, default=None,
                   help="a folder without val/: the share of each class held out for evaluation (seeded by "
                        "--seed; default 0.1; 0: no evaluation)")
    d.add_argument("--skip-bad-videos", action="store_true",
                   help="leave out video files that cannot be read (they are listed) instead of stopping")
    d.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    o = p.add_argument_group("optimisation")
    length = o.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, default=None)
    length.add_argument("--steps", type=int, default=None, help="optimizer steps (instead of --epochs)")
    o.add_argument("--batch", type=int, default=16,
                   help="global batch per optimizer step (split over processes and --accum micro-steps)")
    o.add_argument("--accum", type=int, default=1, help="gradient accumulation micro-steps")
    o.add_argument("--lr", type=float, default=1e-3)
    o.add_argument("--weight-decay", type=float, default=0.05)
    o.add_argument("--warmup", type=float, default=0.1, help="warmup: a fraction of the steps (<1) or steps")
    o.add_argument("--min-lr-ratio", type=float, default=0.01)
    o.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm (0: off)")
    o.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off",
                   help="autocast dtype (bf16 on the CPU; fp16 with a grad scaler on CUDA)")
    o.add_argument("--activation-memory", choices=tuple(MEMORY_MODES), default=DEFAULT_MEMORY,
                   help="what each block keeps for backward: selective (default: recomputes norms, GELU and the "
                        "time attention), full (keeps everything) or checkpoint (recomputes whole blocks); the "
                        "mode each block ran is recorded in the metrics file and every checkpoint")
    o.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    o.add_argument("--seed", type=int, default=0)
    b = p.add_argument_group("bookkeeping")
    b.add_argument("--out", dest="out_dir", default="runs/train", help="folder for checkpoints and metrics")
    b.add_argument("--metrics", default=None, help="JSONL file the metrics are appended to "
                                                   "(default OUT/metrics.jsonl)")
    b.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: epoch ends only)")
    b.add_argument("--log-every", type=int, default=10)
    b.add_argument("--no-eval", dest="evaluate", action="store_false",
                   help="no evaluation at all: neither after each epoch nor at the end (no best.safetensors)")
    b.add_argument("--eval-views", default="1x1", metavar="TxS",
                   help="evaluation views per video: T temporal clips x S spatial crops, softmax averaged "
                        "(default 1x1; the paper's 3 views: 1x3)")
    b.add_argument("--no-progress", dest="progress", action="store_false")
    b.add_argument("--resume", default=None,
                   help="checkpoint to continue from, or 'auto' (OUT/last.safetensors if present)")
    b.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="start from a checkpoint's weights (official .pyth, Hugging Face folder, or ours): the "
                        "head is re-initialised where the class count differs, embeddings resampled to "
                        "--frames/--image-size; optimizer and schedule start afresh (not --resume)")
    b.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out that holds an earlier run (without it such a start is refused): "
                        "its checkpoints and metrics stay as they are until this run saves its first checkpoint, "
                        "which replaces them")
    b.add_argument("--stop-at", type=int, default=None,
                   help="stop (with a checkpoint) at this step; a later --resume continues the same run")


def config_from_args(args):
    from .config import TrainConfig

    fields = TrainConfig.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["backend_options"] = dict(args.backend_option)
    values["scheme_options"] = dict(args.scheme_option)
    if args.clip_grad is not None and args.clip_grad < 0:
        raise ValueError(f"--clip-grad must be a number > 0 (or 0 for no clipping), got {args.clip_grad!r}")
    values["clip_grad"] = args.clip_grad or None
    if values.get("epochs") is None and values.get("steps") is None:
        values["epochs"] = 10
    return TrainConfig(**values)


def cmd_train(args) -> int:
    from ..errors import TrainingInterrupted
    from .distributed import cleanup_distributed
    from .trainer import Trainer

    cfg = config_from_args(args)
    if args.stop_at is not None and args.stop_at < 1:
        raise ValueError(f"--stop-at must be a whole number >= 1, got {args.stop_at}")
    trainer = None
    try:
        trainer = Trainer(cfg)
        end = trainer.total_steps if args.stop_at is None else min(args.stop_at, trainer.total_steps)
        if trainer.step >= end:
            if trainer.dist.is_main:
                where = trainer.resumed_from or os.path.join(cfg.out_dir, "last.safetensors")
                if trainer.step >= trainer.total_steps:
                    print(f"the run is complete: step {trainer.step} of {trainer.total_steps}; checkpoint {where}")
                else:
                    print(f"the run is already at step {trainer.step} (--stop-at {args.stop_at}); checkpoint "
                          f"{where}")
        else:
            result = trainer.fit(stop_at=args.stop_at)
            if trainer.dist.is_main:
                shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}
                print(json.dumps(shown))
                print(f"checkpoints in {cfg.out_dir}, metrics in {trainer.folder.metrics_path}"
                      + ("" if cfg.evaluate else "; no evaluation (--no-eval)"))
    except TrainingInterrupted as e:
        cleanup_distributed(sync=False)
        if trainer is None or trainer.dist.is_main:
            print(f"fast-timesformer: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # before fit() took over Ctrl-C, or a second Ctrl-C, which acts at once
        cleanup_distributed(sync=False)
        print(f"fast-timesformer: {_interrupted_at_once(trainer)}", file=sys.stderr)
        return 130
    except BaseException:
        cleanup_distributed(sync=False)
        raise
    # release the DDP wrapper (its reducer holds the process group) before the group is destroyed
    del trainer
    gc.collect()
    cleanup_distributed(sync=True)
    return 0


def _interrupted_at_once(trainer) -> str:
    if trainer is None:
        return "interrupted before training started; nothing was saved"
    from . import checkpoint as ckpt

    last = trainer.folder.last_path
    if trainer.folder.replacing:  # --overwrite, before this run's first checkpoint: what is there is the earlier run's
        return (f"interrupted at once at step {trainer.step} (a second Ctrl-C); this run saved no checkpoint, and "
                f"the earlier run's files in {trainer.folder.out_dir} are unchanged")
    if os.path.isfile(last) and ckpt.check_checkpoint(last) is None:
        saved = ckpt.read_metadata(last).get("step")
        return (f"interrupted at once at step {trainer.step} (a second Ctrl-C); the last checkpoint is {last} "
                f"(step {saved})")
    return f"interrupted at once at step {trainer.step} (a second Ctrl-C); no checkpoint was saved"


def cmd_predict(args) -> int:
    from .inference import predict_video

    if args.top_k < 1:
        raise ValueError(f"--top-k must be a whole number >= 1, got {args.top_k}")
    if args.checkpoint.endswith(".onnx"):  # an exported file: ONNX Runtime on CPU, no model code
        from .onnx_predict import predict_onnx

        if args.device != "cpu":
            raise ValueError(f"{args.checkpoint} runs on ONNX Runtime's CPU provider; --device {args.device} "
                             "does not apply")
        top = predict_onnx(args.video, args.checkpoint, top_k=args.top_k, views=args.views)
    else:
        top = predict_video(args.video, args.checkpoint, top_k=args.top_k, device=args.device, views=args.views)
    if args.json:
        print(json.dumps([{"label": name, "probability": p} for name, p in top]))
    else:
        width = max(len(n) for n, _ in top)
        for rank, (name, p) in enumerate(top, 1):
            print(f"{rank}. {name.ljust(width)}  {p:.4f}")
    return 0


def cmd_experiment(args) -> int:
    from .experiment import run_experiment

    run_experiment(preset=args.preset, out_dir=args.out, schemes=args.schemes, steps=args.steps,
                   seed=args.seed, device=args.device, progress=args.progress, draws=args.draws,
                   overwrite=args.overwrite)
    return 0


def add_subcommands(sub) -> None:
    t = sub.add_parser("train", help="train a model (classification or future-frame prediction)",
                       description="Train TimeSformer on moving-shapes or a video folder, or "
                                   "GenerativeTimeSformer on bouncing shapes. Runs under torchrun too.")
    _add_train_args(t)
    t.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="top-k labels for one video file")
    p.add_argument("video")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by 'fast-timesformer train', or a .onnx file "
                                                          "written by 'fast-timesformer export'")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--views", default="1x1", metavar="TxS",
                   help="T temporal clips x S spatial crops, softmax averaged (default 1x1; the paper's 1x3)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a list")
    p.set_defaults(func=cmd_predict)

    e = sub.add_parser("experiment", help="train every scheme on moving-shapes; table + plot of accuracy and "
                                          "of backends swapped in after training")
    e.add_argument("--preset", choices=("cpu", "gpu"), default="cpu",
                   help="cpu: minutes on 2 cores; gpu: a larger model, data and budget")
    e.add_argument("--gpu", dest="preset", action="store_const", const="gpu", help="same as --preset gpu")
    e.add_argument("--out", default="runs/experiment", help="folder for results.json, results.md, plot")
    e.add_argument("--schemes", nargs="*", default=None, help="default: every registered scheme")
    e.add_argument("--steps", type=int, default=None, help="override the preset's optimizer steps")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--draws", type=int, default=3,
                   help="random draws (performer features, fastformer parameters) per swapped-in backend")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    e.add_argument("--no-progress", dest="progress", action="store_false")
    e.add_argument("--overwrite", action="store_true",
                   help="run in an --out that holds an earlier experiment (without it that is refused): each "
                        "scheme's earlier run is replaced when its new run saves its first checkpoint, the "
                        "results files at the end")
    e.set_defaults(func=cmd_experiment)

