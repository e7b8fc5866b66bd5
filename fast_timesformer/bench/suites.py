"""The suites of ``fast-timesformer bench --suite NAME`` (docs/bench.md, "Suites"), each registered with
:func:`register_suite`; a point is a :class:`~fast_timesformer.bench.workloads.Workload` (built and timed by the runner)
or a :class:`~fast_timesformer.bench.runner.Case` (a function of the suite's own). Schemes and backends come from their
registries, by what they declare: a newly registered one joins the sweeps, skipped with its reasons where it cannot."""
from __future__ import annotations

from collections import namedtuple
from typing import Callable

import torch

from .._names import unknown_name_error
from ..backends import get_backend
from ..schemes import list_schemes
from .workloads import Workload, auto_backend, benchmarked_backends

# points(device=..., tiny=...) -> [Workload | Case]; device: its default; settings: stored in the run's metadata
Suite = namedtuple("Suite", "name points help device settings")


SUITES: dict = {}


def register_suite(name: str, *, help: str, device: str = "cpu", **settings):
    """Decorator: register ``fn(device, tiny) -> points`` as suite ``name`` (on the command line at once)."""
    def deco(fn: Callable):
        SUITES[name] = Suite(name, fn, help, device, settings)
        return fn
    return deco


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise unknown_name_error("suite", name, SUITES)
    return SUITES[name]


def suite_points(name: str, device: str = None, tiny: bool = False) -> list:
    s = get_suite(name)
    return s.points(device=device or s.device, tiny=tiny)


def inexact_backends(device: str) -> list:
    """Benchmarked backends whose ``kind`` is not ``exact`` (their error is measured) that declare ``device``."""
    return [n for n in benchmarked_backends() if not (be := get_backend(n)).exact
            and device.split(":")[0] in be.devices]


def sweep(base: Workload, frames_list, res_list, base_frames, base_res, backends, modes=("fwd", "fwd+bwd")):
    """frames sweep at ``base_res`` + resolution sweep at ``base_frames``, every registered scheme x backends x
    modes; the forward points of a backend that is not exact also measure its error (group ``sweep``), then
    every non-exact backend at each option set of its ``error_sweep`` at the base size (group ``approx``)."""
    configs = [(f, base_res) for f in frames_list]
    configs += [(base_frames, r) for r in res_list if (base_frames, r) not in configs]
    points = [base.replace(scheme=s, backend=be, mode=m, frames=f, image_size=r, group="sweep",
                           reference=(m == "fwd" and not get_backend(be).exact))
              for f, r in configs for s in list_schemes() for be in backends for m in modes]
    at = base.replace(frames=base_frames, image_size=base_res, mode="fwd", group="approx", reference=True)
    return points + [at.replace(scheme=s, backend=n, backend_options=opts) for n in inexact_backends(base.device)
                     for opts in get_backend(n).error_sweep for s in list_schemes()]


def target(device, dtype, batch, mode, backends, min_run_time, peers=("hf", "lucidrains"), interleave=0):
    """Group ``target``: TimeSformer-Base (divided, 8x224) with each of ``backends``, then the peers (a peer
    runs its own attention; the backend field is unused)."""
    base = Workload(impl="ours", batch=batch, frames=8, image_size=224, dim=768, depth=12, heads=12,
                    num_classes=400, dtype=dtype, device=device, mode=mode, group="target",
                    min_run_time=min_run_time, interleave=interleave)
    return [base.replace(backend=b) for b in backends] + [base.replace(impl=p) for p in peers]


def cpu_target(device: str) -> list:
    """The CPU target: ours (``auto``'s backend) vs HF vs lucidrains, B=1 8x224 forward, 3 single calls each
    taken round-robin after a FLOP-count and a peak-memory call (~3-6 s each)."""
    return target(device, "float32", 1, "fwd", [auto_backend(device)], min_run_time=5.0, interleave=3)


def hf_by_size(device="cpu", sizes=(336, 448), modes=("fwd",), rounds=3, tiny=False):
    """Group ``sizes``: ours (``auto``'s backend) and Hugging Face, B=1, float32, same weights, at each resolution
    and mode; the two are timed alternately (``rounds`` single calls each)."""
    kw = dict(frames=2, dim=32, depth=1, heads=2) if tiny else dict(frames=8, dim=768, depth=12, heads=12)
    ours = [Workload(impl="ours", backend=auto_backend(device), image_size=s, num_classes=400, device=device, mode=m,
                     group="sizes", min_run_time=1.0, interleave=rounds, **kw) for s in sizes for m in modes]
    return [p for w in ours for p in (w, w.replace(impl="hf"))]


@register_suite("cpu", help="make bench: ViT-Tiny width sweep of every scheme x backend, the CPU target, ours vs "
                            "Hugging Face at 8x336 and 8x448 (~10 min on 2 idle cores)",
                width="dim 192, 3 heads, depth 2, patch 16, batch 1, float32")
def cpu_suite(device="cpu", tiny=False):
    if tiny:
        return tiny_suite(device)
    base = Workload(impl="ours", dim=192, heads=3, depth=2, num_classes=10, device=device, min_run_time=0.15)
    points = sweep(base, (2, 4, 8, 16), (64, 128, 192, 224), 8, 128, benchmarked_backends())
    return points + cpu_target(device) + hf_by_size(device)  # attention weighs more as the clip grows


@register_suite("hf", help="ours vs Hugging Face by size (8x224/336/448 forward, 8x224/448 training step), "
                           "time and peak memory, same weights, timed alternately")
def hf_suite(device="cpu", tiny=False):
    if tiny:
        return hf_by_size(device, (48, 64), modes=("fwd", "fwd+bwd"), tiny=True)
    return hf_by_size(device, (224, 336, 448)) + hf_by_size(device, (224, 448), modes=("fwd+bwd",))


@register_suite("gpu", help="paper Figure 3 range on ViT-Base bf16 (needs CUDA), then the GPU target", device="cuda",
                width="ViT-Base: dim 768, 12 heads, depth 12, patch 16, batch 1, bfloat16")
def gpu_suite(device="cuda", tiny=False):
    if tiny:
        return tiny_suite(device)
    base = Workload(impl="ours", dim=768, heads=12, depth=12, num_classes=400, device=device, dtype="bfloat16",
                    min_run_time=0.2)
    points = sweep(base, (8, 16, 32, 64, 96), (224, 256, 320, 384, 448), 8, 224, benchmarked_backends())
    return points + gpu_targets(device)


def gpu_targets(device: str, fwd_peers=("hf",)) -> list:
    """The GPU target (B=8, 8x224, bfloat16): every benchmarked exact backend declaring the device and the dtype
    (training step: and backward), training step and forward, against Hugging Face."""
    exact = [be for be in map(get_backend, benchmarked_backends())
             if be.exact and device.split(":")[0] in be.devices and torch.bfloat16 in be.dtypes]
    return (target(device, "bfloat16", 8, "fwd+bwd", [be.name for be in exact if be.supports_backward], 0.5,
                   peers=("hf",))
            + target(device, "bfloat16", 8, "fwd", [be.name for be in exact], 0.5, peers=fwd_peers))


@register_suite("models", help="only the target comparison against the peers (CPU or GPU form by device)")
def models_suite(device=None, tiny=False):
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if tiny:
        return [p for p in tiny_suite(device, peers=True) if p.group == "target"]
    return gpu_targets(device, fwd_peers=("hf", "lucidrains")) if device.startswith("cuda") else cpu_target(device)


@register_suite("tiny", help="seconds: what the tests run")
def tiny_suite(device="cpu", tiny=True, peers=False):
    """The exact backend ``auto`` picks on the device, and every backend that is not exact (its error measured,
    also at each option set of its ``error_sweep``)."""
    base = Workload(impl="attention", dim=32, heads=2, depth=1, num_classes=5, device=device, min_run_time=0.01)
    points = sweep(base, (2, 4), (32, 64), 2, 32, [auto_backend(device)] + inexact_backends(device))
    if peers:
        t = base.replace(impl="ours", backend=auto_backend(device), frames=2, image_size=32, group="target",
                         interleave=3)
        points += [t, t.replace(impl="hf"), t.replace(impl="lucidrains")]
    return points


def filter_points(points, *, schemes=None, backends=None, impls=None, modes=None, groups=None, max_tokens=None,
                  limit=None):
    """Keep the points matching every given filter (each a collection of allowed values)."""
    def keep(p):
        impl = getattr(p, "impl", "ours")
        return ((not schemes or getattr(p, "scheme", None) in schemes)
                and (not backends or impl not in ("ours", "attention") or getattr(p, "backend", None) in backends)
                and (not impls or impl in impls) and (not modes or getattr(p, "mode", None) in modes)
                and (not groups or p.group in groups) and (not max_tokens or p.tokens <= max_tokens))

    return [p for p in points if keep(p)][:limit or None]
