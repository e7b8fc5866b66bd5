"""Attention backends: how attention is computed. See :mod:`.registry` for the contract."""
from . import fastformer as _fastformer
from . import flex as _flex
from . import performer as _performer
from . import recording as _recording
from . import regular as _regular
from . import xformers_backend as _xformers
from .common import reference_attention
from .registry import (
    AttentionCore,
    Backend,
    BackendUnavailable,
    Compiled,
    check_inputs,
    get_backend,
    list_backends,
    register_backend,
    resolve_backend,
    unregister_backend,
)

for _mod in (_regular, _performer, _fastformer, _xformers, _recording, _flex):
    register_backend(_mod.BACKEND)

import importlib.util as _util

if _util.find_spec(f"{__name__}.triton_backend") is not None:  # the fused Triton kernel's backend
    from . import triton_backend as _triton

    register_backend(_triton.BACKEND)

__all__ = [
    "AttentionCore", "Backend", "BackendUnavailable", "Compiled", "check_inputs", "get_backend", "list_backends",
    "register_backend", "resolve_backend", "unregister_backend", "reference_attention",
]
