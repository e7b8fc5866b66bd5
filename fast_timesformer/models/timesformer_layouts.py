"""TimeSformer's checkpoint layouts: the Hugging Face and official (facebookresearch) names and configurations.

Beside the model (timm's ``checkpoint_filter_fn``): the generic reader and loader
(:mod:`fast_timesformer.models.checkpoint`) never imports the model; :class:`~.timesformer.TimeSformer`
hands it :data:`TIMESFORMER_LAYOUT` (how to rename a foreign state dict and how to read its configuration).
The key map is also what the benchmark's Hugging Face peer uses to copy our weights into
``TimesformerForVideoClassification`` (:func:`official_to_hf_key`).
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from .._names import unknown_name_error
from ..errors import CheckpointConfigError
from .checkpoint import CheckpointLayout
from .resample import to_hw

__all__ = ["HF_SCHEMES", "hf_to_official_key", "official_to_hf_key", "convert_hf_state_dict", "is_hf_key",
           "config_from_hf", "infer_config_from_state_dict", "convert_state", "configure", "TIMESFORMER_LAYOUT"]

#: Hugging Face ``attention_type`` -> this package's ``scheme``.
HF_SCHEMES = {
    "divided_space_time": "divided_space_time",
    "space_only": "space_only",
    "joint_space_time": "joint_space_time",
}

# Hugging Face name -> official name, for the tensors outside the blocks and inside block i.
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.time_embeddings": "time_embed",
    "embeddings.patch_embeddings.projection": "patch_embed.proj",
    "layernorm": "norm",
    "classifier": "head",
}
_HF_BLOCK = {
    "layernorm_before": "norm1",
    "attention.attention.qkv": "attn.qkv",
    "attention.output.dense": "attn.proj",
    "temporal_layernorm": "temporal_norm1",
    "temporal_attention.attention.qkv": "temporal_attn.qkv",
    "temporal_attention.output.dense": "temporal_attn.proj",
    "temporal_dense": "temporal_fc",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_OFFICIAL_TOP = {v: k for k, v in _HF_TOP.items()}
_OFFICIAL_BLOCK = {v: k for k, v in _HF_BLOCK.items()}
_PARAM_SUFFIXES = ("weight", "bias")


# ---- key names -------------------------------------------------------------------------------------

def is_hf_key(key: str) -> bool:
    """Whether ``key`` is a Hugging Face Timesformer tensor name."""
    return key.startswith(("timesformer.", "embeddings.patch_embeddings", "encoder.layer.")) or key.startswith(
        "classifier.")


def _split_param(key: str) -> Tuple[str, str]:
    stem, _, last = key.rpartition(".")
    return (stem, last) if last in _PARAM_SUFFIXES else (key, "")


def _join(stem: str, last: str) -> str:
    return f"{stem}.{last}" if last else stem


def hf_to_official_key(key: str) -> Optional[str]:
    """``timesformer.encoder.layer.3.temporal_dense.weight`` -> ``blocks.3.temporal_fc.weight``; None if
    the name is not a Timesformer tensor."""
    if key.startswith("timesformer."):
        key = key[len("timesformer."):]
    stem, last = _split_param(key)
    if stem in _HF_TOP:
        return _join(_HF_TOP[stem], last)
    m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", stem)
    if m and m.group(2) in _HF_BLOCK:
        return _join(f"blocks.{m.group(1)}.{_HF_BLOCK[m.group(2)]}", last)
    return None


def official_to_hf_key(key: str) -> Optional[str]:
    """The inverse of :func:`hf_to_official_key` (names of ``TimesformerForVideoClassification``)."""
    stem, last = _split_param(key)
    if stem in _OFFICIAL_TOP:
        top = _OFFICIAL_TOP[stem]
        return _join(top if top == "classifier" else f"timesformer.{top}", last)
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", stem)
    if m and m.group(2) in _OFFICIAL_BLOCK:
        return _join(f"timesformer.encoder.layer.{m.group(1)}.{_OFFICIAL_BLOCK[m.group(2)]}", last)
    return None


def convert_hf_state_dict(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename a Hugging Face Timesformer state dict to official names; unknown keys are kept as they are
    (and then show up as unexpected)."""
    out = {}
    for k, v in state.items():
        new = hf_to_official_key(k)
        out[new if new is not None else k] = v
    return out


# ---- configuration ---------------------------------------------------------------------------------

def _square_or_pair(v):
    """A size as the constructor is given it: an int for a square, else (h, w)."""
    h, w = to_hw(v)
    return h if h == w else (h, w)


def config_from_hf(cfg: Mapping[str, Any], state: Optional[Mapping[str, torch.Tensor]] = None) -> Dict[str, Any]:
    """Hugging Face ``TimesformerConfig`` (as a dict) -> TimeSformer keyword arguments."""
    if cfg.get("model_type", "timesformer") != "timesformer":
        raise ValueError(f"config.json describes a {cfg.get('model_type')!r} model, not a Timesformer")
    act = cfg.get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"hidden_act={act!r} is not supported: TimeSformer uses exact GELU ('gelu')")
    attention_type = cfg.get("attention_type", "divided_space_time")
    if attention_type not in HF_SCHEMES:
        raise unknown_name_error("attention_type in config.json", attention_type, HF_SCHEMES)
    dim = int(cfg.get("hidden_size", 768))
    heads = int(cfg.get("num_attention_heads", 12))
    if dim % heads:
        raise ValueError(f"hidden_size={dim} is not divisible by num_attention_heads={heads}")
    if state is not None and "head.weight" in state:
        num_classes = int(state["head.weight"].shape[0])
    elif state is not None:
        num_classes = 0  # a TimesformerModel (no classifier)
    elif cfg.get("id2label"):
        num_classes = len(cfg["id2label"])
    else:
        num_classes = int(cfg.get("num_labels", 0))
    return dict(
        num_classes=num_classes,
        num_frames=int(cfg.get("num_frames", 8)),
        image_size=_square_or_pair(cfg.get("image_size", 224)),
        patch_size=_square_or_pair(cfg.get("patch_size", 16)),
        channels=int(cfg.get("num_channels", 3)),
        dim=dim,
        depth=int(cfg.get("num_hidden_layers", 12)),
        heads=heads,
        dim_head=dim // heads,
        mlp_ratio=int(cfg.get("intermediate_size", 4 * dim)) / dim,
        qkv_bias=bool(cfg.get("qkv_bias", True)),
        attn_dropout=float(cfg.get("attention_probs_dropout_prob", 0.0)),
        ff_dropout=float(cfg.get("hidden_dropout_prob", 0.0)),
        drop_path=float(cfg.get("drop_path_rate", 0.0)),
        scheme=HF_SCHEMES[attention_type],
    )


def infer_config_from_state_dict(state: Mapping[str, torch.Tensor], **given) -> Tuple[Dict[str, Any], List[str]]:
    """Architecture of an official state dict from its tensor shapes, with ``given`` keyword arguments
    taking precedence. Returns ``(config, notes)``; notes say what was assumed rather than read."""
    notes: List[str] = []
    for key in ("pos_embed", "patch_embed.proj.weight"):
        if key not in state:
            raise ValueError(f"not a TimeSformer state dict: {key!r} is missing (keys: {sorted(state)[:8]} ...)")
    proj = state["patch_embed.proj.weight"]  # (dim, channels, p, p)
    dim, channels = int(proj.shape[0]), int(proj.shape[1])
    patch = _square_or_pair(tuple(proj.shape[-2:]))
    blocks = {int(m.group(1)) for k in state for m in [re.match(r"blocks\.(\d+)\.", k)] if m}
    depth = max(blocks) + 1 if blocks else 0
    cfg: Dict[str, Any] = dict(channels=channels, dim=dim, patch_size=patch, depth=depth)
    n = state["pos_embed"].shape[1] - 1
    side = math.isqrt(n)
    if "image_size" not in given:
        if side * side != n:
            raise ValueError(f"pos_embed has {n} patch rows, not a square grid: pass image_size=(h, w)")
        ph, pw = to_hw(patch)
        cfg["image_size"] = side * ph if ph == pw else (side * ph, side * pw)
    if "head.weight" in state:
        cfg["num_classes"] = int(state["head.weight"].shape[0])
    else:
        cfg["num_classes"] = 0
        notes.append("no head.weight: built without a classification head (num_classes=0)")
    if "time_embed" in state:
        cfg["num_frames"] = int(state["time_embed"].shape[1])
    if "blocks.0.mlp.fc1.weight" in state:
        cfg["mlp_ratio"] = state["blocks.0.mlp.fc1.weight"].shape[0] / dim
    if "blocks.0.attn.qkv.weight" in state:
        cfg["qkv_bias"] = "blocks.0.attn.qkv.bias" in state
        inner = state["blocks.0.attn.qkv.weight"].shape[0] // 3
    else:
        inner = dim
    if any(".temporal_attn." in k for k in state):
        cfg["scheme"] = "divided_space_time"
    elif "time_embed" in state:
        cfg["scheme"] = "joint_space_time"
    else:
        cfg["scheme"] = "space_only"
    if "scheme" not in given and cfg["scheme"] != "divided_space_time":
        notes.append(f"scheme={cfg['scheme']!r} inferred from the keys (no temporal_attn"
                     f"{'' if cfg['scheme'] == 'joint_space_time' else ', no time_embed'})")
    if "heads" not in given:
        # the shapes give the attention width, never how it splits into heads: 64-wide heads are only a
        # convention (ViT-S/B/L), so guessing could build a different model that loads without complaint
        example = f"; e.g. heads={inner // 64} if it used 64-wide heads as the ViT sizes do" if inner % 64 == 0 else ""
        raise CheckpointConfigError(
            f"the state dict does not record the number of attention heads (its attention width is {inner}): "
            f"pass heads=N, the number the checkpoint was trained with{example}")
    cfg.update(given)
    if "dim_head" not in given and "heads" in cfg and inner % cfg["heads"] == 0:
        cfg["dim_head"] = inner // cfg["heads"]
    return cfg, notes


# ---- the layout handed to the generic loader --------------------------------------------------------

def convert_state(state: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], str]:
    """An unwrapped state dict -> (state with official names, ``"huggingface"`` or ``"official"``)."""
    if any(is_hf_key(k) for k in state):
        return convert_hf_state_dict(state), "huggingface"
    return dict(state), "official"


def configure(state: Mapping[str, torch.Tensor], hf_config: Optional[dict], extra: dict, overrides: dict,
              path) -> Tuple[Dict[str, Any], List[str], Optional[dict], Optional[float]]:
    """TimeSformer constructor arguments for a foreign checkpoint: ``(config, notes, checkpoint_config,
    layer_norm_eps)``. A Hugging Face ``config.json`` gives the architecture; an official file's is read from
    its tensor shapes (and keyword arguments for what shapes cannot say). ``overrides`` win."""
    notes: List[str] = []
    if hf_config is not None:
        config = config_from_hf(hf_config, state)
        ckpt_config = dict(config)
        config.update(overrides)
        return config, notes, ckpt_config, float(hf_config.get("layer_norm_eps", 1e-6))
    given = dict(overrides)
    dim = state["patch_embed.proj.weight"].shape[0] if "patch_embed.proj.weight" in state else None
    if "heads" not in given and extra.get("official_release") and dim == 768:
        given["heads"] = 12
        notes.append("heads=12: the official TimeSformer code builds every model with 12 heads at width 768")
    try:
        config, more = infer_config_from_state_dict(state, **given)
    except CheckpointConfigError as e:
        raise CheckpointConfigError(f"{path}: {e}") from None
    return config, notes + more, None, None


#: handed to the generic loader by :class:`~.timesformer.TimeSformer` (``checkpoint_layout``)
TIMESFORMER_LAYOUT = CheckpointLayout(name="timesformer", convert=convert_state, configure=configure)
