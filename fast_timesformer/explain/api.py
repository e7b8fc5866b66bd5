"""``explain_clip(model, clip)``: rollout and per-step attention maps of one clip, and writing them to a folder."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from .rollout import RESIDUAL, Layout, StepMaps, clip_layout, clip_rollout, record_attention, step_maps, step_records

__all__ = ["Explanation", "explain_clip", "save_explanation", "check_step"]

NOTES = ("rollout: per attention step, heads averaged, A' = 0.5 A + 0.5 I, rows renormalised, multiplied "
         "over all steps of all blocks in forward order; the CLS row of the product. MLP, LayerNorms, value/"
         "output projections and the <step>_fc after earlier steps (temporal_fc) are not modelled, as in "
         "Abnar & Zuidema's rollout.")


@dataclass
class Explanation:
    """What :func:`explain_clip` found for one clip.

    ``rollout`` (f, gh, gw): the CLS's rollout over the patches of every frame; ``rollout_cls``: the share
    it keeps on the CLS input token (the two sum to 1). ``maps``: one :class:`StepMaps` per attention
    step name (batch axis dropped: (L, f, gh, gw) and (L, f, f)). ``records``: the raw recordings
    (heads averaged). ``frames`` (f, h, w, c) in [0, 1]: the clip for display.
    """

    logits: torch.Tensor
    rollout: torch.Tensor
    rollout_cls: float
    maps: dict
    step: str
    layers: list
    records: list
    layout: Layout
    scheme: str
    steps: tuple
    frames: torch.Tensor
    patch_size: tuple
    classes: Optional[list] = None
    notes: str = NOTES
    meta: dict = field(default_factory=dict)

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.double().softmax(-1)

    def label(self, i: int) -> str:
        return self.classes[i] if self.classes and i < len(self.classes) else str(i)

    def top(self, k: int = 5) -> list:
        p = self.probs
        vals, idx = p.topk(min(k, p.numel()))
        return [{"label": self.label(i), "index": i, "probability": round(v, 6)}
                for v, i in zip(vals.tolist(), idx.tolist())]

    def summary(self, top_k: int = 5) -> dict:
        """The JSON summary: prediction, top-k, and where the rollout mass lies."""
        r = self.rollout.double()
        f, gh, gw = r.shape
        patch_mass = float(r.sum())
        share = r / patch_mass if patch_mass > 0 else r
        flat = share.flatten()
        order = flat.argsort(descending=True)
        k10 = max(1, math.ceil(0.1 * flat.numel()))
        ys = torch.arange(gh, dtype=torch.float64).view(gh, 1)
        xs = torch.arange(gw, dtype=torch.float64).view(1, gw)
        centres = []
        for t in range(f):
            m = share[t].sum()
            centres.append(None if m <= 0 else [round(float((share[t] * ys).sum() / m), 3),
                                                round(float((share[t] * xs).sum() / m), 3)])
        step_maps_ = self.maps[self.step]
        top = self.top(top_k)
        return {
            "prediction": top[0],
            "top_k": top,
            "scheme": self.scheme,
            "attention_steps": list(self.steps),
            "frames": f,
            "patch_grid": [gh, gw],
            "frame_independent": self.layout.frame_independent,
            "rollout": {
                "cls_share": round(self.rollout_cls, 6),
                "patch_share": round(patch_mass, 6),
                "per_frame": [round(float(x), 6) for x in share.sum((1, 2))],
                "top10pct_patches_share": round(float(flat[order[:k10]].sum()), 6),
                "uniform_top10pct_share": round(k10 / flat.numel(), 6),
                "centre_of_mass": centres,  # per frame, (row, col) in patch units
                "top_patches": [{"frame": int(i) // (gh * gw), "row": (int(i) % (gh * gw)) // gw,
                                 "col": int(i) % gw, "share": round(float(flat[i]), 6)} for i in order[:5]],
            },
            "step_shown": {
                "step": self.step,
                "layers": list(step_maps_.layers),
                "cls_is_query": list(step_maps_.cls_is_query),
                "frame_to_frame_diagonal": [[round(float(x), 4) for x in m.diagonal()]
                                            for m in step_maps_.frame_to_frame],
            },
            "residual_weight": RESIDUAL,
            "notes": self.notes,
            **self.meta,
        }


def check_step(model, step: Optional[str]) -> str:
    """The step to show: ``step`` if the model has it (else a one-line UnknownNameError), default its first."""
    steps = tuple(getattr(model, "attention_steps", ()) or ())
    if not steps:
        raise ValueError(f"{type(model).__name__} has no attention_steps to explain")
    if step is None:
        return steps[0]
    if step not in steps:
        from .._names import unknown_name_error

        raise unknown_name_error("attention step", step, steps)
    return step


def _warn_if_approximate(model) -> None:
    """The maps are exact softmax attention of the model's own q and k: for a layer that runs an approximate
    backend (performer, fastformer) that is not what the model computes, so say so."""
    import warnings

    from ..backends import get_backend
    from ..backends.registry import AUTO

    names = sorted({m.backend_name for m in model.attention_modules()
                    if m.backend_name != AUTO and not get_backend(m.backend_name).exact})
    if names:
        warnings.warn(f"the model runs approximate attention ({', '.join(names)}); explain records exact softmax "
                      "attention of the same queries and keys, which is not what those layers compute",
                      stacklevel=3)


def _display(video: torch.Tensor, mean=None, std=None) -> torch.Tensor:
    """(f, c, h, w) model input -> (f, h, w, c) in [0, 1] for pictures."""
    v = video.detach().double().cpu()
    c = v.shape[1]
    if mean is not None and std is not None:
        v = v * torch.tensor(std, dtype=v.dtype).view(1, c, 1, 1) + torch.tensor(mean, dtype=v.dtype).view(1, c, 1, 1)
    else:
        lo, hi = v.min(), v.max()
        v = (v - lo) / (hi - lo) if hi > lo else v * 0
    v = v.clamp(0, 1)
    if c == 1:
        v = v.expand(-1, 3, -1, -1)
    return v[:, :3].permute(0, 2, 3, 1).float()


def explain_clip(model, clip: torch.Tensor, *, step: Optional[str] = None, layers: Optional[Sequence[int]] = None,
            classes: Optional[Sequence[str]] = None, mean=None, std=None) -> Explanation:
    """Attention rollout and per-step maps of ``model`` (a :class:`TimeSformer`, any scheme) on one clip.

    ``clip``: (f, c, h, w) or (1, f, c, h, w), already preprocessed as the model expects. ``step``: which
    attention step's per-layer maps to show (default the scheme's first); ``layers``: which of its layers
    (default all). ``mean``/``std``: the normalisation to undo for display (default: min-max).
    The model runs once with the exact ``recording`` backend swapped in through the registry; its own
    backends are restored afterwards, so it may have been trained with any exact backend.
    """
    step = check_step(model, step)
    _warn_if_approximate(model)
    if clip.dim() == 4:
        clip = clip.unsqueeze(0)
    if clip.dim() != 5 or clip.shape[0] != 1:
        raise ValueError(f"explain takes one clip, (f, c, h, w) or (1, f, c, h, w); got {tuple(clip.shape)}")
    p = next(model.parameters())
    clip = clip.to(device=p.device, dtype=p.dtype if p.is_floating_point() else clip.dtype)
    logits, records = record_attention(model, clip, keep_heads=False)
    f, (ph, pw) = clip.shape[1], model.patch_size
    grid = (clip.shape[-2] // ph, clip.shape[-1] // pw)
    layout = clip_layout(records, 1, f, grid)
    cls_mass, patches = clip_rollout(records, layout)
    names = []
    for r in records:
        if r.layer[1] not in names:
            names.append(r.layer[1])
    maps = {}
    for name in names:
        m = step_maps(records, name, layout, layers if name == step else None)
        maps[name] = StepMaps(m.step, m.layers, m.cls_attention[:, 0], m.received[:, 0], m.frame_to_frame[:, 0],
                              m.cls_is_query)
    shown = maps[step].layers
    return Explanation(
        logits=logits[0].detach().cpu(), rollout=patches[0].cpu(), rollout_cls=float(cls_mass[0]), maps=maps,
        step=step, layers=list(shown), records=records, layout=layout, scheme=model.scheme.name,
        steps=tuple(model.attention_steps), frames=_display(clip[0], mean, std), patch_size=(ph, pw),
        classes=list(classes) if classes is not None else None)


def save_explanation(expl: Explanation, out_dir: str, *, top_k: int = 5, title: Optional[str] = None) -> dict:
    """Write ``rollout.png``, ``step_<step>.png``, ``attention.safetensors`` and ``summary.json`` to
    ``out_dir``; returns their paths."""
    from safetensors.torch import save_file

    from ..outputs import check_output_dir, write_text, writing
    from .plots import plot_rollout, plot_step

    check_output_dir(out_dir, option="the output folder", create=True)
    paths = {"rollout": os.path.join(out_dir, "rollout.png"),
             "step": os.path.join(out_dir, f"step_{expl.step}.png"),
             "arrays": os.path.join(out_dir, "attention.safetensors"),
             "summary": os.path.join(out_dir, "summary.json")}
    plot_rollout(expl, paths["rollout"], title=title)
    plot_step(expl, paths["step"])

    tensors = {
        "rollout": expl.rollout.float(),
        "rollout_cls": torch.tensor([expl.rollout_cls], dtype=torch.float32),
        "logits": expl.logits.float(),
        "frames": (expl.frames * 255).round().to(torch.uint8),
    }
    for name, m in expl.maps.items():
        tensors[f"{name}.cls_attention"] = m.cls_attention.float()
        tensors[f"{name}.received"] = m.received.float()
        tensors[f"{name}.frame_to_frame"] = m.frame_to_frame.float()
        recs = step_records(expl.records, name)
        tensors[f"{name}.groups"] = recs[0].groups.index()
        for i, r in enumerate(recs):  # heads averaged, as recorded: (sequences, groups, 1, S, P + S)
            tensors[f"{name}.probs.{i}"] = r.probs.float().cpu()
            if r.cls_probs is not None:
                tensors[f"{name}.cls_probs.{i}"] = r.cls_probs.float().cpu()
    meta = {"scheme": expl.scheme, "steps": ",".join(expl.steps),
            "layout": "frame_independent" if expl.layout.frame_independent else "clip",
            "about": "probs.<i>: layer i's patch-query probabilities over [CLS; group] (CLS column only when it "
                     "is a key), groups: the patch indices of each group; see docs/explain.md"}
    with writing(paths["arrays"]):
        save_file({k: v.contiguous() for k, v in tensors.items()}, paths["arrays"], metadata=meta)
    write_text(paths["summary"], json.dumps(expl.summary(top_k), indent=2) + "\n")
    return paths
