"""Ours vs the peers installed here (Hugging Face Timesformer, lucidrains timesformer-pytorch), same config."""
from __future__ import annotations

import pytest
from conftest import DEVICE, DTYPE

from fast_timesformer.bench.workloads import Workload, auto_backend

if DEVICE == "cuda":  # the GPU target: B=8, 8x224, ViT-Base, training step
    CONFIG = dict(dim=768, heads=12, depth=12, frames=8, image_size=224, batch=8, mode="fwd+bwd")
else:  # a reduced CPU form of the CPU target (B=1, 8x224, depth 12 runs in `fast-timesformer bench --suite models`)
    CONFIG = dict(dim=384, heads=6, depth=4, frames=8, image_size=224, batch=1, mode="fwd")


@pytest.mark.parametrize("impl", ["ours", "hf", "lucidrains"])
def test_divided_peers(run_workload, impl):
    w = Workload(impl=impl, backend=auto_backend(DEVICE, DTYPE), device=DEVICE, dtype=DTYPE,
                 num_classes=400, **CONFIG)
    run_workload(w)
