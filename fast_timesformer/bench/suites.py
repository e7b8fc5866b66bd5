"""The suites: named lists of :class:`~fast_timesformer.bench.workloads.Workload`.

Each suite is a function returning the points in run order plus ``settings`` (stored in the run's
metadata; the plots read ``sweep_base`` from it). Registering a function with :func:`suite` puts it
on the command line (``fast-timesformer bench --suite NAME``). Schemes and backends come from their
registries and are chosen by what they declare, never by name, so a newly registered scheme or backend
joins the sweeps (and shows as skipped, with its reasons, where it cannot run):

- the sweeps: every registered scheme x every benchmarked backend (not ``Backend.diagnostic``: the diagnostic
  ``recording`` backend is not timed);
- the error measurement (``reference=True``): every backend whose ``kind`` is not ``exact``, against the
  exact backend ``auto`` picks (:func:`~fast_timesformer.bench.workloads.auto_backend`), in the sweep's
  forward points and at each option set of its ``error_sweep`` (group ``approx``);
- the targets: the backend ``auto`` picks (CPU), or every exact backend declaring the device, dtype and
  backward (GPU), against the peers.

- ``cpu`` (default of ``make bench``, ~5 min on 2 cores): ViT-Tiny width (dim 192, 3 heads, depth 2),
  float32, frames 2..16 at 128 px and 64..224 px at 8 frames, five schemes x every registered backend,
  forward and forward+backward; performer feature counts vs error; then the CPU target: B=1, 8x224,
  ViT-Base depth 12, divided, forward, ours vs Hugging Face vs lucidrains.
- ``gpu``: ViT-Base (768, 12 heads, depth 12), bfloat16, the paper's Figure 3 range (frames 8..96 at
  224 px, 224..448 px at 8 frames), five schemes x backends, both modes; then the GPU target (B=8,
  8x224, training step: ours vs our ``regular`` vs Hugging Face).
- ``models``: only the target comparison against the peers (CPU or GPU form by device).
- ``tiny``: seconds; what the tests and CI run.
- ``kernels``: the Triton kernel suite, :mod:`fast_timesformer.bench.kernels` (not a Workload list).
- ``hf-sizes``: ours vs Hugging Face at 8x224, 8x336 and 8x448 (also part of ``cpu``).
"""
from __future__ import annotations

from typing import Callable

import torch

from .workloads import Workload, auto_backend, backend_kind, benchmarked_backends

SUITES: dict = {}


def suite(name: str):
    def deco(fn: Callable):
        SUITES[name] = fn
        return fn
    return deco


def list_suites() -> list:
    return list(SUITES) + ["kernels"]


def get_suite(name: str, **kw):
    """(points, settings) of a registered suite."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose from {', '.join(list_suites())}")
    return SUITES[name](**kw)


def sweep_backends() -> list:
    """Every benchmarked backend, in registration order (those that cannot run here are recorded as
    skipped, with their reasons)."""
    return benchmarked_backends()


def exact_backends(device: str, dtype: str, backward: bool = False) -> list:
    """Benchmarked exact backends that declare ``device`` and ``dtype`` (and backward, if asked)."""
    from ..backends import get_backend
    from .workloads import DTYPES

    dev = device.split(":")[0]
    out = []
    for name in benchmarked_backends():
        be = get_backend(name)
        if be.exact and dev in be.devices and DTYPES[dtype] in be.dtypes and (be.supports_backward or not backward):
            out.append(name)
    return out


def inexact_backends(device: str) -> list:
    """Benchmarked backends whose ``kind`` is not ``exact`` (their error is measured) that declare ``device``."""
    from ..backends import get_backend

    return [n for n in benchmarked_backends() if not get_backend(n).exact
            and device.split(":")[0] in get_backend(n).devices]


def _schemes() -> list:
    from ..schemes import list_schemes

    return list_schemes()


def models_available() -> bool:
    try:
        from ..models import TimeSformer  # noqa: F401
    except ImportError:
        return False
    return True


def _sweep(base: Workload, frames_list, res_list, base_frames, base_res, backends, modes, schemes=None):
    """frames sweep at ``base_res`` + resolution sweep at ``base_frames``, all registered schemes x backends x
    modes; the forward points of a backend that is not exact also measure its error."""
    configs = [(f, base_res) for f in frames_list]
    configs += [(base_frames, r) for r in res_list if (base_frames, r) not in configs]
    points = []
    for f, r in configs:
        for scheme in schemes or _schemes():
            for be in backends:
                for mode in modes:
                    points.append(base.replace(scheme=scheme, backend=be, mode=mode, frames=f, image_size=r,
                                               group="sweep",
                                               reference=(mode == "fwd" and backend_kind(be) != "exact")))
    return points


def _approx(base: Workload, schemes=None):
    """Group ``approx``: every non-exact backend at each option set of its ``error_sweep`` (e.g. performer's
    feature counts), forward, its error measured, for every registered scheme."""
    from ..backends import get_backend

    pts = []
    for name in inexact_backends(base.device):
        for opts in get_backend(name).error_sweep:
            for scheme in schemes or _schemes():
                pts.append(base.replace(scheme=scheme, backend=name, backend_options=opts, mode="fwd",
                                        group="approx", reference=True))
    return pts


def _target(device: str, dtype: str, batch: int, mode: str, backends, min_run_time: float, peers=("hf", "lucidrains"),
            interleave: int = 0):
    base = Workload(impl="ours", scheme="divided_space_time", batch=batch, frames=8, image_size=224, dim=768,
                    depth=12, heads=12, num_classes=400, dtype=dtype, device=device, mode=mode, group="target",
                    min_run_time=min_run_time, interleave=interleave)
    pts = [base.replace(backend=b) for b in backends]
    pts += [base.replace(impl=p) for p in peers]  # a peer runs its own attention (the backend field is unused)
    return pts


@suite("cpu")
def cpu_suite(device: str = "cpu", impl: str = None, target: bool = True):
    impl = impl or ("ours" if models_available() else "attention")
    base = Workload(impl=impl, dim=192, heads=3, depth=2, num_classes=10, device=device, dtype="float32",
                    min_run_time=0.15)
    points = _sweep(base, frames_list=(2, 4, 8, 16), res_list=(64, 128, 192, 224), base_frames=8, base_res=128,
                    backends=sweep_backends(), modes=("fwd", "fwd+bwd"))
    points += _approx(base.replace(frames=8, image_size=128))
    if target:
        # per implementation: one warm-up (the FLOP count) + one memory pass, then 3 single timed calls
        # taken round-robin with the peers (ours, HF, lucidrains, ours, ...), ~3-6 s each
        points += _target(device, "float32", 1, "fwd", [auto_backend(device)], min_run_time=5.0, interleave=3)
        # ours vs Hugging Face at larger sizes (8x224 is the target above): attention weighs more as the
        # clip grows; each size's two implementations are timed round-robin
        points += hf_sizes(device, sizes=(336, 448))
    return points, {"sweep_base": {"frames": 8, "image_size": 128}, "level": impl,
                    "width": "dim 192, 3 heads, depth 2, patch 16, batch 1, float32"}


def hf_sizes(device: str = "cpu", sizes=(336, 448), frames: int = 8, dim: int = 768, depth: int = 12,
             heads: int = 12, rounds: int = 3):
    """Group ``sizes``: ours (the backend ``auto`` picks) and Hugging Face, B=1, forward, float32, at each
    resolution; the two are timed alternately (``rounds`` single calls each) after a FLOP-count and a memory
    pass."""
    pts = []
    for s in sizes:
        w = Workload(impl="ours", backend=auto_backend(device), batch=1, frames=frames, image_size=s, dim=dim,
                     depth=depth, heads=heads, num_classes=400, dtype="float32", device=device, mode="fwd",
                     group="sizes", min_run_time=1.0, interleave=rounds)
        pts += [w, w.replace(impl="hf")]
    return pts


@suite("hf-sizes")
def hf_sizes_suite(device: str = "cpu"):
    """Only the size comparison: ours vs Hugging Face at 8x224 (the target group), 8x336 and 8x448."""
    pts = _target(device, "float32", 1, "fwd", [auto_backend(device)], min_run_time=5.0, interleave=3, peers=("hf",))
    return pts + hf_sizes(device), {"target": "CPU: B=1, 8 frames at 224/336/448 px, ViT-Base depth 12, fwd, float32"}


@suite("gpu")
def gpu_suite(device: str = "cuda", impl: str = "ours", target: bool = True):
    base = Workload(impl=impl, dim=768, heads=12, depth=12, num_classes=400, device=device, dtype="bfloat16",
                    min_run_time=0.2)
    points = _sweep(base, frames_list=(8, 16, 32, 64, 96), res_list=(224, 256, 320, 384, 448), base_frames=8,
                    base_res=224, backends=sweep_backends(), modes=("fwd", "fwd+bwd"))
    points += _approx(base.replace(frames=8, image_size=224))
    if target:
        points += _gpu_targets(device)
    return points, {"sweep_base": {"frames": 8, "image_size": 224}, "level": impl,
                    "width": "ViT-Base: dim 768, 12 heads, depth 12, patch 16, batch 1, bfloat16"}


def _gpu_targets(device: str, fwd_peers=("hf",)) -> list:
    """The GPU target (B=8, 8x224, bfloat16): every exact backend declaring the device and backward, training
    step and forward, against Hugging Face."""
    pts = _target(device, "bfloat16", 8, "fwd+bwd", exact_backends(device, "bfloat16", backward=True),
                  min_run_time=0.5, peers=("hf",))
    return pts + _target(device, "bfloat16", 8, "fwd", exact_backends(device, "bfloat16"), min_run_time=0.5,
                         peers=fwd_peers)


@suite("models")
def models_suite(device: str = None):
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        pts = _gpu_targets(device, fwd_peers=("hf", "lucidrains"))
    else:
        pts = _target(device, "float32", 1, "fwd", [auto_backend(device)], min_run_time=5.0, interleave=3)
    return pts, {"target": "CPU: B=1 8x224 depth 12 fwd float32; GPU: B=8 8x224 bf16 training step"}


@suite("tiny")
def tiny_suite(device: str = "cpu", impl: str = "attention", peers: bool = False):
    """Seconds: the exact backend ``auto`` picks on the device, and every backend that is not exact (its error
    measured, also at each option set of its ``error_sweep``)."""
    base = Workload(impl=impl, dim=32, heads=2, depth=1, num_classes=5, device=device, patch_size=16,
                    min_run_time=0.01)
    points = _sweep(base, frames_list=(2, 4), res_list=(32, 64), base_frames=2, base_res=32,
                    backends=[auto_backend(device)] + inexact_backends(device), modes=("fwd", "fwd+bwd"))
    points += _approx(base.replace(frames=2, image_size=32))
    if peers:
        t = Workload(impl="ours", backend=auto_backend(device), dim=32, heads=2, depth=1, frames=2, image_size=32,
                     num_classes=5, device=device, group="target", min_run_time=0.01, interleave=3)
        points += [t, t.replace(impl="hf"), t.replace(impl="lucidrains")]
        points += hf_sizes(device, sizes=(48, 64), frames=2, dim=32, depth=1, heads=2)
    return points, {"sweep_base": {"frames": 2, "image_size": 32}, "level": impl}


def filter_points(points, *, schemes=None, backends=None, impls=None, modes=None, groups=None, max_tokens=None,
                  limit=None):
    """Keep the points matching every given filter (each a collection of allowed values)."""
    out = []
    for p in points:
        if schemes and p.scheme not in schemes:
            continue
        if backends and p.backend not in backends and p.impl in ("ours", "attention"):
            continue
        if impls and p.impl not in impls:
            continue
        if modes and p.mode not in modes:
            continue
        if groups and p.group not in groups:
            continue
        if max_tokens and p.tokens > max_tokens:
            continue
        out.append(p)
    return out[:limit] if limit else out


def kernels_suite_path():
    """``benchmarks/bench_kernels.py`` of the source tree (a thin wrapper around
    :mod:`fast_timesformer.bench.kernels`), or None outside a source checkout."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_kernels.py"
    return path if path.exists() else None


def load_kernels_module():
    """The kernel suite's module (installed with the package)."""
    from . import kernels

    return kernels
