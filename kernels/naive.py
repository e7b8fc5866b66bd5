"""Plain-PyTorch twin of :mod:`.divided_attention`: same signature, no Triton.

The tests compare the kernel against this (and against a float64 evaluation of it), forward and every
gradient. Softmax is computed in float32 (float64 for float64 inputs), like the kernel's accumulators.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["divided_attention", "attention_4d"]


def divided_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      prefix_k: Optional[torch.Tensor] = None, prefix_v: Optional[torch.Tensor] = None, *,
                      scale: Optional[float] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Softmax attention within groups, in grouped token layout.

    q: (batch, groups, Sq, heads, dim); k, v: (batch, groups, Sk, heads, dim); prefix_k/prefix_v:
    (batch, P, heads, dim), keys/values every group of a batch item attends to first. Returns
    (batch, groups, Sq, heads, dim) (written into ``out`` too when given).
    """
    b, g, _, h, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf, vf = (t.to(acc).permute(0, 1, 3, 2, 4) for t in (q, k, v))  # (b, g, h, S, d)
    if prefix_k is not None:
        pk, pv = (t.to(acc).permute(0, 2, 1, 3).unsqueeze(1).expand(b, g, h, -1, d) for t in (prefix_k, prefix_v))
        kf, vf = torch.cat([pk, kf], 3), torch.cat([pv, vf], 3)
    probs = torch.softmax(qf @ kf.transpose(-1, -2) * scale, dim=-1)
    y = (probs @ vf).permute(0, 1, 3, 2, 4).to(q.dtype)
    if out is not None:
        out.copy_(y)
        return out
    return y


def attention_4d(q, k, v, prefix_k=None, prefix_v=None, *, scale=None):
    """The registry contract: q (B, heads, Sq, d), k/v (B, heads, Sk, d), B = batch * groups batch-major,
    prefix (batch, heads, P, d). Returns (B, heads, Sq, d)."""
    batch = q.shape[0] if prefix_k is None else prefix_k.shape[0]
    five = lambda t: t.unflatten(0, (batch, t.shape[0] // batch)).transpose(2, 3)  # noqa: E731
    pk = None if prefix_k is None else prefix_k.transpose(1, 2)
    pv = None if prefix_v is None else prefix_v.transpose(1, 2)
    y = divided_attention(five(q), five(k), five(v), pk, pv, scale=scale)
    return y.transpose(2, 3).flatten(0, 1)
