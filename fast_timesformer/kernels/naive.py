"""Plain-PyTorch twin of :mod:`.divided_attention`: same signature, no Triton.

The one definition of exact attention in the package is here, :func:`reference_attention` (every exact
backend is tested against it; the backends share its prefix helpers); the twin is that function with the
kernel's grouped token layout around it (softmax in float32, float64 for float64 inputs, like the
kernel's accumulators). The tests compare the kernel against this (and against a float64 evaluation of
it), forward and every gradient. Nothing here imports the rest of the package: the backends build on it.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["divided_attention", "attention_4d", "reference_attention", "with_prefix", "per_group"]


def per_group(prefix: torch.Tensor, groups: int) -> torch.Tensor:
    """(b, h, P, d) -> (b*groups, h, P, d): the prefix repeated for each group, batch-major."""
    if groups == 1:
        return prefix
    b = prefix.shape[0]
    return prefix.unsqueeze(1).expand(b, groups, *prefix.shape[1:]).reshape(b * groups, *prefix.shape[1:])


def with_prefix(k, v, prefix_k, prefix_v):
    """Concatenate the shared prefix in front of every group's keys and values (a copy of k and v)."""
    if prefix_k is None:
        return k, v
    groups = k.shape[0] // prefix_k.shape[0] if prefix_k.shape[0] else 1  # batch 0: nothing to repeat
    return torch.cat([per_group(prefix_k, groups), k], dim=2), torch.cat([per_group(prefix_v, groups), v], dim=2)


def reference_attention(q, k, v, prefix_k=None, prefix_v=None, *, scale=None):
    """Plain softmax attention, written out: the one definition of exact attention. Every exact backend is
    tested against it, and it is the Triton kernel's plain-PyTorch twin (:func:`divided_attention`
    wraps it with the kernel's grouped token layout).

    q: (B, heads, Sq, d); k, v: (B, heads, Sk, d), B = batch * groups, batch-major; prefix_k, prefix_v:
    (batch, heads, P, d), keys/values every group of a batch item attends to first. Returns (B, heads, Sq, d)
    in q's dtype. Computed in float32 for half-precision inputs (float64 for float64), like the kernel's
    accumulators::

        k = torch.cat([prefix_k.repeat_interleave(B // batch, 0), k], 2)   # likewise v
        out = torch.softmax(q @ k.transpose(-1, -2) * scale, -1) @ v
    """
    dtype = q.dtype
    acc = torch.promote_types(dtype, torch.float32)
    q, k, v = (t.to(acc) for t in (q, k, v))
    if prefix_k is not None:
        prefix_k, prefix_v = prefix_k.to(acc), prefix_v.to(acc)
    k, v = with_prefix(k, v, prefix_k, prefix_v)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    return torch.matmul(torch.softmax(scores, dim=-1), v).to(dtype)



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
