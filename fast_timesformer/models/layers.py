"""Small pieces shared by the model classes."""
from __future__ import annotations

from typing import Iterable

from torch import nn


def init_linear_and_norm_(modules: Iterable[nn.Module], std: float = 0.02) -> None:
    """The ViT/TimeSformer initialisation: Linear weights truncated-normal (std 0.02) with zero biases,
    LayerNorms (1, 0). Other module types are left alone."""
    for m in modules:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
