"""``performer``: FAVOR+ random-feature attention through performer-pytorch's ``FastAttention``.

Quirks handled here (REFERENCE.md §4): FastAttention applies the d^-1/4 data normaliser itself, so q is
not pre-scaled (a non-default ``scale`` is folded into q); the features are computed in float32 even
under autocast; standalone it never redraws its random features, so we redraw on demand
(:meth:`PerformerCore.redraw_features`) and, optionally, every ``feature_redraw_interval`` training calls.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from ..kernels.naive import with_prefix
from .registry import AttentionCore, Backend


class PerformerCore(AttentionCore):
    def __init__(self, backend, dim_head, heads, nb_features=None, generalized_attention=False,
                 kernel_fn=None, feature_redraw_interval=None, ortho_scaling=0):
        super().__init__(backend, dim_head, heads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from performer_pytorch import FastAttention
        if nb_features is None:
            nb_features = int(dim_head * math.log(dim_head))
        if nb_features < 1:
            raise ValueError(f"nb_features must be >= 1, got {nb_features}")
        if feature_redraw_interval is not None and feature_redraw_interval < 1:
            raise ValueError(f"feature_redraw_interval must be >= 1 or None, got {feature_redraw_interval}")
        self.fast_attention = FastAttention(
            dim_head, nb_features=nb_features, generalized_attention=generalized_attention,
            kernel_fn=kernel_fn if kernel_fn is not None else nn.ReLU(), ortho_scaling=ortho_scaling)
        self.nb_features = nb_features
        self.generalized_attention = generalized_attention
        self.feature_redraw_interval = feature_redraw_interval
        # training calls since the last redraw: a Python int for the hot path (no device sync), mirrored
        # in a buffer so that checkpoints carry it and a resumed run redraws at the same step
        self.calls_since_redraw = 0
        self.register_buffer("redraw_counter", torch.zeros((), dtype=torch.long))

    @property
    def recomputable(self) -> bool:
        """Not with ``feature_redraw_interval``: every training call advances the redraw counter."""
        return self.feature_redraw_interval is None

    @torch.no_grad()
    def redraw_features(self):
        """Draw a fresh random projection (uses the global torch RNG)."""
        self.fast_attention.redraw_projection_matrix(self.fast_attention.projection_matrix.device)
        self.calls_since_redraw = 0
        self.redraw_counter.fill_(0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "redraw_counter" in state_dict:
            self.calls_since_redraw = int(self.redraw_counter)

    def attend(self, q, k, v, prefix_k, prefix_v, *, scale, dropout_p):
        if self.training and self.feature_redraw_interval is not None:
            if self.calls_since_redraw >= self.feature_redraw_interval:
                self.redraw_features()
            self.calls_since_redraw += 1
            self.redraw_counter.fill_(self.calls_since_redraw)
        k, v = with_prefix(k, v, prefix_k, prefix_v)
        d = q.shape[-1]
        default = d ** -0.5
        if abs(scale - default) > 1e-12 * default and not self.generalized_attention:
            # FastAttention estimates exp(q.k / sqrt(d)); fold a different scale into q.
            q = q * (scale / default)
        dtype = q.dtype
        device_type = q.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            out = self.fast_attention(q.float(), k.float(), v.float())
        return out.to(dtype)

    def extra_repr(self):
        return (super().extra_repr() + f", nb_features={self.nb_features}, "
                f"generalized={self.generalized_attention}, redraw_interval={self.feature_redraw_interval}")


BACKEND = Backend(
    name="performer",
    factory=PerformerCore,
    kind="approximate",  # FAVOR+ estimates softmax attention: judged by its error against the exact result
    requires=("performer_pytorch",),
    pip_names={"performer_pytorch": "performer-pytorch"},
    # no tolerances: a random-feature estimate is not within round-off of softmax (its error is measured
    # instead). Deterministic: given its drawn features the computation is plain matmuls.
    deterministic=True,
    error_sweep=({"nb_features": 16}, {"nb_features": 64}, {"nb_features": 256}),  # error vs feature count
    priority=200,
    description="FAVOR+ random features (performer-pytorch), linear in sequence length",
)
