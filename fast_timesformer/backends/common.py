"""Helpers shared by the built-in backends."""
from __future__ import annotations

import torch


from .registry import _expand


def expand_prefix(prefix: torch.Tensor, batch: int) -> torch.Tensor:
    """(b, h, P, d) -> (b*g, h, P, d) with g = batch // b: the prefix repeated for each group, batch-major."""
    return _expand(prefix, batch // prefix.shape[0])


def with_prefix(k, v, prefix_k, prefix_v):
    """Concatenate the shared prefix in front of every group's keys and values (a copy of k and v)."""
    if prefix_k is None:
        return k, v
    pk = expand_prefix(prefix_k, k.shape[0])
    pv = expand_prefix(prefix_v, v.shape[0])
    return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)


def reference_attention(q, k, v, prefix_k=None, prefix_v=None, *, scale=None):
    """Plain softmax attention, written out. The definition every exact backend is tested against."""
    k, v = with_prefix(k, v, prefix_k, prefix_v)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    return torch.matmul(torch.softmax(scores, dim=-1), v)
