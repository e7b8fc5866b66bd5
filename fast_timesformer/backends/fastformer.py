"""``fastformer``: additive attention (Wu et al., arXiv 2108.09084), per head, with its own parameters.

For each group of tokens i = 1..S and each head::

    alpha = softmax_i(w_q . q_i / sqrt(d));   g_q = sum_i alpha_i q_i
    p_i   = g_q * k_i                          (elementwise)
    beta  = softmax_i(w_k . p_i / sqrt(d));   g_k = sum_i beta_i p_i
    u_i   = g_k * v_i
    r_i   = W_o u_i + b_o + q_i

It is a different model, not an approximation of softmax attention: pretrained softmax weights do not
carry over, and its output for token i uses token i's own value and query, so it is self-attention only
and takes no separate prefix: ``DividedAttention`` hands it the materialised sequence [CLS; group].
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .registry import AttentionCore, Backend


class FastformerCore(AttentionCore):
    def __init__(self, backend, dim_head, heads):
        super().__init__(backend, dim_head, heads)
        self.w_q = nn.Parameter(torch.empty(heads, dim_head))
        self.w_k = nn.Parameter(torch.empty(heads, dim_head))
        self.out_weight = nn.Parameter(torch.empty(heads, dim_head, dim_head))  # (h, d_out, d_in)
        self.out_bias = nn.Parameter(torch.zeros(heads, dim_head))
        self.reset_parameters()

    def reset_parameters(self):
        bound = 1.0 / math.sqrt(self.dim_head)
        nn.init.uniform_(self.w_q, -bound, bound)
        nn.init.uniform_(self.w_k, -bound, bound)
        nn.init.uniform_(self.out_weight, -bound, bound)
        nn.init.zeros_(self.out_bias)

    def attend(self, q, k, v, prefix_k, prefix_v, *, scale, dropout_p):
        dtype = q.dtype
        acc = torch.promote_types(dtype, torch.float32)  # float32 accumulation for half types
        qf, kf, vf = q.to(acc), k.to(acc), v.to(acc)
        alpha = torch.softmax(torch.einsum("bhsd,hd->bhs", qf, self.w_q.to(acc)) * scale, dim=-1)
        g_q = torch.einsum("bhs,bhsd->bhd", alpha, qf)
        p = g_q.unsqueeze(2) * kf
        beta = torch.softmax(torch.einsum("bhsd,hd->bhs", p, self.w_k.to(acc)) * scale, dim=-1)
        g_k = torch.einsum("bhs,bhsd->bhd", beta, p)
        u = g_k.unsqueeze(2) * vf
        r = torch.einsum("bhsi,hoi->bhso", u, self.out_weight.to(acc)) + self.out_bias.to(acc)[:, None] + qf
        return r.to(dtype)


BACKEND = Backend(
    name="fastformer",
    factory=FastformerCore,
    kind="different_model",  # its own parameters and its own attention: no softmax reference to compare with
    deterministic=True,
    supports_cross=False,
    supports_prefix=False,
    priority=300,
    description="Fastformer additive attention with its own parameters (a different model), linear",
)
