"""``triton``: the fused divided-attention kernel (:mod:`fast_timesformer.kernels.divided_attention`).

In a :class:`~fast_timesformer.attention.DividedAttention` layer the kernel reads q, k, v where the qkv
projection left them, (b, M, 3, heads, d), and writes its output into the layer's output buffer: temporal
and spatial groups (one group axis and one sequence axis, any strides) need no rearrange, no copy and
no concatenation of the CLS token. Groups with several axes (axial, sparse local-global) go through the
default split path, which calls the same kernel on (B, heads, S, d) views.

The kernel module is imported on first use, so ``TRITON_INTERPRET=1`` (CPU, for tests) can be set any
time before that. On CPU without it the backend refuses with a reason, and ``auto`` never picks it there.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import torch

from .common import empty_attention
from .registry import AttentionCore, Backend, BackendUnavailable, _describe, check_inputs

_KERNELS = "fast_timesformer.kernels.divided_attention"  # its name in sys.modules: imported yet?
NEED_GPU = ("Triton kernels need a CUDA GPU (set TRITON_INTERPRET=1 to run on CPU, slowly, for tests)")


def _kernels():
    from ..kernels import divided_attention  # on first use: TRITON_INTERPRET is read when it is imported

    return divided_attention


def _interpreting() -> bool:
    """Whether the kernels run (or will run, once imported) in Triton's CPU interpreter."""
    mod = sys.modules.get(_KERNELS)
    if mod is not None:
        return mod.INTERPRETED
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _availability() -> list:
    if importlib.util.find_spec("triton") is None:
        return []  # reported by ``requires``
    if not torch.cuda.is_available() and not _interpreting():
        return [NEED_GPU]
    return []


def _checks(q, k, v, prefix_k, prefix_v, dropout_p) -> list:
    out = []
    dev = q.device.type
    if dev == "cpu" and not _interpreting():
        mod = sys.modules.get(_KERNELS)
        out.append(NEED_GPU if mod is None else
                   "the Triton kernels were imported without TRITON_INTERPRET=1 and cannot run on CPU "
                   "(set it before fast_timesformer.kernels is first used)")
    if dev == "cpu" and q.dtype == torch.bfloat16:
        out.append("bfloat16 on CPU: the Triton interpreter has no bfloat16 arithmetic (use float32/float16)")
    if q.shape[1] > 65535 or (prefix_k is not None and prefix_k.shape[0] > 65535):
        out.append("heads and the prefix's batch must each be <= 65535 (CUDA grid limit)")
    return out


class TritonCore(AttentionCore):
    """Stateless; calls the fused kernel (imported when the core is built, outside any compiled region)."""

    def __init__(self, backend, dim_head, heads):
        super().__init__(backend, dim_head, heads)
        self._kern = _kernels()  # imported now, outside any compiled region

    # a module object cannot be pickled: copies (torch.save(model), deepcopy) import it again
    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_kern", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._kern = _kernels()

    def attend(self, q, k, v, prefix_k, prefix_v, *, scale, dropout_p):
        if q.shape[0] == 0:  # no groups (batch 0): the kernel's launch grid would be empty
            return empty_attention(q, k, v, prefix_k, prefix_v)
        return self._kern.attention_4d(q, k, v, prefix_k, prefix_v, scale=scale)

    def _refuse_if_needed(self, q, k, v, prefix_k, prefix_v, dropout_p):
        t = lambda x: None if x is None else x.transpose(1, 2)  # noqa: E731  (token -> (b, h, S, d) views)
        args = (t(q), t(k), t(v), t(prefix_k), t(prefix_v))
        reasons = check_inputs(*args, dim_head=self.dim_head, heads=self.heads)
        reasons += self.backend.why_not(*args, dropout_p=dropout_p)
        if reasons:
            raise BackendUnavailable(self.backend.name, reasons, _describe(args[0], args[1], args[3]))

    def attend_groups(self, q, k, v, groups, *, prefix_k=None, prefix_v=None, prefix_q=None,
                      want_prefix_out=False, scale, dropout_p, out=None):
        axes = _single_axes(groups)
        if axes is None:  # several group/seq axes: split into (B, h, S, d) (views where possible)
            return super().attend_groups(q, k, v, groups, prefix_k=prefix_k, prefix_v=prefix_v, prefix_q=prefix_q,
                                         want_prefix_out=want_prefix_out, scale=scale, dropout_p=dropout_p, out=out)
        groups.check_tokens(q.shape[1])
        self._refuse_if_needed(q, k, v, prefix_k, prefix_v, dropout_p)
        kern = self._kern
        q5, k5, v5 = (kern.token_view(x, *axes) for x in (q, k, v))
        out5 = None if out is None else kern.token_view(out, *axes)
        # training on a fused projection: hand the kernel the whole (b, M, 3*h*d) buffer, so that its
        # backward writes the projection's gradient in one piece (not three, stacked by autograd)
        src = None
        if not want_prefix_out and not torch.compiler.is_compiling() and torch.is_grad_enabled():
            src = kern.fused_qkv_source(q, k, v)
        if src is not None:
            y5 = kern.divided_attention_qkv(src, q.shape[2], *axes, prefix_k, prefix_v, scale=scale, out=out5)
        else:
            y5 = kern.divided_attention(q5, k5, v5, prefix_k, prefix_v, scale=scale, out=out5)
        if out is None:  # the kernel's output is in token order: flatten back to (b, M, h, d)
            out = q.new_empty(q.shape)
            kern.token_view(out, *axes).copy_(y5)
        if not want_prefix_out:
            return None
        if prefix_q is None:
            raise ValueError("want_prefix_out needs prefix_q (the prefix tokens' queries)")
        b, g = q5.shape[:2]
        pq5 = prefix_q.unsqueeze(1).expand(b, g, *prefix_q.shape[1:])  # every group gets the CLS query
        yp = kern.divided_attention(pq5, k5, v5, prefix_k, prefix_v, scale=scale)  # (b, g, P, h, d)
        return yp.float().mean(1).to(q.dtype)


def _single_axes(groups):
    """((G, stride), (S, stride)) when the groups have at most one non-trivial axis of each kind."""
    ga = [a for a in groups.group if a[0] > 1]
    sa = [a for a in groups.seq if a[0] > 1]
    if len(ga) > 1 or len(sa) > 1:
        return None
    return (ga[0] if ga else (1, 0)), (sa[0] if sa else (1, 0))


def _priority() -> int:
    """30 (before xformers and regular) where the kernels run compiled on CUDA; 150 (after every exact
    backend) on a CPU-only machine or while the interpreter is on, so ``auto`` never routes other code to
    the interpreter. Asked each time ``auto`` orders the backends."""
    return 30 if torch.cuda.is_available() and not _interpreting() else 150


BACKEND = Backend(
    name="triton",
    factory=TritonCore,
    kind="exact",
    devices=("cuda", "cpu"),  # cpu only under TRITON_INTERPRET=1 (tests); _checks says so
    dtypes=(torch.float32, torch.float16, torch.bfloat16),
    supports_backward=True,
    supports_dropout=False,
    supports_prefix=True,
    supports_cross=True,
    max_head_dim=128,
    requires=("triton",),
    # float32 accumulation in another order than SDPA (online softmax over key blocks): float32 2e-5, as
    # for every exact backend. In float16/bfloat16 the probabilities are rounded to the input dtype before
    # the P @ V matmul (one more rounding per term than SDPA's output rounding): float16 3e-3 (u = 4.9e-4,
    # ~6 ulp, checked against regular in tests/test_triton_backend.py); bfloat16 the same count of its ulp
    # (u = 3.9e-3): 2.4e-2.
    tolerances={torch.float32: (2e-5, 2e-5), torch.float16: (3e-3, 3e-3), torch.bfloat16: (2.4e-2, 2.4e-2)},
    # the backward is one fused kernel per group with per-program sums, no atomics (fast_timesformer/kernels/divided_attention.py)
    deterministic=True,
    priority=_priority,  # 30 on CUDA, 150 without CUDA or under the interpreter
    description="fused Triton divided attention on token layout (no rearrange copies), fwd+bwd; no "
                "attention dropout; CPU only under TRITON_INTERPRET=1",
    checks=_checks,
    availability=_availability,
    export_why_not="a Triton kernel: ONNX has no such op, and a torch.export program would need CUDA and Triton",
)
