"""fast_timesformer: pluggable attention backends and the five space-time schemes for video transformers."""
from . import neighborhood  # noqa: F401  (registers the mask-defined 'neighborhood' scheme)
from ._version import __version__  # noqa: F401
from .attention import DividedAttention, set_backend, use_backend
from .backends import (
    AttentionCore,
    Backend,
    BackendUnavailable,
    get_backend,
    list_backends,
    reference_attention,
    register_backend,
    resolve_backend,
    unregister_backend,
)
from .backends.spec import parse_backend_spec
from .finite import check_finite
from .groups import TokenGroups
from .models.generative import GenerativeTimeSformer
from .models.registry import create_model, list_models
from .models.timesformer import TimeSformer
from .models.vit import load_vit_weights_into_timesformer
from .schemes import Scheme, Step, get_scheme, list_schemes, register_scheme, scheme_color, unregister_scheme

__all__ = [
    "AttentionCore", "Backend", "BackendUnavailable", "DividedAttention", "TokenGroups", "get_backend",
    "list_backends", "reference_attention", "register_backend", "resolve_backend", "set_backend",
    "unregister_backend", "use_backend",
    "TimeSformer", "GenerativeTimeSformer", "create_model", "list_models", "load_vit_weights_into_timesformer",
    "Scheme", "Step", "register_scheme", "unregister_scheme", "get_scheme", "list_schemes", "scheme_color",
    "parse_backend_spec", "check_finite",
]
