"""``fast-timesformer bench`` (run a suite, save results, draw plots) and ``fast-timesformer plot``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _csv(text):
    return [t.strip() for t in text.split(",") if t.strip()]


def add_subcommands(sub) -> None:
    from .suites import list_suites

    b = sub.add_parser("bench", help="run a benchmark suite; results, plots and summary.md go to --out",
                       description="Run a benchmark suite. Each point is appended to OUT/results.jsonl as soon "
                                   "as it is measured (--resume skips finished points); then the plots and "
                                   "OUT/summary.md are drawn from the saved results.")
    b.add_argument("--suite", default="cpu", choices=list_suites(),
                   help="cpu (default, ~8 min on 2 cores), gpu (paper Figure 3 range, needs CUDA), models "
                        "(ours vs Hugging Face / lucidrains), hf-sizes (ours vs Hugging Face at 8x224/336/448), "
                        "tiny (seconds), kernels (fast_timesformer.bench.kernels)")
    b.add_argument("--out", default=None, help="output folder (default: bench_out/<suite>)")
    b.add_argument("--resume", action="store_true", help="keep OUT/results.jsonl and skip the points already in it")
    b.add_argument("--schemes", type=_csv, default=None, help="comma list, e.g. divided_space_time,joint_space_time")
    b.add_argument("--backends", type=_csv, default=None, help="comma list, e.g. regular,performer")
    b.add_argument("--impls", type=_csv, default=None, help="comma list of attention,ours,hf,lucidrains")
    b.add_argument("--modes", type=_csv, default=None, help="fwd and/or fwd+bwd")
    b.add_argument("--groups", type=_csv, default=None, help="sweep, approx, target")
    b.add_argument("--max-tokens", type=int, default=None, help="drop points with more patch tokens per clip")
    b.add_argument("--limit", type=int, default=None, help="only the first N points (after filters)")
    b.add_argument("--device", default=None, help="override the suite's device (e.g. cuda:1)")
    b.add_argument("--threads", type=_threads_arg, default="auto",
                   help="torch CPU threads, or 'auto' (default): one per core on an idle machine, 1 when other "
                        "processes already load the CPU; the choice is recorded in meta.json")
    b.add_argument("--list", action="store_true", help="print the points and exit")
    b.add_argument("--no-plots", action="store_true", help="skip the plots and summary.md")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_bench)

    from .gpu_check import add_subcommand as add_gpu_check

    add_gpu_check(sub)

    p = sub.add_parser("plot", help="draw the plots and summary.md from saved benchmark results")
    p.add_argument("--results", required=True, help="folder holding results.jsonl and meta.json")
    p.add_argument("--out", default=None, help="where to write the PNGs and summary.md (default: --results)")
    p.set_defaults(func=cmd_plot)


def _run_kernels(args) -> int:
    """The kernel suite: :mod:`fast_timesformer.bench.kernels` (``benchmarks/bench_kernels.py`` wraps it)."""
    from .kernels import main as kernels_main

    argv = []
    if args.device:
        require_device(args.device)
        argv += ["--device", args.device.split(":")[0]]
    if args.backends:
        argv += ["--backends", *args.backends]
    out = Path(args.out or "bench_out/kernels")
    out.mkdir(parents=True, exist_ok=True)
    argv += ["--out", str(out / "bench_kernels.json")]
    print(f"suite kernels: python -m fast_timesformer.bench.kernels {' '.join(argv)}", flush=True)
    return int(kernels_main(argv) or 0)


def require_device(device: str) -> None:
    """Raise :class:`~fast_timesformer.errors.DeviceUnavailableError` (one line at the console, exit 2)
    when ``device`` (``cuda``, ``cuda:1``, ...) does not exist on this machine."""
    import torch

    from ..errors import DeviceUnavailableError

    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise DeviceUnavailableError(f"--device {device}: not a device name ({e})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(f"--device {device}: this machine has no CUDA device (torch "
                                         f"{torch.__version__}, built for CUDA {torch.version.cuda or 'none'})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA "
                                         f"device(s)")
    elif dev.type != "cpu":
        raise DeviceUnavailableError(f"--device {device}: only cpu and cuda devices are benchmarked")


def _threads_arg(text):
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads takes a positive integer or 'auto', got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"--threads must be >= 1, got {n}")
    return n


def choose_threads(requested, points) -> str:
    """Set torch's CPU threads; returns how they were chosen (stored in meta.json).

    ``auto``: torch's default (one per core) on an idle machine; 1 thread when other processes already
    keep more than half a core busy, because multi-threaded ops then wait for
    descheduled threads and timings slow down erratically (a 2-layer forward: 8 ms on 1 thread, 0.7 s
    on 2, measured here under a load of 8).
    """
    import os

    import torch

    if requested != "auto":
        torch.set_num_threads(requested)
        return f"{requested} (--threads)"
    default = torch.get_num_threads()
    if not any(p.device.startswith("cpu") for p in points) or default == 1:
        return f"{default} (torch default)"
    cores = os.cpu_count() or 1
    busy = busy_cores()
    if busy is None:
        return f"{default} (torch default; CPU use of other processes unknown)"
    if busy > 0.5:
        torch.set_num_threads(1)
        print(f"note: other processes keep {busy:.1f} of {cores} cores busy, so the timings use 1 thread instead of "
              f"{default} (pass --threads {default} to override)", file=sys.stderr)
        return f"1 (auto: other processes used {busy:.1f} of {cores} cores before the run)"
    return f"{default} (auto: idle machine, {busy:.2f} of {cores} cores busy before the run)"


def busy_cores(seconds: float = 1.0):
    """How many cores other processes keep busy, sampled from /proc/stat while this one sleeps (Linux);
    the 1-minute load average otherwise (it lags: a run that just ended still counts)."""
    import os
    import time

    def sample():
        with open("/proc/stat") as fh:
            vals = [int(v) for v in fh.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        return sum(vals), idle

    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
        total = t1 - t0
        return (os.cpu_count() or 1) * (1 - (i1 - i0) / total) if total > 0 else None
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except OSError:
            return None


def cmd_bench(args) -> int:
    if args.suite == "kernels":
        return _run_kernels(args)
    from .runner import format_summary, peer_ratios, run_sweep
    from .suites import filter_points, get_suite

    kw = {"device": args.device} if args.device else {}
    points, settings = get_suite(args.suite, **kw)
    points = filter_points(points, schemes=args.schemes, backends=args.backends, impls=args.impls, modes=args.modes,
                           groups=args.groups, max_tokens=args.max_tokens, limit=args.limit)
    if not points:
        print("error: no points left after the filters", file=sys.stderr)
        return 2
    if args.list:
        for p in points:
            print(p.label)
        print(f"{len(points)} points")
        return 0
    for device in sorted({p.device for p in points}):
        require_device(device)  # before anything runs: never a sweep of points all skipped for want of a GPU
    threads = choose_threads(args.threads, points)
    out = Path(args.out or f"bench_out/{args.suite}")
    settings = dict(settings, suite=args.suite, filters={k: getattr(args, k) for k in
                                                          ("schemes", "backends", "impls", "modes", "groups",
                                                           "max_tokens", "limit", "device")},
                    threads=threads)
    print(f"suite {args.suite}: {len(points)} points -> {out}/results.jsonl", flush=True)
    records = run_sweep(points, out, resume=args.resume, progress=not args.no_progress, settings=settings)
    print(format_summary(records))
    for r in peer_ratios(records):
        mem = "" if r["mem_ratio"] is None else f", peak memory ours/{r['peer']} = {r['mem_ratio']:.2f}"
        print(f"{r['config']} {r['mode']}: ours/{r['ours']} {r['ours_s']:.3f} s vs {r['peer']} {r['peer_s']:.3f} s "
              f"-> {r['speedup']:.2f}x{mem}")
    if not args.no_plots:
        _draw(out, out)
    errors = sum(r["status"] == "error" for r in records)
    if records and all(r["status"] == "skipped" for r in records):
        print(f"error: nothing was measured: all {len(records)} point(s) were skipped (first reason: "
              f"{' '.join(records[0]['reason'].split())})", file=sys.stderr)
        return 1
    if errors:
        print(f"{errors} point(s) failed with an error (see 'reason' in {out}/results.jsonl)", file=sys.stderr)
    return 1 if errors else 0


def _draw(results, out) -> None:
    from .plots import plot_all
    from .summary import write_summary

    paths = plot_all(results, out)
    summary = write_summary(results, paths, out)
    for p in paths:
        print(f"plot: {p}")
    print(f"summary: {summary}")


def cmd_plot(args) -> int:
    results = Path(args.results)
    if not (results / "results.jsonl").exists():
        print(f"error: no results.jsonl in {results}", file=sys.stderr)
        return 2
    _draw(results, Path(args.out) if args.out else results)
    return 0


if __name__ == "__main__":  # pragma: no cover
    p = argparse.ArgumentParser()
    add_subcommands(p.add_subparsers(dest="command", required=True))
    a = p.parse_args()
    sys.exit(a.func(a))
