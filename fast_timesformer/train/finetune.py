"""Fine-tuning: start a training run from a released or trained checkpoint's weights (``train --init``).

:func:`init_from_checkpoint` reads any checkpoint ``TimeSformer.from_pretrained`` reads (an official
``.pyth``, a Hugging Face folder, a ``fast-timesformer train`` checkpoint) and loads its tensors into the
run's model as ``from_pretrained`` loads them: position and time embeddings of another grid or frame count
are resampled. Where the class count differs, the classification head keeps the run's fresh
initialisation, and one line says so, naming both shapes. Everything else must fit: a model of another
width or depth is refused, listing what does not fit. Only weights are taken: this is not ``--resume``
(the optimizer, the schedule and the step start afresh).
"""
from __future__ import annotations

from typing import Mapping

from torch import nn

from ..errors import CheckpointMismatchLineError

__all__ = ["init_from_checkpoint", "HEAD_KEYS"]

HEAD_KEYS = ("head.weight", "head.bias")


def _grid_config(hf_config, meta_config) -> dict:
    """The checkpoint's image and patch size where it records them (a non-square grid needs them)."""
    for cfg in (meta_config, hf_config):
        if isinstance(cfg, Mapping) and "image_size" in cfg and "patch_size" in cfg:
            return {"image_size": cfg["image_size"], "patch_size": cfg["patch_size"]}
    return {}


def init_from_checkpoint(model: nn.Module, path: str) -> list[str]:
    """Load ``path``'s weights into ``model`` for fine-tuning; returns the lines to tell the user (head
    re-initialised, embeddings resampled). Raises
    :class:`~fast_timesformer.errors.CheckpointMismatchLineError` when the rest does not fit."""
    from ..models.checkpoint import TRAIN_FORMAT, CheckpointMismatchError, load_state_dict_into, read_checkpoint
    from .checkpoint import read_metadata

    state, hf_config, fmt = read_checkpoint(path, getattr(type(model), "checkpoint_layout", None))
    state = dict(state)
    spec = (read_metadata(path).get("extra") or {}).get("model_spec") or {} if fmt == TRAIN_FORMAT else {}
    own = model.state_dict()
    lines = []
    if "head.weight" in state and "head.weight" in own and state["head.weight"].shape != own["head.weight"].shape:
        old, new = tuple(state["head.weight"].shape), tuple(own["head.weight"].shape)
        lines.append(f"--init {path}: the classification head is re-initialised: the checkpoint's head.weight is "
                     f"{old} ({old[0]} classes), this run's {new} ({new[0]} classes)")
        for key in HEAD_KEYS:  # the run's own fresh head, so the load is complete
            if key in own:
                state[key] = own[key]
    try:
        report = load_state_dict_into(model, state, strict=True, source=path, fmt=fmt,
                                      checkpoint_config=_grid_config(hf_config, spec.get("kwargs")))
    except CheckpointMismatchError as e:
        r = e.report
        parts = [f"{name} {', '.join(map(str, items[:4]))}{' ...' if len(items) > 4 else ''}"
                 for name, items in (("missing", r.missing), ("unexpected", r.unexpected),
                                     ("mismatched", [f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in r.mismatched]))
                 if items]
        raise CheckpointMismatchLineError(f"--init {path} does not fit this run's model (--model, --scheme): "
                                          + "; ".join(parts)) from None
    for key, old, new in report.resampled:
        lines.append(f"--init {path}: {key} resampled from {old} to {new} (as from_pretrained does)")
    return lines
