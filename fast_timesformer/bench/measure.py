"""How a point is measured: latency (median + spread), peak memory, FLOPs, throughput, error.

- Latency. CPU: :class:`torch.utils.benchmark.Timer` ``blocked_autorange`` (its first block-size
  estimate doubles as warm-up). GPU: ``triton.testing.do_bench`` (CUDA-synchronised, 20/50/80 %
  quantiles) when triton imports, else CUDA events around each call.
- Peak memory. GPU: ``torch.cuda.max_memory_allocated`` over one call, minus what was allocated
  before it (so: activations, gradients and workspace, not the weights). CPU: one call under
  ``torch.profiler`` with ``profile_memory=True``; every CPU allocation and free the profiler sees
  is replayed in time order and the highest running total above the start is the peak (the same
  quantity as on the GPU: bytes live at once that the call itself allocated).
- FLOPs: one call under :class:`torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions,
  SDPA; elementwise work is not counted), forward only or forward + backward as the step does.
"""
from __future__ import annotations

import contextlib
import gc
import os
import statistics
import sys
from typing import Callable

import torch

OOM_MARKERS = ("out of memory", "can't allocate memory", "not enough memory", "failed to allocate")


def is_oom(err: BaseException) -> bool:
    """True for CUDA and CPU allocator failures (``torch.OutOfMemoryError``, ``DefaultCPUAllocator``)."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err).lower() for m in OOM_MARKERS)


def free_memory(device: str) -> None:
    gc.collect()
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_step(step: Callable[[], object], device: str, *, min_run_time: float = 0.25) -> dict:
    """Latency statistics in seconds: median, iqr, min, max, runs, method."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return _time_cuda(step, min_run_time)
    from torch.utils import benchmark

    m = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads()
                        ).blocked_autorange(min_run_time=min_run_time)
    times = list(m.times)
    return {"median_s": m.median, "iqr_s": m.iqr, "min_s": min(times), "max_s": max(times),
            "runs": m.number_per_run * len(times), "blocks": len(times),
            "time_method": "torch.utils.benchmark.Timer.blocked_autorange"}


def _time_cuda(step, min_run_time):
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    ms = max(1, int(min_run_time * 1000))
    if do_bench is not None:
        q20, q50, q80 = do_bench(step, warmup=max(ms // 4, 25), rep=ms, quantiles=[0.2, 0.5, 0.8])
        lo_hi = do_bench(step, warmup=0, rep=max(ms // 4, 10), quantiles=[0.0, 1.0])
        return {"median_s": q50 / 1e3, "iqr_s": (q80 - q20) / 1e3, "min_s": lo_hi[0] / 1e3, "max_s": lo_hi[1] / 1e3,
                "runs": None, "blocks": None, "time_method": "triton.testing.do_bench (q20-q80 as spread)"}
    step()
    torch.cuda.synchronize()
    times = []
    total = 0.0
    while total < min_run_time or len(times) < 5:
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        step()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
        total += times[-1]
    q = statistics.quantiles(times, n=4)
    return {"median_s": statistics.median(times), "iqr_s": q[2] - q[0], "min_s": min(times), "max_s": max(times),
            "runs": len(times), "blocks": len(times), "time_method": "CUDA events"}


def peak_memory(step: Callable[[], object], device: str) -> dict:
    """Peak bytes allocated by one call above the level at its start."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"peak_mem_bytes": peak - base, "peak_mem_abs_bytes": peak,
                "mem_method": "torch.cuda.max_memory_allocated - memory_allocated before the call"}
    return {"peak_mem_bytes": cpu_peak_bytes(step),
            "mem_method": "torch.profiler(profile_memory=True): max running total of CPU allocations"}


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (C-level prints) for the duration; Python errors still raise."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def cpu_peak_bytes(step: Callable[[], object]) -> int:
    """Replay the CPU allocations/frees the profiler records during ``step()``; return the peak."""
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():  # kineto prints a line to the C stderr at every start and stop
        prof.__enter__()
    try:
        step()
    finally:
        with _quiet_stderr():
            prof.__exit__(None, None, None)
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda t: t[0])
    cur = peak = 0
    for _, nbytes in events:
        cur += nbytes
        peak = max(peak, cur)
    return int(peak)


def _cpu_sdpa_formulas() -> dict:
    """FLOP formulas for the CPU flash SDPA ops, which FlopCounterMode does not count by itself."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    out = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        def fwd(q, k, v, *args, out_shape=None, **kwargs):
            return sdpa_flop_count(q, k, v)

        def bwd(grad_out, q, k, v, *args, out_shape=None, **kwargs):
            return sdpa_backward_flop_count(grad_out, q, k, v)

        out[aten._scaled_dot_product_flash_attention_for_cpu] = fwd
        if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
            out[aten._scaled_dot_product_flash_attention_for_cpu_backward] = bwd
    return out


def count_flops(step: Callable[[], object]) -> int:
    """FLOPs of one call (matmuls, convolutions and attention; 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_formulas()) as counter:
        step()
    return int(counter.get_total_flops())


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| (Frobenius, float32)."""
    out, ref = out.float(), ref.float()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))
