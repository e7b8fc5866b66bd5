"""FlexAttention (``flex``, compiled) against ``regular`` (SDPA) for every registered scheme, inference.

For each scheme and size a TimeSformer (ViT-Tiny width as the CPU sweep: dim 192, 3 heads, depth 2, patch 16,
batch 1, float32) runs under ``torch.no_grad()`` with each contender:

- ``regular``: SDPA (a mask-defined scheme: SDPA with a boolean mask);
- ``flex/batch``: groups as FlexAttention's batch axis (the default layout);
- ``flex/mask``: groups as a block mask over the clip's tokens (partition schemes only; a mask-defined scheme
  always runs as a block mask, reported as ``flex/batch``).

The first call of each contender is not timed: it builds the block masks (``mask_s``, read from the cores)
and compiles FlexAttention for each new shape (``compile_s``: the first calls that compiled, read from the
cores; the rest of that first call is the ``first_call_s`` column). Then ``torch.utils.benchmark`` times the
forward (median and IQR of blocked runs). A flex output that differs from regular's beyond float32's
tolerance is reported as a failure and gets no speed-up.

    python benchmarks/flex_vs_regular.py                      # frames 2..16 at 128 px, 64..224 px at 8 frames
    python benchmarks/flex_vs_regular.py --frames 8 --image-sizes 128 --schemes divided_space_time neighborhood
    python benchmarks/flex_vs_regular.py --out bench_out/flex   # results.jsonl + meta.json + summary.md

Compiling costs ~3-15 s per new shape on a 2-core CPU (every step of every scheme at every size is one or
two shapes): the full sweep takes tens of minutes, most of it compiling.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.utils.benchmark as tb

from fast_timesformer import TimeSformer, get_scheme, list_schemes
from fast_timesformer.backends import flex
from fast_timesformer.bench.measure import spread_text

# float32 vs float32 through another kernel (reduction order only): ~1e-6 on O(1) logits through 2 blocks
ATOL = RTOL = 1e-4


def contenders(scheme: str) -> list:
    """(label, backend, options) for a scheme; the mask layout only where the scheme is a partition."""
    masked = any(g.mask is not None for g in get_scheme(scheme).token_groups(2, 2, 2))
    out = [("regular", "regular", {}), ("flex/batch", "flex", {"layout": "batch"})]
    if not masked:
        out.append(("flex/mask", "flex", {"layout": "mask"}))
    return out


def _cores(model, name):
    return [m.cores[name] for m in model.attention_modules() if name in m.cores]


def measure(scheme: str, frames: int, size: int, args) -> list:
    torch.manual_seed(0)
    kw = dict(num_classes=10, num_frames=frames, image_size=size, patch_size=16, dim=192, heads=3, depth=2,
              drop_path=0.0, scheme=scheme)
    if args.window and scheme == "neighborhood":
        kw["scheme_options"] = {"window": tuple(args.window)}
    base = TimeSformer(**kw).eval()
    x = torch.randn(1, frames, 3, size, size)
    rows, ref = [], None
    for label, backend, opts in contenders(scheme):
        model = TimeSformer(**kw, backend=backend, **opts).eval()
        model.load_state_dict(base.state_dict())
        row = dict(scheme=scheme, frames=frames, image_size=size, tokens=1 + frames * (size // 16) ** 2,
                   contender=label, backend=backend, options=opts)
        try:
            with torch.no_grad():
                start = time.perf_counter()
                out = model(x)
                row["first_call_s"] = time.perf_counter() - start
                cores = _cores(model, backend)
                row["compile_s"] = sum(getattr(c, "compile_seconds", 0.0) for c in cores)
                row["mask_s"] = sum(getattr(c, "mask_seconds", 0.0) for c in cores)
                row["masks_built"] = sum(getattr(c, "masks_built", 0) for c in cores)
                if ref is None:
                    ref = out
                row["max_abs_diff_vs_regular"] = float((out - ref).abs().max())
                row["exact"] = bool(torch.allclose(out, ref, atol=ATOL, rtol=RTOL))
                timer = tb.Timer("model(x)", globals={"model": model, "x": x}, num_threads=torch.get_num_threads())
                m = timer.blocked_autorange(min_run_time=args.min_run_time)
            row.update(median_s=m.median, iqr_s=m.iqr, runs=len(m.times), status="ok")
        except Exception as e:  # a point that cannot run: recorded with its reason, the sweep goes on
            row.update(status="error", error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
        rows.append(row)
        print(_line(row), flush=True)
    reg = next((r for r in rows if r["contender"] == "regular" and r["status"] == "ok"), None)
    for r in rows:
        if reg and r["status"] == "ok" and r.get("exact"):
            r["speedup_vs_regular"] = reg["median_s"] / r["median_s"]
    return rows


def _line(r) -> str:
    if r["status"] != "ok":
        return f"{r['scheme']:>22} {r['frames']:>2}x{r['image_size']:<3} {r['contender']:<11} {r['error']}"
    return (f"{r['scheme']:>22} {r['frames']:>2}x{r['image_size']:<3} {r['contender']:<11} "
            f"{r['median_s'] * 1e3:8.2f} ms (IQR {spread_text(r)})  compile {r['compile_s']:6.1f} s  "
            f"masks {r['masks_built']} in {r['mask_s'] * 1e3:.1f} ms  diff {r['max_abs_diff_vs_regular']:.1e}")


def summary(rows) -> str:
    lines = ["| scheme | frames x px | contender | median ms (IQR ms, n blocks) | vs regular | compile s | masks (ms) | exact |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['scheme']} | {r['frames']}x{r['image_size']} | {r['contender']} | {r['error']} | | | | |")
            continue
        sp = r.get("speedup_vs_regular")
        lines.append(f"| {r['scheme']} | {r['frames']}x{r['image_size']} | {r['contender']} | "
                     f"{r['median_s'] * 1e3:.2f} ({spread_text(r)}) | {'-' if sp is None else f'{sp:.2f}x'} | "
                     f"{r['compile_s']:.1f} | {r['masks_built']} ({r['mask_s'] * 1e3:.1f}) | "
                     f"{'yes' if r['exact'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--schemes", nargs="*", default=None, help="default: every registered scheme")
    p.add_argument("--frames", type=int, nargs="*", default=[2, 4, 8, 16], help="frames at --base-size px")
    p.add_argument("--image-sizes", type=int, nargs="*", default=[64, 128, 192, 224], help="px at --base-frames")
    p.add_argument("--base-frames", type=int, default=8)
    p.add_argument("--base-size", type=int, default=128)
    p.add_argument("--window", type=int, nargs=3, default=None, help="neighborhood window (default: the scheme's)")
    p.add_argument("--min-run-time", type=float, default=0.5, help="seconds of timed runs per point")
    p.add_argument("--out", default="bench_out/flex_vs_regular")
    args = p.parse_args(argv)
    schemes = args.schemes or list_schemes()
    sizes = [(f, args.base_size) for f in args.frames]
    sizes += [(args.base_frames, s) for s in args.image_sizes if (args.base_frames, s) not in sizes]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        commit = ""
    meta = dict(torch=torch.__version__, python=platform.python_version(), machine=platform.processor() or
                platform.machine(), threads=torch.get_num_threads(), commit=commit, schemes=schemes, sizes=sizes,
                width="dim 192, 3 heads, depth 2, patch 16, batch 1, float32, inference (no_grad)")
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    rows = []
    with open(out / "results.jsonl", "w") as f:
        for scheme in schemes:
            for frames, size in sizes:
                reasons = get_scheme(scheme).reasons(frames, size // 16)
                if reasons:
                    print(f"{scheme} {frames}x{size}: skipped ({'; '.join(reasons)})")
                    continue
                for r in measure(scheme, frames, size, args):
                    rows.append(r)
                    f.write(json.dumps(r) + "\n")
    (out / "summary.md").write_text(summary(rows))
    print(f"\n{len(rows)} points -> {out}/results.jsonl, summary.md; {len(flex.COMPILE_SECONDS)} shapes compiled "
          f"in {sum(flex.COMPILE_SECONDS.values()):.0f} s")
    return 0 if all(r["status"] == "ok" and r.get("exact", False) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
