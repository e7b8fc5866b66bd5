"""``xformers``: ``xformers.ops.memory_efficient_attention`` in BMHK layout (CUDA only).

q/k/v arrive as (B, heads, S, d) and are handed over as their (B, S, heads, d) transposed views. Heads stay
a separate axis, which avoids the BMK grid limit at batch >= 65536 (REFERENCE.md §4). Where xformers
cannot run (no CUDA, C++ ops not built for this torch, dtype) ``why_not`` relays xformers' own reasons.
"""
from __future__ import annotations

import contextlib
import functools
import io
import warnings

import torch

from ..kernels.naive import with_prefix
from .common import empty_attention
from .registry import EXACT_TOLERANCES, AttentionCore, Backend


@functools.lru_cache(maxsize=None)
def _import_fmha():
    """Import xformers quietly (it prints a warning when its C++ ops don't match this torch)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        from xformers.ops import fmha  # noqa: F401
    return fmha


def _availability():
    try:
        _import_fmha()
    except Exception as e:  # broken install
        return [f"xformers failed to import: {type(e).__name__}: {e}"]
    if not torch.cuda.is_available():
        return ["no CUDA device on this machine (memory_efficient_attention has no CPU operator)"]
    return []


def _checks(q, k, v, prefix_k, prefix_v, dropout_p):
    fmha = _import_fmha()
    # a prefix only lengthens the keys; operator support does not depend on that, so k/v are checked as given
    try:
        from xformers.ops.fmha.dispatch import _dispatch_fw

        inp = fmha.Inputs(query=q.transpose(1, 2), key=k.transpose(1, 2), value=v.transpose(1, 2), p=dropout_p)
        _dispatch_fw(inp, False)
    except NotImplementedError as e:
        lines = [ln.strip() for ln in str(e).splitlines()]
        reasons = [ln for ln in lines if ln and not ln.startswith(("query", "key", "value", "attn_bias", "p ",
                                                                    "No operator", "`"))]
        return ["xformers has no operator for these inputs: " + "; ".join(dict.fromkeys(reasons))]
    except Exception as e:  # private dispatch API moved: let the real call decide
        return [] if isinstance(e, (ImportError, AttributeError)) else [f"xformers refused: {e}"]
    return []


class XformersCore(AttentionCore):
    def attend(self, q, k, v, prefix_k, prefix_v, *, scale, dropout_p):
        if q.shape[0] == 0:  # batch 0: nothing to launch
            return empty_attention(q, k, v, prefix_k, prefix_v)
        fmha = _import_fmha()
        k, v = with_prefix(k, v, prefix_k, prefix_v)
        out = fmha.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              p=dropout_p, scale=scale)
        return out.transpose(1, 2)


BACKEND = Backend(
    name="xformers",
    factory=XformersCore,
    kind="exact",
    devices=("cuda",),
    dtypes=(torch.float32, torch.float16, torch.bfloat16),
    supports_dropout=True,
    requires=("xformers",),
    # float32 accumulation in the input dtype's tiles: the default exact tolerances for float32 (2e-5)
    # and bfloat16; float16 2e-3 (outputs rounded to float16, u = 4.9e-4, after float32 accumulation)
    tolerances={dt: tol for dt, tol in EXACT_TOLERANCES.items() if dt != torch.float64},
    # cutlass forward is deterministic; its backward accumulates dk/dv across query blocks with atomics
    deterministic={"forward": True, "backward": False},
    priority=40,
    description="xformers memory_efficient_attention (BMHK), CUDA only",
    checks=_checks,
    availability=_availability,
    export_why_not="xformers' CUDA kernels: ONNX has no such op, and a torch.export program would need CUDA and xformers",
)
