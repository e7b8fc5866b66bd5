"""The attention-backend registry.

A backend says *how* attention is computed; which tokens meet (the scheme) is decided by the caller.
Every backend declares what it can do as data (:class:`Backend`) and explains in words why it refuses
given inputs (:meth:`Backend.why_not`). One source of reasons feeds the errors, the test skips, the
benchmark skips and ``fast-timesformer backends``.

The computational contract shared by all backends (see :class:`AttentionCore`)::

    q:        (B, heads, Sq, dim)        B = batch * groups, groups batch-major ("(b g)")
    k, v:     (B, heads, Sk, dim)
    prefix_k: (batch, heads, P, dim)     optional keys/values shared by all groups of one batch item
    prefix_v: (batch, heads, P, dim)     (the CLS token); every query attends to them too
    returns   (B, heads, Sq, dim)

Equivalent PyTorch code (softmax backends)::

    g = B // batch
    k = torch.cat([prefix_k.repeat_interleave(g, 0), k], 2)
    v = torch.cat([prefix_v.repeat_interleave(g, 0), v], 2)
    out = torch.softmax(q @ k.transpose(-1, -2) * scale, -1) @ v
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .._names import lookup, unknown_name_error
from ..errors import first_line, import_failure
from ..kernels.naive import per_group, with_prefix

__all__ = [
    "AttentionCore",
    "Backend",
    "Compiled",
    "BackendUnavailable",
    "register_backend",
    "unregister_backend",
    "get_backend",
    "list_backends",
    "resolve_backend",
    "check_inputs",
    "KINDS",
    "EXACT_TOLERANCES",
]


def _missing(module: str, distribution: str) -> str:
    """Why the optional ``module`` is absent ("" when it can be found; found but broken shows at build, where
    :meth:`Backend.build` quotes the real ImportError). "Not installed" only when ``importlib.metadata`` has no
    ``distribution`` (looked up without importing: listing the backends stays cheap)."""
    if importlib.util.find_spec(module) is not None:
        return ""
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return f"python package {distribution!r} is not installed (pip install {distribution})"
    return f"{distribution} {version} is installed but provides no module {module!r}"


class BackendUnavailable(RuntimeError):
    """A named backend refused the inputs (or cannot run on this machine). The message lists why."""

    def __init__(self, name: str, reasons: Sequence[str], context: str = ""):
        self.name = name
        self.reasons = list(reasons)
        where = f" ({context})" if context else ""
        lines = "\n".join(f"  - {r}" for r in self.reasons)
        super().__init__(f"attention backend {name!r} cannot run{where}:\n{lines}")


class AttentionCore(nn.Module):
    """Per-layer attention computation of one backend.

    Stateless backends (regular, xformers, triton) have no parameters; stateful ones keep theirs here
    (performer's random features, fastformer's pooling vectors and output transform).
    Subclasses implement :meth:`attend`; :meth:`forward` validates the inputs first.
    """

    backend: "Backend"
    #: seconds this core spent compiling (a backend that runs through torch.compile, ``Backend.compiled``: the
    #: first calls of shapes new to the process); 0 for the others. The benchmarks report it apart from the timings.
    compile_seconds: float = 0.0
    #: whether a second call on the same inputs gives the first call's result and leaves the core as the first
    #: left it (a block's activation memory recomputes attention in backward only where it does)
    recomputable: bool = True

    def __init__(self, backend: "Backend", dim_head: int, heads: int):
        super().__init__()
        self.backend = backend
        self.dim_head = dim_head
        self.heads = heads

    def forward(self, q, k, v, prefix_k=None, prefix_v=None, *, scale=None, dropout_p: float = 0.0, mask=None):
        reasons = check_inputs(q, k, v, prefix_k, prefix_v, dim_head=self.dim_head, heads=self.heads)
        reasons += self.capabilities.why_not(q, k, v, prefix_k, prefix_v, dropout_p=dropout_p, mask=mask)
        if mask is not None and not reasons:
            reasons = _mask_reasons(q, k, prefix_k, mask)
        if reasons:
            raise BackendUnavailable(self.backend.name, reasons, _describe(q, k, prefix_k))
        if scale is None:
            scale = q.shape[-1] ** -0.5
        if mask is not None:
            return self.attend_masked(q, k, v, mask, scale=scale, dropout_p=dropout_p)
        return self.attend(q, k, v, prefix_k, prefix_v, scale=scale, dropout_p=dropout_p)

    @property
    def capabilities(self) -> "Backend":
        """The declaration this core's inputs are checked against: its backend's, unless an option changes
        what it takes (flex with ``compile=False`` also takes float64)."""
        return self.backend

    # pickling (torch.save(model), copy.deepcopy): the backend travels by its registered name and is looked
    # up again on loading, so the copy's core uses the registry's Backend object (and no lambdas or
    # modules from a backend's checks ever need pickling).
    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        state["backend"] = self.backend.name
        return state

    def __setstate__(self, state):
        state = dict(state)
        state["backend"] = get_backend(state["backend"])
        super().__setstate__(state)

    def attend(self, q, k, v, prefix_k, prefix_v, *, scale: float, dropout_p: float):  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} must implement attend()")

    def attend_masked(self, q, k, v, mask, *, scale: float, dropout_p: float):  # pragma: no cover
        """Backends declaring ``supports_mask``: q, k, v (B, heads, L, dim) are the sequences of a masked
        step (:class:`~fast_timesformer.groups.SequenceMask`: ``[prefix; group]``, B = batch * groups,
        batch-major) and position i attends to j only where ``mask`` allows. Returns (B, heads, L, dim)."""
        raise NotImplementedError(f"{type(self).__name__} declares supports_mask but has no attend_masked()")

    # ---- token-layout entry points used by DividedAttention ----------------------------------
    # Backends with a fused kernel (triton) override these to read and write token layout directly;
    # the defaults split tokens into (batch*groups, heads, seq, dim) and call forward().

    # (A backend declaring ``plain_sequences`` is handed plain sequences instead, see Backend.)
    def attend_groups(self, q, k, v, groups, *, prefix_k=None, prefix_v=None, prefix_q=None,
                      want_prefix_out=False, scale, dropout_p, out=None):
        """Attention within ``groups`` of patch tokens.

        q, k, v: (b, M, h, d) token layout (strided views are fine). prefix_k/v/q: (b, P, h, d), the
        CLS token's key/value (attended by every group) and query. ``out``: optional (b, M, h, d) buffer
        to write into. Returns the prefix queries' outputs (b, P, h, d), each the mean over the groups of
        attention within [prefix; group], when ``want_prefix_out``; else None.
        """
        b, m, h, d = q.shape
        ng = groups.num_groups
        qg, kg, vg = groups.split(q), groups.split(k), groups.split(v)
        prefix_out = None
        if prefix_k is None:
            y = self(qg, kg, vg, scale=scale, dropout_p=dropout_p)
        else:
            pk, pv, pq = (None if t is None else t.transpose(1, 2) for t in (prefix_k, prefix_v, prefix_q))
            n_p = pk.shape[2]
            if self.backend.supports_prefix and self.backend.supports_cross and not want_prefix_out:
                y = self(qg, kg, vg, pk, pv, scale=scale, dropout_p=dropout_p)
            elif self.backend.supports_cross:  # materialise [prefix; group] keys/values once, for both calls
                kc, vc = with_prefix(kg, vg, pk, pv)
                y = self(qg, kc, vc, scale=scale, dropout_p=dropout_p)
                if want_prefix_out:
                    yp = self(per_group(pq, ng), kc, vc, scale=scale, dropout_p=dropout_p)
            else:  # self-attention only: materialise [prefix; group] for q, k and v
                if pq is None:
                    raise BackendUnavailable(self.backend.name, ["needs the prefix's query to attend [prefix; group]"])
                cat = [torch.cat([per_group(p_, ng), g_], 2) for p_, g_ in ((pq, qg), (pk, kg), (pv, vg))]
                y_all = self(*cat, scale=scale, dropout_p=dropout_p)
                yp, y = y_all[:, :, :n_p], y_all[:, :, n_p:]
            if want_prefix_out:
                prefix_out = yp.reshape(b, ng, h, n_p, d).mean(1).transpose(1, 2)
        if out is None:
            out = q.new_empty(b, m, h, d)
        groups.merge_into(y, out)
        return prefix_out

    def attend_global_prefix(self, prefix_q, prefix_k, prefix_v, q, k, v, *, scale, dropout_p):
        """The prefix queries (b, P, h, d) attending to [prefix; all tokens]; returns (b, P, h, d)."""
        t = lambda x: x.transpose(1, 2)  # noqa: E731  (token layout -> (b, h, S, d) view)
        if self.backend.supports_prefix and self.backend.supports_cross:
            y = self(t(prefix_q), t(k), t(v), t(prefix_k), t(prefix_v), scale=scale, dropout_p=dropout_p)
            return t(y)
        n_p = prefix_q.shape[1]
        y = self(*(t(torch.cat([p_, x_], 1)) for p_, x_ in ((prefix_q, q), (prefix_k, k), (prefix_v, v))),
                 scale=scale, dropout_p=dropout_p)
        return t(y[:, :, :n_p])

    def extra_repr(self) -> str:
        return f"backend={self.backend.name!r}, heads={self.heads}, dim_head={self.dim_head}"


def _describe(q, k, prefix_k) -> str:
    p = "" if prefix_k is None else f", prefix {tuple(prefix_k.shape)}"
    return f"q {tuple(q.shape)} {q.dtype} on {q.device.type}, k {tuple(k.shape)}{p}"


def _mask_reasons(q, k, prefix_k, mask) -> list[str]:
    """The shapes a masked call needs: self-attention over sequences of the mask's length, no prefix."""
    out = []
    if prefix_k is not None:
        out.append("a masked call carries its prefix inside the sequences ([prefix; group]); got prefix_k too")
    length, ng = mask.length, mask.num_groups
    if q.shape[2] != length or k.shape[2] != length:
        out.append(f"the mask is over sequences of {length} ({mask.n_prefix} prefix + {length - mask.n_prefix} "
                   f"tokens); got {q.shape[2]} queries and {k.shape[2]} keys")
    if q.shape[0] % ng:
        out.append(f"batch {q.shape[0]} is not a multiple of the mask's {ng} groups")
    return out


def check_inputs(q, k, v, prefix_k=None, prefix_v=None, *, dim_head=None, heads=None) -> list[str]:
    """Backend-independent shape/dtype/device checks; returns the problems in words."""
    out = []
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            return [f"{name} must be a torch.Tensor, got {type(t).__name__}"]
        if t.dim() != 4:
            out.append(f"{name} must be 4-D (batch, heads, seq, dim), got shape {tuple(t.shape)}")
    if out:
        return out
    if not (q.dtype == k.dtype == v.dtype):
        out.append(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        out.append(f"q, k, v are on different devices: {q.device}, {k.device}, {v.device}")
    if not q.is_floating_point():
        out.append(f"q, k, v must be floating point, got {q.dtype}")
    if k.shape != v.shape:
        out.append(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1] or q.shape[3] != k.shape[3]:
        out.append(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree on batch, heads and dim")
    if heads is not None and q.shape[1] != heads:
        out.append(f"expected {heads} heads (axis 1), got {q.shape[1]}")
    if dim_head is not None and q.shape[3] != dim_head:
        out.append(f"expected head dim {dim_head} (axis 3), got {q.shape[3]}")
    if (prefix_k is None) != (prefix_v is None):
        out.append("prefix_k and prefix_v must be given together")
    elif prefix_k is not None:
        if prefix_k.dim() != 4 or prefix_k.shape != prefix_v.shape:
            out.append(f"prefix_k/prefix_v must be 4-D and equal in shape, got {tuple(prefix_k.shape)}"
                       f" and {tuple(prefix_v.shape)}")
        elif prefix_k.shape[1] != q.shape[1] or prefix_k.shape[3] != q.shape[3]:
            out.append(f"prefix {tuple(prefix_k.shape)} must match q {tuple(q.shape)} in heads and dim")
        elif (q.shape[0] % prefix_k.shape[0] if prefix_k.shape[0] else q.shape[0]):
            out.append(f"q batch {q.shape[0]} is not a multiple of the prefix batch {prefix_k.shape[0]}"
                       " (q's batch must be (batch groups), batch-major)")
        if prefix_k.dtype != q.dtype or prefix_k.device != q.device:
            out.append(f"prefix is {prefix_k.dtype} on {prefix_k.device}, q is {q.dtype} on {q.device}")
    return out


#: what a backend computes: exact softmax attention, an approximation of it (judged by its error against
#: the exact result), or a different attention model with its own parameters (softmax weights do not
#: carry over, so its error against softmax means nothing)
KINDS = ("exact", "approximate", "different_model")

# Default per-dtype tolerances (atol, rtol) of an *exact* backend's output against the float64 reference,
# for O(1) inputs and the tests' small shapes (<= 64 keys, head dim <= 72). They follow from the dtype the
# result is computed and rounded in (unit round-off u: float64 1.1e-16, float32 6e-8, float16 4.9e-4,
# bfloat16 3.9e-3), accumulated over a softmax and two matmuls of <= 64 terms:
#   float64: exact but for round-off (~1e-15 x the O(10) sizes summed): 1e-10.
#   float32: unit round-off 6e-8 over softmax + two matmuls of <= 64 terms, ~1e-6 expected: 2e-5.
#   float16: float32 accumulation, the output rounded to float16 (u = 4.9e-4) plus the inputs' rounding: 2e-3.
#   bfloat16: the same with u = 3.9e-3 (four ulp): 1.6e-2.
# Gradients pass three more matmuls: the tests allow 10x these.
EXACT_TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}

_DIRECTIONS = ("forward", "backward")


@dataclass(frozen=True, eq=False)
class Compiled:
    """``Backend.compiled``: the backend runs through ``torch.compile``, and what follows from that.

    torch.compile cannot trace under a ``TorchDispatchMode`` (``torch.utils.flop_counter.FlopCounterMode``,
    :class:`~fast_timesformer.bench.counts.OpCounter`): dynamo skips the frame ("non-infra torch dispatch mode
    present") and, in torch 2.13, goes on skipping it for the rest of the process, so later calls fail too.
    The benchmarks therefore never run such a backend under one: its first call (the compile) runs untimed,
    outside any mode, with its cores' :attr:`AttentionCore.compile_seconds` reported apart from the timings,
    and its FLOPs are counted on ``flops_backend`` instead.

    Args:
        flops_backend: a registered backend that makes the same attention calls, shape for shape, so that
            FlopCounterMode's count of it is this backend's FLOPs by definition: the benchmarks swap it into
            the same model (``use_backend``) and count one call there. None: there is none; the FLOPs are
            not counted and the point records why.
        flops_options: the options of this backend under which that holds (an option not given takes its
            factory default); with other values the FLOPs are not counted and the point records why.
        flops_why: why the FLOPs are the same, in words (the record's ``flops_method`` quotes it).
    """

    flops_backend: Optional[str] = None
    flops_options: Mapping = field(default_factory=dict)
    flops_why: str = ""

    def flops_refusal(self, backend: "Backend", options: Optional[Mapping] = None) -> str:
        """Why the FLOPs of ``backend`` built with ``options`` cannot be counted on ``flops_backend``
        ("" when they can)."""
        if self.flops_backend is None:
            return (f"backend {backend.name!r} runs through torch.compile, which cannot run under FlopCounterMode "
                    "(a TorchDispatchMode), and declares no backend that makes the same attention calls to count "
                    "its FLOPs on (Compiled.flops_backend)")
        values = backend.option_values(options)
        off = {k: values.get(k) for k, v in self.flops_options.items() if values.get(k) != v}
        if off:
            given = ", ".join(f"{k}={v!r}" for k, v in off.items())
            needed = ", ".join(f"{k}={v!r}" for k, v in self.flops_options.items())
            return (f"backend {backend.name!r} runs through torch.compile, which cannot run under FlopCounterMode "
                    f"(a TorchDispatchMode); its FLOPs equal {self.flops_backend!r}'s only with {needed}, and with "
                    f"{given} its attention calls differ")
        return ""


@dataclass(frozen=True, init=False, eq=False, repr=False)
class Backend:
    """What a backend can do, as data, plus a factory for its per-layer :class:`AttentionCore`.

    Every fact the rest of the package (layers, models, ``auto``, the tests, the benchmarks, the
    ``backends`` listing) needs about a backend is declared here; nothing else branches on its name.

    Args:
        name: the registry key. factory: ``factory(backend, dim_head=, heads=, **options)`` -> core.
        kind: ``"exact"`` (softmax attention), ``"approximate"`` (an estimate of it, measured by its error
            against the exact result) or ``"different_model"`` (its own attention with its own
            parameters).
        devices, dtypes, max_head_dim: what it runs on.
        supports_backward, supports_dropout, supports_prefix (natively takes a shared prefix
            ``prefix_k``/``prefix_v``), supports_cross (Sq may differ from Sk), supports_mask (runs the
            mask-defined steps of a scheme, e.g. neighborhood windows: implements ``attend_masked``): capabilities.
        plain_sequences: the layer hands the core plain (batch*groups, heads, S, dim) sequences and lays the
            result out in tokens itself (for a per_group CLS, every group as its own ``[CLS; group]``
            sequence, projected from a grouped copy of x: no copy of k/v, one call); only the ``global`` CLS
            uses the token-layout entry points. False (the default): the layer calls ``attend_groups`` /
            ``attend_global_prefix``, which a core may override to read token layout itself (triton).
        tolerances: ``{dtype: (atol, rtol)}`` of its output against the float64 reference (default for an
            exact backend: :data:`EXACT_TOLERANCES`; none for the others). Read with :meth:`tolerance`.
        deterministic: ``True``/``False``, or ``{"forward": bool, "backward": bool}``: whether two runs on
            the same inputs give the same bits. Read with :meth:`is_deterministic`.
        requires: importable module names; pip_names: ``{module: pip package}`` for the install hint where
            they differ (``performer_pytorch`` -> ``performer-pytorch``).
        priority: an int, or a callable ``() -> int`` asked each time (the machine may decide it); among
            the exact backends ``auto`` tries the lowest first.
        error_sweep: for a backend that is not exact, the option sets at which its deviation from exact
            attention is measured (the experiment's swapped-in evaluations; e.g. performer's feature
            counts); empty: once, with its default options.
        diagnostic: a backend for looking inside a model, not for speed (``recording``: it materialises the
            attention probabilities): ``auto`` never picks it and the benchmarks never time it.
        compiled: a :class:`Compiled` for a backend that runs through ``torch.compile`` (``flex``): it cannot run
            under a ``TorchDispatchMode``, so the benchmarks time it after an untimed first call (the compile,
            reported apart) and count its FLOPs where :class:`Compiled` says; None (the default) for the others.
        export_why_not: why a model running this backend cannot be exported (``torch.export`` / ONNX) as it
            is, in words; "" when it can. :mod:`fast_timesformer.export` reads it: an exact backend is then
            exported as ``regular`` (the same numbers) with a one-line notice, any other kind is refused.
        checks: ``checks(q, k, v, prefix_k, prefix_v, dropout_p) -> reasons``, backend-specific refusals.
        availability: ``() -> reasons`` why it cannot run on this machine at all (ops not built, no GPU).

    A dataclass (frozen; equal only to itself): ``dataclasses.replace(get_backend("regular"), name="mine",
    supports_cross=False)`` makes a variant.
    """

    name: str
    factory: Callable[..., AttentionCore]
    kind: str
    devices: tuple
    dtypes: tuple
    supports_backward: bool
    supports_dropout: bool
    supports_prefix: bool
    supports_cross: bool
    supports_mask: bool
    plain_sequences: bool
    max_head_dim: Optional[int]
    requires: tuple
    pip_names: dict
    tolerances: dict
    deterministic: Union[bool, dict]
    priority_rule: Union[int, Callable[[], int]]  # the declared priority (read the int as .priority)
    error_sweep: tuple
    diagnostic: bool
    compiled: Optional[Compiled]
    export_why_not: str
    description: str
    checks: Optional[Callable[..., list]]
    availability: Optional[Callable[[], list]]

    def __init__(self, name: str, factory: Callable[..., AttentionCore], *, kind: str,
                 devices: tuple = ("cpu", "cuda"),
                 dtypes: tuple = (torch.float32, torch.float16, torch.bfloat16, torch.float64),
                 supports_backward: bool = True, supports_dropout: bool = False, supports_prefix: bool = True,
                 supports_cross: bool = True, supports_mask: bool = False, plain_sequences: bool = False,
                 max_head_dim: Optional[int] = None,
                 requires: tuple = (),
                 pip_names: Optional[Mapping[str, str]] = None,
                 tolerances: Optional[Mapping[torch.dtype, tuple]] = None,
                 deterministic: Union[bool, Mapping[str, bool]] = True,
                 priority: Union[int, Callable[[], int]] = 100, description: str = "",
                 checks: Optional[Callable[..., list]] = None, availability: Optional[Callable[[], list]] = None,
                 error_sweep: Sequence[Mapping] = (), diagnostic: bool = False,
                 compiled: Optional[Compiled] = None, export_why_not: str = "", priority_rule=None):
        if priority_rule is not None:  # dataclasses.replace passes the stored field back
            priority = priority_rule
        if kind not in KINDS:
            raise unknown_name_error("backend kind", kind, KINDS)
        if isinstance(deterministic, Mapping):
            unknown = set(deterministic) - set(_DIRECTIONS)
            if unknown:
                raise ValueError(f"Backend {name!r}: deterministic keys must be among {_DIRECTIONS}, got "
                                 f"{sorted(unknown)}")
            deterministic = {d: bool(deterministic.get(d, True)) for d in _DIRECTIONS}
        if tolerances is None:
            tolerances = EXACT_TOLERANCES if kind == "exact" else {}
        if compiled is not None and not isinstance(compiled, Compiled):
            raise TypeError(f"Backend {name!r}: compiled= takes a Compiled (or None), got {type(compiled).__name__}")
        values = dict(
            name=name, factory=factory, kind=kind, devices=tuple(devices), dtypes=tuple(dtypes),
            supports_backward=supports_backward, supports_dropout=supports_dropout, supports_prefix=supports_prefix,
            supports_cross=supports_cross, supports_mask=supports_mask, plain_sequences=bool(plain_sequences),
            max_head_dim=max_head_dim,
            requires=tuple(requires),
            pip_names=dict(pip_names or {}),
            tolerances={dt: (float(a), float(r)) for dt, (a, r) in tolerances.items()},
            deterministic=deterministic, priority_rule=priority, description=description, checks=checks,
            availability=availability, error_sweep=tuple(dict(o) for o in error_sweep), diagnostic=bool(diagnostic),
            compiled=compiled, export_why_not=str(export_why_not))
        for key, value in values.items():
            object.__setattr__(self, key, value)

    def __repr__(self) -> str:
        return f"Backend(name={self.name!r}, kind={self.kind!r}, devices={self.devices}, priority={self.priority})"

    # ---- derived facts --------------------------------------------------------------------------
    @property
    def exact(self) -> bool:
        """``kind == "exact"``."""
        return self.kind == "exact"

    @property
    def priority(self) -> int:
        """The order ``auto`` tries the exact backends in (lowest first); a backend that declared a
        callable is asked now (the machine may decide)."""
        rule = self.priority_rule
        return int(rule() if callable(rule) else rule)

    def tolerance(self, dtype: torch.dtype) -> tuple:
        """``(atol, rtol)`` of this backend's output against the float64 reference, computed in ``dtype``."""
        try:
            return self.tolerances[dtype]
        except KeyError:
            declared = ", ".join(str(d).replace("torch.", "") for d in self.tolerances) or "none"
            raise ValueError(f"backend {self.name!r} ({self.kind}) declares no tolerance for {dtype} "
                             f"(declared: {declared})") from None

    def is_deterministic(self, direction: str = "forward") -> bool:
        """Whether ``direction`` ("forward" or "backward") gives the same bits on every run."""
        if direction not in _DIRECTIONS:
            raise unknown_name_error("direction", direction, _DIRECTIONS)
        d = self.deterministic
        return d[direction] if isinstance(d, Mapping) else bool(d)

    def pip_name(self, module: str) -> str:
        """The pip package that provides ``module`` (the install hint when it is missing)."""
        return self.pip_names.get(module, module)

    def option_values(self, options: Optional[Mapping] = None) -> dict:
        """``options`` with the factory's defaults filled in for the options not given (the keyword
        parameters of ``factory`` after ``backend, dim_head, heads``)."""
        out = {}
        try:
            params = inspect.signature(self.factory).parameters.values()
        except (TypeError, ValueError):  # no signature to read (a builtin): the options given only
            params = ()
        for p in params:
            if p.name not in ("backend", "dim_head", "heads") and p.default is not inspect.Parameter.empty:
                out[p.name] = p.default
        out.update(options or {})
        return out

    def build(self, dim_head: int, heads: int, **options) -> AttentionCore:
        """A fresh per-layer core. Unknown ``options`` raise ``TypeError`` naming them."""
        missing = self.unavailable_reasons()
        if missing:
            raise BackendUnavailable(self.name, missing, "on this machine")
        try:
            return self.factory(self, dim_head=dim_head, heads=heads, **options)
        except ImportError as e:  # a required package that is installed but does not import: quoted as it is
            top = (e.name or "").split(".")[0]
            named = [m for m in self.requires if m == top] or (list(self.requires) if len(self.requires) == 1 else [])
            why = str(import_failure(self.pip_name(named[0]), e)) if named else f"an import fails: {first_line(e)}"
            raise BackendUnavailable(self.name, [why], "on this machine") from e

    def unavailable_reasons(self) -> list[str]:
        """Why this backend cannot run on this machine at all (independent of the inputs)."""
        out = [why for mod in self.requires if (why := _missing(mod, self.pip_name(mod)))]
        if not out and self.availability is not None:
            out += list(self.availability())
        return out

    def why_not(self, q, k=None, v=None, prefix_k=None, prefix_v=None, *, dropout_p: float = 0.0,
                needs_grad: Optional[bool] = None, mask=None) -> list[str]:
        """Reasons, in words, why this backend refuses these inputs ([] means it accepts them). ``mask``: the
        :class:`~fast_timesformer.groups.SequenceMask` of a mask-defined step, if the call has one."""
        k = q if k is None else k
        v = k if v is None else v
        out = self.unavailable_reasons()
        dev = q.device.type
        if dev not in self.devices:
            out.append(f"device {dev!r} not supported (supports {', '.join(self.devices)})")
        if q.dtype not in self.dtypes:
            out.append(f"dtype {q.dtype} not supported (supports "
                       f"{', '.join(str(d).replace('torch.', '') for d in self.dtypes)})")
        if self.max_head_dim is not None and q.shape[-1] > self.max_head_dim:
            out.append(f"head dim {q.shape[-1]} > {self.max_head_dim}")
        if dropout_p > 0 and not self.supports_dropout:
            out.append(f"attention dropout ({dropout_p}) is not supported")
        if needs_grad is None:
            needs_grad = torch.is_grad_enabled() and any(
                t is not None and t.requires_grad for t in (q, k, v, prefix_k, prefix_v))
        if needs_grad and not self.supports_backward:
            out.append("backward is not supported (inputs require grad)")
        if not self.supports_cross and q.shape[-2] != k.shape[-2]:
            out.append(f"only self-attention (query i uses value i): got {q.shape[-2]} queries "
                       f"and {k.shape[-2]} keys")
        if prefix_k is not None and not self.supports_prefix:
            out.append("a shared prefix (CLS key/value) is not supported natively")
        if mask is not None and not self.supports_mask:
            out.append(f"a token mask ({mask.groups.mask.name}: a mask-defined scheme step) is not supported: "
                       "this backend attends within whole groups only")
        if self.checks is not None and not out:
            out += list(self.checks(q, k, v, prefix_k, prefix_v, dropout_p))
        return out

    def supports(self, *args, **kwargs) -> bool:
        return not self.why_not(*args, **kwargs)

    def describe(self) -> dict:
        """A row for tables: capabilities and availability on this machine."""
        reasons = self.unavailable_reasons()
        return {
            "name": self.name,
            "kind": KIND_WORDS[self.kind],
            "devices": ", ".join(self.devices),
            "dtypes": ", ".join(str(d).replace("torch.", "") for d in self.dtypes),
            "backward": "yes" if self.supports_backward else "no",
            "deterministic": ("yes" if self.is_deterministic("forward") and self.is_deterministic("backward")
                              else "forward only" if self.is_deterministic("forward") else "no"),
            "dropout": "yes" if self.supports_dropout else "no",
            "masks": "yes" if self.supports_mask else "no",
            "sequences": "plain" if self.plain_sequences else "tokens",
            "export": "yes" if not self.export_why_not else "as regular" if self.exact else "no",
            "status": "available" if not reasons else "; ".join(reasons),
            "description": self.description,
        }


#: how ``fast-timesformer backends`` names each kind
KIND_WORDS = {"exact": "exact", "approximate": "approximate", "different_model": "approximate (a different model)"}

_REGISTRY: dict[str, Backend] = {}
AUTO = "auto"


def register_backend(backend: Backend, *, overwrite: bool = False) -> Backend:
    """Add a backend. It is then usable everywhere the built-in ones are (layers, models, CLI, tests)."""
    if not isinstance(backend, Backend):
        raise TypeError(f"register_backend expects a Backend, got {type(backend).__name__}")
    if backend.name == AUTO:
        raise ValueError(f"{AUTO!r} is reserved for automatic selection")
    if backend.name in _REGISTRY and not overwrite:
        raise ValueError(f"a backend named {backend.name!r} is already registered "
                         "(pass overwrite=True to replace it)")
    _REGISTRY[backend.name] = backend
    return backend


def unregister_backend(name: str) -> None:
    get_backend(name)
    del _REGISTRY[name]


def list_backends() -> list[str]:
    """Names of the registered backends (available on this machine or not)."""
    return list(_REGISTRY)


def get_backend(name: str) -> Backend:
    """The backend registered under ``name``; unknown names raise ``ValueError`` listing the known ones."""
    return lookup(_REGISTRY, name, "attention backend", Backend, what="backend", also_known=[AUTO])


def resolve_backend(name: str, q, k=None, v=None, prefix_k=None, prefix_v=None, *,
                    dropout_p: float = 0.0, mask=None) -> Backend:
    """Map ``name`` to a backend that accepts the inputs. ``auto`` picks the highest-priority exact one (never a
    ``diagnostic`` one).

    Never falls back silently: a named backend that refuses raises :class:`BackendUnavailable`, and
    ``auto`` with no taker raises with every exact backend's reasons.
    """
    if name != AUTO:
        be = get_backend(name)
        reasons = be.why_not(q, k, v, prefix_k, prefix_v, dropout_p=dropout_p, mask=mask)
        if reasons:
            raise BackendUnavailable(be.name, reasons, _describe(q, q if k is None else k, prefix_k))
        return be
    refusals = {}
    for be in sorted((b for b in _REGISTRY.values() if b.exact and not b.diagnostic), key=lambda b: b.priority):
        reasons = be.why_not(q, k, v, prefix_k, prefix_v, dropout_p=dropout_p, mask=mask)
        if not reasons:
            return be
        refusals[be.name] = reasons
    lines = [f"{n}: {'; '.join(r)}" for n, r in refusals.items()]
    raise BackendUnavailable(AUTO, lines or ["no exact backend is registered"], _describe(q, q if k is None else k, prefix_k))
