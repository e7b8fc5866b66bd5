"""Helpers shared by the registry and the built-in backends."""
from __future__ import annotations

import torch


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
    tested against it, and it is the Triton kernel's plain-PyTorch twin (:mod:`fast_timesformer.kernels.naive`
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


def empty_attention(q, k, v, prefix_k=None, prefix_v=None):
    """The (0, heads, Sq, d) result of attention over an empty batch, connected to every input so that
    backward runs and gives empty gradients. For the kernel backends (triton, xformers), whose launches
    need a non-empty grid; the plain-torch backends compute batch 0 as it comes."""
    out = q * 0
    for t in (k, v, prefix_k, prefix_v):
        if t is not None:
            out = out + t.sum() * 0  # the sum over an empty batch is 0
    return out
