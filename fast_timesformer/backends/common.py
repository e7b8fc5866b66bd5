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
    """Plain softmax attention, written out. The definition every exact backend is tested against."""
    k, v = with_prefix(k, v, prefix_k, prefix_v)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def empty_attention(q, k, v, prefix_k=None, prefix_v=None):
    """The (0, heads, Sq, d) result of attention over an empty batch, connected to every input so that
    backward runs and gives empty gradients. For the kernel backends (triton, xformers), whose launches
    need a non-empty grid; the plain-torch backends compute batch 0 as it comes."""
    out = q * 0
    for t in (k, v, prefix_k, prefix_v):
        if t is not None:
            out = out + t.sum() * 0  # the sum over an empty batch is 0
    return out
