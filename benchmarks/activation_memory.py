"""Training-step peak memory and time per ``activation_memory`` mode, beside Hugging Face's Timesformer.

ViT-B/16 divided space-time, B=1, float32, CPU. Peak memory: each contender in a fresh process (build, one
warm-up step, one step under the benchmark's CPU allocation replay, ``bench.measure.peak_memory``:
allocations above the level at the step's start). Time (``--rounds N``): the contenders' processes run in
turn, N times (the order rotating), each timing one step after its warm-up, so that a drift in the
machine's load falls on all of them; medians and per-round ratios to ``--base``.

    .venv/bin/python benchmarks/activation_memory.py                       # 8x224: memory of every mode + HF
    .venv/bin/python benchmarks/activation_memory.py --image-size 448 --modes selective --hf
    .venv/bin/python benchmarks/activation_memory.py --modes selective,full --rounds 3 --no-hf  # time ratios
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from fast_timesformer.activation_memory import MODES
from fast_timesformer.bench.measure import _quiet_stderr, peak_memory
from fast_timesformer.bench.workloads import Workload, build


def _sac_blocks() -> None:
    """The alternative measured against ``selective``: torch's selective activation checkpointing, one region
    per block, policy "keep every GEMM's and attention call's output, recompute the rest" (run as the
    ``checkpoint`` mode with this policy)."""
    from functools import partial

    from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

    import fast_timesformer.activation_memory as memory

    aten = torch.ops.aten
    keep = {aten.mm.default, aten.addmm.default, aten._scaled_dot_product_flash_attention_for_cpu.default}

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in keep else CheckpointPolicy.PREFER_RECOMPUTE

    # the block zeroes temporal_fc's CLS row in place, on a kept GEMM output: allowed here (it is not read back)
    contexts = partial(create_selective_checkpoint_contexts, policy, allow_cache_entry_mutation=True)
    memory.recomputed = lambda fn, *a: checkpoint(fn, *a, use_reentrant=False, context_fn=contexts)


def one(impl: str, mode: str, args) -> dict:
    torch.set_num_threads(args.threads)
    if mode == "sac-block":
        _sac_blocks()
    w = Workload(impl=impl, scheme="divided_space_time", backend="regular", mode="fwd+bwd", batch=1,
                 frames=args.frames, image_size=args.image_size, dim=768, depth=args.depth, heads=12,
                 num_classes=400, dtype="float32", device="cpu")
    built = build(w)
    if impl == "ours":
        built.model.set_activation_memory("checkpoint" if mode == "sac-block" else mode)
    built.step()  # warm-up
    if args.time:
        t0 = time.perf_counter()
        built.step()
        return {"contender": f"{impl}:{mode}", "step_s": time.perf_counter() - t0}
    with _quiet_stderr():
        peak = peak_memory(built.step, "cpu")["peak_mem_bytes"]
    return {"contender": f"{impl}:{mode}", "peak_mib": round(peak / 2**20, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--modes", default=",".join(MODES),  # "": Hugging Face's only
                   help=f"comma list of {tuple(MODES)} and 'sac-block' (torch's selective activation checkpointing "
                        "per block with a keep-GEMM-and-attention-outputs policy, the measured alternative)")
    p.add_argument("--no-hf", dest="hf", action="store_false", help="leave out Hugging Face's model")
    p.add_argument("--rounds", type=int, default=0, help="time instead of memory: rounds of one step each")
    p.add_argument("--base", default="selective", help="the mode the time ratios are taken against")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # impl:mode, run in a child process
    p.add_argument("--time", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one(*args.one.split(":"), args)), flush=True)
        return 0
    contenders = [f"ours:{m}" for m in args.modes.split(",") if m] + (["hf:full"] if args.hf else [])
    base = [sys.executable, __file__, "--image-size", str(args.image_size), "--frames", str(args.frames),
            "--depth", str(args.depth), "--threads", str(args.threads)] + (["--time"] if args.rounds else [])
    meta = {"config": f"ViT-B/16 divided, depth {args.depth}, {args.frames}x{args.image_size}, B=1, float32, CPU",
            "threads": args.threads, "torch": torch.__version__, "load_before": os.getloadavg()}
    results = {c: [] for c in contenders}
    for r in range(max(args.rounds, 1)):
        order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
        for c in order:
            out = subprocess.run(base + ["--one", c], capture_output=True, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            results[c].append(row)
            print(json.dumps(row), flush=True)
    meta["load_after"] = os.getloadavg()
    if args.rounds:
        ref = f"ours:{args.base}"
        for c, rows in results.items():
            times = [row["step_s"] for row in rows]
            line = {"contender": c, "median_step_s": round(statistics.median(times), 3)}
            if ref in results and c != ref:
                ratios = [t / b["step_s"] for t, b in zip(times, results[ref])]
                line[f"time_vs_{args.base}"] = [round(min(ratios), 3), round(statistics.median(ratios), 3),
                                                round(max(ratios), 3)]
            print(json.dumps(line))
    elif args.hf and len(contenders) > 1:
        hf = results["hf:full"][0]["peak_mib"]
        print(json.dumps({c: round(rows[0]["peak_mib"] / hf, 3) for c, rows in results.items()} | {"ratio_to": "hf"}))
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
