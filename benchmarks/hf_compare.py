"""Ours (``regular``) vs Hugging Face Timesformer: forward and training step, timed in alternating pairs,
with peak memory. ViT-B/16, depth 12, B=1, float32, CPU; our weights copied into HF (same logits).

    .venv/bin/python benchmarks/hf_compare.py                                   # 8x224 and 8x448, both modes
    .venv/bin/python benchmarks/hf_compare.py --sizes 224 --rounds 3 --out /tmp/hf224.json

Per size and mode: both models are built (the benchmark's own builder, ``bench.workloads.build``), each
runs once untimed (warm-up), once under the profiler for its peak memory (CPU allocations above the
level at the call's start: activations, gradients, workspace; not the weights), then ``--rounds`` pairs
are timed, one call each, the order alternating (ours-HF, HF-ours, ...) so that a drift in the machine's
load falls on both. Reported: medians, the per-pair speed-up (HF time / ours) with its range, peak
memory and its ratio. Time only on an idle machine: other processes on the cores make every figure
slower and noisier (the run records the load average before and after).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

from fast_timesformer.bench.measure import _quiet_stderr, peak_memory
from fast_timesformer.bench.workloads import Workload, build


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def compare(size: int, mode: str, rounds: int, frames: int = 8, depth: int = 12, profile: int = 0) -> dict:
    w = Workload(impl="ours", scheme="divided_space_time", backend="regular", mode=mode, batch=1, frames=frames,
                 image_size=size, dim=768, depth=depth, heads=12, num_classes=400, dtype="float32", device="cpu")
    built = {"ours": build(w), "hf": build(w.replace(impl="hf"))}
    notes = built["hf"].notes
    res = {"size": size, "frames": frames, "mode": mode, "depth": depth, "hf_weights": notes}
    for name, b in built.items():
        b.step()  # warm-up
        res[f"{name}_peak_mem_bytes"] = peak_memory(b.step, "cpu")["peak_mem_bytes"]
    times = {"ours": [], "hf": []}
    for r in range(rounds):
        for name in (("ours", "hf") if r % 2 == 0 else ("hf", "ours")):
            t0 = time.perf_counter()
            built[name].step()
            times[name].append(time.perf_counter() - t0)
    if profile:  # one more call each under torch.profiler: where the time goes (self CPU time per op)
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        for name, b in built.items():
            prof = torch_profile(activities=[ProfilerActivity.CPU])
            with _quiet_stderr():  # kineto prints a line at every start and stop
                prof.__enter__()
            try:
                b.step()
            finally:
                with _quiet_stderr():
                    prof.__exit__(None, None, None)
            res[f"{name}_profile"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=profile)
    ratios = [h / o for o, h in zip(times["ours"], times["hf"])]
    res.update(ours_times_s=times["ours"], hf_times_s=times["hf"],
               ours_median_s=statistics.median(times["ours"]), hf_median_s=statistics.median(times["hf"]),
               speedup_per_pair=ratios, speedup_median=statistics.median(ratios), speedup_min=min(ratios),
               speedup_max=max(ratios),
               mem_ratio=res["ours_peak_mem_bytes"] / res["hf_peak_mem_bytes"])
    return res


def table(results: list) -> str:
    lines = ["| workload | Hugging Face (median) | ours (median) | speed-up, per pair: median [min, max] | "
             "peak memory HF | ours | ours/HF |", "|---|---|---|---|---|---|---|"]
    for r in results:
        what = "forward" if r["mode"] == "fwd" else "training step (fwd+bwd)"
        lines.append(f"| {what} {r['frames']}x{r['size']} | {r['hf_median_s']:.2f} s | {r['ours_median_s']:.2f} s | "
                     f"{r['speedup_median']:.2f}x [{r['speedup_min']:.2f}, {r['speedup_max']:.2f}] "
                     f"(n={len(r['speedup_per_pair'])}) | {r['hf_peak_mem_bytes'] / 2**30:.2f} GiB | "
                     f"{r['ours_peak_mem_bytes'] / 2**30:.2f} GiB | {r['mem_ratio']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="224,448", help="comma list of image sizes (8 frames each)")
    p.add_argument("--modes", default="fwd,fwd+bwd", help="fwd and/or fwd+bwd")
    p.add_argument("--rounds", type=int, default=5, help="timed pairs per size and mode")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--profile", type=int, default=0, metavar="ROWS",
                   help="also profile one call of each (torch.profiler, top ROWS ops by self CPU time)")
    p.add_argument("--out", default=None, help="write the raw results (JSON) here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = {"cpu": _cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "commit": _commit(), "python": platform.python_version(), "load_before": os.getloadavg(),
            "command": " ".join([os.path.basename(sys.executable), *sys.argv])}
    try:
        import transformers
        meta["transformers"] = transformers.__version__
    except ImportError:
        pass
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        for mode in args.modes.split(","):
            r = compare(size, mode, args.rounds, depth=args.depth, profile=args.profile)
            results.append(r)
            print(f"8x{size} {mode}: HF {r['hf_median_s']:.2f} s, ours {r['ours_median_s']:.2f} s, speed-up "
                  f"{r['speedup_median']:.2f}x [{r['speedup_min']:.2f}, {r['speedup_max']:.2f}], peak memory "
                  f"{r['mem_ratio']:.2f}x HF's", flush=True)
    meta["load_after"] = os.getloadavg()
    print(f"\n{meta['cpu']}, {meta['threads']} threads, torch {meta['torch']}, commit {meta['commit']}, load average "
          f"before {meta['load_before'][0]:.1f}, after {meta['load_after'][0]:.1f}\n")
    print(table(results))
    for r in results:
        for name in ("ours", "hf"):
            if f"{name}_profile" in r:
                print(f"\n{name}, 8x{r['size']} {r['mode']}, one call:\n{r[name + '_profile']}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"meta": meta, "results": results}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
