"""A plain float64 TimeSformer written from the paper / official code, for tests.

It reads the parameters of a :class:`fast_timesformer.models.TimeSformer` by their official names and
recomputes the forward pass with explicit loops over groups. Which tokens form a group is derived here
from each token's (t, y, x) coordinates, not from ``TokenGroups``; the CLS rules are written out per
step. So it checks the model's strides, CLS handling, residuals and embeddings rather than repeating
them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _coords(f, gh, gw):
    t = torch.arange(f).repeat_interleave(gh * gw)
    y = torch.arange(gh).repeat_interleave(gw).repeat(f)
    x = torch.arange(gw).repeat(f * gh)
    return t, y, x


def group_ids(step: str, f: int, gh: int, gw: int) -> torch.Tensor:
    """Group id of every patch token (frame-major order) for an attention step, from coordinates."""
    t, y, x = _coords(f, gh, gw)
    half_h, half_w = max(gh // 2, 1), max(gw // 2, 1)
    return {
        "time": y * gw + x,  # one patch position, all frames
        "space": t,  # one frame
        "joint": torch.zeros_like(t),
        "width": t * gh + y,  # one row of one frame
        "height": t * gw + x,  # one column of one frame
        "local": (y // half_h) * 2 + (x // half_w),  # quadrant windows over all frames
        "global": (t % 2) * 4 + (y % 2) * 2 + (x % 2),  # stride-2 phases along t, h, w
    }[step]


def neighborhood_allowed(f: int, gh: int, gw: int, window) -> list:
    """allowed[i][j]: patch j lies in patch i's window (NATTEN: per axis the ``w`` positions starting at
    ``i - w // 2``, moved inward at the borders; a window of at least the axis covers it), from loops."""
    def seen(i, size, w):
        w = min(w, size)
        start = min(max(i - w // 2, 0), size - w)
        return set(range(start, start + w))

    t, y, x = (c.tolist() for c in _coords(f, gh, gw))
    m = f * gh * gw
    return [[t[j] in seen(t[i], f, window[0]) and y[j] in seen(y[i], gh, window[1]) and x[j] in seen(x[i], gw, window[2])
             for j in range(m)] for i in range(m)]


def _ln(x, norm):
    return F.layer_norm(x, x.shape[-1:], norm.weight.double(), norm.bias.double(), norm.eps)


def _linear(x, lin):
    return x @ lin.weight.double().T + (0 if lin.bias is None else lin.bias.double())


def attention(layer, x, ids, cls_rule: str, allowed=None):
    """x (b, 1 + M, D) float64; ids (M,) group ids; cls_rule: exclude / per_group / global. ``allowed``: an
    (M, M) nested list, patch i attends only to the patches j of its group with allowed[i][j] (and the CLS
    unless excluded); the CLS query is not restricted."""
    b, length, _ = x.shape
    h, d = layer.heads, layer.dim_head
    qkv = _linear(x, layer.qkv).view(b, length, 3, h, d)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (b, L, h, d)
    out = torch.zeros(b, length, h, d, dtype=x.dtype)
    cls_outs = []

    def attend(qi, ki):
        qq, kk, vv = q[:, qi].transpose(1, 2), k[:, ki].transpose(1, 2), v[:, ki].transpose(1, 2)
        w = torch.softmax(qq @ kk.transpose(-1, -2) * layer.scale, -1)
        return (w @ vv).transpose(1, 2)  # (b, len(qi), h, d)

    for g in ids.unique():
        idx = (torch.nonzero(ids == g).flatten() + 1).tolist()
        tokens = idx if cls_rule == "exclude" else [0] + idx
        y = attend(tokens, tokens)
        out[:, idx] = y[:, -len(idx):]
        if allowed is not None:  # each patch query over its own keys
            for i in idx:
                keys = [j for j in idx if allowed[i - 1][j - 1]]
                out[:, i] = attend([i], keys if cls_rule == "exclude" else [0] + keys)[:, 0]
        if cls_rule == "per_group":
            cls_outs.append(y[:, 0])
    if cls_rule == "per_group":
        out[:, 0] = torch.stack(cls_outs).mean(0)
    elif cls_rule == "global":
        out[:, :1] = attend([0], list(range(length)))
    return _linear(out.flatten(2), layer.proj)


def _mlp(x, mlp):
    return _linear(F.gelu(_linear(x, mlp.fc1)), mlp.fc2)


def _cls_rule(cls_mode, step):
    if cls_mode == "official":
        return "exclude" if step == "time" else "per_group"
    return cls_mode


def block(blk, x, f, gh, gw, cls_mode, window=None):
    prefixes = {"time": "temporal", "local": "local", "width": "width"}
    steps = [s.name for s in blk.steps]
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        norm = blk.norm1 if last else getattr(blk, f"{prefixes[step]}_norm1")
        attn = blk.attn if last else getattr(blk, f"{prefixes[step]}_attn")
        rule = _cls_rule(cls_mode, step)
        if step == "neighborhood":  # one group, each patch masked to its window
            ids, allowed = torch.zeros(f * gh * gw, dtype=torch.long), neighborhood_allowed(f, gh, gw, window)
        else:
            ids, allowed = group_ids(step, f, gh, gw), None
        y = attention(attn, _ln(x, norm), ids, rule, allowed)
        if not last:
            y = _linear(y, getattr(blk, f"{prefixes[step]}_fc"))
            if rule == "exclude":
                y[:, 0] = 0  # the CLS is no part of the step
        x = x + y
    return x + _mlp(_ln(x, blk.norm2), blk.mlp)


def embed(model, video, pos=None, time=None):
    """(b, f, c, h, w) -> patch tokens (b, f, n, D) with pos (and time) embeddings, and the CLS (1, 1, D)."""
    b, f = video.shape[:2]
    pos = model.pos_embed.double() if pos is None else pos.double()
    conv = model.patch_embed.proj
    x = F.conv2d(video.flatten(0, 1).double(), conv.weight.double(), conv.bias.double(), stride=conv.stride)
    x = x.flatten(2).transpose(1, 2) + pos[:, 1:]
    x = x.view(b, f, -1, x.shape[-1])
    if model.time_embed is not None:
        time = model.time_embed.double() if time is None else time.double()
        x = x + time[0][None, :, None]
    return x, model.cls_token.double() + pos[:, :1]


def forward(model, video, pos=None, time=None) -> torch.Tensor:
    """Logits in float64. ``pos``/``time`` override the embeddings (for other sizes)."""
    b, f, _, hh, ww = video.shape
    ph, pw = model.patch_size
    gh, gw = hh // ph, ww // pw
    patches, cls = embed(model, video, pos, time)
    scheme = model.scheme.name
    if scheme == "space_only" and model.cls_mode == "official":
        # every frame its own sequence with its own CLS through all blocks; average at the end
        frames = []
        for t in range(f):
            x = torch.cat([cls.expand(b, 1, -1), patches[:, t]], 1)
            for blk in model.blocks:
                x = block(blk, x, 1, gh, gw, "per_group")
            frames.append(x)
        x = torch.stack(frames).mean(0)
    else:
        x = torch.cat([cls.expand(b, 1, -1), patches.flatten(1, 2)], 1)
        window = dict(model.scheme.options).get("window")
        for blk in model.blocks:
            x = block(blk, x, f, gh, gw, model.cls_mode, window)
    feat = _ln(x, model.norm)[:, 0]
    return _linear(feat, model.head)
