"""A timm-style model registry: ``@register_model``, ``create_model(name, **overrides)``, ``list_models()``.

The one way to build a model from a name: the trainer, the command line and ``from_pretrained`` callers
all go through :func:`create_model`. Every entry is a three-line factory returning a :class:`TimeSformer`
(or a :class:`GenerativeTimeSformer`) with the architecture of a released (or otherwise useful)
configuration; any constructor argument can be overridden, and an argument the model does not take
raises, naming the closest one (it is never dropped)::

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
timesformer                       8      224   768   the class's own defaults; the base of a model given
                                                         by constructor arguments (``--model '{...}'``)
tiny                              8      32    64    CPU runs and tests (depth 2, patch 8): the trainer's
small                             8      32    128   default ``--model`` presets (the trainer sets frames,
base                              8      32    768   image size and classes from its own options)
generative_timesformer            8      32    64    GenerativeTimeSformer (2 target frames), ``tiny``'s
                                                         sizes; the trainer's future-frame model
================================= ====== ===== ===== ============================================
"""
from __future__ import annotations

import fnmatch
import inspect
from typing import Callable, Optional

from torch import nn

from .._names import misplaced_name_error, unknown_name_error
from ..attention import backend_option_names
from ..backends import list_backends
from .generative import GenerativeTimeSformer
from .timesformer import TimeSformer

__all__ = ["register_model", "create_model", "list_models", "model_config", "model_class", "is_model", "PRESETS"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_CONFIGS: dict[str, dict] = {}
_CLASSES: dict[str, type] = {}


def register_model(fn: Callable[..., nn.Module] = None, *, name: Optional[str] = None, config: dict = None,
                   model_cls: type = TimeSformer):
    """Decorator: store ``fn`` under its own name (or ``name``). ``fn(**overrides)`` builds a ``model_cls``
    (whose constructor arguments :func:`create_model` checks the overrides against)."""

    def wrap(f):
        key = name or f.__name__
        if key in _MODELS:
            raise ValueError(f"a model named {key!r} is already registered")
        _MODELS[key] = f
        _CONFIGS[key] = dict(config or {})
        _CLASSES[key] = model_cls
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


def model_class(name: str) -> type:
    """The class the registered model ``name`` builds (:class:`TimeSformer` or :class:`GenerativeTimeSformer`)."""
    _lookup(name)
    return _CLASSES[name]


def check_arguments(model_cls: type, arguments, *, also=()) -> None:
    """Raise :class:`~fast_timesformer.errors.UnknownNameError` (with the closest name and its kind) for the
    first of ``arguments`` that ``model_cls`` does not take: a constructor argument, or (a model passing
    ``**backend_options`` to its backends) an option of a registered backend's core. Which backend takes
    which option, per attention step, the model itself checks when it is built
    (:func:`~fast_timesformer.attention.check_model_options`)."""
    params = inspect.signature(model_cls.__init__).parameters
    own = [p for p, v in params.items() if p != "self" and v.kind is not v.VAR_KEYWORD] + list(also)
    kinds = {f"{model_cls.__name__} argument": own}
    given_as = f"{model_cls.__name__} argument"
    if any(v.kind is v.VAR_KEYWORD for v in params.values()):
        given_as += " or backend option"
        for backend in list_backends():
            options = backend_option_names(backend)
            if options:
                kinds[f"{backend} backend option"] = options
    known = {k for names in kinds.values() for k in names}
    for key in arguments:
        if key not in known:
            raise misplaced_name_error(key, given_as, kinds)


def create_model(name: str, pretrained=None, **overrides) -> nn.Module:
    """Build the registered model ``name``, with constructor arguments overridden by ``overrides`` (an
    argument the model does not take raises, with the closest name).

    ``pretrained``: an optional checkpoint path (Hugging Face folder or official ``.pyth``; a training
    checkpoint), loaded with the class's ``from_pretrained`` on top of the registered configuration
    (``strict`` and ``device`` go to it).
    """
    factory = _lookup(name)
    model_cls = _CLASSES[name]
    check_arguments(model_cls, overrides, also=("strict", "device") if pretrained else ())
    if pretrained:
        return model_cls.from_pretrained(pretrained, **{**_CONFIGS[name], **overrides})
    return factory(**overrides)


def _entry(name: str, model_cls: type = TimeSformer, **config):
    def factory(**overrides):
        return model_cls(**{**config, **overrides})

    factory.__name__ = name
    factory.__doc__ = f"{model_cls.__name__} {name}: {config}"
    register_model(factory, name=name, config=config, model_cls=model_cls)


_BASE = dict(patch_size=16, dim=768, depth=12, heads=12, num_classes=400)
_entry("timesformer", num_frames=8, image_size=224, **_BASE)  # the class's defaults, written out
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

# The trainer's future-frame model (``fast-timesformer train --dataset bouncing``): tiny's sizes.
_entry("generative_timesformer", GenerativeTimeSformer, dim=64, depth=2, heads=4, dim_head=16, patch_size=8,
       mlp_ratio=2.0, num_frames=8, num_target_frames=2, image_size=32)
