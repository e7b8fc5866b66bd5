"""How a point is measured: latency (median + spread), peak memory, FLOPs, error (the methods: docs/bench.md,
"What is measured, and how")."""
from __future__ import annotations

import contextlib
import gc
import os
import statistics
import sys
from typing import Callable

import torch

FLOPS_METHOD = "torch.utils.flop_counter.FlopCounterMode over one call (2 per multiply-add)"


def is_oom(err: BaseException) -> bool:
    """True for CUDA and CPU allocator failures (``torch.OutOfMemoryError``, ``DefaultCPUAllocator``)."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    markers = ("out of memory", "can't allocate memory", "not enough memory", "failed to allocate")
    return isinstance(err, RuntimeError) and any(m in str(err).lower() for m in markers)


def free_memory(device: str) -> None:
    gc.collect()
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def summarize(times, method: str, calls_per_time: int = 1) -> dict:
    """Median, min, max and quartiles of repeated measurements (seconds); the IQR is None for a single run (a
    spread of 0 would claim a precision nobody measured). ``runs``: calls timed in all."""
    ts = sorted(float(t) for t in times)
    if not ts:
        raise ValueError("no timings")
    out = {"median_s": statistics.median(ts), "min_s": ts[0], "max_s": ts[-1], "n_times": len(ts),
           "runs": len(ts) * calls_per_time, "time_method": method, "q1_s": None, "q3_s": None, "iqr_s": None}
    if len(ts) >= 2:
        q1, _, q3 = statistics.quantiles(ts, n=4, method="inclusive")
        out.update(q1_s=q1, q3_s=q3, iqr_s=q3 - q1)
    if len(ts) <= 64:
        out["times_s"] = ts
    return out


def spread_text(rec: dict, scale: float = 1e3, digits: int = 2) -> str:
    """``"0.12 (n=5)"`` for an IQR from n measurements (older records: ``runs``); ``"1 run"`` without spread."""
    n = int(rec.get("n_times") or rec.get("runs") or (1 if rec.get("median_s") is not None else 0))
    if n < 2 or rec.get("iqr_s") is None:
        return "1 run" if n <= 1 else f"- (n={n})"
    return f"{rec['iqr_s'] * scale:.{digits}g} (n={n})"


def time_step(step: Callable[[], object], device: str, *, min_run_time: float = 0.25) -> dict:
    """Latency statistics in seconds (:func:`summarize`): CUDA through :func:`gpu_times_ms`, CPU through
    ``torch.utils.benchmark``'s ``blocked_autorange`` (its block-size estimate is also the warm-up)."""
    if torch.device(device).type == "cuda":
        ms = max(1, int(min_run_time * 1000))
        times, method = gpu_times_ms(step, warmup_ms=max(ms // 4, 25), rep_ms=ms)
        return summarize([t / 1e3 for t in times], method)
    from torch.utils import benchmark

    m = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads()
                        ).blocked_autorange(min_run_time=min_run_time)
    return summarize(m.times, "torch.utils.benchmark.Timer.blocked_autorange (one measurement = the mean of a "
                              "block of calls)", calls_per_time=m.number_per_run)


def gpu_times_ms(fn: Callable[[], object], *, warmup_ms: int = 25, rep_ms: int = 100) -> tuple:
    """(per-call milliseconds, method) on the current CUDA device: ``triton.testing.do_bench`` (L2 flushed
    before each call, CUDA events around it) when triton imports, else CUDA events."""
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        times = do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all")
        return [float(t) for t in times], "triton.testing.do_bench (CUDA events per call, L2 flushed)"
    fn()
    torch.cuda.synchronize()
    times: list = []
    while sum(times) < rep_ms or len(times) < 5:
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return times, "CUDA events per call"


def peak_memory(step: Callable[[], object], device: str) -> dict:
    """Peak bytes allocated by one call above the level at its start."""
    if torch.device(device).type == "cuda":
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
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    cur = peak = 0
    for _, nbytes in events:
        cur += nbytes
        peak = max(peak, cur)
    return int(peak)


def count_flops(step: Callable[[], object]) -> int:
    """FLOPs of one call (2 per multiply-add). FlopCounterMode skips the CPU flash SDPA ops: their formulas are
    registered through ``custom_mapping``."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    def fwd(q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(q, k, v)

    def bwd(grad_out, q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad_out, q, k, v)

    ops = (("_scaled_dot_product_flash_attention_for_cpu", fwd),
           ("_scaled_dot_product_flash_attention_for_cpu_backward", bwd))
    formulas = {getattr(torch.ops.aten, name): f for name, f in ops if hasattr(torch.ops.aten, name)}
    with FlopCounterMode(display=False, custom_mapping=formulas) as counter:
        step()
    return int(counter.get_total_flops())


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| (Frobenius, float32)."""
    out, ref = out.float(), ref.float()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))
