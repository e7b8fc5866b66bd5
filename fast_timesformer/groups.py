"""Which patch tokens meet: attention groups described by strides over the token axis.

Patch tokens of a clip are stored frame-major, ``index = t * n + p`` (einops ``'b (f n) d'``), after an
optional CLS token. A :class:`TokenGroups` splits those ``M = f * n`` tokens into groups of equal length:
``group`` lists the axes (size, stride) that enumerate the groups, ``seq`` the axes inside one group. The
axes must together factorise the token index exactly (a mixed-radix decomposition), so every token is in
exactly one group and the split is a pure reshape/permute, never a gather.

Examples (f frames, n = h * w patches)::

    time(f, n)   group ((n, 1),)          seq ((f, n),)           # same patch in every frame
    space(f, n)  group ((f, n),)          seq ((n, 1),)           # all patches of one frame
    joint(f, n)  group ()                 seq ((f * n, 1),)       # every patch with every patch

A step may also restrict which tokens of a group meet by a :class:`TokenMask`, a predicate over the query's
and the key's (frame, row, col) (``TokenGroups(..., mask=...)``; the neighbourhood windows of
:mod:`fast_timesformer.neighborhood` are joint groups with a mask). A core receives it as a
:class:`SequenceMask`: the mask over its ``[prefix; group]`` sequences, the prefix (CLS) meeting everyone.
"""
from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass
from typing import Callable, Optional

import torch

__all__ = ["TokenGroups", "TokenMask", "SequenceMask"]

Axis = tuple  # (size, stride) in tokens


def _is_count(v) -> bool:
    """An integer (int, numpy or 0-d torch integer), not a bool."""
    if isinstance(v, bool):
        return False
    try:
        operator.index(v)
    except TypeError:
        return False
    return True


def _check_sizes(kind: str, f, n) -> None:
    for name, v in (("f", f), ("n", n)):
        if not _is_count(v) or v < 1:
            what = "frames" if name == "f" else "patches per frame"
            raise ValueError(f"TokenGroups.{kind}(f={f!r}, n={n!r}): {name} ({what}) must be a positive int")


@dataclass(frozen=True)
class TokenMask:
    """Which patch tokens may meet, as a predicate over coordinates.

    ``predicate(qt, qy, qx, kt, ky, kx, *, frames, rows, cols, **params) -> bool tensor``: the query's and
    the key's frame, row and column (long tensors that broadcast against each other); written with tensor
    operations only, so that it builds a dense mask and runs inside FlexAttention's ``mask_mod`` (vmap).
    A module-level function (not a lambda) keeps models picklable. ``frames, rows, cols``: the clip's
    patch grid (tokens frame-major, ``index = t * rows * cols + y * cols + x``); ``params``: the
    predicate's keyword arguments as ``((name, value), ...)`` (hashable: masks are cache keys).
    """

    predicate: Callable
    frames: int
    rows: int
    cols: int
    params: tuple = ()
    name: str = "mask"

    @property
    def num_tokens(self) -> int:
        return self.frames * self.rows * self.cols

    def coords(self, index: torch.Tensor):
        """(frame, row, col) of token indices (any shape)."""
        n = self.rows * self.cols
        return index // n, (index % n) // self.cols, index % self.cols

    def allows(self, q_index: torch.Tensor, k_index: torch.Tensor) -> torch.Tensor:
        """Whether the tokens ``q_index`` may attend to ``k_index`` (broadcasting token indices)."""
        return self.predicate(*self.coords(q_index), *self.coords(k_index), frames=self.frames, rows=self.rows,
                              cols=self.cols, **dict(self.params))

    def dense(self) -> torch.Tensor:
        """(M, M) bool over the tokens (query, key), token order. For tests and plain references."""
        m = torch.arange(self.num_tokens)
        return self.allows(m[:, None], m[None, :])


@dataclass(frozen=True)
class TokenGroups:
    group: tuple  # axes enumerating groups, outermost first
    seq: tuple  # axes inside a group, outermost first
    kind: str = "custom"  # "time" marks attention along the time axis (official CLS rule excludes CLS)
    mask: Optional[TokenMask] = None  # within a group, only the token pairs it allows meet

    def __post_init__(self):
        object.__setattr__(self, "group", tuple(tuple(int(v) for v in a) for a in self.group))
        object.__setattr__(self, "seq", tuple(tuple(int(v) for v in a) for a in self.seq))
        axes = self.group + self.seq
        if not self.seq:
            raise ValueError("TokenGroups needs at least one sequence axis")
        for size, stride in axes:
            if size < 1:
                raise ValueError(f"TokenGroups axis (size={size}, stride={stride}): a size must be >= 1 "
                                 f"(axes: group {self.group}, seq {self.seq})")
            if stride < 0:
                raise ValueError(f"TokenGroups axis (size={size}, stride={stride}): a stride must be >= 0 "
                                 f"(axes: group {self.group}, seq {self.seq})")
        # mixed-radix check: sorted by stride (descending), each stride equals the product of the
        # sizes of the axes below it, and the smallest stride is 1.
        nontrivial = sorted((a for a in axes if a[0] > 1), key=lambda a: -a[1])
        expected = 1
        for size, stride in reversed(nontrivial):
            if stride != expected:
                raise ValueError(
                    f"TokenGroups axes {axes} do not partition the tokens: axes sorted by stride must "
                    f"have stride = product of the sizes below them (expected stride {expected}, got {stride})")
            expected *= size
        if self.mask is not None and self.mask.num_tokens != self.num_tokens:
            raise ValueError(f"TokenGroups mask {self.mask.name!r} covers {self.mask.num_tokens} tokens "
                             f"({self.mask.frames}x{self.mask.rows}x{self.mask.cols}), the groups {self.num_tokens}")

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def num_groups(self) -> int:
        return math.prod([s for s, _ in self.group])

    @property
    def seq_len(self) -> int:
        return math.prod([s for s, _ in self.seq])

    @property
    def num_tokens(self) -> int:
        return self.num_groups * self.seq_len

    @property
    def is_time(self) -> bool:
        return self.kind == "time"

    # ---- the canonical schemes' groups -------------------------------------------------------
    @classmethod
    def time(cls, f: int, n: int) -> "TokenGroups":
        _check_sizes("time", f, n)
        return cls(group=((n, 1),), seq=((f, n),), kind="time")

    @classmethod
    def space(cls, f: int, n: int) -> "TokenGroups":
        _check_sizes("space", f, n)
        return cls(group=((f, n),), seq=((n, 1),), kind="space")

    @classmethod
    def joint(cls, f: int, n: int) -> "TokenGroups":
        _check_sizes("joint", f, n)
        return cls(group=(), seq=((f * n, 1),), kind="joint")

    # ---- the split as tensor ops -------------------------------------------------------------
    @property
    def _plan(self):
        """(sizes sorted by stride desc, permutation putting group axes first then seq axes)."""
        axes = list(self.group) + list(self.seq)
        order = sorted(range(len(axes)), key=lambda i: (-axes[i][1], i))
        sizes = [axes[i][0] for i in order]
        pos = {ax: j for j, ax in enumerate(order)}  # axis index -> position in the viewed tensor
        perm_g = [pos[i] for i in range(len(self.group))]
        perm_s = [pos[i] for i in range(len(self.group), len(axes))]
        return sizes, perm_g, perm_s

    def check_tokens(self, m: int) -> None:
        if m != self.num_tokens:
            raise ValueError(f"{self.kind} groups cover {self.num_groups} groups x {self.seq_len} tokens = "
                             f"{self.num_tokens} patch tokens, but the input has {m}")

    def split(self, t: torch.Tensor) -> torch.Tensor:
        """(b, M, h, d) tokens -> (b * groups, h, seq, d). A view where strides allow, else one copy."""
        b, m, h, d = t.shape
        self.check_tokens(m)
        sizes, pg, ps = self._plan
        x = t.view(b, *sizes, h, d)
        k = len(sizes)
        x = x.permute(0, *[1 + i for i in pg], k + 1, *[1 + i for i in ps], k + 2)
        return x.reshape(b * self.num_groups, h, self.seq_len, d)

    def merge_into(self, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Write (b * groups, h, seq, d) back into ``out`` (b, M, h, d) token layout (one copy)."""
        b, m, h, d = out.shape
        sizes, pg, ps = self._plan
        gsz = [s for s, _ in self.group]
        ssz = [s for s, _ in self.seq]
        k = len(sizes)
        view = out.view(b, *sizes, h, d).permute(0, *[1 + i for i in pg], k + 1, *[1 + i for i in ps], k + 2)
        view.copy_(y.reshape(b, *gsz, h, *ssz, d))
        return out

    def merge(self, y: torch.Tensor, b: int) -> torch.Tensor:
        """(b * groups, h, seq, d) -> a new (b, M, h, d) tensor in token layout."""
        h, d = y.shape[1], y.shape[3]
        out = y.new_empty(b, self.num_tokens, h, d)
        return self.merge_into(y, out)

    def index(self) -> torch.Tensor:
        """(groups, seq) token indices: which token sits where. For tests and plain references."""
        idx = torch.zeros((), dtype=torch.long)
        for size, stride in self.group + self.seq:
            idx = idx.unsqueeze(-1) + torch.arange(size) * stride
        return idx.reshape(self.num_groups, self.seq_len)


@dataclass(frozen=True)
class SequenceMask:
    """The mask a core applies to the sequences of a masked step: every (batch item, group) is one sequence
    ``[prefix; group's tokens]`` of length ``n_prefix + S`` (queries and keys alike), and position ``i`` may
    attend to ``j`` when either is a prefix (CLS) row or ``groups.mask`` allows the two tokens. Sequences
    are batch-major over the groups (``b * G + g``), as :meth:`TokenGroups.split` lays them out.

    Hashable: cores cache what they build from it (a dense mask, a FlexAttention block mask).
    """

    groups: TokenGroups
    n_prefix: int = 0

    def __post_init__(self):
        if self.groups.mask is None:
            raise ValueError("SequenceMask needs TokenGroups with a mask")

    @property
    def num_groups(self) -> int:
        return self.groups.num_groups

    @property
    def length(self) -> int:
        return self.n_prefix + self.groups.seq_len

    def tables(self, device=None) -> torch.Tensor:
        """(G, S) token index of every group position (on ``device``)."""
        return _tables(self.groups, str(device or "cpu"))

    def allows(self, g, i, j, index: torch.Tensor) -> torch.Tensor:
        """Whether position ``i`` of group ``g``'s sequence may attend to position ``j`` (tensor operations
        only: broadcasts, and runs inside FlexAttention's vmap). ``index``: :meth:`tables`."""
        p = self.n_prefix
        qi = index[g, (i - p).clamp(min=0)]
        kj = index[g, (j - p).clamp(min=0)]
        return (i < p) | (j < p) | self.groups.mask.allows(qi, kj)

    def mask_mod(self, device=None):
        """FlexAttention's ``mask_mod(b, h, q_idx, kv_idx)`` for sequences batch-major over the groups."""
        index, ng = self.tables(device), self.num_groups

        def mask_mod(b, h, q_idx, kv_idx):
            return self.allows(b % ng, q_idx, kv_idx, index)

        return mask_mod

    def dense(self, device=None) -> torch.Tensor:
        """(G, L, L) bool: which positions of each group's sequence meet (cached per device; built afresh under
        torch.export, whose tracer would otherwise leave its own fake tensor in the cache and the graph)."""
        if torch.compiler.is_exporting():
            return _dense.__wrapped__(self, str(device or "cpu"))
        return _dense(self, str(device or "cpu"))

    def pairs(self) -> int:
        """Patch query-key pairs that meet, over all groups (the prefix rows and columns not counted)."""
        p = self.n_prefix
        return int(self.dense()[:, p:, p:].sum())


@functools.lru_cache(maxsize=64)
def _tables(groups: TokenGroups, device: str) -> torch.Tensor:
    return groups.index().to(device)


@functools.lru_cache(maxsize=64)
def _dense(mask: SequenceMask, device: str) -> torch.Tensor:
    ng, length = mask.num_groups, mask.length
    g = torch.arange(ng)[:, None, None]
    i = torch.arange(length)[None, :, None]
    j = torch.arange(length)[None, None, :]
    return mask.allows(g, i, j, mask.groups.index()).expand(ng, length, length).contiguous().to(device)
