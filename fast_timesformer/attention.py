"""``DividedAttention``: multi-head attention over groups of video tokens, through a backend registry.

The layer owns the projections (``qkv``, ``proj``: the official TimeSformer names) and hands the attention
itself to a backend core (see :mod:`fast_timesformer.backends`). The backend can be switched on a built
layer or model without rebuilding and without losing weights (:meth:`DividedAttention.set_backend`,
:func:`use_backend`).

What the CLS token does (``cls=``), with x = [CLS, patch tokens] and attention split into groups:

========== ==================================================== =======================================
mode       CLS as a key/value                                   CLS as a query (its output row)
========== ==================================================== =======================================
global     every group attends to it (a shared prefix)          attends to every token (itself + all)
per_group  every group attends to it (a shared prefix)          attends within each group to
                                                                [CLS; group]; outputs averaged over groups
exclude    nobody attends to it                                 its output row is 0 (left unchanged by a
                                                                residual)
official   ``exclude`` for attention along time, else ``per_group`` (facebookresearch/TimeSformer)
none       x has no CLS token                                   -
========== ==================================================== =======================================

``global`` is lucidrains' / FastTimeSformer's convention and the layer's default; the models use
``official``.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import re
from typing import Mapping, Optional, Union

import torch
from torch import nn

from ._names import unknown_name_error
from .activation_memory import linear_of_rows as _linear_of_rows
from .activation_memory import recomputed
from .backends import AttentionCore, get_backend, resolve_backend
from .backends.common import (
    grouped_qkv,
    groups_are_views,
    is_token_order,
    prefixed_groups,
    tokens_from_groups,
)
from .backends.registry import AUTO, BackendUnavailable
from .backends.spec import DEFAULT_BACKEND, STEP_ALIASES, check_step_names, parse_backend_spec  # noqa: F401 (re-exported)
from .groups import SequenceMask, TokenGroups, _is_count
from .kernels.naive import per_group

__all__ = ["DividedAttention", "use_backend", "set_backend", "CLS_MODES", "MODEL_CLS_MODES", "step_cls_mode",
           "attention_groups_from_patterns",
           "check_step_names"]

CLS_MODES = ("global", "per_group", "exclude", "official", "none")
#: the modes a model chooses (``TimeSformer(cls_mode=)``): the same for every step, the CLS present
MODEL_CLS_MODES = ("official", "global", "per_group")


def step_cls_mode(cls: str, groups: TokenGroups) -> str:
    """The CLS mode a step runs: ``official`` (facebookresearch/TimeSformer) is ``exclude`` for attention
    along time, else ``per_group``; any other mode as given. The one statement of the official rule."""
    if cls == "official":
        return "exclude" if groups.is_time else "per_group"
    return cls
TIME_AXES = ("f", "t", "frames", "time")

BackendSpec = Union[str, Mapping[str, str]]


def _parse_pattern(pattern: str):
    tokens = re.findall(r"\([^)]*\)|\S+", pattern.strip())
    return [t[1:-1].split() if t.startswith("(") else t for t in tokens]


def attention_groups_from_patterns(from_pattern: str, to_pattern: str, m: int, sizes: dict,
                                   has_cls: bool = True) -> TokenGroups:
    """Turn seed 001's call form into :class:`TokenGroups`.

    ``from_pattern`` is ``'b (A B) d'`` (tokens stored A-major) and ``to_pattern`` is ``'(b G) S d'`` with
    {G, S} = {A, B}: attention runs along S within each G. One of A/B is given in ``sizes``.
    """
    src, dst = _parse_pattern(from_pattern), _parse_pattern(to_pattern)
    bad = ValueError(
        f"unsupported patterns {from_pattern!r} -> {to_pattern!r}: expected 'b (A B) d' -> '(b A) B d' or "
        "'(b B) A d', e.g. 'b (f n) d' -> '(b n) f d' (time) or '(b f) n d' (space)")
    if len(src) != 3 or len(dst) != 3 or not isinstance(src[1], list) or len(src[1]) != 2:
        raise bad
    b, (a_name, b_name), d = src
    if not isinstance(dst[0], list) or len(dst[0]) != 2 or dst[0][0] != b or dst[2] != d or isinstance(dst[1], list):
        raise bad
    g_name, s_name = dst[0][1], dst[1]
    if {g_name, s_name} != {a_name, b_name}:
        raise bad
    unknown = set(sizes) - {a_name, b_name}
    if unknown:
        raise ValueError(f"size(s) {sorted(unknown)} do not appear in {from_pattern!r}")
    for name, value in sizes.items():
        if not _is_count(value) or value < 1:
            raise ValueError(f"{name}={value!r}: the size of axis {name!r} in {from_pattern!r} must be a "
                             "positive int")
    tokens = f"x has 1+{m} tokens" if has_cls else f"x has {m} tokens (no CLS token)"
    if a_name in sizes and b_name in sizes:
        na, nb = sizes[a_name], sizes[b_name]
        if na * nb != m:
            raise ValueError(f"{tokens}; {a_name}={na} x {b_name}={nb} = {na * nb}, not the {m} patch tokens")
    elif a_name in sizes or b_name in sizes:
        given = a_name if a_name in sizes else b_name
        if m % sizes[given]:
            raise ValueError(f"{tokens}; {m} patch tokens are not divisible by {given}={sizes[given]}")
        na, nb = (sizes[a_name], m // sizes[a_name]) if given == a_name else (m // sizes[b_name], sizes[b_name])
    else:
        raise ValueError(f"give the size of {a_name!r} or {b_name!r} as a keyword, e.g. {b_name}=...")
    axes = {a_name: (na, nb), b_name: (nb, 1)}
    kind = "time" if s_name in TIME_AXES else ("space" if g_name in TIME_AXES else "custom")
    return TokenGroups(group=(axes[g_name],), seq=(axes[s_name],), kind=kind)


def check_rate(name: str, value) -> float:
    """A dropout or drop-path probability: a number in [0, 1), else ``ValueError`` naming ``name`` (refused
    where the model is built, not deep inside torch at the first call, and never ignored by a backend)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < 1.0
    if not ok:
        raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")
    return float(value)


def backend_option_names(be) -> Optional[list]:
    """The options a backend (a :class:`Backend` or a name) takes, from its factory's signature; ``None``
    when that cannot be known (``auto`` resolves later, a factory taking ``**kwargs`` takes anything)."""
    if isinstance(be, str):
        if be == "auto":
            return None
        be = get_backend(be)
    try:
        params = inspect.signature(be.factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.name not in ("self", "backend", "dim_head", "heads")]


def check_model_options(model, table: Mapping[str, tuple], scheme, scheme_options: Mapping,
                        shared: Mapping = ()) -> None:
    """The one check of the keywords a model passes on: every backend option must be one its step's
    backend takes, every scheme option one its scheme takes. A keyword that is neither says which kind of
    argument it was taken as and which kind it is, or the close match over the model's own arguments,
    the backends' options and the scheme's options (:func:`~fast_timesformer._names.misplaced_name_error`).

    ``model``: the model class (its ``__init__`` names its own arguments); ``table``: step -> (backend name,
    options) as :meth:`BackendSpec.table` gives it; ``scheme``: the :class:`Scheme` (without options);
    ``shared``: the options given for every step (the model's ``**backend_options``: they could as well be
    a misspelt model argument)."""
    from ._names import misplaced_name_error

    cls = model if isinstance(model, type) else type(model)
    own = [p.name for p in inspect.signature(cls.__init__).parameters.values()
           if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    kinds = {f"{cls.__name__} argument": own}
    for name, _ in table.values():
        known = backend_option_names(name)
        if known is not None:
            kinds[f"{name} backend option"] = known
    kinds[f"{scheme.name} scheme option"] = list(scheme.option_values)
    for name in scheme_options:
        if name not in scheme.option_values:
            raise misplaced_name_error(name, f"{scheme.name} scheme option", kinds)
    for step, (name, options) in table.items():
        known = backend_option_names(name)
        for option in options if known is not None else ():
            if option not in known:
                given_as = (f"{cls.__name__} argument or {name} backend option" if option in shared
                            else f"{name} backend option (step {step!r})")
                raise misplaced_name_error(option, given_as, kinds)


def _check_option_names(be, options) -> None:
    """Raise ``TypeError`` (as Python does for an unexpected keyword) for an option the backend's factory
    does not take, with the known options and the close match."""
    allowed = backend_option_names(be)
    if allowed is None:
        return
    unknown = [o for o in options if o not in allowed]
    if unknown and not allowed:
        raise TypeError(f"backend {be.name!r} takes no options, got {sorted(options)}")
    if unknown:
        raise TypeError(str(unknown_name_error(f"{be.name} option", unknown[0], allowed)))


class DividedAttention(nn.Module):
    """Multi-head self-attention within groups of tokens, with a pluggable backend.

    Args:
        dim: model width.
        heads, dim_head: attention heads and their width (inner width ``heads * dim_head``).
        dropout: dropout on the output projection (seed 001's ``dropout``); works with every backend.
        attn_dropout: dropout on attention probabilities (only backends that support it).
        backend: a registered backend name or ``"auto"`` (fastest exact backend accepting the inputs).
        cls: default CLS convention (see the module docstring).
        qkv_bias: bias in the fused q/k/v projection.
        **backend_options: passed to the backend (e.g. ``nb_features=256`` for performer).

    Call forms (x: (b, 1 + f*n, dim), CLS first, patches frame-major)::

        attn(x, 'b (f n) d', '(b n) f d', n=n)   # across frames (time)
        attn(x, 'b (f n) d', '(b f) n d', f=f)   # across patches of a frame (space)
        attn(x, groups=TokenGroups.joint(f, n))  # any TokenGroups
        attn(x)                                  # all tokens together
    """

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, dropout: float = 0.0, *,
                 attn_dropout: float = 0.0, backend: str = DEFAULT_BACKEND, cls: str = "global",
                 qkv_bias: bool = True, scale: Optional[float] = None, step: str = "attn",
                 **backend_options):
        super().__init__()
        if cls not in CLS_MODES:
            raise unknown_name_error("cls mode", cls, CLS_MODES)
        if heads < 1 or dim_head < 1 or dim < 1:
            raise ValueError(f"dim, heads and dim_head must be positive, got {dim}, {heads}, {dim_head}")
        check_rate("dropout", dropout)
        check_rate("attn_dropout", attn_dropout)
        self.dim, self.heads, self.dim_head = dim, heads, dim_head
        inner = heads * dim_head
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(dropout)
        self.attn_dropout = attn_dropout
        self.scale = dim_head ** -0.5 if scale is None else scale
        self.cls_mode = cls
        self.step = step  # the model's name for this attention step ("time", "space", ...)
        self.cores = nn.ModuleDict()
        # backend -> {name: tensor}: a loaded state dict's state for a backend this layer had no core for
        # (e.g. fastformer's trained parameters loaded while running "regular"); given to that backend's
        # core when it is built (set_backend), and saved with the layer's state_dict meanwhile
        self.loaded_backend_state: dict = {}
        self.backend_name = ""
        self.backend_options: dict = {}
        self.set_backend(backend, **backend_options)

    # ---- backend selection ---------------------------------------------------------------------
    def set_backend(self, backend: str, **options) -> "DividedAttention":
        """Switch how attention is computed. Projection weights are kept; a backend's own state
        (fastformer's parameters, performer's features) is kept per backend name and reused when
        switching back, unless new ``options`` are given."""
        if backend != AUTO:
            be = get_backend(backend)
            if backend not in self.cores or options:
                self.cores[backend] = self._new_core(be, options)
        elif options:
            raise ValueError("backend options cannot be combined with 'auto'")
        self.backend_name = backend
        self.backend_options = dict(options)
        return self

    def _new_core(self, be, options) -> AttentionCore:
        """A core for ``be``, holding the state loaded for it earlier (if any) instead of fresh state."""
        core = self._build(be, options)
        pending = self.loaded_backend_state.get(be.name)
        if pending:
            try:
                core.load_state_dict(pending, strict=True)
            except RuntimeError as e:
                detail = " ".join(str(e).split())
                raise ValueError(
                    f"layer {self.step!r}: the {be.name} state loaded earlier ({len(pending)} tensors: "
                    f"{', '.join(sorted(pending))}) does not fit a {be.name} core built with options "
                    f"{dict(options)}: {detail[:300]}. Pass the options it was saved with, or "
                    f"`del layer.loaded_backend_state[{be.name!r}]` to start from fresh state") from None
            del self.loaded_backend_state[be.name]
        return core

    # the state dict of a backend without a core here is kept, not dropped (see loaded_backend_state)
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        from .backends import list_backends

        core_prefix = prefix + "cores."
        known = set(list_backends())
        for key in [k for k in state_dict if k.startswith(core_prefix)]:
            name, _, rest = key[len(core_prefix):].partition(".")
            if name in self.cores:
                self.loaded_backend_state.pop(name, None)  # loaded into the core itself (below)
            elif rest and name in known:
                self.keep_backend_state(name, rest, state_dict.pop(key))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def keep_backend_state(self, backend: str, key: str, value: torch.Tensor) -> None:
        """Keep ``value`` (the core's ``key``) for ``backend``'s core, which is built later by set_backend."""
        self.loaded_backend_state.setdefault(backend, {})[key] = value.detach().clone()

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name, tensors in self.loaded_backend_state.items():
            if name not in self.cores:
                for key, value in tensors.items():
                    destination[f"{prefix}cores.{name}.{key}"] = value

    def _build(self, be, options) -> AttentionCore:
        try:
            core = be.build(self.dim_head, self.heads, **options)
        except TypeError as e:
            _check_option_names(be, options)
            raise TypeError(f"backend {be.name!r} rejected options {sorted(options)}: {e}") from None
        w = self.qkv.weight
        return core.to(device=w.device, dtype=w.dtype if w.is_floating_point() else None)

    @property
    def backend(self) -> str:
        return self.backend_name

    def core_for(self, q, k=None, v=None, prefix_k=None, prefix_v=None) -> AttentionCore:
        """The core that will run these inputs. ``auto`` is resolved here (raising with every exact
        backend's reasons if none fits); a named backend's core checks its inputs when called."""
        if self.backend_name != AUTO:
            return self.cores[self.backend_name]
        dropout_p = self.attn_dropout if self.training else 0.0
        be = resolve_backend(AUTO, q, k, v, prefix_k, prefix_v, dropout_p=dropout_p)
        if be.name not in self.cores:
            self.cores[be.name] = self._new_core(be, {})
        return self.cores[be.name]

    # ---- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, from_pattern: Optional[str] = None, to_pattern: Optional[str] = None, *,
                groups: Optional[TokenGroups] = None, cls: Optional[str] = None, norm: Optional[nn.Module] = None,
                recompute: bool = False, **sizes) -> torch.Tensor:
        """Attention over ``norm(x)`` (``norm`` given: a block's pre-norm, applied per token inside the layer,
        where it commutes with the regrouping). ``recompute``: the norm's output is not kept for backward but
        recomputed from x together with the q/k/v projection (a block's ``activation_memory="selective"``;
        see :mod:`fast_timesformer.activation_memory`). The models' blocks call every layer this way, so a
        forward hook on the layer sees x before the norm, and the norm in the call's keywords."""
        groups, cls = self._prepare(x, from_pattern, to_pattern, groups, cls, sizes)
        recompute = recompute and torch.is_grad_enabled()
        project = functools.partial(self._project, norm=norm, recompute=recompute)
        if groups.mask is not None:  # a mask-defined step (e.g. neighborhood windows)
            return self._attend_masked(x, groups, cls, project)
        return self._attend(x, groups, cls, project, recompute and groups.is_time)

    def _project(self, x: torch.Tensor, regroup=None, *, norm: Optional[nn.Module], recompute: bool):
        """``qkv(regroup(norm(x)))`` (``regroup`` may give a tuple: then ``qkv`` of each); with ``recompute``
        one recomputed piece (:func:`~fast_timesformer.activation_memory.recomputed`): backward keeps x,
        not the norm's output or the regrouped copy."""
        if recompute and norm is not None:
            return recomputed(self._norm_regroup_qkv, x, norm, regroup)
        return self._norm_regroup_qkv(x, norm, regroup)

    def _norm_regroup_qkv(self, x, norm, regroup):
        t = x if norm is None else norm(x)
        t = t if regroup is None else regroup(t)
        return tuple(self.qkv(u) for u in t) if isinstance(t, tuple) else self.qkv(t)

    def _prepare(self, x, from_pattern, to_pattern, groups, cls, sizes):
        """Check x and the call's arguments; return the TokenGroups and the CLS mode to run."""
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            raise ValueError(f"x must be (batch, tokens, dim), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.shape[-1] != self.dim:
            raise ValueError(f"x has width {x.shape[-1]}, the layer expects dim={self.dim}")
        if x.dtype != self.qkv.weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"x is {x.dtype} but the layer's weights are {self.qkv.weight.dtype}")
        if x.device != self.qkv.weight.device:
            raise ValueError(f"x is on {x.device} but the layer is on {self.qkv.weight.device}")
        cls = self.cls_mode if cls is None else cls
        if cls not in CLS_MODES:
            raise unknown_name_error("cls mode", cls, CLS_MODES)
        has_cls = cls != "none"
        m = x.shape[1] - int(has_cls)
        if m < 1:
            raise ValueError(f"x has no patch tokens (shape {tuple(x.shape)})")
        if from_pattern is not None or to_pattern is not None:
            if groups is not None:
                raise ValueError("give either patterns or groups=, not both")
            if from_pattern is None or to_pattern is None:
                raise ValueError("give both from_pattern and to_pattern")
            groups = attention_groups_from_patterns(from_pattern, to_pattern, m, sizes, has_cls)
        elif sizes:
            raise ValueError(f"sizes {sorted(sizes)} given without patterns")
        if groups is None:
            groups = TokenGroups.joint(1, m)
        groups.check_tokens(m)
        return groups, step_cls_mode(cls, groups)

    def _attend(self, x, groups: TokenGroups, cls: str, project, recompute_attention: bool = False):
        dropout_p = self.attn_dropout if self.training else 0.0
        core = self._plain_core(cls)
        if core is not None:
            out = self._attend_sequences(core, x, groups, cls, dropout_p, project, recompute_attention)
        else:
            out = self._attend_token_layout(x, groups, cls, dropout_p, project)
        if out.dim() == 4:  # (b, 1 + M, h, d), not projected yet
            out = self.proj(out.flatten(2))
        return self.proj_drop(out)

    def _plain_core(self, cls: str) -> Optional[AttentionCore]:
        """The core when it takes plain sequences laid out by the layer (and the CLS mode allows), else None."""
        core = self.cores[self.backend_name] if self.backend_name != AUTO else None
        return core if core is not None and core.capabilities.plain_sequences and cls != "global" else None

    def _attend_sequences(self, core, x, groups: TokenGroups, cls: str, dropout_p: float, project,
                          recompute_attention: bool = False):
        """The layer lays the groups out as plain (b*groups, h, S, d) sequences for the core and puts the
        result back in token layout (b, 1 + M, h, d) itself (cores with ``plain_sequences``).

        ``per_group``: x is copied once into (b*groups, 1 + S, dim) rows, each group preceded by the CLS
        row (the official layout), and projected in one GEMM; every sequence is then a view of that
        output and one attention call gives the patches' and the per-group CLS outputs together (no
        copy of k/v, no second call for the CLS); they are projected in that layout and the projected
        rows put in token layout (b, 1 + M, dim), the CLS row their mean over the groups.
        ``exclude``/``none``: the group views of the patches' rows of the projection. Joint attention (one
        group in token order) needs no copy at all.

        """
        b = x.shape[0]
        h, d = self.heads, self.dim_head
        n_prefix = 0 if cls == "none" else 1
        joint = is_token_order(groups)
        if cls == "per_group":
            # (b*groups, 1 + S, dim) rows
            qkv = project(x, None if joint else lambda t: prefixed_groups(t, groups, 1))
            qkv = qkv.unflatten(-1, (3, h, d)).unbind(2)  # (b*groups, 1 + S, h, d) strided views
            q, k, v = (t.transpose(1, 2) for t in qkv)  # (b*groups, h, 1 + S, d)
            y = core(q, k, v, scale=self.scale, dropout_p=dropout_p)
            if joint:
                return y.transpose(1, 2)
            # projected in the groups' layout (the official order: project, then average the CLS rows):
            # the GEMM reads the attention output as it is (a view, saved once for both backwards) and the
            # layout change moves the projected rows
            rows = self.proj(attention_rows(y))  # (b*groups, 1 + S, dim)
            return tokens_from_groups(rows.unsqueeze(1), groups, b, 1, y_has_prefix=True).squeeze(2)
        if groups_are_views(groups, b, x.shape[1]):
            # all 1 + M rows go through the GEMM (one row more) so that no slice of x is taken: its
            # backward would fill a zero tensor of x's size and copy into it
            q, k, v = grouped_qkv(project(x), groups, n_prefix, h)  # (b*groups, h, S, d) views
        else:  # e.g. time groups at batch > 1: group x (one copy) rather than q, k and v (three)
            qkv = project(x, lambda t: prefixed_groups(t, groups, n_prefix, keep_prefix=False)).unflatten(-1, (3, h, d))
            q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # (b*groups, h, S, d) views

        def attend(q, k, v):
            return tokens_from_groups(core(q, k, v, scale=self.scale, dropout_p=dropout_p), groups, b, n_prefix)

        if recompute_attention:
            return recomputed(_linear_of_rows, self.proj, attend, q, k, v)  # (b, [1 +] M, dim)
        return attend(q, k, v)

    def _attend_token_layout(self, x, groups: TokenGroups, cls: str, dropout_p: float, project):
        """q/k/v in token layout through the core's ``attend_groups`` / ``attend_global_prefix`` (cores
        with a fused token-layout kernel, ``auto``, and the ``global`` CLS)."""
        b, length, _ = x.shape
        h, d = self.heads, self.dim_head
        with_cls = cls not in ("none", "exclude")
        if cls == "none":
            qkv, cls_qkv = project(x), None
        elif with_cls:
            qkv, cls_qkv = project(x, lambda t: (t[:, 1:], t[:, :1]))
        else:
            qkv, cls_qkv = project(x, lambda t: t[:, 1:]), None
        q, k, v = qkv.unflatten(-1, (3, h, d)).unbind(2)  # (b, M, h, d) strided views
        out = x.new_empty(b, length, h, d, dtype=q.dtype)
        out_patches = out if cls == "none" else out[:, 1:]

        cq = ck = cv = None
        if cls_qkv is not None:
            cq, ck, cv = cls_qkv.unflatten(-1, (3, h, d)).unbind(2)  # (b, 1, h, d)

        core = self.core_for(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                             None if ck is None else ck.transpose(1, 2), None if cv is None else cv.transpose(1, 2))
        cls_out = core.attend_groups(q, k, v, groups, prefix_k=ck, prefix_v=cv, prefix_q=cq,
                                     want_prefix_out=cls == "per_group", scale=self.scale, dropout_p=dropout_p,
                                     out=out_patches)
        if cls != "none":
            if cls == "exclude":
                out[:, :1] = 0
            elif cls == "per_group":
                out[:, :1] = cls_out
            else:  # global: CLS attends to itself and every patch token
                out[:, :1] = core.attend_global_prefix(cq, ck, cv, q, k, v, scale=self.scale, dropout_p=dropout_p)
        return out

    def _attend_masked(self, x, groups: TokenGroups, cls: str, project):
        """A step whose groups carry a :class:`~fast_timesformer.groups.TokenMask`: the core gets every group
        as one sequence ``[CLS; group]`` (no CLS for exclude/none) and a :class:`SequenceMask` (the CLS meets
        everyone, patches meet where the mask allows), and runs it natively (``supports_mask``) or refuses.
        ``per_group``: the CLS outputs are averaged over the groups; ``global``: for one group the same,
        for several the CLS row attends to all tokens in one more call; ``exclude``: its row is 0."""
        b = x.shape[0]
        h, d = self.heads, self.dim_head
        n_p = 1 if cls in ("global", "per_group") else 0
        has_cls = cls != "none"
        ng = groups.num_groups
        qkv = project(x).unflatten(-1, (3, h, d))  # (b, [1 +] M, 3, h, d)
        strides = [st for size, st in groups.seq if size > 1]
        if n_p and ng == 1 and strides == sorted(strides, reverse=True):  # [CLS; tokens] in token order: views
            q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # (b, h, 1 + M, d)
        else:
            q, k, v = (groups.split(t) for t in qkv[:, int(has_cls):].unbind(2))  # (b*G, h, S, d)
            if n_p:
                cq, ck, cv = (per_group(t.transpose(1, 2), ng) for t in qkv[:, :1].unbind(2))  # (b*G, h, 1, d)
                q, k, v = torch.cat([cq, q], 2), torch.cat([ck, k], 2), torch.cat([cv, v], 2)
        mask = SequenceMask(groups, n_p)
        dropout_p = self.attn_dropout if self.training else 0.0
        if self.backend_name == AUTO:
            be = resolve_backend(AUTO, q, k, v, dropout_p=dropout_p, mask=mask)
            if be.name not in self.cores:
                self.cores[be.name] = self._new_core(be, {})
            core = self.cores[be.name]
        else:
            core = self.cores[self.backend_name]
            if not core.backend.supports_mask:  # refused here: a partition-only core's forward takes no mask
                raise BackendUnavailable(core.backend.name, core.backend.why_not(q, k, v, dropout_p=dropout_p, mask=mask),
                                         f"step {self.step!r}")
        y = core(q, k, v, scale=self.scale, dropout_p=dropout_p, mask=mask)  # (b*G, h, P + S, d)
        out = groups.merge(y[:, :, n_p:], b)  # (b, M, h, d)
        if has_cls:
            if cls == "exclude":
                cls_out = out.new_zeros(b, 1, h, d)
            elif cls == "global" and ng > 1:  # the CLS query over [CLS; every token], unmasked
                _, ka, va = (t.transpose(1, 2) for t in qkv.unbind(2))
                cls_out = core(qkv[:, :1, 0].transpose(1, 2), ka, va, scale=self.scale, dropout_p=dropout_p)
                cls_out = cls_out.transpose(1, 2)
            else:
                cls_out = y[:, :, :1].reshape(b, ng, h, 1, d).mean(1).transpose(1, 2)  # (b, 1, h, d)
            out = torch.cat([cls_out, out], 1)
        return self.proj_drop(self.proj(out.flatten(2)))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.heads}, dim_head={self.dim_head}, backend={self.backend_name!r}, "
                f"cls={self.cls_mode!r}, step={self.step!r}")


def attention_rows(out: torch.Tensor) -> torch.Tensor:
    """(B, h, S, d) attention output -> (B, S, h*d): a view wherever h and d are adjacent in memory, whatever
    the order of B and S (SDPA's CPU kernels write (S, B, h, d)); the projection reads it as it is."""
    return out.transpose(1, 2).flatten(2)


# ---- switching backends on built models -------------------------------------------------------
def _layers(module: nn.Module):
    return [m for m in module.modules() if isinstance(m, DividedAttention)]


def set_backend(module: nn.Module, backend: BackendSpec, **options) -> nn.Module:
    """Set the backend of every ``DividedAttention`` in ``module``.

    ``backend``: any form :func:`~fast_timesformer.backends.spec.parse_backend_spec` takes: a name, a
    mapping from attention step (``layer.step``: "time", "space", ...) to a name or (name, options), or
    "time=a,space=b"; steps missing from a mapping keep their backend. ``options`` go to every step set
    (``"space.nb_features"``: to that step only). Unknown step or backend names raise.
    """
    layers = _layers(module)
    if not layers:
        raise ValueError(f"{type(module).__name__} contains no DividedAttention layer")
    table = parse_backend_spec(backend, options).for_steps(list(dict.fromkeys(layer.step for layer in layers)))
    for layer in layers:
        if layer.step in table:
            name, opts = table[layer.step]
            layer.set_backend(name, **opts)
    return module


@contextlib.contextmanager
def use_backend(module: nn.Module, backend: BackendSpec, **options):
    """Temporarily switch the backend of every ``DividedAttention`` in ``module``; restores on exit."""
    layers = _layers(module)
    saved = [(layer, layer.backend_name, layer.backend_options, dict(layer.cores), dict(layer.loaded_backend_state))
             for layer in layers]
    try:
        set_backend(module, backend, **options)
        yield module
    finally:
        for layer, name, opts, cores, kept in saved:
            layer.backend_name, layer.backend_options = name, opts
            layer.loaded_backend_state = kept
            for key in list(layer.cores):
                if key not in cores:
                    del layer.cores[key]
            layer.cores.update(cores)
