"""``fast-timesformer bench`` (run a suite, save results, draw plots), ``plot`` and ``gpu-check``."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from .._names import unknown_name_error
from ..devices import check_device
from ..environment import busy_cores
from ..errors import FastTimesformerError
from ..outputs import check_output_dir
from ..tables import format_table
from .gpu_check import add_subcommand as add_gpu_check
from .runner import RESULTS, run_sweep
from .suites import SUITES, filter_points, get_suite
from .summary import draw, format_summary, peer_rows

#: the list filters: option name -> the point attribute it matches
FILTERS = {"schemes": "scheme", "backends": "backend", "impls": "impl", "modes": "mode", "groups": "group"}


def _csv(text):
    return [t.strip() for t in text.split(",") if t.strip()]


def _threads_arg(text):
    if text != "auto" and not (text.isdigit() and int(text) >= 1):
        raise argparse.ArgumentTypeError(f"--threads takes a positive integer or 'auto', got {text!r}")
    return text if text == "auto" else int(text)


def add_subcommands(sub) -> None:
    b = sub.add_parser("bench", help="run a benchmark suite; results, plots and summary.md go to --out",
                       description="Run a benchmark suite. Each point is appended to OUT/results.jsonl as soon "
                                   "as it is measured (--resume skips finished points); then the plots and "
                                   "OUT/summary.md are drawn from the saved results.",
                       epilog="suites: " + "; ".join(f"{s.name}: {s.help}" for s in SUITES.values()))
    b.add_argument("--suite", default="cpu", help=f"one of {', '.join(SUITES)} (default cpu; see below)")
    b.add_argument("--tiny", action="store_true", help="the suite at seconds-long sizes (tests, dry runs)")
    b.add_argument("--out", default=None, help="output folder (default: bench_out/<suite>)")
    b.add_argument("--resume", action="store_true", help="keep OUT's results and skip the points already in it; "
                                                         "another suite's points are added beside them")
    b.add_argument("--overwrite", action="store_true", help="replace the results already in OUT")
    b.add_argument("--schemes", type=_csv, default=None, help="comma list, e.g. divided_space_time,joint_space_time")
    b.add_argument("--backends", type=_csv, default=None, help="comma list, e.g. regular,performer")
    b.add_argument("--impls", type=_csv, default=None, help="comma list of attention,ours,hf,lucidrains")
    b.add_argument("--modes", type=_csv, default=None, help="fwd and/or fwd+bwd (kernels: also bwd)")
    b.add_argument("--groups", type=_csv, default=None, help="e.g. sweep, approx, target, sizes, kernel, layer")
    b.add_argument("--max-tokens", type=int, default=None, help="drop points with more patch tokens per clip")
    b.add_argument("--limit", type=int, default=None, help="only the first N points (after filters)")
    b.add_argument("--device", default=None, help="override the suite's device (e.g. cuda:1)")
    b.add_argument("--threads", type=_threads_arg, default="auto",
                   help="torch CPU threads, or 'auto' (default): one per core on an idle machine, 1 when other "
                        "processes already load the CPU; the choice is recorded in meta.json")
    b.add_argument("--budget-s", type=float, default=None, help="start no point after this many seconds")
    b.add_argument("--list", action="store_true", help="print the points and exit")
    b.add_argument("--no-plots", action="store_true", help="skip the plots and summary.md")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_bench)

    add_gpu_check(sub)

    p = sub.add_parser("plot", help="draw the plots and summary.md from saved benchmark results (any suite)")
    p.add_argument("--results", required=True, help="folder holding results.jsonl and meta.json")
    p.add_argument("--out", default=None, help="where to write the PNGs and summary.md (default: --results)")
    p.set_defaults(func=cmd_plot)


def choose_threads(requested, points) -> str:
    """Set torch's CPU threads; returns how they were chosen (stored in meta.json). ``auto``: torch's default
    (one per core) on an idle machine; 1 thread when other processes keep more than half a core busy, where
    multi-threaded ops wait for descheduled threads (a 2-layer forward: 8 ms on 1 thread, 0.7 s on 2, load 8)."""
    if requested != "auto":
        torch.set_num_threads(requested)
        return f"{requested} (--threads)"
    default = torch.get_num_threads()
    if not any(p.device.startswith("cpu") for p in points) or default == 1:
        return f"{default} (torch default)"
    cores, busy = os.cpu_count() or 1, busy_cores()
    if busy is None:
        return f"{default} (torch default; CPU use of other processes unknown)"
    if busy > 0.5:
        torch.set_num_threads(1)
        print(f"note: other processes keep {busy:.1f} of {cores} cores busy, so the timings use 1 thread instead of "
              f"{default} (pass --threads {default} to override)", file=sys.stderr)
        return f"1 (auto: other processes used {busy:.1f} of {cores} cores before the run)"
    return f"{default} (auto: idle machine, {busy:.2f} of {cores} cores busy before the run)"


def cmd_bench(args) -> int:
    suite = get_suite(args.suite)
    all_points = suite.points(device=args.device or suite.device, tiny=args.tiny)
    for name, attr in FILTERS.items():  # a value no point of the suite has is a typo: one line, the closest match
        known = sorted({str(getattr(p, attr, None)) for p in all_points} - {"None"})
        for value in getattr(args, name) or ():
            if value not in known:
                raise unknown_name_error(f"--{name} value", value, known)
    filters = {k: getattr(args, k) for k in (*FILTERS, "max_tokens", "limit")}
    points = filter_points(all_points, **filters)
    if not points:
        print("error: no points left after the filters", file=sys.stderr)
        return 2
    if args.list:
        print("\n".join(p.label for p in points) + f"\n{len(points)} points")
        return 0
    for dev in sorted({p.device for p in points}):  # never a sweep of points all skipped for want of a GPU
        check_device(dev, label=f"--device {dev}")
    out = Path(check_output_dir(args.out or f"bench_out/{args.suite}"))  # a file, read-only: one line, before any work
    if (out / RESULTS).exists() and (out / RESULTS).stat().st_size and not (args.resume or args.overwrite):
        raise FastTimesformerError(f"{out} already holds results ({RESULTS}): pass --resume to add to them or "
                                   "--overwrite to replace them")
    threads = choose_threads(args.threads, points)
    settings = dict(suite.settings, suite=args.suite, tiny=args.tiny, threads=threads,
                    filters=dict(filters, device=args.device))
    print(f"suite {args.suite}: {len(points)} points -> {out}/{RESULTS}", flush=True)
    records = run_sweep(points, out, resume=args.resume, progress=not args.no_progress, settings=settings,
                        deadline=time.monotonic() + args.budget_s if args.budget_s else None)
    print(format_summary(records))
    peers = peer_rows(records)
    if peers:
        print(format_table(peers, list(peers[0])))
    if not args.no_plots:
        draw(out, out)
    if records and all(r["status"] == "skipped" for r in records):
        print(f"error: nothing was measured: all {len(records)} point(s) were skipped (first reason: "
              f"{' '.join(records[0]['reason'].split())})", file=sys.stderr)
        return 1
    bad = sum(r["status"] in ("error", "failed") for r in records)
    if bad:
        print(f"{bad} point(s) failed (see 'reason' in {out}/{RESULTS})", file=sys.stderr)
    return 1 if bad else 0


def cmd_plot(args) -> int:
    results = Path(args.results)
    if not (results / RESULTS).exists():
        print(f"error: no {RESULTS} in {results}", file=sys.stderr)
        return 2
    draw(results, Path(check_output_dir(args.out or results, option="--out" if args.out else "--results")))
    return 0
