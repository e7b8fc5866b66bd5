"""``regular``: exact softmax attention through ``torch.nn.functional.scaled_dot_product_attention``."""
from __future__ import annotations

import contextlib

import torch.nn.functional as F

from .._names import unknown_name_error
from ..kernels.naive import with_prefix
from .registry import EXACT_TOLERANCES, AttentionCore, Backend

SDPA_BACKENDS = {
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
    "math": "MATH",
}


#: SDPA's two refusals of a pinned implementation (torch 2.13): the inputs fit no kernel of it (CUDA), or it has none
#: on this device (CPU: efficient, cudnn). Any other RuntimeError is a failure, not a refusal.
SDPA_NO_KERNEL = ("No available kernel.", "No viable backend for scaled_dot_product_attention was found.")


def sdpa_refused(err: BaseException) -> bool:
    """Whether ``err`` is SDPA refusing the inputs for a pinned implementation (:data:`SDPA_NO_KERNEL`)."""
    return isinstance(err, RuntimeError) and any(m in str(err) for m in SDPA_NO_KERNEL)


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
    """q/k/v go to SDPA as the strided views they are; only a prefix forces a copy (of k and v).

    The backend declares ``plain_sequences``: in a layer, a per_group CLS reaches SDPA as [CLS; group]
    sequences that are views of one projection (see DividedAttention), so the prefix copy is left to the
    ``global`` CLS.
    """

    def __init__(self, backend, dim_head, heads, sdpa_backend=None):
        super().__init__(backend, dim_head, heads)
        if sdpa_backend is not None and sdpa_backend not in SDPA_BACKENDS:
            raise unknown_name_error("SDPA backend", sdpa_backend, SDPA_BACKENDS)
        self.sdpa_backend = sdpa_backend

    def attend(self, q, k, v, prefix_k, prefix_v, *, scale, dropout_p):
        k, v = with_prefix(k, v, prefix_k, prefix_v)
        with sdpa_context(self.sdpa_backend):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)

    def attend_masked(self, q, k, v, mask, *, scale, dropout_p):
        """A mask-defined step: SDPA with the step's boolean mask (built once per step, length and device,
        see :meth:`SequenceMask.dense <fast_timesformer.groups.SequenceMask.dense>`); exact and trainable."""
        dense = mask.dense(q.device)  # (G, L, L)
        ng, length = dense.shape[0], dense.shape[1]
        if ng == 1:
            attn_mask = dense[0]  # broadcast over batch and heads
        else:  # sequences are batch-major over the groups: (b*G, 1, L, L)
            attn_mask = dense.unsqueeze(0).expand(q.shape[0] // ng, ng, length, length).reshape(q.shape[0], 1, length,
                                                                                                  length)
        with sdpa_context(self.sdpa_backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)


BACKEND = Backend(
    name="regular",
    factory=RegularCore,
    kind="exact",
    supports_dropout=True,
    supports_mask=True,  # mask-defined steps (neighborhood windows) through SDPA's boolean attn_mask
    plain_sequences=True,  # [CLS; group] sequences as views of one projection (RegularCore)
    # SDPA computes in the input dtype with float32 softmax statistics: the default exact tolerances
    # (registry.EXACT_TOLERANCES: float64 1e-10, float32 2e-5, float16 2e-3, bfloat16 1.6e-2) follow from that.
    tolerances=EXACT_TOLERANCES,
    # CPU kernels and the forward on CUDA are deterministic; the CUDA efficient-attention and flash
    # backward kernels accumulate dk/dv with atomics (torch warns under use_deterministic_algorithms)
    deterministic={"forward": True, "backward": False},
    priority=50,
    description="exact softmax attention via torch SDPA (flash / efficient / cuDNN / math)",
)
