"""Export a TimeSformer classifier for deployment: ONNX (run by ONNX Runtime) or a ``torch.export`` program.

``fast-timesformer export CHECKPOINT --format onnx|pt2 --out FILE`` and, from Python::

    from fast_timesformer.export import export_checkpoint, export_model
    export_checkpoint("runs/x/best.safetensors", "model.onnx")              # any checkpoint predict reads
    export_model(model, "model.pt2", format="pt2", transform=..., classes=[...])

What is exported:

- The model in eval mode at one clip size (``frames``, ``image_size``: the checkpoint's, or fixed with
  ``--frames/--image-size``), the batch dynamic. The frame count is not dynamic: every scheme's token groups
  are built from it in Python, so another count is another graph (export again with ``--frames``).
- The ``regular`` path of every attention step (or the step's own backend where it exports): under
  ``torch.export`` the layer moves tokens with cat/permute/reshape instead of writing into a buffer
  (:mod:`fast_timesformer.backends.common`), which ONNX export mistranslated; the numbers are the same.
- A backend that declares ``Backend.export_why_not``: an exact one (triton, xformers, flex) is exported as
  ``regular``, the same softmax attention, with a one-line notice; any other kind is refused
  (:class:`ExportError`), since its numbers would change.
- Each export is checked before it is kept: the file is reloaded (ONNX Runtime's CPU provider, or
  ``torch.export.load``) and run at batch 1 and batch 2 against the eager model; beyond the tolerance
  (:data:`TOLERANCE`) the file is deleted and :class:`ExportError` raised.
- ONNX metadata (``metadata_props``, read with ``session.get_modelmeta().custom_metadata_map``):
  ``classes`` (JSON list), ``transform`` (JSON: frames, size, resize, mean, std; see
  :class:`~fast_timesformer.video.ClipTransform`), ``scheme``, ``source``, ``fast_timesformer``
  (the version). A pt2 file carries the same strings as ``extra_files``. ``predict VIDEO --checkpoint
  model.onnx`` needs nothing else (:func:`~fast_timesformer.train.onnx_predict.predict_onnx`: ONNX Runtime,
  no model code). The CPU inference suite (``fast-timesformer bench --suite cpu-inference``): :mod:`.cpu_bench`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..errors import FastTimesformerError
from ..models.resample import to_hw
from ..outputs import check_output_file, writing
from ..train.onnx_predict import (  # noqa: F401 (re-exported: the ONNX reading lives below train, which predict uses)
    EXPORT_PACKAGES,
    INPUT,
    OUTPUT,
    missing_export_packages,
    onnx_session,
    predict_onnx,
    read_metadata,
)

__all__ = ["FORMATS", "TOLERANCE", "ExportError", "ExportReport", "export_model", "export_checkpoint",
           "load_classifier", "read_metadata", "predict_onnx", "onnx_session", "export_backend_plan",
           "missing_export_packages", "add_subcommands"]

FORMATS = ("onnx", "pt2")
#: largest |logit difference| an export may show against the eager model in float32 (ONNX Runtime fuses and
#: reorders the same float32 reductions: ~1e-6 relative on O(1)-O(10) logits; the issue's bound)
TOLERANCE = {"onnx": 1e-4, "pt2": 1e-5}


class ExportError(FastTimesformerError, ValueError):
    """An export that cannot be made as asked (a backend that cannot be exported, a check that failed)."""


@dataclass
class ExportReport:
    """What an export wrote and how it was checked: ``max_abs_diff`` per batch size against eager."""

    path: str
    format: str
    frames: int
    image_size: tuple
    notices: list = field(default_factory=list)
    max_abs_diff: dict = field(default_factory=dict)

    def summary(self) -> str:
        diffs = ", ".join(f"batch {b}: {d:.1e}" for b, d in self.max_abs_diff.items())
        return (f"wrote {self.path} ({self.format}, {self.frames}x{self.image_size[0]}x{self.image_size[1]}, "
                f"dynamic batch); max |logit - eager| {diffs}")


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        from .._names import unknown_name_error

        raise unknown_name_error("export format", fmt, FORMATS)
    missing = missing_export_packages(fmt)
    if missing:
        raise ExportError(f"--format {fmt} needs {', '.join(missing)} (pip install 'fast_timesformer[export]')")


# ---- the model to export -----------------------------------------------------------------------------
def load_classifier(path: str):
    """``(model in eval mode, ClipTransform dict, class names or None, source kind)`` from any checkpoint
    ``predict`` and ``explain`` read: a ``fast-timesformer train`` checkpoint, a Hugging Face folder or an
    official ``.pyth``/``.pth`` file. A damaged file raises ``CorruptCheckpointError`` (one line)."""
    from ..explain.cli import load_model_for_explain
    from ..models import TimeSformer

    model, transform, classes = load_model_for_explain(path, purpose="export")
    if not isinstance(model, TimeSformer):
        raise ExportError(f"{path}: export takes TimeSformer classifiers, got {type(model).__name__}")
    return model, dataclasses.asdict(transform), classes


def export_backend_plan(model) -> tuple:
    """``({step: "regular"} for the steps to swap, notices)`` for the layers whose backend declares
    ``export_why_not``: an exact backend runs as ``regular`` in the export (one notice per step); any other
    kind raises :class:`ExportError` with the backend's reason."""
    from ..backends import get_backend
    from ..backends.registry import AUTO

    swap, notices = {}, []
    for layer in model.attention_modules():
        name = layer.backend_name
        if name == AUTO:
            if layer.step not in swap:
                swap[layer.step] = "regular"
                notices.append(f"step {layer.step!r}: backend 'auto' picks per call; exported as 'regular'")
            continue
        be = get_backend(name)
        if not be.export_why_not:
            continue
        if not be.exact:
            raise ExportError(f"step {layer.step!r} runs backend {name!r} ({be.kind}), which cannot be exported: "
                              f"{be.export_why_not}; no exact path computes its numbers")
        if layer.step not in swap:
            swap[layer.step] = "regular"
            notices.append(f"step {layer.step!r}: backend {name!r} cannot be exported ({be.export_why_not}); "
                           "exported as 'regular', the same softmax attention")
    return swap, notices


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx prints its progress and logs a warning per missing torchvision op: keep stdout clean."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecations while saving
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _metadata(model, transform: dict, classes, source: str) -> dict:
    from .._version import __version__

    return {"fast_timesformer": __version__, "scheme": model.scheme.name, "source": source,
            "classes": json.dumps(list(classes) if classes else [str(i) for i in range(model.num_classes)]),
            "transform": json.dumps(transform)}


def _write_onnx(model, example, out: str, meta: dict, optimize: bool = True) -> None:
    batch = torch.export.Dim("batch", min=1)
    with _quiet_exporter():
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                                    dynamic_shapes=({0: batch},), optimize=optimize, verbose=False)
    program.model.metadata_props.update(meta)
    program.save(out)


def _write_pt2(model, example, out: str, meta: dict, optimize: bool = True) -> None:
    batch = torch.export.Dim("batch", min=1)
    with _quiet_exporter():
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, out, extra_files={f"meta/{k}": v for k, v in meta.items()})


def _run_export(path: str, fmt: str):
    """A callable ``video tensor -> logits tensor`` running the written file."""
    if fmt == "onnx":
        sess = onnx_session(path)
        return lambda x: torch.from_numpy(sess.run([OUTPUT], {INPUT: x.numpy()})[0])
    module = torch.export.load(path).module()
    return lambda x: module(x)


def export_model(model, out, *, format: str = "onnx", frames: Optional[int] = None, image_size=None,
                 transform: Optional[dict] = None, classes: Optional[Sequence[str]] = None, source: str = "",
                 check_batches: Sequence[int] = (1, 2), seed: int = 0, optimize: bool = True) -> ExportReport:
    """Export ``model`` (a :class:`~fast_timesformer.models.TimeSformer`, float32 on CPU) to ``out``.

    ``frames``/``image_size``: the clip size of the graph (default: the model's). ``transform``: the
    preprocessing dict to record (default: a :class:`ClipTransform` of that size with Kinetics mean/std);
    ``classes``: class names to record (default "0", "1", ...). The model is restored as it was (backends,
    training mode). Returns an :class:`ExportReport`; the check runs random clips at ``check_batches``.
    ``optimize`` (ONNX): the exporter's graph optimiser (constant folding, dead nodes; about half the export
    time); ONNX Runtime optimises the graph again when it loads it.
    """
    from ..attention import use_backend

    _check_format(format)
    f = int(frames or model.num_frames)
    ih, iw = to_hw(image_size or model.image_size, "image_size")
    example = torch.zeros(2, f, model.channels, ih, iw)
    try:
        model._check_input(example)  # a size that does not fit: the model's own one-line ValueError
    except ValueError as e:
        raise ExportError(f"clip size {f}x{ih}x{iw} does not fit the model: {e}") from None
    transform = dict(transform) if transform else {}
    if not transform or transform.get("num_frames") != f or transform.get("image_size") not in (ih, [ih, iw]):
        from ..video import ClipTransform

        base = ClipTransform(**{k: tuple(v) if isinstance(v, list) else v for k, v in transform.items()})
        resize = None if base.resize is None else int(round(base.resize * ih / base.image_size))
        transform = dataclasses.asdict(dataclasses.replace(base, num_frames=f, image_size=ih, resize=resize))
    swap, notices = export_backend_plan(model)
    path = check_output_file(out)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        with use_backend(model, swap) if swap else contextlib.nullcontext(), torch.no_grad():
            meta = _metadata(model, transform, classes, source)
            with writing(path):  # a full disk or an I/O error: one line naming the file
                (_write_onnx if format == "onnx" else _write_pt2)(model, example, path, meta, optimize)
            report = ExportReport(path, format, f, (ih, iw), notices)
            run = _run_export(path, format)
            g = torch.Generator().manual_seed(seed)
            for b in check_batches:
                x = torch.randn(b, f, model.channels, ih, iw, generator=g)
                diff = (run(x).float() - model(x).float()).abs().max().item()
                report.max_abs_diff[b] = diff
                if not diff <= TOLERANCE[format]:  # NaN fails too
                    raise ExportError(f"the exported {format} file computes other logits than the model at batch "
                                      f"{b}: max |difference| {diff:.3g} > {TOLERANCE[format]:g}; not kept")
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(path)
        raise
    finally:
        model.train(was_training)
    return report


def export_checkpoint(checkpoint: str, out, *, format: str = "onnx", frames: Optional[int] = None,
                      image_size: Optional[int] = None) -> ExportReport:
    """Load any checkpoint ``predict`` reads (:func:`load_classifier`) and :func:`export_model` it, with its
    preprocessing and class names in the file's metadata."""
    _check_format(format)
    model, transform, classes = load_classifier(checkpoint)
    return export_model(model, out, format=format, frames=frames, image_size=image_size, transform=transform,
                        classes=classes, source=os.path.basename(os.path.normpath(str(checkpoint))))


# ---- command line -------------------------------------------------------------------------------------------
def cmd_export(args) -> int:
    if not os.path.exists(args.checkpoint):
        raise FileNotFoundError(f"no checkpoint at {args.checkpoint}")
    check_output_file(args.out)  # before the checkpoint is loaded
    for name, v in (("--frames", args.frames), ("--image-size", args.image_size)):
        if v is not None and v < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {v}")
    report = export_checkpoint(args.checkpoint, args.out, format=args.format, frames=args.frames,
                               image_size=args.image_size)
    for line in report.notices:
        print(f"notice: {line}", file=sys.stderr)
    print(report.summary())
    return 0


def add_subcommands(sub) -> None:
    p = sub.add_parser("export", help="export a classifier to ONNX (ONNX Runtime) or a torch.export program (pt2)",
                       description="Export any checkpoint predict reads to ONNX or pt2, dynamic batch, checked "
                                   "against the eager model at batch 1 and 2 before it is kept. The ONNX file "
                                   "carries class names and preprocessing: predict VIDEO --checkpoint FILE.onnx.")
    p.add_argument("checkpoint", help="a 'fast-timesformer train' checkpoint, a Hugging Face folder or an official "
                                      ".pyth/.pth")
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("--out", required=True, help="the file to write (model.onnx, model.pt2)")
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default: the checkpoint's)")
    p.add_argument("--image-size", type=int, default=None, help="frame size in pixels (default: the checkpoint's)")
    p.set_defaults(func=cmd_export)
