"""``flex``: exact softmax attention through PyTorch's FlexAttention (``torch.nn.attention.flex_attention``).

Two ways to lay a step's token groups out for FlexAttention (option ``layout``):

- ``"batch"`` (default): every group is one sequence of flex's batch axis, a strided view of the qkv
  projection where the strides allow (as ``regular`` gives SDPA); no block mask at all. A CLS key/value
  prefix is concatenated in front of every group's keys (one copy of k and v); in a layer a per_group CLS
  arrives as ``[CLS; group]`` sequences (``plain_sequences``, the layer's one-GEMM layout).
- ``"mask"``: one sequence per clip in token order, ``[CLS; all f*n patches]`` for the keys, and the
  groups as a block mask ``group(q) == group(k) or k is the CLS``. Spatial groups are contiguous runs of
  ``n`` tokens, so most 128x128 blocks are skipped; temporal groups are strided (one token every ``n``)
  and touch every block, which makes the mask as dense as joint attention over all ``f*n`` tokens. A
  per_group CLS costs one extra call (its G copies as query rows, each masked to its group).

``fast-timesformer bench --suite flex`` measures both against ``regular``; see docs/flex.md.

Masks are built once per (step groups, lengths, device) and cached for the process
(:data:`MASK_CACHE`, shared by every layer; :attr:`FlexCore.masks_built` counts this core's builds). The
kernel is compiled once per input shape (``compile=True``, the default; ``torch.compile(flex_attention,
dynamic=False)``); the first call of a shape new to the process pays the compile, recorded in
:attr:`FlexCore.compile_seconds` (and per shape in :data:`COMPILE_SECONDS`), so benchmarks report it apart
and never time it. Past dynamo's recompile limit a call raises instead of silently running eager.
``compile=False`` runs FlexAttention's unfused eager path (it materialises the score matrix; for tests).

What this torch cannot do is declared, not worked around: backward on CPU (FlexAttention raises for any
CPU input that requires grad, even in a forward call), float64 compiled (inductor's FlexAttention kernels
take float32/float16/bfloat16; float64 runs eager), attention dropout (FlexAttention has none), a call
under a TorchDispatchMode such as ``FlopCounterMode`` (FlexAttention, eager path included, goes through
torch.compile, which cannot trace under one). ``BACKEND.compiled`` says so to the benchmarks, which time
flex outside any mode after an untimed first call and count its FLOPs on ``regular`` (layout ``batch``:
the same calls).
"""
from __future__ import annotations

import collections
import dataclasses
import importlib.util
import time
import warnings

import torch

from .._names import unknown_name_error
from ..kernels.naive import per_group, with_prefix
from .common import empty_attention
from .registry import EXACT_TOLERANCES, AttentionCore, Backend, BackendUnavailable, Compiled, _describe, check_inputs

__all__ = ["FlexCore", "BACKEND", "LAYOUTS", "MASK_CACHE", "COMPILE_SECONDS", "CPU_BACKWARD_REASON",
           "DISPATCH_MODE_REASON", "COMPILED_DTYPES"]

LAYOUTS = ("batch", "mask")
#: the dtypes inductor's FlexAttention kernels take (CPU: "`torch.float`, `torch.float16` and
#: `torch.bfloat16` are supported in FlexAttention for CPU device"); float64 runs with compile=False
COMPILED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CPU_BACKWARD_REASON = (f"backward on CPU: FlexAttention in torch {torch.__version__.split('+')[0]} raises "
                       "'FlexAttention does not support backward on CPU' for any CPU input that requires grad "
                       "(run it under torch.no_grad(), or on CUDA)")
DISPATCH_MODE_REASON = ("under a TorchDispatchMode (e.g. torch.utils.flop_counter.FlopCounterMode): FlexAttention "
                        "runs through torch.compile, even with compile=False, and torch.compile cannot trace under "
                        "one (after such a refusal dynamo would skip FlexAttention for the rest of the process)")

#: (mask key, B, device) -> BlockMask, least recently used dropped past MASK_CACHE_SIZE; shared by all cores
MASK_CACHE: "collections.OrderedDict" = collections.OrderedDict()
MASK_CACHE_SIZE = 64
#: compile key (shapes, strides, dtype, device, mask, scale) -> seconds of the first call that compiled it
COMPILE_SECONDS: dict = {}
_COMPILED = None  # torch.compile(flex_attention, dynamic=False), made on first use
RECOMPILE_LIMIT = 256  # shapes one process may compile; past it dynamo raises (it would fall back to eager)


def _flex_module():
    from torch.nn.attention import flex_attention as fa

    return fa


def _availability() -> list:
    if importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
        return [f"torch {torch.__version__} has no torch.nn.attention.flex_attention (needs torch >= 2.5)"]
    return []


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _under_dispatch_mode() -> bool:
    """Whether a (non-infra) TorchDispatchMode is active: dynamo's own test for skipping a frame."""
    if torch.compiler.is_compiling():  # traced as part of a compiled model: dynamo handles the call itself
        return False
    from torch.utils import _python_dispatch as pd

    on_stack = getattr(pd, "any_torch_dispatch_mode_on_stack", None)
    return bool(on_stack()) if on_stack is not None else pd.is_in_torch_dispatch_mode(include_infra_modes=False)


@dataclasses.dataclass(frozen=True, init=False, eq=False, repr=False)
class FlexBackend(Backend):
    """``Backend`` with one device-dependent capability: backward runs on CUDA, not on CPU."""

    def why_not(self, q, k=None, v=None, prefix_k=None, prefix_v=None, *, dropout_p: float = 0.0,
                needs_grad=None, mask=None) -> list:
        out = super().why_not(q, k, v, prefix_k, prefix_v, dropout_p=dropout_p, needs_grad=needs_grad, mask=mask)
        # refused when the caller needs gradients or any input requires grad (FlexAttention then raises even in
        # the forward); an empty batch never reaches FlexAttention (the core returns the empty result itself,
        # connected to the inputs), so its backward runs anywhere
        grad = bool(needs_grad) or _needs_grad(q, k, v, prefix_k, prefix_v)
        if q.device.type == "cpu" and q.numel() and grad and CPU_BACKWARD_REASON not in out:
            out.append(CPU_BACKWARD_REASON)
        # refused before dynamo is asked: a refused trace would break every later FlexAttention call too
        if q.numel() and _under_dispatch_mode():
            out.append(DISPATCH_MODE_REASON)
        return out


def _compiled():
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(_flex_module().flex_attention, dynamic=False)
    return _COMPILED


def _dynamo_limits():
    """Raise dynamo's recompile limit for the compiled call and make hitting it an error, not a silent eager
    fallback (config names as in torch 2.6+; older names are left alone)."""
    import torch._dynamo

    cfg = torch._dynamo.config
    names = getattr(cfg, "_config", {})
    patch = {}
    if "recompile_limit" in names:
        patch["recompile_limit"] = RECOMPILE_LIMIT
    if "fail_on_recompile_limit_hit" in names:
        patch["fail_on_recompile_limit_hit"] = True
    return cfg.patch(**patch)


def _group_ids(groups) -> torch.Tensor:
    """(M,) the group of every patch token (token order)."""
    idx = groups.index()
    gid = torch.empty(groups.num_tokens, dtype=torch.long)
    gid[idx.flatten()] = torch.arange(groups.num_groups).repeat_interleave(groups.seq_len)
    return gid


class FlexCore(AttentionCore):
    """FlexAttention on one layer's q/k/v.

    Options: ``compile`` (default True: the fused kernel, compiled once per shape; False: FlexAttention's
    eager path, which materialises the scores), ``layout`` (``"batch"`` or ``"mask"``, see the module
    docstring).

    Attributes the tests and benchmarks read: ``masks_built`` (block masks this core built; a cached mask
    is not rebuilt) and ``mask_seconds`` (the time it took), ``compile_seconds`` (time of this core's first calls of shapes new to the process),
    ``compiled_shapes`` (their keys).
    """

    def __init__(self, backend, dim_head, heads, compile: bool = True, layout: str = "batch"):
        super().__init__(backend, dim_head, heads)
        if layout not in LAYOUTS:
            raise unknown_name_error("flex layout", layout, LAYOUTS)
        self.compile = bool(compile)
        self.layout = layout
        self.masks_built = 0
        self.mask_seconds = 0.0  # time this core spent building block masks
        self.compile_seconds = 0.0
        self.compiled_shapes: list = []

    # ---- what this core can take: the backend's declaration, or the eager variant's (float64 too) -----
    @property
    def capabilities(self) -> Backend:
        if self.layout == "mask":  # the layer calls attend_groups with token layout, which this core masks
            return MASK_LAYOUT if self.compile else EAGER_MASK_LAYOUT
        return self.backend if self.compile else EAGER

    # ---- the call -----------------------------------------------------------------------------
    def _flex(self, q, k, v, block_mask, scale, mask_key=None):
        fa = _flex_module()
        if not self.compile:
            with warnings.catch_warnings():  # "called without torch.compile()": eager is what was asked for
                warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
                return fa.flex_attention(q, k, v, block_mask=block_mask, scale=scale)
        key = (q.device.type, q.dtype, tuple(q.shape), tuple(k.shape), q.stride(), k.stride(), v.stride(),
               mask_key, float(scale))
        fn = _compiled()
        with _dynamo_limits():
            if key in COMPILE_SECONDS:
                return fn(q, k, v, block_mask=block_mask, scale=scale)
            start = time.perf_counter()
            out = fn(q, k, v, block_mask=block_mask, scale=scale)
            if out.device.type == "cuda":
                torch.cuda.synchronize(out.device)
        seconds = time.perf_counter() - start
        COMPILE_SECONDS[key] = seconds
        self.compile_seconds += seconds
        self.compiled_shapes.append(key)
        return out

    def block_mask(self, key, mask_mod, B, q_len, kv_len, device):
        """The BlockMask of ``mask_mod`` (cached under ``key``; built on the first call only)."""
        full = (key, B, q_len, kv_len, str(device))
        bm = MASK_CACHE.get(full)
        if bm is None:
            start = time.perf_counter()
            bm = _flex_module().create_block_mask(mask_mod, B, None, q_len, kv_len, device=device)
            self.mask_seconds += time.perf_counter() - start
            self.masks_built += 1
            MASK_CACHE[full] = bm
            while len(MASK_CACHE) > MASK_CACHE_SIZE:
                MASK_CACHE.popitem(last=False)
        else:
            MASK_CACHE.move_to_end(full)
        return bm

    def attend(self, q, k, v, prefix_k, prefix_v, *, scale, dropout_p):
        if q.shape[0] == 0:  # nothing to attend (FlexAttention needs a non-empty batch): connected to every input
            return empty_attention(q, k, v, prefix_k, prefix_v)
        k, v = with_prefix(k, v, prefix_k, prefix_v)  # [prefix; group] keys: one copy of k and v
        return self._flex(q, k, v, None, scale)

    def attend_masked(self, q, k, v, mask, *, scale, dropout_p):
        """A mask-defined step (neighborhood windows): the step's mask as a block mask, built once per
        (step, length, device) and shared (per batch size too when the groups differ in their masks)."""
        if q.shape[0] == 0:
            return empty_attention(q, k, v)
        ng = mask.num_groups
        batch = None if ng == 1 else q.shape[0]  # one group: the same mask for every sequence, broadcast
        key = ("masked", mask)
        bm = self.block_mask(key, mask.mask_mod(q.device), batch, mask.length, mask.length, q.device)
        return self._flex(q, k, v, bm, scale, (key, batch))

    # ---- layout "mask": groups as a block mask over the clip's tokens ----------------------------
    def attend_groups(self, q, k, v, groups, *, prefix_k=None, prefix_v=None, prefix_q=None,
                      want_prefix_out=False, scale, dropout_p, out=None):
        if self.layout == "batch":
            return super().attend_groups(q, k, v, groups, prefix_k=prefix_k, prefix_v=prefix_v, prefix_q=prefix_q,
                                         want_prefix_out=want_prefix_out, scale=scale, dropout_p=dropout_p, out=out)
        b, m, h, d = q.shape
        t = lambda x: x.transpose(1, 2)  # noqa: E731  (token layout -> (b, h, S, d) view)
        n_p = 0 if prefix_k is None else prefix_k.shape[1]
        kk, vv = (t(k), t(v)) if not n_p else (t(torch.cat([prefix_k, k], 1)), t(torch.cat([prefix_v, v], 1)))
        if want_prefix_out and prefix_q is None:
            raise BackendUnavailable(self.backend.name, ["needs the prefix's query to attend [prefix; group]"])
        # check the inputs (and the backend's reasons) as a plain call would
        self._check(t(q), kk, vv, dropout_p)
        if out is None:
            out = q.new_empty(b, m, h, d)
        if b == 0:
            return q.new_empty(0, n_p, h, d) if want_prefix_out else None
        device = q.device
        ng = groups.num_groups
        if ng == 1:  # one group: every query meets every key, no mask
            bm = None
            mkey = None
        else:
            gid = _group_ids(groups).to(device)

            def same_group(b_, h_, q_idx, kv_idx):
                kt = (kv_idx - n_p).clamp(min=0)
                return (kv_idx < n_p) | (gid[q_idx] == gid[kt])

            mkey = ("groups", groups, n_p)
            bm = self.block_mask(mkey, same_group, None, m, n_p + m, device)
        out.copy_(t(self._flex(t(q), kk, vv, bm, scale, mkey)))
        if not want_prefix_out:
            return None
        # per_group CLS: its G copies as query rows, row r attending to [prefix; group r // P]
        pq = t(prefix_q)  # (b, h, P, d)
        rows = per_group(pq, ng).reshape(b, ng, h, n_p, d).transpose(1, 2).reshape(b, h, ng * n_p, d)
        if ng == 1:
            bm_p = None
            pkey = None
        else:
            gid = _group_ids(groups).to(device)

            def cls_in_group(b_, h_, q_idx, kv_idx):
                kt = (kv_idx - n_p).clamp(min=0)
                return (kv_idx < n_p) | (gid[kt] == q_idx // n_p)

            pkey = ("cls_per_group", groups, n_p)
            bm_p = self.block_mask(pkey, cls_in_group, None, ng * n_p, n_p + m, device)
        yp = self._flex(rows, kk, vv, bm_p, scale, pkey)  # (b, h, G*P, d)
        return yp.reshape(b, h, ng, n_p, d).mean(2).transpose(1, 2)

    def _check(self, q, k, v, dropout_p):
        reasons = check_inputs(q, k, v, dim_head=self.dim_head, heads=self.heads)
        reasons = reasons or self.capabilities.why_not(q, k, v, dropout_p=dropout_p)
        if reasons:
            raise BackendUnavailable(self.backend.name, reasons, _describe(q, k, None))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, compile={self.compile}, layout={self.layout!r}"


BACKEND = FlexBackend(
    name="flex",
    factory=FlexCore,
    kind="exact",
    dtypes=COMPILED_DTYPES,  # float64 too with compile=False (see EAGER)
    supports_backward=True,  # on CUDA; on CPU refused with CPU_BACKWARD_REASON (FlexBackend.why_not)
    supports_dropout=False,  # FlexAttention has no attention dropout
    supports_mask=True,  # mask-defined steps (neighborhood windows) as cached block masks
    # layout "batch" (the default): the layer hands per_group CLS steps over as [CLS; group] sequences (as to
    # regular); layout "mask" declares False (MASK_LAYOUT below)
    plain_sequences=True,
    # fp32 accumulation and an online softmax, like SDPA's fused kernels: the default exact tolerances
    # (registry.EXACT_TOLERANCES) follow from the dtype; checked in float64 (eager) and float32 (compiled)
    tolerances=EXACT_TOLERANCES,
    # the forward is deterministic; the CUDA backward is not declared deterministic (not checked here)
    deterministic={"forward": True, "backward": False},
    # after regular (50): auto never picks it where regular runs, so never on CPU; not measured faster
    # anywhere yet (see docs/flex.md)
    priority=60,
    # torch.compile (its eager path too: FlexAttention wraps itself in torch.compile(backend="eager")), so never
    # under FlopCounterMode: the benchmarks count its FLOPs on regular, which makes the same calls
    compiled=Compiled(
        flops_backend="regular",
        flops_options={"layout": "batch"},
        flops_why=("with layout 'batch' flex makes regular's attention calls shape for shape (the groups as "
                   "[prefix; group] sequences, a masked step as one masked call per sequence), and torch's FLOP "
                   "formula for a flex_attention call is SDPA's (a block mask's skipped blocks are not subtracted, "
                   "as SDPA's boolean mask is counted dense)"),
    ),
    availability=_availability,
    export_why_not=("FlexAttention runs only inside torch.compile (a higher-order op that torch.export refuses "
                    "outside it, and ONNX has no such op)"),
    description="exact softmax attention via torch FlexAttention (compiled per shape; groups as batch or block mask)",
)

#: what a ``compile=False`` core takes: the same, plus float64 (FlexAttention's eager path computes in the
#: input dtype). Not registered; FlexCore checks its inputs against it.
EAGER = dataclasses.replace(BACKEND, dtypes=COMPILED_DTYPES + (torch.float64,))
# what a core with layout="mask" declares: the layer calls its token-layout entry points
MASK_LAYOUT = dataclasses.replace(BACKEND, plain_sequences=False)
EAGER_MASK_LAYOUT = dataclasses.replace(EAGER, plain_sequences=False)
