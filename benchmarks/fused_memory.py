"""Training-step peak memory with the fused training path (fast_timesformer.fused) and without it
(``fused.unfused()``), same model, same input, float32 and bf16 autocast. CPU; each configuration in a
fresh process (build, one warm-up step, one measured step), peak = the benchmark's CPU allocation
replay (bench.measure.peak_memory): allocations above the level at the step's start.

    .venv/bin/python benchmarks/fused_memory.py                       # ViT-B depth 12, 8x224
    .venv/bin/python benchmarks/fused_memory.py --image-size 448 --depth 2
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys

import torch

from fast_timesformer import fused
from fast_timesformer.bench.measure import _quiet_stderr, peak_memory
from fast_timesformer.bench.workloads import Workload, build


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # path:amp, run in a child process
    args = p.parse_args(argv)
    if args.one is None:
        import subprocess

        base = [sys.executable, __file__, "--image-size", str(args.image_size), "--frames", str(args.frames),
                "--depth", str(args.depth), "--threads", str(args.threads)]
        for one in ("fused:none", "plain:none", "fused:bfloat16", "plain:bfloat16"):
            out = subprocess.run(base + ["--one", one], capture_output=True, text=True, check=True).stdout
            print(out.strip().splitlines()[-1], flush=True)
        print(json.dumps({"config": f"ViT-B depth {args.depth}, {args.frames}x{args.image_size}, B=1",
                          "torch": torch.__version__}))
        return 0
    path, amp_name = args.one.split(":")
    torch.set_num_threads(args.threads)
    w = Workload(impl="ours", scheme="divided_space_time", backend="regular", mode="fwd+bwd", batch=1,
                 frames=args.frames, image_size=args.image_size, dim=768, depth=args.depth, heads=12,
                 num_classes=400, dtype="float32", device="cpu")
    built = build(w)
    amp = None if amp_name == "none" else getattr(torch, amp_name)
    ctx = contextlib.nullcontext if path == "fused" else fused.unfused

    def step():
        with ctx(), (torch.autocast("cpu", dtype=amp) if amp else contextlib.nullcontext()):
            built.step()

    step()
    with _quiet_stderr():
        peak = peak_memory(step, "cpu")["peak_mem_bytes"]
    print(json.dumps({"path": path, "amp": amp_name, "peak_mib": round(peak / 2**20, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
