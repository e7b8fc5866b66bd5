"""Every layer and model survives ``pickle`` / ``torch.save(model)`` and ``copy.deepcopy`` (no lambdas or
modules in module state), for every backend core and every scheme, and the copy computes the same thing."""
import copy
import io
import pickle

import pytest
import torch

from fast_timesformer import DividedAttention, GenerativeTimeSformer, TimeSformer, get_backend, list_backends
from fast_timesformer.schemes import list_schemes

BACKENDS = [b for b in list_backends() if not get_backend(b).unavailable_reasons()]


from backend_devices import device_for  # noqa: E402  (shared with the other backend tests)


def _copies(module):
    """deepcopy, pickle round trip, torch.save(module) round trip."""
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    return {
        "deepcopy": copy.deepcopy(module),
        "pickle": pickle.loads(pickle.dumps(module)),
        "torch.save": torch.load(buf, weights_only=False),  # our own object, written just now
    }


def _same(module, copied, x):
    module.eval(), copied.eval()
    with torch.no_grad():
        # float64: the copy runs the same operations on the same numbers, so the results are equal
        assert torch.equal(module(x), copied(x))


def test_all_available_backends_are_covered():
    assert {"regular", "performer", "fastformer", "triton"} <= set(BACKENDS)  # triton: TRITON_INTERPRET=1 on CPU


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_copies(backend):
    dtype = torch.float64 if torch.float64 in get_backend(backend).dtypes else torch.float32
    dev = device_for(backend, dtype)
    layer = DividedAttention(16, heads=2, dim_head=8, backend=backend).to(dev, dtype)
    x = torch.randn(2, 1 + 2 * 3, 16, dtype=dtype, device=dev)
    for how, c in _copies(layer).items():
        assert c.cores[backend].backend is get_backend(backend), how  # the registry's Backend, by name
        with torch.no_grad():
            assert torch.equal(layer(x, groups=None), c(x, groups=None)), how


@pytest.mark.parametrize("scheme", list_schemes())
def test_timesformer_copies_every_scheme(scheme):
    model = TimeSformer(num_classes=3, num_frames=2, image_size=8, patch_size=4, dim=16, depth=1, heads=2,
                        scheme=scheme, drop_path=0.0).double()
    x = torch.randn(1, 2, 3, 8, 8, dtype=torch.float64)
    for how, c in _copies(model).items():
        assert c.scheme == model.scheme, how
        _same(model, c, x)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if torch.float64 in get_backend(b).dtypes] + ["mixed"])
def test_models_copy_with_every_backend_core(backend):
    spec = {"time": "triton", "space": "performer"} if backend == "mixed" else backend
    dtype = torch.float32 if backend == "mixed" else torch.float64
    dev = device_for("triton") if backend == "mixed" else torch.device("cpu")
    model = TimeSformer(num_classes=3, num_frames=2, image_size=8, patch_size=4, dim=16, depth=1, heads=2,
                        backend=spec, drop_path=0.0).to(dev, dtype)
    gen = GenerativeTimeSformer(dim=16, image_size=8, patch_size=4, num_frames=2, num_target_frames=1, depth=1,
                                heads=2, dim_head=8, backend=spec if backend != "mixed" else "fastformer").to(dev, dtype)
    x = torch.randn(1, 2, 3, 8, 8, dtype=dtype, device=dev)
    for m in (model, gen):
        for how, c in _copies(m).items():
            _same(m, c, x)
