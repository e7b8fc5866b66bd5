"""Datasets: two synthetic video tasks generated from a seed, and a class-per-folder video dataset.

Every dataset returns clips as float tensors shaped ``(frames, channels, height, width)`` - the layout
the models take once batched, ``(b, f, c, h, w)``.

* :class:`MovingShapes` - classification whose label is *only* in the temporal order of the frames.
* :class:`BouncingShapes` - future-frame prediction: ``f`` input frames, the next ``K`` frames as target.
* :class:`VideoFolder` - ``root/<class>/<video>.{mp4,avi,webm,...}`` (UCF101 layout), decoded with PyAV.

Randomness never comes from the global RNG: a sample is a pure function of ``(seed, index)`` (and of the
epoch for augmentation), so a resumed or multi-process run sees exactly the same data.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = [
    "MovingShapes", "BouncingShapes", "VideoFolder", "VIDEO_EXTENSIONS", "read_video", "sample_frame_indices",
    "resize_short_side", "crop", "normalize", "preprocess_clip", "ClipTransform", "build_dataset",
]

_MIX = 1_000_003  # spreads (seed, index) over distinct generator seeds


def _generator(*parts: int) -> torch.Generator:
    g = torch.Generator()
    seed = 0
    for p in parts:
        seed = (seed * _MIX + int(p)) % (2 ** 62)
    g.manual_seed(seed)
    return g


def _rand(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g))


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high)."""
    return int(torch.randint(low, high, (), generator=g))


# ---------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------
def _shape_mask(kind: str, size: int, image_size: int, cy: torch.Tensor, cx: torch.Tensor, *,
                wrap: bool) -> torch.Tensor:
    """Masks (len(cy), H, W) of one shape centred at (cy[i], cx[i]); distances wrap round the image
    (a torus) when ``wrap``."""
    coords = torch.arange(image_size, dtype=torch.float32)
    dy = coords.view(1, -1, 1) - cy.view(-1, 1, 1)
    dx = coords.view(1, 1, -1) - cx.view(-1, 1, 1)
    if wrap:
        dy = torch.remainder(dy + image_size / 2, image_size) - image_size / 2
        dx = torch.remainder(dx + image_size / 2, image_size) - image_size / 2
    r = size / 2
    if kind == "square":
        m = (dy.abs() <= r) & (dx.abs() <= r)
    elif kind == "disk":
        m = dy ** 2 + dx ** 2 <= r ** 2
    elif kind == "cross":
        m = ((dy.abs() <= r) & (dx.abs() <= r / 3)) | ((dx.abs() <= r) & (dy.abs() <= r / 3))
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return m.float()


SHAPES = ("square", "disk", "cross")
DIRECTIONS = {"right": (0, 1), "down": (1, 0), "down_right": (1, 1)}  # (dy, dx), all positive


# ---------------------------------------------------------------------------------------------------
# Moving shapes: classification from temporal order only
# ---------------------------------------------------------------------------------------------------
def _orders(num_frames: int) -> dict[str, list[int]]:
    """The frame orders that define the classes (each a permutation of ``range(num_frames)``)."""
    f = num_frames
    evens, odds = list(range(0, f, 2)), list(range(1, f, 2))
    return {
        "forward": list(range(f)),                # moves right/down (the positive direction)
        "backward": list(range(f))[::-1],         # moves left/up
        "forth_and_back": evens + odds[::-1],     # forward at double speed, then back
        "back_and_forth": evens[::-1] + odds,     # backward at double speed, then forward
    }


class MovingShapes(Dataset):
    """One shape moving on a torus; the label is the order in which its frames are shown.

    A clip is made in two steps. First a *base trajectory*: a random shape (square/disk/cross, random
    size and colour) starts at a uniformly random pixel and moves ``speed`` pixels per frame in a
    positive direction (right, down or diagonal down-right; chosen at random), wrapping round the
    image edges; frame ``t`` of the base shows it at ``start + t * velocity``. Then the label picks a
    permutation ``order`` of the frame indices and the clip is ``base[order]``:

    ==============  =========================================================================
    forward         ``0, 1, ..., f-1`` - moves in the positive direction
    backward        ``f-1, ..., 0`` - moves in the negative direction
    forth_and_back  ``0, 2, 4, ..., 5, 3, 1`` - forward at double speed, then back
    back_and_forth  ``..., 4, 2, 0, 1, 3, 5, ...`` - backward at double speed, then forward
    ==============  =========================================================================

    Why a model without temporal interaction stays at chance (``1 / num_classes``):

    * The *multiset* of frames of a clip does not depend on the label - every label shows the same
      base frames, only in another order. A model that embeds each frame on its own and pools the
      results symmetrically (space-only attention with a CLS average) sees the same input
      distribution for every label.
    * Each frame *position* ``t`` also has the same content distribution for every label: frame ``t``
      shows the shape at ``start + order[t] * velocity`` with ``start`` uniform over the pixels of a
      torus, so its position is uniform whatever ``order[t]`` is, and shape/colour/noise do not depend
      on the label. So even a per-frame classifier that knows ``t`` is at chance.

    The label is visible only in how positions change *between* frames - what temporal attention
    (divided, joint, axial, local/global) can compare. ``tests/test_data.py`` checks both properties.

    Samples come in groups of ``num_classes``: sample ``i`` shows base trajectory ``i // num_classes`` in
    order ``i % num_classes``, so the set is exactly balanced and every base is seen in every order. The
    trainer keeps a group in one batch (:attr:`group_size`): then everything that does not depend on
    the order cancels in the batch's gradient. That matters here: trained from scratch with the
    official initialisation (zero ``time_embed``, zero ``temporal_fc``), a TimeSformer starts exactly
    invariant to frame order, and with independent random clips per batch it was seen to stay at
    chance for 500-1200 steps in our CPU runs, while with grouped batches it left chance within a few
    hundred.

    Args:
        num_samples: dataset length; sample ``i`` is a pure function of ``(seed, i)``.
        num_frames, image_size, channels: clip shape ``(num_frames, channels, image_size, image_size)``.
        num_classes: 2 (forward/backward) or 4 (all orders above).
        speed: pixels per frame (a range ``(low, high)`` picks an integer per clip); default
            ``image_size // 16``. The whole motion must stay shorter than the image (no aliasing).
        shape_size: shape size in pixels (a range picks per clip); default ``image_size/2 .. 3/4``.
        noise: standard deviation of the Gaussian pixel noise.
        shapes, directions: what to draw from (fewer: an easier task; the label argument holds for any).
        cache: keep generated samples in memory (they are deterministic; saves time over epochs).
    """

    def __init__(self, num_samples: int = 1024, *, num_frames: int = 8, image_size: int = 32,
                 channels: int = 3, num_classes: int = 4, seed: int = 0,
                 speed: tuple[int, int] | int | None = None, shape_size: tuple[int, int] | int | None = None,
                 noise: float = 0.02, shapes: Sequence[str] = SHAPES,
                 directions: Sequence[str] = tuple(DIRECTIONS), cache: bool = False):
        if num_classes not in (2, 4):
            raise ValueError(f"MovingShapes supports num_classes 2 or 4, got {num_classes}")
        if num_frames < 3:
            raise ValueError(f"MovingShapes needs at least 3 frames to show an order, got {num_frames}")
        if num_samples < 1 or image_size < 8 or channels < 1:
            raise ValueError(f"bad MovingShapes size: num_samples={num_samples}, image_size={image_size}, "
                             f"channels={channels}")
        self.num_samples, self.num_frames, self.image_size = num_samples, num_frames, image_size
        self.channels, self.seed, self.noise = channels, seed, noise
        bad = [x for x in shapes if x not in SHAPES] + [x for x in directions if x not in DIRECTIONS]
        if bad or not shapes or not directions:
            raise ValueError(f"unknown or no shapes/directions {bad}; shapes from {SHAPES}, directions from "
                             f"{tuple(DIRECTIONS)}")
        self.shapes, self.directions = tuple(shapes), tuple(directions)
        if speed is None:  # about 1 pixel per frame per 16 pixels of image
            speed = max(1, image_size // 16)
        if shape_size is None:  # large shapes: their edges cross many patches, which eases learning
            shape_size = (image_size // 2, 3 * image_size // 4)
        self.speed = (speed, speed) if isinstance(speed, int) else tuple(speed)
        self.shape_size = (shape_size, shape_size) if isinstance(shape_size, int) else tuple(shape_size)
        if self.speed[1] * (num_frames - 1) >= image_size:
            raise ValueError(f"speed {self.speed[1]} x {num_frames - 1} frame steps wraps round the "
                             f"{image_size}-pixel image: the motion would alias")
        orders = _orders(num_frames)
        self.classes = list(orders)[:num_classes]
        self.orders = [orders[c] for c in self.classes]
        self._cache: Optional[dict] = {} if cache else None

    def __len__(self) -> int:
        return self.num_samples

    @property
    def group_size(self) -> int:
        """Consecutive samples that share one base trajectory (one per label): keep them in one batch."""
        return len(self.classes)

    def label(self, index: int) -> int:
        return index % len(self.classes)

    def base_clip(self, index: int) -> torch.Tensor:
        """The base trajectory of sample ``index`` (frames in motion order), before noise; samples
        ``k * num_classes ... k * num_classes + num_classes - 1`` share it."""
        g = _generator(self.seed, index // len(self.classes), 2)
        h = self.image_size
        kind = self.shapes[_randint(g, 0, len(self.shapes))]
        size = _randint(g, self.shape_size[0], self.shape_size[1] + 1)
        speed = _randint(g, self.speed[0], self.speed[1] + 1)
        direction = DIRECTIONS[self.directions[_randint(g, 0, len(self.directions))]]
        y0, x0 = _randint(g, 0, h), _randint(g, 0, h)
        colour = 0.3 + 0.7 * torch.rand(self.channels, generator=g)
        t = torch.arange(self.num_frames, dtype=torch.float32)
        cy = torch.remainder(y0 + direction[0] * speed * t, h)
        cx = torch.remainder(x0 + direction[1] * speed * t, h)
        mask = _shape_mask(kind, size, h, cy, cx, wrap=True)          # (f, H, W)
        return mask[:, None] * colour.view(1, -1, 1, 1)                # (f, c, H, W)

    def __getitem__(self, index: int):
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        label = self.label(index)
        clip = self.base_clip(index)[self.orders[label]]
        if self.noise > 0:
            g = _generator(self.seed, index, 3)
            clip = clip + self.noise * torch.randn(clip.shape, generator=g)
        if self._cache is not None:
            self._cache[index] = (clip, label)
        return clip, label


# ---------------------------------------------------------------------------------------------------
# Bouncing shapes: future-frame prediction
# ---------------------------------------------------------------------------------------------------
class BouncingShapes(Dataset):
    """Disks bouncing off the image walls; input ``num_frames`` frames, target the next ``num_target_frames``.

    Each sample draws ``num_shapes`` disks (radius, colour, position, velocity) from ``(seed, index)``
    and integrates constant-velocity motion with elastic reflection at the walls; frames are rendered
    with soft (anti-aliased) edges and summed, clamped to [0, 1]. Returns ``(video, target)`` shaped
    ``(f, c, H, W)`` and ``(K, c, H, W)``. Copying the last input frame is the natural baseline
    (:meth:`copy_last_mse`).
    """

    def __init__(self, num_samples: int = 1024, *, num_frames: int = 8, num_target_frames: int = 2,
                 image_size: int = 32, channels: int = 3, num_shapes: int = 2, seed: int = 0,
                 radius: tuple[float, float] = (2.5, 5.0), max_speed: float = 2.5, cache: bool = False):
        if num_frames < 1 or num_target_frames < 1 or num_samples < 1 or image_size < 8:
            raise ValueError(f"bad BouncingShapes size: num_samples={num_samples}, num_frames={num_frames}, "
                             f"num_target_frames={num_target_frames}, image_size={image_size}")
        self.num_samples, self.num_frames, self.num_target_frames = num_samples, num_frames, num_target_frames
        self.image_size, self.channels, self.num_shapes, self.seed = image_size, channels, num_shapes, seed
        self.radius, self.max_speed = radius, max_speed
        self._cache: Optional[dict] = {} if cache else None

    def __len__(self) -> int:
        return self.num_samples

    def _positions(self, g: torch.Generator, r: float, steps: int) -> torch.Tensor:
        lo, hi = r, self.image_size - 1 - r
        p = lo + (hi - lo) * torch.rand(2, generator=g)
        angle = 2 * math.pi * _rand(g)
        speed = self.max_speed * (0.4 + 0.6 * _rand(g))
        v = torch.tensor([math.sin(angle), math.cos(angle)]) * speed
        out = []
        for _ in range(steps):
            out.append(p.clone())
            p = p + v
            for a in range(2):  # reflect at the walls
                if p[a] < lo:
                    p[a], v[a] = 2 * lo - p[a], -v[a]
                elif p[a] > hi:
                    p[a], v[a] = 2 * hi - p[a], -v[a]
        return torch.stack(out)  # (steps, 2)

    def __getitem__(self, index: int):
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        g = _generator(self.seed, index, 4)
        steps = self.num_frames + self.num_target_frames
        h = self.image_size
        coords = torch.arange(h, dtype=torch.float32)
        video = torch.zeros(steps, self.channels, h, h)
        for _ in range(self.num_shapes):
            r = self.radius[0] + (self.radius[1] - self.radius[0]) * _rand(g)
            colour = 0.4 + 0.6 * torch.rand(self.channels, generator=g)
            pos = self._positions(g, r, steps)
            dist = ((coords.view(1, -1, 1) - pos[:, 0].view(-1, 1, 1)) ** 2
                    + (coords.view(1, 1, -1) - pos[:, 1].view(-1, 1, 1)) ** 2).sqrt()
            soft = (r + 0.5 - dist).clamp(0, 1)                     # (steps, H, W), 1 inside, 0 outside
            video = video + soft[:, None] * colour.view(1, -1, 1, 1)
        video = video.clamp(0, 1)
        out = video[: self.num_frames], video[self.num_frames:]
        if self._cache is not None:
            self._cache[index] = out
        return out

    def copy_last_mse(self, indices: Optional[Sequence[int]] = None) -> float:
        """Mean squared error of predicting every target frame as a copy of the last input frame."""
        indices = range(len(self)) if indices is None else indices
        total, n = 0.0, 0
        for i in indices:
            x, y = self[i]
            total += float(((y - x[-1:]) ** 2).mean())
            n += 1
        return total / max(n, 1)


# ---------------------------------------------------------------------------------------------------
# Real video: class-per-folder, decoded with PyAV
# ---------------------------------------------------------------------------------------------------
VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v")
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)


def _import_av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - av is in the `video` extra
        raise ImportError("decoding video files needs PyAV: pip install 'fast_timesformer[video]'") from e
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


def read_video(path: str, num_frames: int, mode: str = "uniform", *,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Decode ``num_frames`` sampled frames of a video file: uint8 tensor (f, 3, H, W), RGB."""
    av = _import_av()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such video file: {path}")
    try:
        container = av.open(path)
    except Exception as e:  # av.error.InvalidDataError and friends
        raise ValueError(f"cannot open {path} as a video: {e}") from None
    with container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        frames = [frame for frame in container.decode(stream)]  # decoded, converted below only if used
    if not frames:
        raise ValueError(f"{path}: no frame could be decoded")
    idx = sample_frame_indices(len(frames), num_frames, mode, generator=generator)
    arrays = {i: torch.from_numpy(frames[i].to_ndarray(format="rgb24")) for i in set(idx)}
    return torch.stack([arrays[i] for i in idx]).permute(0, 3, 1, 2).contiguous()  # (f, 3, H, W)


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


class VideoFolder(Dataset):
    """``root/<class name>/<video file>``: one class per sub-folder (UCF101 layout).

    Classes are the sub-folder names in sorted order; files with an extension in
    :data:`VIDEO_EXTENSIONS` are listed recursively under each. Returns ``(clip, label)`` with
    ``clip`` float (num_frames, 3, image_size, image_size), normalised.

    Random sampling/cropping draws from ``(seed, epoch, index)`` (call :meth:`set_epoch`), never from the
    global RNG, so every run, resumed or multi-process, sees the same clips.
    """

    def __init__(self, root: str, transform: Optional[ClipTransform] = None, *, seed: int = 0,
                 classes: Optional[Sequence[str]] = None):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"video folder {root!r} does not exist")
        found = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
        if classes is None:
            classes = found
        else:
            missing = sorted(set(found) - set(classes))
            if missing:
                raise ValueError(f"folders {missing} under {root} are not among the given classes")
        if not classes:
            raise ValueError(f"{root} has no class sub-folders (expected root/<class>/<video>)")
        self.root, self.classes = root, list(classes)
        self.transform = transform or ClipTransform()
        self.seed, self.epoch = seed, 0
        self.samples: list[tuple[str, int]] = []
        for label, name in enumerate(self.classes):
            folder = os.path.join(root, name)
            if not os.path.isdir(folder):
                continue
            for dirpath, _, files in sorted(os.walk(folder)):
                for f in sorted(files):
                    if f.lower().endswith(VIDEO_EXTENSIONS):
                        self.samples.append((os.path.join(dirpath, f), label))
        if not self.samples:
            raise ValueError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) under {root}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        g = _generator(self.seed, self.epoch, index, 5)
        raw = read_video(path, self.transform.num_frames, self.transform.sampling, generator=g)
        return preprocess_clip(raw, self.transform, generator=g), label


# ---------------------------------------------------------------------------------------------------
def build_dataset(name: str, split: str, *, num_samples: int, num_frames: int, image_size: int,
                  seed: int = 0, num_classes: int = 4, num_target_frames: int = 2, channels: int = 3,
                  classes: Optional[Sequence[str]] = None, cache: bool = True):
    """``moving-shapes`` | ``bouncing`` | a folder path (with ``train``/``val`` sub-folders, or classes
    directly, in which case the same folder serves both splits). ``split`` is "train" or "eval"; the
    synthetic eval split uses another seed; ``classes`` fixes a folder dataset's class list (the
    training split's, for evaluation)."""
    split_seed = seed if split == "train" else seed + 7919
    if name in ("moving-shapes", "moving_shapes"):
        return MovingShapes(num_samples, num_frames=num_frames, image_size=image_size, channels=channels,
                            num_classes=num_classes, seed=split_seed, cache=cache)
    if name == "bouncing":
        return BouncingShapes(num_samples, num_frames=num_frames, num_target_frames=num_target_frames,
                              image_size=image_size, channels=channels, seed=split_seed, cache=cache)
    if os.path.isdir(name):
        sub = {"train": ("train",), "eval": ("val", "validation", "test")}[split]
        root = next((os.path.join(name, s) for s in sub if os.path.isdir(os.path.join(name, s))), name)
        train = split == "train"
        t = ClipTransform(num_frames=num_frames, image_size=image_size,
                          sampling="random" if train else "uniform", crop="random" if train else "center")
        return VideoFolder(root, t, seed=seed, classes=classes)
    raise ValueError(f"unknown dataset {name!r}: use 'moving-shapes', 'bouncing' or an existing folder path")
