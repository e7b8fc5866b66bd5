"""``fast-timesformer explain VIDEO --checkpoint CKPT --out DIR``: rollout and attention maps as pictures."""
from __future__ import annotations

import json
import os

__all__ = ["add_subcommands", "cmd_explain", "load_model_for_explain", "read_clip"]


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _is_train_checkpoint(path: str) -> bool:
    """A safetensors file with ``fast-timesformer train`` metadata (read by the train module's reader)."""
    if not (os.path.isfile(path) and path.endswith(".safetensors")):
        return False
    from ..errors import FastTimesformerError
    from ..train.checkpoint import read_metadata

    try:
        read_metadata(path)
    except FastTimesformerError:
        raise
    except ValueError:  # a whole safetensors file that train did not write (e.g. Hugging Face weights)
        return False
    return True


def load_model_for_explain(path: str, device: str = "cpu", purpose: str = "explain"):
    """``(model, ClipTransform, class names or None)`` from a ``fast-timesformer train`` checkpoint (as
    ``predict`` reads it) or a Hugging Face folder / official file (``TimeSformer.from_pretrained``).
    Damaged files raise :class:`CorruptCheckpointError`, mismatched ones ``CheckpointMismatchError``; ``purpose``
    names the command in the other refusals (explain, export)."""
    from ..errors import FastTimesformerError
    from ..video import ClipTransform

    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        if _is_train_checkpoint(path):
            from ..train.inference import load_trained_model

            model, meta = load_trained_model(path, device)
            extra = meta.get("extra", {})
            if extra.get("task") != "classify":
                raise ValueError(f"{path} is a {extra.get('task')!r} model; {purpose} needs a classification "
                                 "checkpoint")
            t = ClipTransform(**{k: tuple(v) if isinstance(v, list) else v for k, v in extra["transform"].items()})
            return model, t, meta.get("classes") or None
        from ..models import TimeSformer

        model = TimeSformer.from_pretrained(path).to(device).eval()
    except (FileNotFoundError, FastTimesformerError):
        raise
    except ValueError as e:
        raise ValueError(_one_line(e)) from None
    # Anything else is a bug, not a user error: it keeps its traceback rather than being relabelled as a
    # damaged file (a mismatch is CheckpointMismatchError, a damaged file CorruptCheckpointError, both above).
    ih, iw = model.image_size
    if ih != iw:
        raise ValueError(f"{path}: {purpose} reads square clips; the model expects {ih}x{iw}")
    id2label = getattr(getattr(model, "load_report", None), "meta", {}).get("id2label") or {}
    classes = [id2label.get(i, str(i)) for i in range(model.num_classes)] if id2label else None
    return model, ClipTransform(num_frames=model.num_frames, image_size=ih), classes


def read_clip(path: str, transform):
    """Decode and preprocess one video as ``predict`` does; an undecodable file raises BadVideoError."""
    from ..errors import BadVideoError, FastTimesformerError
    from ..video import preprocess_clip, read_video

    try:
        raw = read_video(path, transform.num_frames, "uniform")
    except (FileNotFoundError, FastTimesformerError, ImportError):
        raise
    except Exception as e:  # PyAV's decoding errors, an empty stream, ...
        raise BadVideoError((path, _one_line(e))) from None
    return preprocess_clip(raw, transform)


def cmd_explain(args) -> int:
    from ..outputs import check_output_dir
    from .api import check_step, explain_clip, save_explanation

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    check_output_dir(args.out)  # before the model runs
    model, transform, classes = load_model_for_explain(args.checkpoint, args.device)
    step = check_step(model, args.step)
    layers = args.layer
    if layers is not None:
        depth = len(model.blocks)
        bad = [i for i in layers if not -depth <= i < depth]
        if bad:
            raise ValueError(f"--layer {bad[0]} does not exist: the model has layers 0..{depth - 1}")
        layers = sorted({i % depth for i in layers})
    clip = read_clip(args.video, transform)
    expl = explain_clip(model, clip, step=step, layers=layers, classes=classes, mean=transform.mean, std=transform.std)
    expl.meta.update(video=args.video, checkpoint=args.checkpoint)
    paths = save_explanation(expl, args.out, top_k=args.top_k)
    top = expl.top(1)[0]
    print(json.dumps({"prediction": top["label"], "probability": top["probability"],
                      "rollout_cls_share": round(expl.rollout_cls, 4), **paths}))
    return 0


def add_subcommands(sub) -> None:
    p = sub.add_parser("explain", help="attention rollout and per-step attention maps of one video, as pictures",
                       description="Run a trained TimeSformer on one video with the exact 'recording' backend "
                                   "swapped in, and write the CLS attention rollout over every frame "
                                   "(rollout.png), per-layer maps of one attention step (step_<step>.png), "
                                   "the arrays (attention.safetensors) and a summary (summary.json).")
    p.add_argument("video")
    p.add_argument("--checkpoint", required=True,
                   help="a 'fast-timesformer train' checkpoint, a Hugging Face folder or an official .pyth/.pth")
    p.add_argument("--out", required=True, help="folder for the pictures, arrays and summary")
    p.add_argument("--step", default=None, help="attention step for the per-layer maps (default: the scheme's "
                                                "first, e.g. time for divided_space_time)")
    p.add_argument("--layer", type=int, nargs="+", default=None, help="layers to show (default: all)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_explain)
