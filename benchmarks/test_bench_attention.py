"""Attention-level and model-level cases: every registered scheme x benchmarked backend x mode at one size per
device (the registries drive the cases: a registered scheme or backend is a case here with no edit)."""
from __future__ import annotations

import pytest
from conftest import DEVICE, DTYPE

from fast_timesformer.bench.workloads import Workload, benchmarked_backends
from fast_timesformer.schemes import list_schemes

SCHEMES = list_schemes()
BACKENDS = benchmarked_backends()  # every backend but the diagnostic ones
MODES = ("fwd", "fwd+bwd")

if DEVICE == "cuda":
    MODEL = dict(dim=768, heads=12, depth=12, frames=8, image_size=224, batch=8)
else:
    MODEL = dict(dim=192, heads=3, depth=2, frames=8, image_size=128, batch=1)


def test_tiny_divided_regular_forward(run_workload):  # the Workload defaults: divided, regular
    """The one case CI runs: the harness, the builder and pytest-benchmark wiring still work."""
    w = Workload(impl="ours", dim=32, heads=2, depth=1, frames=2,
                 image_size=32, num_classes=5, device=DEVICE, dtype=DTYPE)
    run_workload(w)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_attention_layers(run_workload, scheme, backend, mode):
    """The attention steps of one block of each scheme (no MLP, no embeddings), 4 blocks deep."""
    w = Workload(impl="attention", scheme=scheme, backend=backend, mode=mode, device=DEVICE, dtype=DTYPE,
                 **dict(MODEL, depth=4))
    run_workload(w)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_model(run_workload, scheme, backend, mode):
    w = Workload(impl="ours", scheme=scheme, backend=backend, mode=mode, device=DEVICE, dtype=DTYPE,
                 num_classes=400, **MODEL)
    run_workload(w)
