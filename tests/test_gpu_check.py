"""``fast-timesformer gpu-check``: the dry run (every stage on CPU at tiny sizes, kernels under the Triton
interpreter) writes every file a GPU loan would bring back and prints the target table last; a stage
that fails or hangs is recorded with its reason and the next stage runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fast_timesformer.bench import gpu_check, gpu_report

ROOT = Path(__file__).resolve().parents[1]
STAGE_FILES = [s.file for s in gpu_check.STAGES]


def run_gpu_check(out, *extra, env=None, timeout=400):
    e = dict(os.environ, **(env or {}))
    e.pop("FAST_TIMESFORMER_TRACEBACK", None)
    return subprocess.run([sys.executable, "-m", "fast_timesformer.cli", "gpu-check", "--dry-run", "--out", str(out),
                           *extra], capture_output=True, text=True, timeout=timeout, env=e, cwd=ROOT)


@pytest.mark.slow
def test_dry_run_writes_every_file_and_prints_the_targets_last(tmp_path):
    out = tmp_path / "gpu"
    res = run_gpu_check(out)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(STAGE_FILES + list(gpu_check.REPORT_FILES)), names
    assert len(names) <= 8  # what a loan brings back
    for f in STAGE_FILES:
        data = json.loads((out / f).read_text())
        assert data["status"] == "ok", (f, data.get("reason"))
        assert data["wall_s"] > 0 and data["budget_s"] > 0
    corr = json.loads((out / "correctness.json").read_text())
    tri = [r for r in corr["attention"] if r["backend"] == "triton"]
    # the kernel ran (interpreted) in every dtype / CLS mode / shape of the dry run, and passed
    assert len(tri) == 12 and all(r["status"] == "pass" for r in tri), [r.get("reason") for r in tri]
    assert {r["dtype"] for r in tri} == {"float32", "float16"} and {r["cls"] for r in tri} == {
        "exclude", "per_group", "global"}
    assert all(r["status"] == "pass" for r in corr["model"])
    kern = json.loads((out / "kernels.json").read_text())
    assert {r["step"] for r in kern["rows"] if r["backend"] == "triton" and r["status"] == "ok"} == {
        "temporal", "spatial", "joint"}
    tg = json.loads((out / "targets.json").read_text())
    assert [r["label"] for r in tg["train"] if r["status"] == "ok"] == ["ours/regular", "ours/triton", "Hugging Face"]
    sweep = json.loads((out / "sweep.json").read_text())
    points = gpu_check.sweep_points(gpu_check.config(True)["sweep"], "cpu")
    assert len(sweep["records"]) == len(points)
    from fast_timesformer.schemes import list_schemes

    assert {p.scheme for p in points} == set(list_schemes())  # every registered scheme, from the registry
    assert not sweep["not_run"]
    assert {r["status"] for r in sweep["records"]} == {"ok"}
    assert (out / "plots.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text()
    assert "DRY RUN" in summary and "## Targets" in summary and "![plots](plots.png)" in summary
    # the target table is the last thing printed, every target in it
    tail = res.stdout[res.stdout.rindex("gpu-check finished"):]
    assert "targets:" in tail
    for t in gpu_report.TARGETS:
        assert t[0] in tail
    assert (out / gpu_check.LOG).read_text().rstrip().endswith(res.stdout.rstrip().splitlines()[-1])


def test_a_failing_or_hanging_stage_is_recorded_and_the_next_one_runs(tmp_path):
    out = tmp_path / "gpu"
    res = run_gpu_check(out, "--stages", "env,correctness,kernels", "--budget", "correctness=4", env={
        "FAST_TIMESFORMER_GPU_CHECK_TEST": "fail:env,hang:correctness,quick:kernels"}, timeout=120)
    assert res.returncode == 1  # stages did not all succeed
    env = json.loads((out / "env.json").read_text())
    assert env["status"] == "failed" and "injected failure in stage env" in env["reason"]
    corr = json.loads((out / "correctness.json").read_text())
    assert corr["status"] == "timeout" and "budget of 4 s" in corr["reason"]
    assert corr["wall_s"] < 30  # killed, with its process group
    assert json.loads((out / "kernels.json").read_text())["status"] == "ok"
    # the report is still written, and says what was not measured
    assert "not measured" in (out / "summary.md").read_text()
    assert res.stdout.rstrip().splitlines()[-1].startswith("- ")  # the table's notes end the output
    assert not list(out.glob(".*.tmp"))


def test_without_cuda_gpu_check_is_one_line_and_exit_2(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from fast_timesformer.cli import console

    assert console(["gpu-check", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA device" in err[0]


def test_stage_budgets_fit_the_loan():
    """Budgets sum to under the 8-minute limit with room for process starts and the report; every stage
    has a file; the files plus the report fit the 8 files a loan brings back."""
    assert sum(s.budget_s for s in gpu_check.STAGES) <= gpu_check.TOTAL_LIMIT_S - 60
    assert len(STAGE_FILES) + len(gpu_check.REPORT_FILES) <= 8
    assert set(gpu_check.STAGE_FUNCS) == {s.name for s in gpu_check.STAGES}


def test_targets_from_synthetic_gpu_results():
    """The target table reads GPU-shaped results right (met, not met, not measured)."""
    kern = [{"step": "temporal", "mode": "both", "backend": "triton", "status": "ok", "ms": 0.1, "pct_bw": 80.0,
             "TB/s": 2.4},
            {"step": "temporal", "mode": "both", "backend": "regular[flash]", "status": "ok", "ms": 0.2},
            {"step": "spatial", "mode": "both", "backend": "triton", "status": "ok", "ms": 0.3},
            {"step": "spatial", "mode": "both", "backend": "regular[cudnn]", "status": "ok", "ms": 0.25}]
    train = [{"label": "ours/regular", "status": "ok", "median_s": 0.05, "peak_mem_bytes": 9e9},
             {"label": "ours/triton", "status": "ok", "median_s": 0.04, "peak_mem_bytes": 8e9},
             {"label": "Hugging Face", "status": "error", "reason": "ImportError: no transformers"}]
    t = {r["id"]: r for r in gpu_report.evaluate_targets(
        {"kernels": {"rows": kern}, "targets": {"train": train, "layer": []}}, 300.0)}
    assert t["temporal-roofline"]["met"] is True
    assert t["temporal-speedup"]["met"] is False and t["temporal-speedup"]["value"] == pytest.approx(2.0)
    assert t["spatial-speedup"]["met"] is False
    assert t["train-vs-regular"]["met"] is True and t["train-vs-hf"]["met"] is None
    assert "no transformers" in t["train-vs-hf"]["why"]
    assert t["correct-kernel"]["met"] is None and t["wall-time"]["met"] is True
    text = gpu_report.format_targets(list(t.values()))
    assert "NOT MET" in text and "not measured" in text


def test_source_fingerprint_changes_with_the_code(tmp_path):
    pkg = tmp_path / "fast_timesformer"
    (pkg / "kernels").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    one = gpu_check.source_fingerprint(pkg)
    (pkg / "kernels" / "k.py").write_text("y = 2\n")
    two = gpu_check.source_fingerprint(pkg)
    assert two != one
    # the same sources elsewhere (an installed copy) give the same fingerprint
    inst = tmp_path / "site" / "fast_timesformer"
    (inst / "kernels").mkdir(parents=True)
    (inst / "a.py").write_text("x = 1\n")
    (inst / "kernels" / "k.py").write_text("y = 2\n")
    assert gpu_check.source_fingerprint(inst) == two
    assert len(gpu_check.source_fingerprint()) == 16


@pytest.mark.slow
def test_default_workload_kernels_compile_for_sm90_without_spills(tmp_path):
    """The kernels a GPU loan runs first compile ahead of time for sm_90 with the installed Triton (no GPU
    needed: Triton -> PTX -> ptxas), spill-free. The full check, and the one with triton 3.6:
    benchmarks/compile_check.py (docs/triton.md)."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "benchmarks/compile_check.py", "--arch", "90", "--dtypes", "bf16", "--cases",
                          "time T=8 d=64", "space N=196 d=64", "--json", str(tmp_path / "cc.json")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    rows = json.loads((tmp_path / "cc.json").read_text())["rows"]
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    assert all(r["registers"] and r["spill_bytes"] == 0 for r in rows), rows
