"""One video file: decoding with PyAV (:func:`read_video`, :func:`read_video_frames`), checking that a file
reads (:func:`check_video`), and turning a decoded clip into model input (:class:`ClipTransform`,
:func:`preprocess_clip`: resize the shorter side, crop, normalise). Used by the datasets, ``predict``,
``explain`` and ``export``; a file that cannot be decoded raises one
:class:`~fast_timesformer.errors.BadVideoError` line naming it.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from .errors import BadVideoError, import_failure

__all__ = ["VIDEO_EXTENSIONS", "KINETICS_MEAN", "KINETICS_STD", "read_video", "read_video_frames", "check_video",
           "link_problem",
           "sample_frame_indices", "resize_short_side", "crop", "normalize", "ClipTransform", "preprocess_clip"]


VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v")
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)


def _import_av():
    try:
        import av
    except ImportError as e:  # av is in the `video` extra; a broken install is quoted, not called missing
        raise import_failure("av", e, "video") from e
    return av


def sample_frame_indices(num_available: int, num_frames: int, mode: str = "uniform", *,
                         generator: Optional[torch.Generator] = None) -> list[int]:
    """Which frames of a ``num_available``-frame video to use.

    ``uniform``: the centres of ``num_frames`` equal segments (deterministic, for evaluation).
    ``random``: one random frame inside each segment (TSN-style, for training; sorted).
    Videos shorter than ``num_frames`` repeat frames.
    """
    if num_available < 1:
        raise ValueError("the video has no frames")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    seg = num_available / num_frames
    if mode == "uniform":
        idx = [int(seg * (i + 0.5)) for i in range(num_frames)]
    elif mode == "random":
        u = torch.rand(num_frames, generator=generator)
        idx = [int(seg * (i + float(u[i]))) for i in range(num_frames)]
    else:
        raise ValueError(f"unknown frame sampling {mode!r}; choose 'uniform' or 'random'")
    return [min(max(i, 0), num_available - 1) for i in idx]


def _av_problem(e: Exception) -> str:
    """An FFmpeg/PyAV error in words, without the path PyAV repeats at the end."""
    msg = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return str(msg).rstrip(".")


def link_problem(path: str) -> Optional[str]:
    """Why a symbolic link cannot be followed ("is a link loop", "is a link to X, which does not exist"),
    or None (not a link, or one that resolves)."""
    if not os.path.islink(path):
        return None
    try:
        os.path.realpath(path, strict=True)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a link loop: following its links leads back to itself"
        return f"is a link to {os.readlink(path)!r}, which does not exist"
    return None


def read_video(path: str, num_frames: int, mode: str = "uniform", *,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Decode ``num_frames`` sampled frames of a video file: uint8 tensor (f, 3, H, W), RGB.

    A file that cannot be opened or decoded raises :class:`~fast_timesformer.errors.BadVideoError`
    naming it (a ``ValueError``); a missing file raises ``FileNotFoundError``."""
    return read_video_frames(path, lambda n: sample_frame_indices(n, num_frames, mode, generator=generator))


def read_video_frames(path: str, pick: Callable[[int], Sequence[int]]) -> torch.Tensor:
    """Decode the frames ``pick(number of frames in the video)`` names: uint8 tensor (len, 3, H, W), RGB.
    :func:`read_video` picks one clip; multi-view testing picks several clips' frames at once."""
    av = _import_av()
    if not os.path.isfile(path):
        if os.path.isdir(path):
            raise BadVideoError((path, "is a folder, not a video file"))
        link = link_problem(path)
        if link is not None:
            raise BadVideoError((path, link))
        raise FileNotFoundError(f"no such video file: {path}")
    try:
        container = av.open(path)
    except Exception as e:  # av.error.InvalidDataError and friends
        raise BadVideoError((path, f"cannot be opened as a video ({_av_problem(e)})")) from None
    with container:
        if not container.streams.video:
            raise BadVideoError((path, "has no video stream"))
        stream = container.streams.video[0]
        frames = []
        try:
            for frame in container.decode(stream):  # decoded, converted below only if used
                frames.append(frame)
        except Exception as e:
            raise BadVideoError((path, f"cannot decode frame {len(frames)} ({_av_problem(e)})")) from None
    if not frames:
        raise BadVideoError((path, "no frame could be decoded"))
    size = (frames[0].width, frames[0].height)
    changed = next((i for i, fr in enumerate(frames) if (fr.width, fr.height) != size), None)
    if changed is not None:  # the frames of a clip are stacked: one frame size throughout
        fr = frames[changed]
        raise BadVideoError((path, f"its frame size changes mid-stream: frame 0 is {size[0]}x{size[1]}, frame "
                                   f"{changed} is {fr.width}x{fr.height}"))
    idx = list(pick(len(frames)))
    try:
        arrays = {i: torch.from_numpy(frames[i].to_ndarray(format="rgb24")) for i in set(idx)}
    except Exception as e:
        raise BadVideoError((path, f"cannot convert a decoded frame to RGB ({_av_problem(e)})")) from None
    return torch.stack([arrays[i] for i in idx]).permute(0, 3, 1, 2).contiguous()  # (f, 3, H, W)


def check_video(path: str) -> Optional[str]:
    """``None`` if ``path`` looks like a whole, decodable video; otherwise the problem, in words.

    The quick check run on every file of a :class:`VideoFolder` before training: the file opens as a
    container with a video stream, every packet of that stream can be read (demuxed, not decoded: about
    the cost of reading the file once), the packets reach the length the container declares (a frame
    count or a duration: a truncated file falls short) and the first frame decodes. It does not decode
    every frame: a file damaged in the middle of its data can still pass, and then fails, naming the file,
    when training reads it (:func:`read_video`).
    """
    av = _import_av()
    if not os.path.isfile(path):
        if os.path.isdir(path):
            return "is a folder, not a video file"
        return link_problem(path) or "does not exist"
    if os.path.getsize(path) == 0:
        return "is empty (0 bytes)"
    try:
        container = av.open(path)
    except Exception as e:
        return f"cannot be opened as a video ({_av_problem(e)})"
    try:
        with container:
            if not container.streams.video:
                kinds = sorted({st.type for st in container.streams})
                if set(kinds) <= {"data", "attachment", "subtitle"}:
                    return (f"has no video stream (streams: {', '.join(kinds) or 'none'}): not a video, or cut off "
                            "before its stream headers")
                return f"has no video stream (streams: {', '.join(kinds)})"
            stream = container.streams.video[0]
            tb = stream.time_base
            packets, end, start, corrupt = 0, None, None, None
            try:
                for packet in container.demux(stream):
                    if packet.size == 0 and packet.pts is None:
                        continue  # the flush packet at the end of the stream
                    if packet.is_corrupt and corrupt is None:
                        corrupt = packets
                    packets += 1
                    if packet.pts is not None and tb is not None:
                        t0 = float(packet.pts * tb)
                        t1 = float((packet.pts + (packet.duration or 0)) * tb)
                        start = t0 if start is None else min(start, t0)
                        end = t1 if end is None else max(end, t1)
            except Exception as e:
                return f"is damaged or truncated (reading packet {packets} failed: {_av_problem(e)})"
            if packets == 0:
                return "has no video frames"
            declared = stream.frames or 0
            if declared and packets < declared:
                return f"is truncated: {packets} of the {declared} frames it declares are present"
            duration = float(stream.duration * tb) if stream.duration and tb is not None else None
            rate = float(stream.average_rate) if stream.average_rate else None
            if not declared and duration and end is not None and rate:
                # half a frame of slack: packets without a duration end at their own timestamp
                if end - (start or 0.0) < duration - 0.5 / rate - 1e-6:
                    return (f"is truncated: its frames end at {end - (start or 0.0):.2f} s of the "
                            f"{duration:.2f} s it declares")
            if corrupt is not None:
                return f"is damaged: the container marks packet {corrupt} as corrupt"
        with av.open(path) as container:
            try:
                next(iter(container.decode(container.streams.video[0])))
            except StopIteration:
                return "no frame could be decoded"
            except Exception as e:
                return f"cannot decode its first frame ({_av_problem(e)})"
    except Exception as e:  # anything else PyAV raises on a damaged file
        return f"cannot be read as a video ({_av_problem(e)})"
    return None


def resize_short_side(clip: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (f, c, H, W) so that its shorter side is ``size`` (bilinear, antialiased), float out."""
    h, w = clip.shape[-2:]
    scale = size / min(h, w)
    new = (max(size, round(h * scale)), max(size, round(w * scale)))
    if new == (h, w):
        return clip.float()
    return F.interpolate(clip.float(), size=new, mode="bilinear", align_corners=False, antialias=True)


def crop(clip: torch.Tensor, size: int, *, mode: str = "center",
         generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Square crop of (f, c, H, W): ``center`` or ``random`` (same window for every frame)."""
    h, w = clip.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"cannot crop {size}x{size} from a {h}x{w} clip")
    if mode == "center":
        top, left = (h - size) // 2, (w - size) // 2
    elif mode == "random":
        top = int(torch.randint(0, h - size + 1, (), generator=generator))
        left = int(torch.randint(0, w - size + 1, (), generator=generator))
    else:
        raise ValueError(f"unknown crop {mode!r}; choose 'center' or 'random'")
    return clip[..., top: top + size, left: left + size]


def normalize(clip: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(f, c, H, W) uint8 or [0, 255] float -> ((x / 255) - mean) / std per channel."""
    c = clip.shape[1]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} entries for {c} channels")
    m = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)
    return (clip.float() / 255.0 - m) / s


@dataclass
class ClipTransform:
    """How a decoded clip becomes model input: sampling, resize, crop, normalise."""
    num_frames: int = 8
    image_size: int = 224
    resize: Optional[int] = None           # shorter side before cropping; default image_size * 8/7
    sampling: str = "uniform"              # "uniform" or "random"
    crop: str = "center"                   # "center" or "random"
    mean: tuple = KINETICS_MEAN
    std: tuple = KINETICS_STD

    def resize_to(self) -> int:
        return self.resize if self.resize is not None else int(round(self.image_size * 8 / 7))


def preprocess_clip(clip: torch.Tensor, t: ClipTransform, *,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """uint8 (f, c, H, W) -> normalised float (f, c, image_size, image_size)."""
    clip = resize_short_side(clip, t.resize_to())
    clip = crop(clip, t.image_size, mode=t.crop, generator=generator)
    return normalize(clip, t.mean, t.std)
