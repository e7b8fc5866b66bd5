"""Counted, deterministic cost of one step (timings on a shared CPU drift; counts do not): :class:`OpCounter`, a
``TorchDispatchMode``, sees every aten op a step runs, forward and backward, and counts GEMM calls (``mm``/``addmm``;
batched ``bmm``/``baddbmm`` apart), fused attention calls, bytes written by ops whose only work is moving data (per
op), and every aten call. What a fused kernel copies internally is not seen."""
from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .workloads import build, registered_backend

__all__ = ["OpCounter", "count_step", "count_training_step"]

ATTENTION_KERNELS = (
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention_for_cpu_backward",
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_backward",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_efficient_attention_backward",
    "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_cudnn_attention_backward",
    "_flash_attention_forward", "_flash_attention_backward",
    "_efficient_attention_forward", "_efficient_attention_backward",
)
#: ops whose only work is moving data; bytes counted = bytes of the tensor written
COPY_OPS = (
    "copy_", "cat", "stack", "clone", "_to_copy", "contiguous", "repeat", "expand_copy",
    "slice_backward", "select_backward", "unbind_backward", "narrow_copy",
    "slice_scatter", "select_scatter", "as_strided_scatter", "diagonal_scatter",
    "index_select", "gather", "index", "index_put", "index_put_", "_unsafe_index", "constant_pad_nd",
    "permute_copy", "transpose_copy", "view_copy", "_reshape_copy",
)


def _nbytes(t) -> int:
    if isinstance(t, torch.Tensor):
        return t.numel() * t.element_size()
    if isinstance(t, (list, tuple)):
        return sum(_nbytes(x) for x in t)
    return 0


class OpCounter(TorchDispatchMode):
    """Counts aten calls, GEMMs and bytes copied while active (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.calls: Counter = Counter()
        self.copy_bytes_by_op: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        self.calls[name] += 1
        if name in COPY_OPS:
            # in-place copies write their first argument; the others write their output
            self.copy_bytes_by_op[name] += _nbytes(args[0] if name.endswith("_") else out)
        return out

    def summary(self) -> dict:
        c, copied = self.calls, self.copy_bytes_by_op
        return {
            "gemm_calls": c["mm"] + c["addmm"],  # the target's figure
            "mm": c["mm"], "addmm": c["addmm"],
            "batched_gemm_calls": c["bmm"] + c["baddbmm"],
            "attention_kernel_calls": sum(c[n] for n in ATTENTION_KERNELS),
            "copy_bytes": sum(copied.values()),
            "copy_cat_bytes": copied["copy_"] + copied["cat"],
            "copy_bytes_by_op": dict(copied.most_common()),
            "copy_calls_by_op": {k: c[k] for k in sorted(copied)},
            "aten_calls": sum(c.values()),
        }


def count_step(step) -> dict:
    """Run ``step`` once under :class:`OpCounter`; returns its :meth:`~OpCounter.summary`."""
    with OpCounter() as c:
        step()
    return c.summary()


def count_training_step(workload) -> dict:
    """Counts of one training step (forward, mean of the logits, backward) of a
    :class:`~fast_timesformer.bench.workloads.Workload` (impl "ours" or "hf"), after one uncounted step (lazy
    initialisation). A compiled backend (``Backend.compiled``) is refused: it cannot run under a TorchDispatchMode,
    and its uncompiled path would issue other ops."""
    be = registered_backend(workload.backend) if workload.impl == "ours" else None
    if be is not None and be.compiled is not None:
        raise ValueError(f"backend {workload.backend!r} runs through torch.compile, which cannot run under "
                         "OpCounter (a TorchDispatchMode): its ops are not counted (count a backend that runs "
                         "eagerly, e.g. regular)")
    built = build(workload.replace(mode="fwd+bwd"))
    built.step()
    out = count_step(built.step)
    out["notes"] = list(built.notes)
    return out
