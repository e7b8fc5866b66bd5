"""Counted, deterministic cost figures of one step (timings on a shared CPU drift; counts do not):
:class:`OpCounter`, a ``TorchDispatchMode`` that sees every aten op a step runs, forward and backward, and
counts GEMM calls (``mm``/``addmm``, and batched ``bmm``/``baddbmm`` apart), fused attention calls, bytes
written by ops whose only work is moving data (per op), and every aten call. What a fused kernel copies
internally is not seen. :func:`count_training_step` counts one training step of a :class:`Workload` (the
``counts`` suite: ours vs Hugging Face)."""
from __future__ import annotations

from collections import Counter
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["OpCounter", "count_step", "count_training_step"]

aten = torch.ops.aten

LINEAR_GEMMS = ("mm", "addmm")
BATCHED_GEMMS = ("bmm", "baddbmm")
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

    # ---- the figures ---------------------------------------------------------------------------
    @property
    def linear_gemms(self) -> int:
        return sum(self.calls[n] for n in LINEAR_GEMMS)

    @property
    def batched_gemms(self) -> int:
        return sum(self.calls[n] for n in BATCHED_GEMMS)

    @property
    def attention_calls(self) -> int:
        return sum(self.calls[n] for n in ATTENTION_KERNELS)

    @property
    def copy_bytes(self) -> int:
        return sum(self.copy_bytes_by_op.values())

    def summary(self) -> dict:
        return {
            "gemm_calls": self.linear_gemms,  # mm + addmm: the target's figure
            "mm": self.calls["mm"], "addmm": self.calls["addmm"],
            "batched_gemm_calls": self.batched_gemms,
            "attention_kernel_calls": self.attention_calls,
            "copy_bytes": self.copy_bytes,
            "copy_cat_bytes": self.copy_bytes_by_op["copy_"] + self.copy_bytes_by_op["cat"],
            "copy_bytes_by_op": {k: v for k, v in sorted(self.copy_bytes_by_op.items(), key=lambda kv: -kv[1])},
            "copy_calls_by_op": {k: self.calls[k] for k in sorted(self.copy_bytes_by_op)},
            "aten_calls": sum(self.calls.values()),
        }


def count_step(step: Callable[[], object]) -> dict:
    """Run ``step`` once under :class:`OpCounter`; returns its :meth:`~OpCounter.summary`."""
    with OpCounter() as c:
        step()
    return c.summary()


def count_training_step(workload) -> dict:
    """Counts of one training step (forward, mean of the logits, backward) of ``workload``
    (:class:`~fast_timesformer.bench.workloads.Workload`; impl "ours" or "hf", mode forced to fwd+bwd).
    One step runs first, uncounted, so that lazy initialisation is not counted. A backend that runs through
    torch.compile (``Backend.compiled``) is refused with a ValueError: it cannot run under :class:`OpCounter`
    (a TorchDispatchMode), and its uncompiled path would issue other ops than the ones it runs."""
    from .workloads import build

    if workload.impl == "ours":
        from ..backends import get_backend, list_backends

        if workload.backend in list_backends() and get_backend(workload.backend).compiled is not None:
            raise ValueError(f"backend {workload.backend!r} runs through torch.compile, which cannot run under "
                             "OpCounter (a TorchDispatchMode): its ops are not counted (count a backend that runs "
                             "eagerly, e.g. regular)")
    w = workload.replace(mode="fwd+bwd")
    built = build(w)
    built.step()
    out = count_step(built.step)
    out["notes"] = list(built.notes)
    return out
