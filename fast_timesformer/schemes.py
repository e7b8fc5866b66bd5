"""The scheme registry: which tokens meet, as data (the five TimeSformer schemes and any you register).

A scheme says *which tokens meet*; a backend says *how* attention is computed. Every scheme is a
sequence of attention steps inside one block; each step splits the ``f * n`` patch tokens of a clip
(frame-major, ``index = t * n + y * gw + x`` on a ``gh x gw`` patch grid) into groups and attends within
each group. The CLS token's role per step is the model's ``cls_mode`` (see :mod:`.models.timesformer`).

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

A step may also define which tokens meet by a mask (a predicate over the query's and the key's frame, row
and column, :class:`~fast_timesformer.groups.TokenMask`) on top of its groups: ``neighborhood``
(:mod:`fast_timesformer.neighborhood`) is joint groups with a 3-D window mask. Such steps run on the
backends that declare ``supports_mask`` (regular, flex); the others refuse with a reason. A scheme may
take options (``Scheme.options``, defaults; ``scheme.with_options(window=(1, 3, 3))``): they reach its
group builders and ``why_not`` as keyword arguments.

Adding a scheme is one registration; models, training, ``fast-timesformer models``, the tests and the
benchmarks read it from here::

    from fast_timesformer import Scheme, Step, register_scheme
    from fast_timesformer.schemes import joint_groups, time_groups

    register_scheme(Scheme("time_then_joint", "T+ST", (Step("time", "temporal", time_groups),
                                                       Step("joint", "", joint_groups))))
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, NamedTuple, Optional, Union

from ._names import lookup, unknown_name_error
from .groups import TokenGroups

__all__ = ["Scheme", "Step", "StepModules", "get_scheme", "list_schemes", "register_scheme", "unregister_scheme",
           "scheme_color", "step_groups", "SCHEMES", "PALETTE", "width_groups", "height_groups", "local_groups",
           "global_groups", "time_groups", "space_groups", "joint_groups"]


class StepModules(NamedTuple):
    """The modules one attention step adds to a block, by attribute name. ``fc`` is None for a step whose
    output is added to the residual directly (the official last step, ``norm1``/``attn``)."""

    norm: str
    attn: str
    fc: Optional[str] = None


def _modules_for_prefix(prefix: str) -> StepModules:
    if not prefix:
        return StepModules("norm1", "attn", None)
    return StepModules(f"{prefix}_norm1", f"{prefix}_attn", f"{prefix}_fc")


@dataclass(frozen=True)
class Step:
    """One attention step of a block.

    ``name``: the step's name (``layer.step``, the key of a backend mapping: "time", "space", ...).
    ``prefix``: the official module naming: ``""`` gives ``norm1``/``attn`` (the last step of every built-in
    scheme), ``"temporal"`` gives ``temporal_norm1``/``temporal_attn``/``temporal_fc`` (zero-initialised).
    ``groups(f, gh, gw) -> TokenGroups``: which tokens meet in this step, for ``f`` frames on a
    ``gh x gw`` patch grid (optional when the :class:`Scheme` gives a builder for all its steps).
    ``modules``: the block attributes the step adds, :class:`StepModules` (default: from ``prefix``).
    """

    name: str
    prefix: str = ""
    groups: Optional[Callable[[int, int, int], TokenGroups]] = None
    modules: Optional[StepModules] = None

    def __post_init__(self):
        mods = _modules_for_prefix(self.prefix) if self.modules is None else StepModules(*self.modules)
        object.__setattr__(self, "modules", mods)


def _frozen(value):
    """Option values hashable and comparable (lists from JSON or a command line become tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def _fits_any_size(f: int, gh: int, gw: int) -> list:
    """The default ``Scheme.why_not``: no reasons. A module-level function (not a lambda) so that a model
    holding its scheme can be pickled (``torch.save(model)``, ``copy.deepcopy``)."""
    return []


def _grid(grid, gw=None) -> tuple:
    """(gh, gw) from ``grid`` = an int (square), a pair, or (gh, gw) given as two arguments."""
    if gw is not None:
        return int(grid), int(gw)
    if isinstance(grid, (tuple, list)):
        gh, gw = grid
        return int(gh), int(gw)
    return int(grid), int(grid)


@dataclass(frozen=True)
class Scheme:
    """A space-time attention scheme, as data.

    ``steps``: the :class:`Step` s, in the order they run inside a block; each says its groups and the
    modules it adds. ``groups(f, gh, gw)``: optionally one builder returning every step's
    :class:`TokenGroups` at once (the built-in schemes' form); otherwise each step's own ``groups``.
    ``why_not(f, gh, gw)``: the reasons (in words) why the scheme cannot split that clip ([] = it can).
    ``short``: the label in tables and plots. ``frame_independent``: the official ``space_only`` runs each
    frame as its own sequence with its own CLS copy through all blocks. ``time_embed``: whether the model
    has a ``time_embed``. The plot colour comes from :data:`PALETTE` by registration order
    (:func:`scheme_color`). ``options``: ``((name, value), ...)``, the scheme's options with their values
    (the registered scheme holds the defaults; :meth:`with_options` makes a configured copy); when there
    are any, the group builders and ``why_not`` get them as keyword arguments.
    """

    name: str
    short: str
    steps: tuple  # of Step, in the order they run inside a block
    groups: Optional[Callable[[int, int, int], tuple]] = None
    why_not: Callable[[int, int, int], list] = _fits_any_size
    frame_independent: bool = False
    time_embed: bool = True
    description: str = ""
    options: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "steps", tuple(self.steps))
        opts = self.options.items() if isinstance(self.options, dict) else self.options
        object.__setattr__(self, "options", tuple((str(k), _frozen(v)) for k, v in opts))
        if self.groups is None:
            missing = [s.name for s in self.steps if s.groups is None]
            if missing:
                raise ValueError(f"scheme {self.name!r}: step(s) {missing} have no groups builder (give "
                                 "Step(..., groups=fn) or Scheme(..., groups=fn) for all steps)")

    @property
    def step_names(self) -> tuple:
        return tuple(s.name for s in self.steps)

    @property
    def color(self) -> str:
        return scheme_color(self.name)

    @property
    def option_values(self) -> dict:
        """The options as a dict (empty for a scheme without options)."""
        return dict(self.options)

    def with_options(self, **options) -> "Scheme":
        """A copy configured with ``options`` (the others keep their defaults); unknown names raise
        ``ValueError`` listing the scheme's options."""
        if not options:
            return self
        known = self.option_values
        for name in options:
            if name not in known:
                if not known:
                    raise ValueError(f"scheme {self.name!r} takes no options, got {sorted(options)}")
                raise unknown_name_error(f"{self.name} scheme option", name, known)
        return replace(self, options=tuple({**known, **options}.items()))  # values: checked by why_not

    def _why_not(self, f, gh, gw) -> list:
        return list(self.why_not(f, gh, gw, **self.option_values) if self.options else self.why_not(f, gh, gw))

    def reasons(self, frames: int, grid, gw: Optional[int] = None) -> list:
        """``why_not`` for ``frames`` frames on a patch grid given as an int (square) or (gh, gw)."""
        gh, gw = _grid(grid, gw)
        return self._why_not(frames, gh, gw)

    def check(self, f: int, gh: int, gw: int, what: str = "the input") -> None:
        reasons = self._why_not(f, gh, gw)
        if reasons:
            raise ValueError(f"scheme {self.name!r} cannot split {what} ({f} frames, {gh}x{gw} patch grid): "
                             + "; ".join(reasons))

    def token_groups(self, f: int, gh: int, gw: int) -> tuple:
        """The groups of each step for a clip of ``f`` frames on a ``gh x gw`` patch grid."""
        self.check(f, gh, gw)
        opts = self.option_values
        if self.groups is not None:
            return tuple(self.groups(f, gh, gw, **opts))
        return tuple(s.groups(f, gh, gw, **opts) for s in self.steps)

    def attention_pairs(self, frames: int, grid, gw: Optional[int] = None) -> list:
        """``[(step name, patch query-key pairs that meet)]`` for one block (the CLS not counted): the
        attention FLOPs of a step are ``4 * heads * dim_head * pairs`` (QK^T and PV, 2 per multiply-add),
        the cost a masked backend can skip down to (a dense mask computes every pair of each group)."""
        from .groups import SequenceMask

        out = []
        for name, g in self.step_groups(frames, grid, gw):
            pairs = SequenceMask(g).pairs() if g.mask is not None else g.num_groups * g.seq_len ** 2
            out.append((name, pairs))
        return out

    def step_groups(self, frames: int, grid, gw: Optional[int] = None) -> list:
        """``[(step name, TokenGroups)]`` for one block on ``frames`` frames and a patch grid (an int for a
        square grid, or (gh, gw)). Raises ``ValueError`` with :meth:`reasons` when the clip does not fit."""
        gh, gw = _grid(grid, gw)
        return list(zip(self.step_names, self.token_groups(frames, gh, gw)))


# ---- group builders -----------------------------------------------------------------------------
def time_groups(f: int, gh: int, gw: int) -> TokenGroups:
    """Attention along time: one patch position over the f frames."""
    return TokenGroups.time(f, gh * gw)


def space_groups(f: int, gh: int, gw: int) -> TokenGroups:
    """Attention along space: the n patches of one frame."""
    return TokenGroups.space(f, gh * gw)


def joint_groups(f: int, gh: int, gw: int) -> TokenGroups:
    """Joint attention: all f*n patches of the clip."""
    return TokenGroups.joint(f, gh * gw)


def width_groups(f: int, gh: int, gw: int) -> TokenGroups:
    """Attention along width: the gw patches of one row of one frame."""
    n = gh * gw
    return TokenGroups(group=((f, n), (gh, gw)), seq=((gw, 1),), kind="width")


def height_groups(f: int, gh: int, gw: int) -> TokenGroups:
    """Attention along height: the gh patches of one column of one frame."""
    n = gh * gw
    return TokenGroups(group=((f, n), (gw, 1)), seq=((gh, gw),), kind="height")


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


def _local_global_why_not(f, gh, gw):
    out = []
    for name, size in (("frames", f), ("patch rows (h / patch)", gh), ("patch columns (w / patch)", gw)):
        if size > 1 and size % 2:
            out.append(f"{name} = {size} is odd; sparse_local_global halves it (use an even size or 1)")
    return out


# ---- the registry -------------------------------------------------------------------------------
SCHEMES: dict[str, Scheme] = {}

#: plot colours, given to schemes by registration order (matplotlib's tab10, ordered so that the five
#: built-in schemes keep the colours the plots have always used)
PALETTE = ("#2ca02c", "#1f77b4", "#d62728", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
_ORDER: dict[str, int] = {}  # name -> registration index (kept when a scheme is unregistered)


def register_scheme(scheme: Scheme, *, overwrite: bool = False) -> Scheme:
    """Add a scheme; models, training, the command line, the tests and the benchmarks pick it up from here."""
    if not isinstance(scheme, Scheme):
        raise TypeError(f"register_scheme expects a Scheme, got {type(scheme).__name__}")
    if scheme.name in SCHEMES and not overwrite:
        raise ValueError(f"a scheme named {scheme.name!r} is already registered (pass overwrite=True to "
                         "replace it)")
    names = scheme.step_names
    if len(set(names)) != len(names) or not names or scheme.steps[-1].modules.fc is not None:
        raise ValueError(f"scheme {scheme.name!r}: step names must be unique and the last step must use "
                         "prefix '' (the official norm1/attn)")
    modules = [m for s in scheme.steps for m in s.modules if m]
    if len(set(modules)) != len(modules):
        raise ValueError(f"scheme {scheme.name!r}: two steps add modules of the same name ({modules})")
    SCHEMES[scheme.name] = scheme
    _ORDER.setdefault(scheme.name, len(_ORDER))
    return scheme


def unregister_scheme(name: str) -> None:
    get_scheme(name)
    del SCHEMES[name]


def get_scheme(name) -> Scheme:
    """The scheme named ``name`` (a :class:`Scheme` passes through); unknown names raise ``ValueError``."""
    return lookup(SCHEMES, name, "scheme", Scheme, what="scheme")


def list_schemes() -> list:
    """Names of the registered schemes, in registration order."""
    return list(SCHEMES)


def scheme_color(name) -> str:
    """The plot colour of a scheme: :data:`PALETTE` at its registration index (cycling)."""
    name = get_scheme(name).name
    return PALETTE[_ORDER.get(name, len(_ORDER)) % len(PALETTE)]


def step_groups(scheme: Union[str, Scheme], frames: int, grid) -> list:
    """``[(step name, TokenGroups)]`` of one block of ``scheme`` on ``frames`` frames and a patch grid
    (an int for a square grid, or (gh, gw)); raises ``ValueError`` with the scheme's reasons if it does
    not fit (``get_scheme(scheme).reasons(frames, grid)`` lists them without raising)."""
    return get_scheme(scheme).step_groups(frames, grid)


register_scheme(Scheme(
    "divided_space_time", "T+S", (Step("time", "temporal", time_groups), Step("space", "", space_groups)),
    description="time attention (CLS left out), then space attention per frame"))
register_scheme(Scheme(
    "space_only", "S", (Step("space", "", space_groups),), frame_independent=True, time_embed=False,
    description="each frame on its own (ViT per frame), CLS averaged over frames at the end"))
register_scheme(Scheme(
    "joint_space_time", "ST", (Step("joint", "", joint_groups),),
    description="one attention over all patches of the clip"))
register_scheme(Scheme(
    "sparse_local_global", "L+G", (Step("local", "local", local_groups), Step("global", "", global_groups)),
    why_not=_local_global_why_not,
    description="local windows of F x H/2 x W/2, then sparse global attention with stride 2 along t, h, w"))
register_scheme(Scheme(
    "axial", "T+W+H",
    (Step("time", "temporal", time_groups), Step("width", "width", width_groups), Step("height", "", height_groups)),
    description="attention along time, then width, then height"))
