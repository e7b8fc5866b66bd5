"""``regular``: exact softmax attention through ``torch.nn.functional.scaled_dot_product_attention``."""
from __future__ import annotations

import contextlib

import torch.nn.functional as F

from .._names import unknown_name_error
from .common import with_prefix
from .registry import AttentionCore, Backend

SDPA_BACKENDS = {
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
    "math": "MATH",
}


def sdpa_context(name):
    """``sdpa_kernel`` pinned to one SDPA implementation by short name, or a null context for ``None``."""
    if name is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        return sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[name])])
    except KeyError:
        raise unknown_name_error("SDPA backend", name, SDPA_BACKENDS) from None


class RegularCore(AttentionCore):
    """q/k/v go to SDPA as the strided views they are; only a prefix forces a copy (of k and v)."""

    def __init__(self, backend, dim_head, heads, sdpa_backend=None):
        super().__init__(backend, dim_head, heads)
        if sdpa_backend is not None and sdpa_backend not in SDPA_BACKENDS:
            raise unknown_name_error("SDPA backend", sdpa_backend, SDPA_BACKENDS)
        self.sdpa_backend = sdpa_backend

    def attend(self, q, k, v, prefix_k, prefix_v, *, scale, dropout_p):
        k, v = with_prefix(k, v, prefix_k, prefix_v)
        with sdpa_context(self.sdpa_backend):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)


BACKEND = Backend(
    name="regular",
    factory=RegularCore,
    exact=True,
    supports_dropout=True,
    priority=50,
    description="exact softmax attention via torch SDPA (flash / efficient / cuDNN / math)",
)
