"""Attention backends: how attention is computed. See :mod:`.registry` for the contract."""
from ..kernels.naive import reference_attention, with_prefix
from . import fastformer as _fastformer
from . import flex as _flex
from . import performer as _performer
from . import recording as _recording
from . import regular as _regular
from . import triton_backend as _triton
from . import xformers_backend as _xformers
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

for _mod in (_regular, _performer, _fastformer, _xformers, _recording, _flex, _triton):
    register_backend(_mod.BACKEND)

__all__ = [
    "AttentionCore", "Backend", "BackendUnavailable", "Compiled", "check_inputs", "get_backend", "list_backends",
    "register_backend", "resolve_backend", "unregister_backend", "reference_attention", "with_prefix",
]
