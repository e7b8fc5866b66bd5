"""GPU-marked: every exact backend against a float64 reference on the GPU workload, output and gradients, and the
model with ``triton`` against ``regular``. ``fast-timesformer gpu-check`` runs these very tests as its correctness
stage (``-m gpu``); its ``--dry-run`` runs them on CPU at tiny sizes (``FAST_TIMESFORMER_CORRECTNESS_DEVICE=cpu``,
Triton under its interpreter). Without a CUDA device (and without that variable) they are skipped.

Outputs start as NaN and torch's deterministic mode fills every uninitialised allocation with NaN, so an element
a backend leaves unwritten fails; every case draws fresh inputs (its seed). Tolerances: the backend's declared
ones for the dtype (:meth:`Backend.tolerance`), gradients 10x (:mod:`fast_timesformer.bench.correctness`)."""
from __future__ import annotations

import contextlib
import os
import zlib

import pytest
import torch

from fast_timesformer.backends import get_backend
from fast_timesformer.backends.regular import sdpa_refused
from fast_timesformer.bench.correctness import StepData, check
from fast_timesformer.bench.kernels import contenders
from fast_timesformer.groups import TokenGroups

DEVICE = os.environ.get("FAST_TIMESFORMER_CORRECTNESS_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                                  reason="needs a CUDA device (gpu-check runs these on a GPU)")]
if DEVICE == "cuda":  # (batch, frames, patches, heads, dim_head), dtypes
    SHAPES = [((8, 8, 196, 12, 64), ("bfloat16", "float16", "float32")), ((2, 5, 50, 12, 40), ("bfloat16", "float32"))]
    MODEL = dict(dim=768, depth=4, heads=12, frames=8, image_size=224, batch=2)
else:
    SHAPES = [((1, 3, 5, 2, 16), ("float32", "float16")), ((1, 5, 7, 1, 8), ("float32",))]
    MODEL = dict(dim=32, depth=1, heads=2, frames=2, image_size=32, batch=1)
CASES = [(s, dt) for s, dts in SHAPES for dt in dts]
# the official CLS rule (time without CLS, space with a CLS copy per frame) and the global CLS
CLS = [("time", "exclude"), ("space", "per_group"), ("time", "global"), ("space", "global")]


@contextlib.contextmanager
def poisoned_memory():
    """Uninitialised memory filled with NaN (torch's deterministic mode), so an unwritten element shows."""
    det = torch.utils.deterministic
    was, fill = torch.are_deterministic_algorithms_enabled(), det.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)
        det.fill_uninitialized_memory = fill


@pytest.mark.parametrize("step,cls", CLS, ids=[f"{s}-{c}" for s, c in CLS])
@pytest.mark.parametrize("shape,dtype", CASES, ids=[f"{'x'.join(map(str, s))}-{dt}" for s, dt in CASES])
@pytest.mark.parametrize("contender,backend,options", contenders(), ids=[c[0] for c in contenders()])
def test_exact_backend_matches_float64(contender, backend, options, shape, dtype, step, cls):
    b, f, n, h, d = shape
    groups = TokenGroups.time(f, n) if step == "time" else TokenGroups.space(f, n)
    seed = zlib.crc32(repr((shape, dtype, step, cls)).encode())  # fresh inputs per case, the same every run
    data = StepData(groups, cls, b, h, d, getattr(torch, dtype), DEVICE, seed=seed)
    be = get_backend(backend)
    reasons = data.refusal(be)
    if reasons:
        pytest.skip(f"{contender} refuses: {'; '.join(reasons)}")
    core = be.build(d, h, **options).to(DEVICE)
    try:
        with poisoned_memory():
            res = check(data, core, be, grads=be.supports_backward, poison=True)
    except RuntimeError as e:  # a pinned SDPA implementation that cannot take these inputs refuses at the call
        if options.get("sdpa_backend") and sdpa_refused(e):
            pytest.skip(f"{contender} refuses at the call: {str(e).splitlines()[0]}")
        raise
    assert res["within"], f"{contender}: max |err|/max |ref| {res['max_rel']} over tolerance {res['tolerance']}"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16" if DEVICE == "cuda" else "float16"])
def test_model_with_triton_matches_regular(dtype):
    """The same TimeSformer weights with ``triton`` and ``regular``: logits and every parameter's gradient
    (relative Frobenius). float32: within 1e-4. Lower precision (autocast): triton may not be further from
    float32 ``regular`` than 2x ``regular`` itself in the same dtype (floor 1e-3)."""
    from fast_timesformer.attention import use_backend
    from fast_timesformer.models import TimeSformer

    be = get_backend("triton")
    if be.unavailable_reasons():
        pytest.skip(f"triton: {'; '.join(be.unavailable_reasons())}")
    c = MODEL
    model = TimeSformer(num_classes=10, num_frames=c["frames"], image_size=c["image_size"], patch_size=16,
                        dim=c["dim"], depth=c["depth"], heads=c["heads"], drop_path=0.0).to(DEVICE)
    with torch.no_grad():  # temporal_fc starts at zero: give every path a say
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x = torch.randn(c["batch"], c["frames"], 3, c["image_size"], c["image_size"], device=DEVICE)
    params = [p for p in model.parameters() if p.requires_grad]

    def run(backend, dt):
        with use_backend(model, backend), torch.autocast(DEVICE, dtype=getattr(torch, dt), enabled=dt != "float32"):
            logits = model(x)
        return [logits.detach().float(), *torch.autograd.grad(logits.float().square().mean(), params)]

    def err(got, ref):
        return max(float((a.float() - b).norm() / b.norm().clamp_min(1e-30)) for a, b in zip(got, ref))

    ref = run("regular", "float32")
    tol = 1e-4 if dtype == "float32" else max(2 * err(run("regular", dtype), ref), 1e-3)
    assert err(run("triton", dtype), ref) <= tol
