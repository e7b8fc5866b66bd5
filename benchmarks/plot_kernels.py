"""Draw benchmarks/results/<device>/bench_kernels.json (from bench_kernels.py) as a bar chart PNG.

    python benchmarks/plot_kernels.py benchmarks/results/nvidia-h100-80gb-hbm3/bench_kernels.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fast_timesformer.bench.kernels import KERNEL  # noqa: E402  (the contender named once: our Triton kernel)


def plot(data: dict, path: Path) -> Path:
    rows = [r for r in data["rows"] if r.get("status") in ("ok", "bound") and "ms" in r]
    panels = sorted({(r["step"], r["mode"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 4.5), squeeze=False)
    for ax, (step, mode) in zip(axes[0], panels):
        sel = sorted((r for r in rows if r["step"] == step and r["mode"] == mode), key=lambda r: r["ms"])
        colors = ["tab:red" if r["backend"] == KERNEL else "tab:gray" if r["backend"] == "roofline"
                  else "tab:blue" for r in sel]
        ax.barh([r["backend"] for r in sel], [r["ms"] for r in sel], color=colors)
        ax.set_title(f"{step} {mode}", fontsize=9)
        ax.set_xlabel("ms (lower is better)")
        ax.tick_params(labelsize=7)
    m = data["meta"]
    w = m["workload"]
    fig.suptitle(f"{m['device']} | B={w['batch']} T={w['frames']} N={w['patches']} H={w['heads']} d={w['dim_head']} "
                 f"{w['dtype']} | copy bw {m['copy_bandwidth_GBps']:.0f} GB/s | torch {m['torch']} "
                 f"triton {m.get('triton', '-')} | {m['commit']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("json", type=Path)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    out = plot(json.loads(args.json.read_text()), args.out or args.json.with_suffix(".png"))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
