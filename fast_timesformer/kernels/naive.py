"""Plain-PyTorch twin of :mod:`.divided_attention`: same signature, no Triton.

There is one definition of exact attention in the package,
:func:`fast_timesformer.backends.common.reference_attention`; the twin is that function with the kernel's
grouped token layout around it (softmax in float32, float64 for float64 inputs, like the kernel's
accumulators). The tests compare the kernel against this (and against a float64 evaluation of it),
forward and every gradient.
"""
from __future__ import annotations

from typing import Optional

import torch

from fast_timesformer.backends.common import reference_attention

__all__ = ["divided_attention", "attention_4d"]


def divided_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      prefix_k: Optional[torch.Tensor] = None, prefix_v: Optional[torch.Tensor] = None, *,
                      scale: Optional[float] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Softmax attention within groups, in grouped token layout.

    q: (batch, groups, Sq, heads, dim); k, v: (batch, groups, Sk, heads, dim); prefix_k/prefix_v:
    (batch, P, heads, dim), keys/values every group of a batch item attends to first. Returns
    (batch, groups, Sq, heads, dim) (written into ``out`` too when given).
    """
    b, g = q.shape[:2]
    four = lambda t: t.transpose(2, 3).flatten(0, 1)  # noqa: E731  (b, g, S, h, d) -> (b*g, h, S, d)
    pk = None if prefix_k is None else prefix_k.transpose(1, 2)  # (b, h, P, d)
    pv = None if prefix_v is None else prefix_v.transpose(1, 2)
    y = reference_attention(four(q), four(k), four(v), pk, pv, scale=scale)
    y = y.unflatten(0, (b, g)).transpose(2, 3)
    if out is not None:
        out.copy_(y)
        return out
    return y


def attention_4d(q, k, v, prefix_k=None, prefix_v=None, *, scale=None):
    """The registry contract: q (B, heads, Sq, d), k/v (B, heads, Sk, d), B = batch * groups batch-major,
    prefix (batch, heads, P, d). Returns (B, heads, Sq, d). This is :func:`reference_attention` itself."""
    return reference_attention(q, k, v, prefix_k, prefix_v, scale=scale)
