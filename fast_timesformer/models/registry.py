"""A timm-style model registry: ``@register_model``, ``create_model(name, **overrides)``, ``list_models()``.

Every entry is a three-line factory returning a :class:`TimeSformer` with the architecture of a released
(or otherwise useful) configuration; any constructor argument can be overridden::

    model = create_model("timesformer_base_patch16_224", scheme="axial", backend={"time": "regular"})

Registered names (untrained weights; load a checkpoint with ``TimeSformer.from_pretrained``):

================================= ====== ===== ===== ============================================
name                              frames image dim   notes
================================= ====== ===== ===== ============================================
timesformer_base_patch16_224      8      224   768   the K400 base model (ViT-B/16, 12 blocks)
timesformer_hr_patch16_448        16     448   768   TimeSformer-HR
timesformer_large_patch16_224     96     224   768   TimeSformer-L (long clips, ViT-B width)
timesformer_small_patch16_224     8      224   384   ViT-S/16 width, 6 heads (no official weights)
timesformer_tiny_patch16_224      8      224   192   ViT-Ti/16 width, 3 heads (no official weights)
tiny                              8      32    64    CPU runs and tests (depth 2, patch 8): the trainer's
small                             8      32    128   default ``--model`` presets (the trainer sets frames,
base                              8      32    768   image size and classes from its own options)
================================= ====== ===== ===== ============================================
"""
from __future__ import annotations

import fnmatch
from typing import Callable, Optional

from .._names import unknown_name_error
from .timesformer import TimeSformer

__all__ = ["register_model", "create_model", "list_models", "model_config", "is_model", "PRESETS"]

_MODELS: dict[str, Callable[..., TimeSformer]] = {}
_CONFIGS: dict[str, dict] = {}


def register_model(fn: Callable[..., TimeSformer] = None, *, name: Optional[str] = None, config: dict = None):
    """Decorator: store ``fn`` under its own name (or ``name``). ``fn(**overrides)`` builds the model."""

    def wrap(f):
        key = name or f.__name__
        if key in _MODELS:
            raise ValueError(f"a model named {key!r} is already registered")
        _MODELS[key] = f
        _CONFIGS[key] = dict(config or {})
        return f

    return wrap(fn) if fn is not None else wrap


def list_models(pattern: Optional[str] = None) -> list:
    """Registered names, sorted; ``pattern`` is a shell-style wildcard (``"*hr*"``)."""
    names = sorted(_MODELS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def is_model(name: str) -> bool:
    return name in _MODELS


def _lookup(name: str):
    try:
        return _MODELS[name]
    except KeyError:
        raise unknown_name_error("model", name, list_models()) from None


def model_config(name: str) -> dict:
    """The constructor arguments a registered name stands for (before overrides)."""
    _lookup(name)
    return dict(_CONFIGS[name])


def create_model(name: str, pretrained=None, **overrides) -> TimeSformer:
    """Build the registered model ``name``, with constructor arguments overridden by ``overrides``.

    ``pretrained``: an optional checkpoint path (Hugging Face folder or official ``.pyth``), loaded with
    ``TimeSformer.from_pretrained`` on top of the registered configuration.
    """
    factory = _lookup(name)
    if pretrained:
        return TimeSformer.from_pretrained(pretrained, **{**_CONFIGS[name], **overrides})
    return factory(**overrides)


def _entry(name: str, **config):
    def factory(**overrides):
        return TimeSformer(**{**config, **overrides})

    factory.__name__ = name
    factory.__doc__ = f"TimeSformer {name}: {config}"
    register_model(factory, name=name, config=config)


_BASE = dict(patch_size=16, dim=768, depth=12, heads=12, num_classes=400)
_entry("timesformer_base_patch16_224", num_frames=8, image_size=224, **_BASE)
_entry("timesformer_hr_patch16_448", num_frames=16, image_size=448, **_BASE)
_entry("timesformer_large_patch16_224", num_frames=96, image_size=224, **_BASE)
_entry("timesformer_small_patch16_224", num_frames=8, image_size=224, patch_size=16, dim=384, depth=12, heads=6,
       num_classes=400)
_entry("timesformer_tiny_patch16_224", num_frames=8, image_size=224, patch_size=16, dim=192, depth=12, heads=3,
       num_classes=400)

# The training presets (``fast-timesformer train --model tiny|small|base``): small configurations for CPU
# runs and tests. The trainer overrides frames, image size and classes with its own options.
PRESETS = ("tiny", "small", "base")
_PRESET = dict(num_frames=8, image_size=32, num_classes=4)
_entry("tiny", dim=64, depth=2, heads=4, dim_head=16, patch_size=8, mlp_ratio=2.0, drop_path=0.0, **_PRESET)
_entry("small", dim=128, depth=4, heads=4, dim_head=32, patch_size=8, mlp_ratio=4.0, drop_path=0.0, **_PRESET)
_entry("base", dim=768, depth=12, heads=12, patch_size=16, mlp_ratio=4.0, drop_path=0.1, **_PRESET)
