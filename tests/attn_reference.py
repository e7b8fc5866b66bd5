"""Plain float64 references for attention tests, written with explicit token index lists (no strides,
no backend code), so they check the library rather than repeat it."""
from __future__ import annotations

import torch


def softmax_attention(q, k, v, scale=None):
    """q: (..., Sq, d), k/v: (..., Sk, d) -> (..., Sq, d), all in float64."""
    q, k, v = q.double(), k.double(), v.double()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    w = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)
    return w @ v


def grouped_reference(q, k, v, prefix_k=None, prefix_v=None, scale=None):
    """The backend contract, written out per row: q (B, h, Sq, d), prefix (b, h, P, d), B = b * groups."""
    out = []
    groups = q.shape[0] // (1 if prefix_k is None else prefix_k.shape[0])
    for i in range(q.shape[0]):
        kk, vv = k[i], v[i]
        if prefix_k is not None:
            kk = torch.cat([prefix_k[i // groups], kk], dim=1)
            vv = torch.cat([prefix_v[i // groups], vv], dim=1)
        out.append(softmax_attention(q[i], kk, vv, scale))
    return torch.stack(out)


def divided_reference(layer, x, group_index, cls: str):
    """DividedAttention's documented semantics in float64 with explicit loops.

    group_index: (G, S) patch-token indices of each group (CLS excluded). cls: global / per_group /
    exclude / none.
    """
    x = x.double()
    h, d = layer.heads, layer.dim_head
    w, bias = layer.qkv.weight.double(), layer.qkv.bias
    qkv = x @ w.T + (0 if bias is None else bias.double())
    b, length, _ = x.shape
    qkv = qkv.view(b, length, 3, h, d)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (b, h, L, d)
    off = 0 if cls == "none" else 1
    out = torch.zeros(b, h, length, d, dtype=torch.float64)
    cls_rows = []
    for rows in group_index.tolist():
        rows = [r + off for r in rows]
        keys = rows if cls in ("none", "exclude") else [0] + rows
        out[:, :, rows] = softmax_attention(q[:, :, rows], k[:, :, keys], v[:, :, keys], layer.scale)
        if cls == "per_group":
            cls_rows.append(softmax_attention(q[:, :, :1], k[:, :, keys], v[:, :, keys], layer.scale))
    if cls == "per_group":
        out[:, :, :1] = torch.stack(cls_rows).mean(0)
    elif cls == "global":
        out[:, :, :1] = softmax_attention(q[:, :, :1], k, v, layer.scale)
    y = out.transpose(1, 2).reshape(b, length, h * d)
    return y @ layer.proj.weight.double().T + layer.proj.bias.double()
