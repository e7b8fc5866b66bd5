"""Multi-view testing: ``T`` temporal clips x ``S`` spatial crops of one video, softmax scores averaged.

The TimeSformer paper measures accuracy on "3 views": 1 temporal clip x 3 spatial crops (``1x3``); the
default here is one view (``1x1``), which is exactly the single-view evaluation.

* **Temporal clips** are spread evenly in time. A clip takes one frame from each of ``num_frames`` equal
  segments of the video (the sampling training uses); clip ``j`` of ``T`` takes the frame at the fraction
  ``(j + 1/2) / T`` of each segment, so ``T = 1`` is the single view's segment centres.
* **Spatial crops** are squares of the image size taken along the longer side of the resized clip, as the
  official code's ``uniform_crop`` does: with 3 crops, left (top), centre and right (bottom); with ``S``
  crops, offsets spread evenly from one end to the other; the other axis is centred. One crop is the
  single view's centre crop. The clip is resized as for single-view evaluation (shorter side
  :meth:`ClipTransform.resize_to`; the official test resizes the shorter side to the crop size: give
  ``resize = image_size`` for that).

Views are ordered clip-major: view ``j * S + k`` is clip ``j``, crop ``k``.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from ..video import ClipTransform, normalize, read_video_frames, resize_short_side, sample_frame_indices

__all__ = ["parse_views", "format_views", "clip_frame_indices", "crop_offsets", "spatial_crops",
           "views_of_frames", "video_views", "average_view_scores", "MultiViewDataset"]


def parse_views(spec, what: str = "views") -> tuple[int, int]:
    """``"1x3"`` (or ``(1, 3)``) -> (temporal clips, spatial crops), both whole numbers >= 1; ``what`` names
    the option in the error."""
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        t, s = spec
    else:
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(spec))
        if m is None:
            raise ValueError(f"{what} must be TxS (temporal clips x spatial crops, e.g. 1x3), got {spec!r}")
        t, s = m.groups()
    t, s = int(t), int(s)
    if t < 1 or s < 1:
        raise ValueError(f"{what} must be TxS with T >= 1 and S >= 1, got {spec!r}")
    return t, s


def format_views(views) -> str:
    t, s = parse_views(views)
    return f"{t}x{s}"


def clip_frame_indices(num_available: int, num_frames: int, num_clips: int) -> list[list[int]]:
    """The frame indices of ``num_clips`` clips spread evenly in time (module docstring); clip ``j`` takes
    the frame at ``(j + 1/2) / num_clips`` of each of ``num_frames`` equal segments."""
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    if num_clips == 1:
        return [sample_frame_indices(num_available, num_frames, "uniform")]
    seg = num_available / num_frames
    return [[min(int(seg * (i + (j + 0.5) / num_clips)), num_available - 1) for i in range(num_frames)]
            for j in range(num_clips)]


def crop_offsets(length: int, size: int, num_crops: int) -> list[int]:
    """Start offsets of ``num_crops`` windows of ``size`` along an axis of ``length``: one is centred
    (as :func:`~fast_timesformer.video.crop`), several spread evenly from one end to the other."""
    if size > length:
        raise ValueError(f"cannot take a {size}-pixel crop from {length} pixels")
    if num_crops == 1:
        return [(length - size) // 2]
    return [round(k * (length - size) / (num_crops - 1)) for k in range(num_crops)]


def spatial_crops(clip: torch.Tensor, size: int, num_crops: int) -> torch.Tensor:
    """(f, c, H, W) -> (num_crops, f, c, size, size): square crops along the longer side, the other axis
    centred (the official code's rule: along the height where H > W, else along the width)."""
    h, w = clip.shape[-2:]
    if h > w:
        tops, lefts = crop_offsets(h, size, num_crops), crop_offsets(w, size, 1) * num_crops
    else:
        tops, lefts = crop_offsets(h, size, 1) * num_crops, crop_offsets(w, size, num_crops)
    return torch.stack([clip[..., y: y + size, x: x + size] for y, x in zip(tops, lefts)])


def views_of_frames(frames: torch.Tensor, transform: ClipTransform, views) -> torch.Tensor:
    """uint8 frames (T * f, c, H, W), the clips one after another -> normalised views
    (T * S, f, c, image_size, image_size), clip-major."""
    t, s = parse_views(views)
    f = transform.num_frames
    if frames.shape[0] != t * f:
        raise ValueError(f"expected {t} clips of {f} frames, got {frames.shape[0]} frames")
    clip = resize_short_side(frames, transform.resize_to())
    crops = spatial_crops(clip, transform.image_size, s)                      # (S, T * f, c, s, s)
    crops = crops.unflatten(1, (t, f)).transpose(0, 1).flatten(0, 1)          # (T * S, f, c, s, s)
    return normalize(crops.flatten(0, 1), transform.mean, transform.std).unflatten(0, (t * s, f))


def video_views(path: str, transform: ClipTransform, views) -> torch.Tensor:
    """Decode a video file's views: normalised (T * S, f, c, image_size, image_size)."""
    t, _ = parse_views(views)
    frames = read_video_frames(path, lambda n: [i for clip in clip_frame_indices(n, transform.num_frames, t)
                                                for i in clip])
    return views_of_frames(frames, transform, views)


def average_view_scores(model: nn.Module, views: torch.Tensor, *, chunk: int = 0) -> torch.Tensor:
    """Class probabilities averaged over the views: ``views`` (B, V, f, c, h, w) -> (B, classes), the mean
    of each view's softmax. ``chunk``: views per forward call (0: all of a batch at once)."""
    b, v = views.shape[:2]
    flat = views.flatten(0, 1)
    step = chunk if chunk > 0 else flat.shape[0]
    probs = torch.cat([_softmax(model(flat[i:i + step])) for i in range(0, flat.shape[0], step)])
    return probs.unflatten(0, (b, v)).mean(1)


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax in float32 at least (bf16 / fp16 logits under autocast), float64 kept."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(-1)


class MultiViewDataset(Dataset):
    """A video data set (``samples`` of (path, label), a ``transform``: :class:`VideoFolder`) read as views:
    ``(views (T * S, f, c, s, s), label)``."""

    def __init__(self, dataset, views):
        self.dataset, self.views = dataset, parse_views(views)
        self.classes = list(getattr(dataset, "classes", []))

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def samples(self) -> Sequence:
        return self.dataset.samples

    def __getitem__(self, index: int):
        path, label = self.dataset.samples[index]
        return video_views(path, self.dataset.transform, self.views), label
