"""``fast-timesformer gpu-check --out DIR`` (docs/gpu.md): an orchestrator over suites for a short GPU loan (at most 8
files back): each stage (:data:`STAGES`) one suite in its own process and time budget (no new point at 85 %, killed at
100 %), appending to DIR as it goes; then ``summary.md``, :data:`FIGURES` and the target table, printed last.
``--dry-run``: every stage on CPU at tiny sizes, Triton interpreted (``make test`` runs it)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import namedtuple
from pathlib import Path

from .._names import unknown_name_error
from ..devices import check_device
from ..environment import source_fingerprint
from ..outputs import check_output_dir
from .runner import RESULTS, append_record, latest_by_key, load_results, record_run
from .summary import draw
from .targets import evaluate, format_targets

ROOT = Path(__file__).resolve().parents[2]
LOG = "gpu_check.log"
TOTAL_LIMIT_S = 480  # the whole command on one H100/H200
FIGURES = ("kernels.png", "train.png", "latency_vs_frames.png", "latency_vs_resolution.png")
SOFT_FRACTION = 0.85  # a stage starts no new point after this fraction of its budget; killed at 100 %


# a stage: one suite's run, with its budgets in seconds on the GPU and in the CPU dry run
Stage = namedtuple("Stage", "name suite budget_s dry_budget_s args", defaults=((),))


STAGES = (
    Stage("correctness", "correctness", 130, 60),
    # the kernel stage times these contenders; the correctness stage checks every exact backend
    Stage("kernels", "kernels", 75, 90, ("--backends", "triton,regular,xformers", "--groups", "kernel,sdpa-only")),
    Stage("train", "train", 75, 60),
    Stage("sweep", "gpu-sweep", 90, 60),
)


def run_stage(stage: Stage, out: Path, dry: bool, budget: float, log) -> tuple:
    """(status, reason, seconds) of one stage's process; its process group is killed at ``budget``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", CUBLAS_WORKSPACE_CONFIG=":4096:8")  # deterministic cuBLAS
    if dry:
        env.update(TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
                   FAST_TIMESFORMER_CORRECTNESS_DEVICE="cpu")
    if stage.suite == "correctness":
        cmd = [sys.executable, "-m", "fast_timesformer.bench.gpu_check", "--correctness", str(out),
               *(["--dry-run"] if dry else [])]
    else:
        cmd = [sys.executable, "-m", "fast_timesformer.cli", "bench", "--suite", stage.suite, "--out", str(out),
               "--resume", "--no-plots", "--no-progress", "--budget-s", f"{budget * SOFT_FRACTION:.0f}",
               "--device", "cpu" if dry else "cuda", *(["--tiny", "--threads", "1"] if dry else []), *stage.args]
    t0, killed = time.monotonic(), []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, cwd=str(ROOT))
    timer = threading.Timer(budget, lambda: (killed.append(True), os.killpg(proc.pid, signal.SIGKILL)))
    timer.start()
    tail = []
    for line in proc.stdout:
        log(f"[{stage.name}] {line.rstrip()}")
        tail = (tail + [line.rstrip()])[-20:]
    proc.wait()
    timer.cancel()
    wall = time.monotonic() - t0
    if killed:
        return "timeout", f"killed after its budget of {budget:.0f} s", wall
    if proc.returncode:  # a point it owes failed or errored (a peer that does not import, a wrong output)
        err = next((ln for ln in reversed(tail) if ln.strip() and not ln.startswith(" ")), "")
        return "failed", f"exit status {proc.returncode}: {err}"[:500], wall
    return "ok", "", wall


def orchestrate(out: Path, dry: bool, only=None, budgets=None, total_s=None, install_log=None) -> int:
    out.mkdir(parents=True, exist_ok=True)
    for p in list(out.iterdir()):  # a fresh run: no stale file from an earlier one
        if p.is_file():
            p.unlink()
    fh = open(out / LOG, "a", buffering=1)

    def log(line=""):
        print(line, flush=True)
        fh.write(line + "\n")

    if install_log and Path(install_log).exists():
        log("install log:\n" + Path(install_log).read_text()[-6000:])
    t_start, limit = time.monotonic(), total_s or (TOTAL_LIMIT_S - 40 if not dry else 300)
    stages = [s for s in STAGES if not only or s.name in only]
    own = lambda s: (budgets or {}).get(s.name, s.dry_budget_s if dry else s.budget_s)  # noqa: E731
    log(f"fast-timesformer gpu-check{' --dry-run (CPU, tiny sizes, TRITON_INTERPRET=1)' if dry else ''} -> {out}; "
        f"stages {', '.join(s.name for s in stages)}; whole-command limit {limit:.0f} s")
    for i, s in enumerate(stages):
        later = sum(own(x) for x in stages[i + 1:])
        left = limit - (time.monotonic() - t_start) - 10
        budget = min(max(own(s), left - later) if i == len(stages) - 1 else own(s), left - later * 0.5)
        if budget < 2:
            status, reason, wall = "not run", "no time left in the whole-command limit", 0.0
        else:
            log(f"== stage {s.name} (suite {s.suite}); budget {budget:.0f} s")
            status, reason, wall = run_stage(s, out, dry, budget, log)
        append_record(out / RESULTS, {"key": f"stage:{s.name}", "suite": "gpu-check", "group": "stage",
                                      "label": f"stage {s.name}", "status": "ok" if status == "ok" else "error",
                                      "workload": {"stage": s.name, "suite": s.suite, "budget_s": round(budget)},
                                      "reason": "" if status == "ok" else f"{status}: {reason}", "wall_s": wall})
        log(f"== {s.name}: {status} in {wall:.1f} s" + (f" ({reason})" if reason else ""))
    total = time.monotonic() - t_start
    try:
        draw(out, out, only=FIGURES)
    except Exception as e:  # noqa: BLE001 - the target table still comes
        log(f"report failed: {type(e).__name__}: {e}")
    records = list(latest_by_key(load_results(out)).values())
    targets = evaluate(records, every=True, dry=dry)
    log(f"\ngpu-check finished in {total:.0f} s ({'dry run on CPU: not GPU figures' if dry else 'GPU'}); files in "
        f"{out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    log(format_targets(targets))
    fh.close()
    return 0 if all(r["status"] not in ("failed", "error") for r in records
                    if r.get("suite") in ("gpu-check", "correctness")) else 1


def run_correctness(out: Path, dry: bool) -> int:
    """The correctness stage: pytest on the GPU-marked tests, one record per test (the same schema)."""
    import pytest

    tests = ROOT / "tests" / "test_gpu_correctness.py"
    if not tests.exists():
        raise FileNotFoundError(f"{tests}: the correctness stage runs the repository's GPU-marked tests")
    run_id = record_run(out, {"suite": "correctness", "dry_run": dry})[1]["run_id"]

    class Collect:
        params = {}

        def pytest_collection_modifyitems(self, items):
            for it in items:
                self.params[it.nodeid] = {"test": it.originalname, **getattr(getattr(it, "callspec", None), "params",
                                                                             {})}

        def pytest_runtest_logreport(self, report):
            if report.when == "call" or report.outcome != "passed":
                status = {"passed": "ok", "failed": "failed", "skipped": "skipped"}[report.outcome]
                reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr or "")
                if report.failed:
                    reason = next((ln for ln in reason.splitlines() if ln.startswith("E ")), reason[-300:])
                append_record(out / RESULTS, {
                    "key": report.nodeid, "suite": "correctness", "group": "correctness", "run_id": run_id,
                    "label": report.nodeid.split("::")[-1], "workload": self.params.get(report.nodeid, {}),
                    "status": status, "reason": " ".join(str(reason).split())[:400], "wall_s": report.duration})

    args = [str(tests), "-q", "-m", "gpu", "-p", "no:randomly", "-p", "no:cacheprovider", "-o", "addopts="]
    return int(pytest.main(args, plugins=[Collect()]))


def add_subcommand(sub) -> None:
    g = sub.add_parser("gpu-check", help="prove the kernel and measure every target on a GPU in one command "
                                         "(--dry-run: the same on CPU at tiny sizes)",
                       description=__doc__.split("\n\n")[0])
    g.add_argument("--out", help="folder for the files (8 at most: see docs/gpu.md)")
    g.add_argument("--install-log", default=None, help="the install step's log, copied into gpu_check.log")
    g.add_argument("--fingerprint", action="store_true", help="print the source fingerprint and exit")
    g.add_argument("--dry-run", action="store_true", help="every stage on CPU at tiny sizes (make test runs it)")
    g.add_argument("--stages", type=lambda t: [x for x in t.split(",") if x], default=None,
                   help=f"comma list, default all: {','.join(s.name for s in STAGES)}")
    g.add_argument("--budget", action="append", default=[], help="override a stage's seconds, STAGE=S")
    g.add_argument("--total-s", type=float, default=None, help="whole-command limit in seconds (default 440 on GPU)")
    g.set_defaults(func=cmd_gpu_check)


def cmd_gpu_check(args) -> int:
    if args.fingerprint:
        print(source_fingerprint())
        return 0
    if not args.out:
        raise ValueError("gpu-check needs --out DIR")
    names, budgets = [s.name for s in STAGES], [t.partition("=") for t in args.budget]
    for name in [n for n, _, _ in budgets] + list(args.stages or ()):
        if name not in names:
            raise unknown_name_error("stage", name, names)
    check_output_dir(args.out)  # before any stage runs
    if not args.dry_run:
        check_device("cuda", label="gpu-check", hint=" (--dry-run runs the stages on CPU)")
    return orchestrate(Path(args.out), args.dry_run, args.stages, {n: float(s) for n, _, s in budgets}, args.total_s,
                       args.install_log)


if __name__ == "__main__":  # the correctness stage's process
    sys.exit(run_correctness(Path(sys.argv[2]), "--dry-run" in sys.argv))
