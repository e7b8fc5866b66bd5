"""Inference from a training checkpoint: the model it records (``extra.model_spec``) with its weights, and
the top-k classes for one video file with the run's own preprocessing (``extra.transform``)."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..finite import check_finite
from ..models import create_model
from ..video import ClipTransform
from . import checkpoint as ckpt
from .distributed import resolve_device
from .views import average_view_scores, parse_views, video_views

__all__ = ["load_trained_model", "predict_video"]


def load_trained_model(path: str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a model from a training checkpoint; returns (model in eval mode, metadata). Weights that are
    not finite are refused (:class:`~fast_timesformer.errors.NonFiniteError` naming the file)."""
    device = resolve_device(device)
    meta = ckpt.read_metadata(path)
    spec = meta.get("extra", {}).get("model_spec")
    if spec is None:
        raise ValueError(f"{path} records no model_spec: it was not written by fast-timesformer train")
    model = create_model(spec["registry"], **spec["kwargs"])
    ckpt.load_checkpoint(path, model=model)
    return model.to(device).eval(), meta


@torch.no_grad()
def predict_video(video_path: str, checkpoint_path: str, top_k: int = 5,
                  device: str | torch.device = "cpu", views="1x1") -> list[tuple[str, float]]:
    """Top-k (class name, probability) for one video file, with the checkpoint's preprocessing; ``views``
    (``"TxS"``): temporal clips x spatial crops, softmax averaged (:mod:`~fast_timesformer.train.views`).
    Scores that are not finite raise :class:`~fast_timesformer.errors.NonFiniteError` naming the checkpoint."""
    views = parse_views(views, "--views")
    device = resolve_device(device)
    model, meta = load_trained_model(checkpoint_path, device)
    if meta.get("extra", {}).get("task") != "classify":
        raise ValueError(f"{checkpoint_path} is a {meta.get('extra', {}).get('task')!r} model; predict needs "
                         "a classification checkpoint")
    classes = meta.get("classes") or []
    t = ClipTransform(**{k: tuple(v) if isinstance(v, list) else v
                         for k, v in meta["extra"]["transform"].items()})
    probs = average_view_scores(model, video_views(video_path, t, views)[None].to(device))[0]
    check_finite(probs, f"{checkpoint_path}: the model's output for {video_path}")  # never "1. a  nan", exit 0
    k = min(top_k, probs.numel())
    top = probs.topk(k)
    names = [classes[i] if i < len(classes) else str(i) for i in top.indices.tolist()]
    return list(zip(names, top.values.tolist()))
