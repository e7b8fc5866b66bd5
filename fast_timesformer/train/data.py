"""Datasets: two synthetic video tasks generated from a seed, and a class-per-folder video dataset.

Every dataset returns clips as float tensors shaped ``(frames, channels, height, width)`` - the layout
the models take once batched, ``(b, f, c, h, w)``.

* :class:`MovingShapes` - classification whose label is *only* in the temporal order of the frames.
* :class:`BouncingShapes` - future-frame prediction: ``f`` input frames, the next ``K`` frames as target.
* :class:`VideoFolder` - ``root/<class>/<video>.{mp4,avi,webm,...}`` (UCF101 layout), decoded with PyAV
  (:mod:`fast_timesformer.video`: reading, checking and preprocessing one file).
  Every file is checked when the folder is opened (:func:`check_video`): a folder with unreadable files
  raises one :class:`~fast_timesformer.errors.BadVideoError` naming all of them, or, with
  ``skip_bad=True``, leaves them out and lists them in ``skipped``. A folder without a ``val/`` split
  gets a seeded, class-stratified held-out split (:func:`build_train_eval`), never its own training clips
  as the evaluation set.

Randomness never comes from the global RNG: a sample is a pure function of ``(seed, index)`` (and of the
epoch for augmentation), so a resumed or multi-process run sees exactly the same data.
"""
from __future__ import annotations

import hashlib
import math
import os
from typing import Optional, Sequence

import torch
from torch.utils.data import Dataset

from ..errors import BadVideoError, DatasetLayoutError
from ..video import VIDEO_EXTENSIONS, ClipTransform, check_video, link_problem, preprocess_clip, read_video

__all__ = [
    "MovingShapes", "BouncingShapes", "VideoFolder", "build_dataset", "build_train_eval", "stratified_split",
    "DEFAULT_VAL_FRACTION", "check_entries", "list_videos",
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
# ---- what a folder (or a list of files) means -------------------------------------------------------
def list_videos(folder: str) -> list[str]:
    """Video files (by :data:`VIDEO_EXTENSIONS`) under ``folder``, sorted, at any depth.

    Links are followed once each: a folder link that leads back into a folder the walk is already inside
    raises :class:`~fast_timesformer.errors.DatasetLayoutError` naming it as a loop (so does any link that
    loops on itself); a broken link named like a video is listed, and :func:`check_video` names it."""
    out: list[str] = []

    def walk(d: str, inside: dict) -> None:
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            raise DatasetLayoutError(d, f"cannot be listed ({e.strerror or e})") from None
        for e in entries:
            problem = link_problem(e.path)
            if problem is not None and "loop" in problem:
                raise DatasetLayoutError(e.path, problem)
            if problem is None and e.is_dir():  # follows a link to a folder
                real = os.path.realpath(e.path)
                if real in inside:
                    raise DatasetLayoutError(e.path, f"is a link loop: it leads back to {inside[real]}, which "
                                                     "holds it")
                walk(e.path, {**inside, real: e.path})
            elif e.name.lower().endswith(VIDEO_EXTENSIONS):
                out.append(e.path)

    walk(folder, {os.path.realpath(folder): folder})
    return out


def check_entries(entries: Sequence[tuple[str, int, str]], classes: Sequence[str], *, where: str,
                  class_folders: Optional[Sequence[str]] = None, skipped: Sequence[tuple[str, int]] = ()) -> None:
    """Refuse a classification dataset that does not mean what it looks like, in one line
    (:class:`~fast_timesformer.errors.DatasetLayoutError`), before anything is decoded or trained:

    * fewer than two classes;
    * a class without a training video (``skipped``: the (path, label) pairs ``--skip-bad-videos`` left
      out, so the message can say a class was emptied by it);
    * a file listed twice, compared by real path (links resolved): under two labels, in both splits, or
      twice in one class (a held-out split could then put it on both sides).

    ``entries``: (path, label index into ``classes``, split) with split ``"train"`` or ``"eval"``; the
    class rule applies when there are training entries. ``where`` (the folder or list file) and
    ``class_folders`` (one folder per class, if the classes are folders) name the place at fault. The one
    check for a video folder (:class:`VideoFolder`, :func:`build_train_eval`) and any list of files."""
    if len(classes) < 2:
        only = f" ({classes[0]!r})" if classes else ""
        raise DatasetLayoutError(where, f"has {len(classes)} class{'' if len(classes) == 1 else 'es'}{only}; "
                                        "classification needs at least two")
    if any(split == "train" for _, _, split in entries):
        counts = [0] * len(classes)
        for _, label, split in entries:
            if split == "train":
                counts[label] += 1
        for label, n in enumerate(counts):
            if n == 0:
                place = class_folders[label] if class_folders else where
                left = sum(1 for _, lab in skipped if lab == label)
                why = (f" (--skip-bad-videos left out its {left} unreadable file{'s' if left > 1 else ''})"
                       if left else "")
                raise DatasetLayoutError(place, f"class {classes[label]!r} has no videos{why}; remove the class "
                                                "or add videos to it")
    seen: dict[str, tuple[str, int, str]] = {}
    for path, label, split in entries:
        real = os.path.realpath(path)
        if real in seen:
            other, olabel, osplit = seen[real]
            if olabel != label:
                how = f"under two labels ({classes[olabel]!r} and {classes[label]!r})"
            elif osplit != split:
                how = "in both the training and the evaluation split"
            else:
                how = f"twice in class {classes[label]!r}"
            same = "" if real in (path, other) else f" ({real})"
            raise DatasetLayoutError(where, f"{other} and {path} are the same file{same}: it is listed {how}; "
                                            "each file may appear once")
        seen[real] = (path, label, split)


class VideoFolder(Dataset):
    """``root/<class name>/<video file>``: one class per sub-folder (UCF101 layout).

    Classes are the sub-folder names in sorted order; files with an extension in
    :data:`VIDEO_EXTENSIONS` are listed recursively under each. Returns ``(clip, label)`` with
    ``clip`` float (num_frames, 3, image_size, image_size), normalised.

    The listing is checked first (:func:`check_entries`: at least two classes, none without videos, no file
    twice, links followed once, a link loop named as one), then, with ``check`` (default), every file with
    :func:`check_video`, before any training. Files that fail raise one
    :class:`~fast_timesformer.errors.BadVideoError` naming every one of them; with ``skip_bad=True`` they are
    left out instead and listed in :attr:`skipped` as (path, problem) pairs. ``split`` (``"train"`` or
    ``"eval"``) tags the files for :func:`check_entries`: a class may have no evaluation videos.
    ``samples``: use this list of (path, label) pairs instead of listing the folder (no check).

    Random sampling/cropping draws from ``(seed, epoch, index)`` (call :meth:`set_epoch`), never from the
    global RNG, so every run, resumed or multi-process, sees the same clips.
    """

    def __init__(self, root: str, transform: Optional[ClipTransform] = None, *, seed: int = 0,
                 classes: Optional[Sequence[str]] = None, samples: Optional[Sequence[tuple[str, int]]] = None,
                 check: bool = True, skip_bad: bool = False, split: str = "train"):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"video folder {root!r} does not exist")
        found = []
        for d in sorted(os.scandir(root), key=lambda e: e.name):
            if d.name.startswith("."):
                continue
            problem = link_problem(d.path)
            if problem is not None and "loop" in problem:
                raise DatasetLayoutError(d.path, problem)
            if problem is None and d.is_dir():
                found.append(d.name)
        if classes is None:
            classes = found
        elif samples is None:
            missing = sorted(set(found) - set(classes))
            if missing:
                raise ValueError(f"folders {missing} under {root} are not among the given classes")
        if not classes:
            raise ValueError(f"{root} has no class sub-folders (expected root/<class>/<video>)")
        self.root, self.classes = root, list(classes)
        self.transform = transform or ClipTransform()
        self.seed, self.epoch = seed, 0
        self.skipped: list[tuple[str, str]] = []
        self.split = split
        if samples is not None:
            self.samples = [(str(p), int(label)) for p, label in samples]
            return
        self.samples = []
        for label, name in enumerate(self.classes):
            folder = os.path.join(root, name)
            if os.path.isdir(folder):
                self.samples += [(path, label) for path in list_videos(folder)]
        if not self.samples:
            raise ValueError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) under {root}")
        self.check_layout()
        if check:
            self.check_files(skip_bad)

    def check_layout(self, skipped: Sequence[tuple[str, int]] = ()) -> None:
        """:func:`check_entries` on this folder's files (every one in :attr:`split`)."""
        folders = [os.path.join(self.root, c) for c in self.classes]
        check_entries([(p, label, self.split) for p, label in self.samples], self.classes, where=self.root,
                      class_folders=folders if all(map(os.path.isdir, folders)) else None, skipped=skipped)

    def check_files(self, skip_bad: bool = False) -> None:
        """:func:`check_video` on every file: unreadable ones raise one :class:`BadVideoError` naming them all,
        or, with ``skip_bad``, are left out and listed in :attr:`skipped` (then a class left without videos
        is refused as :meth:`check_layout` refuses one)."""
        problems = [(path, why) for path, _ in self.samples if (why := check_video(path)) is not None]
        if problems and not skip_bad:
            raise BadVideoError(problems)
        bad = {path for path, _ in problems}
        self.skipped = problems
        left_out = [(p, label) for p, label in self.samples if p in bad]
        self.samples = [(p, label) for p, label in self.samples if p not in bad]
        if not self.samples:
            raise BadVideoError(problems)  # nothing left to train on
        if left_out:
            self.check_layout(skipped=left_out)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def digest(self) -> str:
        """A short fingerprint of the file list (paths relative to the root, labels): a resumed run
        compares it to see whether it trains on the same files."""
        h = hashlib.sha1()
        for path, label in self.samples:
            h.update(f"{os.path.relpath(path, self.root)}\t{label}\n".encode())
        return h.hexdigest()[:16]

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        g = _generator(self.seed, self.epoch, index, 5)
        raw = read_video(path, self.transform.num_frames, self.transform.sampling, generator=g)
        return preprocess_clip(raw, self.transform, generator=g), label


# ---------------------------------------------------------------------------------------------------
DEFAULT_VAL_FRACTION = 0.1
_EVAL_FOLDERS = ("val", "validation", "test")


def stratified_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices): ``round(fraction * n)`` of each class's ``n`` samples held out,
    drawn from ``(seed, class)``; at least one where ``fraction > 0`` and the class has two or more, and
    never all of a class (a class with one sample stays in training)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"the held-out fraction must be in [0, 1), got {fraction}")
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(i)
    held: list[int] = []
    for label, idx in sorted(by_class.items()):
        n = len(idx)
        k = int(round(fraction * n))
        if fraction > 0 and n >= 2:
            k = max(k, 1)
        k = min(k, n - 1)
        perm = torch.randperm(n, generator=_generator(seed, label, 6)).tolist()
        held += [idx[j] for j in perm[:k]]
    held_set = set(held)
    return [i for i in range(len(labels)) if i not in held_set], sorted(held)


def _folder_transforms(num_frames: int, image_size: int) -> tuple[ClipTransform, ClipTransform]:
    train = ClipTransform(num_frames=num_frames, image_size=image_size, sampling="random", crop="random")
    return train, ClipTransform(num_frames=num_frames, image_size=image_size, sampling="uniform", crop="center")


def build_train_eval(name: str, *, train_samples: int = 1024, eval_samples: int = 256, num_frames: int = 8,
                     image_size: int = 32, seed: int = 0, num_classes: int = 4, num_target_frames: int = 2,
                     channels: int = 3, val_fraction: Optional[float] = None, skip_bad: bool = False,
                     cache: bool = True):
    """(training set, evaluation set or ``None``, description of the split) for a dataset name.

    Synthetic sets draw their evaluation samples from another seed. A folder with a ``val/`` (or
    ``validation/``, ``test/``) sub-folder evaluates on it. A folder without one is split: a seeded,
    class-stratified ``val_fraction`` (default :data:`DEFAULT_VAL_FRACTION`) of its files is held out for
    evaluation and never trained on; ``val_fraction=0`` means no evaluation set (``None``). Folder files
    are checked first (see :class:`VideoFolder`; ``skip_bad``)."""
    if name in ("moving-shapes", "moving_shapes", "bouncing"):
        if val_fraction is not None:
            raise ValueError(f"--val-fraction splits a video folder without a val/ folder; {name} has its own "
                             "evaluation set (--eval-samples)")
        kw = dict(num_frames=num_frames, image_size=image_size, seed=seed, num_classes=num_classes,
                  num_target_frames=num_target_frames, channels=channels, cache=cache)
        train = build_dataset(name, "train", num_samples=train_samples, **kw)
        return train, build_dataset(name, "eval", num_samples=eval_samples, **kw), {
            "eval": "separate synthetic samples", "eval_samples": eval_samples}
    if not os.path.isdir(name):
        raise ValueError(f"unknown dataset {name!r}: use 'moving-shapes', 'bouncing' or an existing folder path")
    t_train, t_eval = _folder_transforms(num_frames, image_size)
    root = os.path.join(name, "train") if os.path.isdir(os.path.join(name, "train")) else name
    val_root = next((os.path.join(name, s) for s in _EVAL_FOLDERS if os.path.isdir(os.path.join(name, s))), None)
    if val_root is not None:
        if val_fraction is not None:
            raise ValueError(f"{name} has a {os.path.basename(val_root)}/ folder, which is the evaluation set; "
                             "--val-fraction splits a folder without one")
        train = VideoFolder(root, t_train, seed=seed, check=False)
        evalset = VideoFolder(val_root, t_eval, seed=seed, classes=train.classes, check=False, split="eval")
        check_entries([(p, label, "train") for p, label in train.samples]
                      + [(p, label, "eval") for p, label in evalset.samples], train.classes, where=name)
        train.check_files(skip_bad)
        evalset.check_files(skip_bad)
        return train, evalset, {"eval": "folder", "eval_root": val_root, "train_files": len(train),
                                "eval_files": len(evalset), "skipped": train.skipped + evalset.skipped}
    fraction = DEFAULT_VAL_FRACTION if val_fraction is None else float(val_fraction)
    whole = VideoFolder(root, t_train, seed=seed, skip_bad=skip_bad)
    train_idx, held_idx = stratified_split([label for _, label in whole.samples], fraction, seed)
    info = {"eval": "held-out" if held_idx else "none", "val_fraction": fraction, "split_seed": seed,
            "train_files": len(train_idx), "eval_files": len(held_idx), "skipped": whole.skipped}
    train = VideoFolder(root, t_train, seed=seed, classes=whole.classes,
                        samples=[whole.samples[i] for i in train_idx])
    train.skipped = whole.skipped
    evalset = None
    if held_idx:
        evalset = VideoFolder(root, t_eval, seed=seed, classes=whole.classes,
                              samples=[whole.samples[i] for i in held_idx])
    return train, evalset, info


def build_dataset(name: str, split: str, *, num_samples: int, num_frames: int, image_size: int,
                  seed: int = 0, num_classes: int = 4, num_target_frames: int = 2, channels: int = 3,
                  classes: Optional[Sequence[str]] = None, cache: bool = True,
                  val_fraction: Optional[float] = None, skip_bad: bool = False):
    """``moving-shapes`` | ``bouncing`` | a folder path. ``split`` is "train" or "eval"; the synthetic eval
    split uses another seed. A folder evaluates on its ``val/`` sub-folder, or, without one, on the held-out
    part of :func:`build_train_eval`'s split (the training split is then the rest; the folder's files are
    checked and split on each call). ``classes`` fixes the class list of a ``val/`` folder."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    split_seed = seed if split == "train" else seed + 7919
    if name in ("moving-shapes", "moving_shapes"):
        return MovingShapes(num_samples, num_frames=num_frames, image_size=image_size, channels=channels,
                            num_classes=num_classes, seed=split_seed, cache=cache)
    if name == "bouncing":
        return BouncingShapes(num_samples, num_frames=num_frames, num_target_frames=num_target_frames,
                              image_size=image_size, channels=channels, seed=split_seed, cache=cache)
    if os.path.isdir(name):
        val_root = next((os.path.join(name, s) for s in _EVAL_FOLDERS if os.path.isdir(os.path.join(name, s))),
                        None)
        if val_root is not None and split == "eval":
            return VideoFolder(val_root, _folder_transforms(num_frames, image_size)[1], seed=seed,
                               classes=classes, skip_bad=skip_bad, split="eval")
        train, evalset, _ = build_train_eval(name, num_frames=num_frames, image_size=image_size, seed=seed,
                                             val_fraction=val_fraction, skip_bad=skip_bad)
        if split == "eval" and evalset is None:
            raise ValueError(f"{name} has no evaluation split: val_fraction is 0")
        return train if split == "train" else evalset
    raise ValueError(f"unknown dataset {name!r}: use 'moving-shapes', 'bouncing' or an existing folder path")
