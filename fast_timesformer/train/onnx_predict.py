"""``predict`` on an exported ``.onnx`` file: ONNX Runtime on CPU, no model code.

The file (written by ``fast-timesformer export``, :mod:`fast_timesformer.export`) carries its class names and
preprocessing in its metadata; the clip is decoded and its views scored exactly as
:func:`~fast_timesformer.train.inference.predict_video` does with a training checkpoint, with the ONNX Runtime
session in the model's place (its batch is dynamic: the views go through as one batch).
"""
from __future__ import annotations

import json
import os

import torch

from ..errors import CorruptCheckpointError, FastTimesformerError, first_line
from ..finite import check_finite
from ..video import ClipTransform
from .views import average_view_scores, parse_views, video_views

__all__ = ["EXPORT_PACKAGES", "INPUT", "OUTPUT", "missing_export_packages", "onnx_session", "read_metadata",
           "predict_onnx"]

#: the Python distributions of the ``export`` extra each format needs
EXPORT_PACKAGES = {"onnx": ("onnx", "onnxruntime", "onnxscript"), "pt2": ()}
#: the exported graph's input (video, float32 (batch, frames, 3, H, W)) and output (logits) names
INPUT, OUTPUT = "video", "logits"


def missing_export_packages(fmt: str = "onnx") -> list:
    """The distributions of the ``export`` extra that ``fmt`` needs and that are not installed."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in EXPORT_PACKAGES[fmt]:
        try:
            version(name)
        except PackageNotFoundError:
            out.append(name)
    return out


def onnx_session(path: str):
    """An ONNX Runtime CPU session for ``path``; a file ONNX Runtime cannot read raises ``CorruptCheckpointError``."""
    missing = [n for n in missing_export_packages("onnx") if n == "onnxruntime"]
    if missing:
        raise FastTimesformerError(f"running {path} needs onnxruntime (pip install 'fast_timesformer[export]')")
    import onnxruntime as ort

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no ONNX file at {path}")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own classes for unreadable files
        raise CorruptCheckpointError(path, f"ONNX Runtime cannot load it ({first_line(e)})") from None


def read_metadata(session_or_path) -> dict:
    """The fast_timesformer metadata of an exported ONNX file: ``{"classes": [...], "transform": {...}, ...}``."""
    sess = onnx_session(session_or_path) if isinstance(session_or_path, (str, os.PathLike)) else session_or_path
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    missing = [k for k in ("classes", "transform") if k not in meta]
    if missing:
        raise FastTimesformerError(f"the ONNX file carries no {' or '.join(missing)} metadata: it was not written "
                                   "by fast-timesformer export")
    meta["classes"] = json.loads(meta["classes"])
    meta["transform"] = json.loads(meta["transform"])
    return meta


def predict_onnx(video_path: str, onnx_path: str, top_k: int = 5, views="1x1") -> list:
    """Top-k (class name, probability) for one video with an exported ONNX file, preprocessed as its metadata
    says and scored as ``predict`` scores a training checkpoint (``views``: ``"TxS"``, softmax averaged)."""
    views = parse_views(views, "--views")
    sess = onnx_session(str(onnx_path))
    meta = read_metadata(sess)
    t = ClipTransform(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["transform"].items()})

    def model(x):
        return torch.from_numpy(sess.run([OUTPUT], {INPUT: x.contiguous().numpy()})[0])

    probs = average_view_scores(model, video_views(video_path, t, views)[None])[0]
    check_finite(probs, f"{onnx_path}: the model's output for {video_path}")
    top = probs.topk(min(top_k, probs.numel()))
    classes = meta["classes"]
    names = [classes[i] if i < len(classes) else str(i) for i in top.indices.tolist()]
    return list(zip(names, top.values.tolist()))
