"""Initialising a TimeSformer from an image ViT (timm layout): the official recipe, with a report.

The official TimeSformer starts from an ImageNet ViT: patch embedding, position embedding, every
block's spatial attention, norms and MLP are copied; the temporal attention of each block starts as a
copy of its spatial attention (``temporal_init="copy"``) while ``temporal_fc`` stays zero, so every block
first behaves exactly like the ViT block; ``time_embed`` starts at zero. ``temporal_init="fresh"``
leaves the extra attention steps at their own initialisation.

The same rule covers every scheme: the last attention step of a block (``norm1``/``attn``) takes the
ViT's attention; each earlier step (``temporal_*``, ``local_*``, ``width_*``) is a copy or fresh.

Source keys (timm ``VisionTransformer``): ``cls_token``, ``pos_embed`` (1, 1 + N, D),
``patch_embed.proj.{weight,bias}``, ``blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``,
``norm``, ``head``. The position grid is resampled in 2-D (bicubic) when the ViT's grid differs from the
model's; the official code resizes the flattened grid with 1-D nearest interpolation instead.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Tuple

import torch
from torch import nn

from .._names import unknown_name_error
from .resample import resample_pos_embed, to_hw

__all__ = ["load_vit_weights_into_timesformer", "TransferReport", "TEMPORAL_INITS"]

logger = logging.getLogger(__name__)

TEMPORAL_INITS = ("copy", "fresh")
_BLOCK_PARTS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")


@dataclass
class TransferReport:
    """``copied``: (model key, ViT key); ``resampled``: (model key, ViT shape, model shape);
    ``skipped``: (ViT key, reason); ``left_at_init``: model keys nothing was copied into."""

    copied: List[Tuple[str, str]] = field(default_factory=list)
    resampled: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    left_at_init: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    temporal_init: str = "copy"

    def describe(self, limit: int = 12) -> str:
        def listing(name, items):
            more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
            return f"  {name} ({len(items)}): {', '.join(items[:limit])}{more}"

        own = [k for k, src in self.copied if k == src]
        renamed = [f"{src} -> {k}" for k, src in self.copied if k != src]
        lines = [f"ViT transfer (temporal_init={self.temporal_init!r}): {len(self.copied)} tensors copied"]
        if own:
            lines.append(listing("copied", own))
        if renamed:
            lines.append(listing("copied into other steps", renamed))
        if self.resampled:
            lines.append(listing("resampled", [f"{k} {tuple(a)} -> {tuple(b)}" for k, a, b in self.resampled]))
        if self.skipped:
            lines.append(listing("skipped", [f"{k} ({why})" for k, why in self.skipped]))
        if self.left_at_init:
            lines.append(listing("left at init", self.left_at_init))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    __str__ = describe


def _vit_state(vit: Any) -> Dict[str, torch.Tensor]:
    if isinstance(vit, nn.Module) or (hasattr(vit, "state_dict") and not isinstance(vit, Mapping)):
        state = vit.state_dict()
    elif isinstance(vit, Mapping):
        state = vit
        for key in ("model", "state_dict", "model_state"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    else:
        raise TypeError(f"vit must be a ViT module (with .state_dict()) or a timm-format state dict, got "
                        f"{type(vit).__name__}")
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    for key in ("pos_embed", "patch_embed.proj.weight"):
        if key not in state:
            raise ValueError(f"not a timm ViT state dict: {key!r} is missing (keys: {sorted(state)[:8]} ...)")
    return state


def _source_layout(vit: Any, state: Mapping[str, torch.Tensor], vit_grid) -> Tuple[int, Tuple[int, int]]:
    """(position rows before the patches, patch grid) of the ViT's ``pos_embed``.

    timm: [CLS] + patches; DeiT: [CLS, DIST] + patches; ``no_embed_class=True``: patches only."""
    rows = state["pos_embed"].shape[1]
    grid = vit_grid if vit_grid is not None else getattr(getattr(vit, "patch_embed", None), "grid_size", None)
    if grid is not None:
        h, w = to_hw(grid, "vit_grid")
        prefix = rows - h * w
        if prefix not in (0, 1, 2):
            raise ValueError(f"the ViT's pos_embed has {rows} rows, which does not fit a {h}x{w} grid")
        return prefix, (h, w)
    tokens = int("cls_token" in state) + int("dist_token" in state)
    for prefix in (tokens, 0):
        side = math.isqrt(rows - prefix)
        if side * side == rows - prefix:
            return prefix, (side, side)
    raise ValueError(f"the ViT's pos_embed has {rows} rows: not a square grid after {tokens} prefix tokens; "
                     "pass vit_grid=(h, w)")


def load_vit_weights_into_timesformer(model: nn.Module, vit: Any, *, temporal_init: str = "copy",
                                      vit_grid=None, copy_head: bool = True) -> TransferReport:
    """Copy an image ViT's weights into ``model`` (a :class:`TimeSformer`) in place; returns a report
    (also set as ``model.transfer_report``).

    Args:
        vit: a timm ``VisionTransformer`` (anything with ``.state_dict()``) or a timm-format state dict.
        temporal_init: ``"copy"`` (official: every earlier attention step of a block starts as a copy of
            the ViT's attention and norm1) or ``"fresh"`` (left at the model's initialisation).
        vit_grid: the ViT's patch grid (h, w) when it is not square and ``vit`` has no
            ``patch_embed.grid_size``.
        copy_head: copy ``head`` when its shape fits (e.g. a same-class fine-tune); skipped otherwise.

    Widths must agree (``dim``, MLP width); a ViT with more blocks than the model has its extra blocks
    skipped, one with fewer leaves the model's last blocks at init (both reported).
    """
    if temporal_init not in TEMPORAL_INITS:
        raise unknown_name_error("temporal_init", temporal_init, TEMPORAL_INITS)
    state = _vit_state(vit)
    own = model.state_dict()
    if "pos_embed" not in own or not hasattr(model, "blocks"):
        raise TypeError(f"model must be a TimeSformer (with pos_embed and blocks), got {type(model).__name__}")
    dim = own["pos_embed"].shape[-1]
    if state["pos_embed"].shape[-1] != dim:
        raise ValueError(f"the ViT's width is {state['pos_embed'].shape[-1]}, the model's dim is {dim}: "
                         "a ViT of another size cannot initialise this model")
    report = TransferReport(temporal_init=temporal_init)
    plan: Dict[str, Tuple[str, torch.Tensor]] = {}  # model key -> (ViT key, tensor)

    # embeddings
    pos = state["pos_embed"]
    prefix, old = _source_layout(vit, state, vit_grid)
    new = tuple(model.grid) if hasattr(model, "grid") else (math.isqrt(own["pos_embed"].shape[1] - 1),) * 2
    resized = resample_pos_embed(pos, new, old_hw=old, num_prefix_tokens=prefix)
    if prefix == 2:  # DeiT: [CLS, DIST, patches]; the distillation token has no place here
        resized = torch.cat([resized[:, :1], resized[:, 2:]], dim=1)
        report.skipped.append(("dist_token", "a distillation token has no place in TimeSformer"))
    if prefix == 0:  # timm no_embed_class: the class token gets no position, i.e. a zero row
        resized = torch.cat([torch.zeros_like(resized[:, :1]), resized], dim=1)
        report.notes.append("the ViT adds no position to its class token: the model's CLS position row is "
                            "set to zero")
    if new != old:
        report.resampled.append(("pos_embed", tuple(pos.shape), tuple(resized.shape)))
    plan["pos_embed"] = ("pos_embed", resized)
    for key in ("cls_token", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"):
        if key in state:
            plan[key] = (key, state[key])
    if copy_head:
        for key in ("head.weight", "head.bias"):
            if key in state:
                plan[key] = (key, state[key])

    # blocks
    steps_of = {}
    for i, block in enumerate(model.blocks):
        steps_of[i] = [step.prefix for step, *_ in block.attention_layers() if step.prefix]
    for key, value in state.items():
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", key)
        if not m:
            continue
        i, part, kind = int(m.group(1)), m.group(2), m.group(3)
        if part not in _BLOCK_PARTS:
            continue
        if i not in steps_of:
            report.skipped.append((key, f"the model has {len(model.blocks)} blocks"))
            continue
        plan[f"blocks.{i}.{part}.{kind}"] = (key, value)
        if temporal_init == "copy" and part in ("norm1", "attn.qkv", "attn.proj"):
            for step_prefix in steps_of[i]:
                target = f"{step_prefix}_{part}"  # temporal_norm1, temporal_attn.qkv, ...
                plan[f"blocks.{i}.{target}.{kind}"] = (key, value)

    used = set()
    with torch.no_grad():
        for target, (source, value) in plan.items():
            if target not in own:
                report.skipped.append((source, f"the model has no {target}"))
                continue
            if value.shape != own[target].shape:
                report.skipped.append((source, f"shape {tuple(value.shape)} vs the model's "
                                       f"{tuple(own[target].shape)}"))
                continue
            own[target].copy_(value.to(own[target].dtype))
            report.copied.append((target, source))
            used.add(source)
    for key in state:
        if key not in used and not any(key == k for k, _ in report.skipped):
            report.skipped.append((key, "no counterpart in TimeSformer"))
    filled = {t for t, _ in report.copied}
    report.left_at_init = [k for k in own if k not in filled and ".cores." not in f".{k}"]
    logger.info("%s", report.describe())
    model.transfer_report = report
    return report
