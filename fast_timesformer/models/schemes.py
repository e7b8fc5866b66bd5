"""The five space-time attention schemes of TimeSformer, as lists of attention steps over :class:`TokenGroups`.

A scheme says *which tokens meet*; a backend says *how* attention is computed. Every scheme is a
sequence of attention steps inside one block; each step splits the ``f * n`` patch tokens of a clip
(frame-major, ``index = t * n + y * gw + x`` on a ``gh x gw`` patch grid) into groups and attends within
each group. The CLS token's role per step is the model's ``cls_mode`` (see :mod:`.timesformer`).

========================= ===== ============================================= ==============================
scheme                    short steps (in order) and their groups              modules per block
========================= ===== ============================================= ==============================
``space_only``            S     space: the n patches of one frame             norm1, attn
``joint_space_time``      ST    joint: all f*n patches                        norm1, attn
``divided_space_time``    T+S   time: one patch position over the f frames;   temporal_norm1, temporal_attn,
                                space: the n patches of one frame             temporal_fc; norm1, attn
``sparse_local_global``   L+G   local: windows of f x gh/2 x gw/2 patches     local_norm1, local_attn,
                                (4 windows); global: stride 2 along t, h, w   local_fc; norm1, attn
                                (8 phase groups of f/2 x gh/2 x gw/2)
``axial``                 T+W+H time; width: one row of one frame;            temporal_norm1, temporal_attn,
                                height: one column of one frame               temporal_fc; width_norm1,
                                                                              width_attn, width_fc; norm1, attn
========================= ===== ============================================= ==============================

The last step of every scheme uses the official names ``norm1``/``attn``; earlier steps use
``<prefix>_norm1``, ``<prefix>_attn`` and a zero-initialised ``<prefix>_fc`` (the official
``temporal_fc``), so that each extra step starts as a no-op and a ViT's weights fit ``attn``.

Uneven sizes for ``sparse_local_global``: every axis that is split in two (t, h, w for the global
step; h and w for the local windows) must be even or 1 (an axis of size 1 is not split). Odd sizes
raise ``ValueError``: padding would add tokens that every query attends to, which changes the model.
"""
from __future__ import annotations

from .._names import unknown_name_error
from dataclasses import dataclass
from typing import Callable

from ..groups import TokenGroups

__all__ = ["Scheme", "Step", "get_scheme", "list_schemes", "register_scheme", "SCHEMES"]


@dataclass(frozen=True)
class Step:
    """One attention step: its name (``layer.step``, the key of a backend mapping) and module prefix."""

    name: str  # "time", "space", "joint", "local", "global", "width", "height"
    prefix: str  # "" for the last step (norm1/attn), else e.g. "temporal" -> temporal_norm1/_attn/_fc


def _fits_any_size(f: int, gh: int, gw: int) -> list:
    """The default ``Scheme.why_not``: no reasons. A module-level function (not a lambda) so that a model
    holding its scheme can be pickled (``torch.save(model)``, ``copy.deepcopy``)."""
    return []


@dataclass(frozen=True)
class Scheme:
    """A space-time attention scheme.

    ``groups(f, gh, gw)`` returns one :class:`TokenGroups` per step, in step order; ``why_not(f, gh, gw)``
    returns the reasons (in words) why the scheme cannot split that clip ([] = it can).
    ``frame_independent``: the official ``space_only`` runs each frame as its own sequence with its own
    CLS copy through all blocks. ``time_embed``: whether the official model has a ``time_embed``.
    """

    name: str
    short: str
    steps: tuple  # of Step, in the order they run inside a block
    groups: Callable[[int, int, int], tuple]
    why_not: Callable[[int, int, int], list] = _fits_any_size
    frame_independent: bool = False
    time_embed: bool = True
    description: str = ""

    @property
    def step_names(self) -> tuple:
        return tuple(s.name for s in self.steps)

    def check(self, f: int, gh: int, gw: int, what: str = "the input") -> None:
        reasons = self.why_not(f, gh, gw)
        if reasons:
            raise ValueError(f"scheme {self.name!r} cannot split {what} ({f} frames, {gh}x{gw} patch grid): "
                             + "; ".join(reasons))

    def token_groups(self, f: int, gh: int, gw: int) -> tuple:
        """The groups of each step for a clip of ``f`` frames on a ``gh x gw`` patch grid."""
        self.check(f, gh, gw)
        return tuple(self.groups(f, gh, gw))


# ---- group builders -----------------------------------------------------------------------------
def _space_groups(f, gh, gw):
    return (TokenGroups.space(f, gh * gw),)


def _joint_groups(f, gh, gw):
    return (TokenGroups.joint(f, gh * gw),)


def _divided_groups(f, gh, gw):
    n = gh * gw
    return TokenGroups.time(f, n), TokenGroups.space(f, n)


def width_groups(f: int, gh: int, gw: int) -> TokenGroups:
    """Attention along width: the gw patches of one row of one frame."""
    n = gh * gw
    return TokenGroups(group=((f, n), (gh, gw)), seq=((gw, 1),), kind="width")


def height_groups(f: int, gh: int, gw: int) -> TokenGroups:
    """Attention along height: the gh patches of one column of one frame."""
    n = gh * gw
    return TokenGroups(group=((f, n), (gw, 1)), seq=((gh, gw),), kind="height")


def _axial_groups(f, gh, gw):
    return TokenGroups.time(f, gh * gw), width_groups(f, gh, gw), height_groups(f, gh, gw)


def _halves(size: int, stride: int):
    """An axis of ``size`` tokens at ``stride`` cut into 2 contiguous halves: (outer, inner) axes."""
    if size == 1:
        return (1, stride), (1, stride)
    return (2, (size // 2) * stride), (size // 2, stride)


def _phases(size: int, stride: int):
    """An axis cut by a stride of 2: (phase axis of size 2, axis of the size//2 positions of one phase)."""
    if size == 1:
        return (1, stride), (1, stride)
    return (2, stride), (size // 2, 2 * stride)


def local_groups(f: int, gh: int, gw: int) -> TokenGroups:
    """L of L+G: 4 windows of f x gh/2 x gw/2 neighbouring patches (all frames, one quarter of the grid)."""
    n = gh * gw
    yo, yi = _halves(gh, gw)
    xo, xi = _halves(gw, 1)
    return TokenGroups(group=(yo, xo), seq=((f, n), yi, xi), kind="local")


def global_groups(f: int, gh: int, gw: int) -> TokenGroups:
    """G of L+G: the clip sampled with stride 2 along t, h and w; 8 phase groups of f/2 x gh/2 x gw/2."""
    n = gh * gw
    tp, ti = _phases(f, n)
    yp, yi = _phases(gh, gw)
    xp, xi = _phases(gw, 1)
    return TokenGroups(group=(tp, yp, xp), seq=(ti, yi, xi), kind="global")


def _local_global_groups(f, gh, gw):
    return local_groups(f, gh, gw), global_groups(f, gh, gw)


def _local_global_why_not(f, gh, gw):
    out = []
    for name, size in (("frames", f), ("patch rows (h / patch)", gh), ("patch columns (w / patch)", gw)):
        if size > 1 and size % 2:
            out.append(f"{name} = {size} is odd; sparse_local_global halves it (use an even size or 1)")
    return out


# ---- the registry -------------------------------------------------------------------------------
SCHEMES: dict[str, Scheme] = {}


def register_scheme(scheme: Scheme, *, overwrite: bool = False) -> Scheme:
    """Add a scheme; the model, the tests and the benchmarks pick it up from here."""
    if scheme.name in SCHEMES and not overwrite:
        raise ValueError(f"a scheme named {scheme.name!r} is already registered")
    names = scheme.step_names
    if len(set(names)) != len(names) or not names or scheme.steps[-1].prefix != "":
        raise ValueError(f"scheme {scheme.name!r}: step names must be unique and the last step must use "
                         "prefix '' (the official norm1/attn)")
    SCHEMES[scheme.name] = scheme
    return scheme


def get_scheme(name) -> Scheme:
    """The scheme named ``name`` (a :class:`Scheme` passes through); unknown names raise ``ValueError``."""
    if isinstance(name, Scheme):
        return name
    if not isinstance(name, str):
        raise TypeError(f"scheme must be a name (str), got {type(name).__name__}")
    try:
        return SCHEMES[name]
    except KeyError:
        raise unknown_name_error("scheme", name, SCHEMES) from None


def list_schemes() -> list:
    return list(SCHEMES)


register_scheme(Scheme(
    "divided_space_time", "T+S", (Step("time", "temporal"), Step("space", "")), _divided_groups,
    description="time attention (CLS left out), then space attention per frame"))
register_scheme(Scheme(
    "space_only", "S", (Step("space", ""),), _space_groups, frame_independent=True, time_embed=False,
    description="each frame on its own (ViT per frame), CLS averaged over frames at the end"))
register_scheme(Scheme(
    "joint_space_time", "ST", (Step("joint", ""),), _joint_groups,
    description="one attention over all patches of the clip"))
register_scheme(Scheme(
    "sparse_local_global", "L+G", (Step("local", "local"), Step("global", "")), _local_global_groups,
    why_not=_local_global_why_not,
    description="local windows of F x H/2 x W/2, then sparse global attention with stride 2 along t, h, w"))
register_scheme(Scheme(
    "axial", "T+W+H", (Step("time", "temporal"), Step("width", "width"), Step("height", "")), _axial_groups,
    description="attention along time, then width, then height"))
