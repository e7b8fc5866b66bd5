"""``fast-timesformer gpu-check``: an orchestrator over suites. The dry run (every stage on CPU at tiny sizes,
kernels under the Triton interpreter) writes every file a GPU loan would bring back, in the one record schema,
and prints the target table last; a stage that runs past its budget is killed, recorded with its reason, and
the next stage runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fast_timesformer.bench import gpu_check, targets
from fast_timesformer.bench.runner import load_results

ROOT = Path(__file__).resolve().parents[1]
FILES = ["results.jsonl", "meta.json", "summary.md", gpu_check.LOG, *gpu_check.FIGURES]


def run_gpu_check(out, *extra, timeout=500):
    env = {k: v for k, v in os.environ.items() if k != "FAST_TIMESFORMER_TRACEBACK"}
    return subprocess.run([sys.executable, "-m", "fast_timesformer.cli", "gpu-check", "--dry-run", "--out", str(out),
                           *extra], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.slow
def test_dry_run_writes_every_file_and_prints_the_targets_last(tmp_path):
    out = tmp_path / "gpu"
    res = run_gpu_check(out)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES) and len(FILES) <= 8  # what a loan brings back
    recs = load_results(out)
    stages = {r["workload"]["stage"]: r for r in recs if r["suite"] == "gpu-check"}
    assert set(stages) == {s.name for s in gpu_check.STAGES}
    assert all(r["status"] == "ok" and r["wall_s"] > 0 for r in stages.values()), stages
    # one schema: every record has its suite, group, workload and status; one metadata block per stage run
    assert all({"suite", "workload", "status", "key", "label"} <= set(r) for r in recs)
    assert len(json.loads((out / "meta.json").read_text())["runs"]) == len(gpu_check.STAGES)
    corr = [r for r in recs if r["suite"] == "correctness"]
    tri = [r for r in corr if r["workload"].get("backend") == "triton"]
    # the GPU-marked tests themselves ran (interpreted kernel, every dtype / CLS mode / shape) and passed
    assert len(tri) == 12 and all(r["status"] == "ok" for r in tri), [r["reason"] for r in tri]
    assert {r["workload"]["cls"] for r in tri} == {"exclude", "per_group", "global"}
    model = [r["status"] for r in corr if r["workload"]["test"] == "test_model_with_triton_matches_regular"]
    assert model == ["ok", "ok"]
    kern = [r for r in recs if r["suite"] == "kernels" and r["status"] == "ok" and r["workload"]["group"] == "kernel"]
    assert {r["workload"]["step"] for r in kern if r["workload"]["backend"] == "triton"} == {"time", "space", "joint"}
    assert all(r["error"]["within"] for r in kern)  # no speed without its float64 check
    train = [r["label"] for r in recs if r["suite"] == "train" and r["workload"]["group"] == "train"]
    assert train == ["ours/regular training step", "ours/triton training step", "Hugging Face training step"]
    sweep = [r for r in recs if r["suite"] == "gpu-sweep"]
    from fast_timesformer.schemes import list_schemes

    assert {r["workload"]["scheme"] for r in sweep} == set(list_schemes()) and {r["status"] for r in sweep} == {"ok"}
    summary = (out / "summary.md").read_text()
    assert "## Targets" in summary and "![" in summary
    # the target table is the last thing printed, every target in it
    tail = res.stdout[res.stdout.rindex("gpu-check finished"):]
    for t in targets.TARGETS:
        assert t.id in tail
    assert (out / gpu_check.LOG).read_text().rstrip().endswith(res.stdout.rstrip().splitlines()[-1])


def test_a_stage_past_its_budget_is_killed_recorded_and_the_next_one_runs(tmp_path):
    out = tmp_path / "gpu"
    res = run_gpu_check(out, "--stages", "kernels,train", "--budget", "kernels=2", "--budget", "train=120",
                        timeout=300)
    assert res.returncode == 1
    stages = {r["workload"]["stage"]: r for r in load_results(out) if r["suite"] == "gpu-check"}
    assert stages["kernels"]["status"] == "error" and "budget of 2 s" in stages["kernels"]["reason"]
    assert stages["kernels"]["wall_s"] < 30  # killed, with its process group
    assert stages["train"]["status"] == "ok"
    assert "not measured" in res.stdout.split("targets:")[-1]  # the report is still written


def test_without_cuda_gpu_check_is_one_line_and_exit_2(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from fast_timesformer.cli import console

    assert console(["gpu-check", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA device" in err[0]


def test_stage_budgets_fit_the_loan():
    """Budgets sum to under the 8-minute limit with room for process starts and the report."""
    from fast_timesformer.bench.suites import SUITES

    assert sum(s.budget_s for s in gpu_check.STAGES) <= gpu_check.TOTAL_LIMIT_S - 60
    assert all(s.suite in SUITES or s.suite == "correctness" for s in gpu_check.STAGES)


def _rec(suite, group, status="ok", reason="", ms=1.0, **w):
    return {"suite": suite, "workload": {"group": group, **w}, "status": status, "reason": reason, "label": "x",
            **({"median_s": ms / 1e3, "peak_mem_bytes": 1e9} if status == "ok" else {})}


def test_targets_from_synthetic_gpu_results():
    """The target table reads GPU-shaped records right (met, not met, not measured); a peer that failed to
    import fails its targets, quoting the ImportError's one line (not "not measured")."""
    recs = [_rec("kernels", "kernel", step="time", mode="fwd+bwd", contender="triton", backend="triton", ms=0.1),
            _rec("kernels", "kernel", step="time", mode="fwd+bwd", contender="regular[flash]", backend="regular",
                 ms=0.2),
            _rec("kernels", "kernel", step="space", mode="fwd+bwd", contender="triton", backend="triton", ms=0.3),
            _rec("kernels", "kernel", step="space", mode="fwd+bwd", contender="regular[cudnn]", backend="regular",
                 ms=0.25),
            _rec("train", "train", impl="ours", backend="regular", ms=50),
            _rec("train", "train", impl="ours", backend="triton", ms=40),
            _rec("train", "train", "error", "BrokenDependencyError: transformers is installed but does not import: "
                 "ImportError: cannot import name 'TimesformerConfig'", impl="hf")]
    recs[0].update(pct_roofline=80.0, tb_s=2.4)
    t = {r["id"]: r for r in targets.evaluate(recs, every=True)}
    assert t["temporal-roofline"]["met"] is True
    assert t["temporal-speedup"]["met"] is False and t["temporal-speedup"]["value"] == pytest.approx(2.0)
    assert t["spatial-speedup"]["met"] is False
    assert t["train-vs-regular"]["met"] is True
    for tid in ("train-vs-hf", "train-memory"):  # the peer did not import: FAILED, with the real error's line
        assert t[tid]["met"] is False and t[tid]["figure"] == "FAILED"
        assert "ImportError: cannot import name 'TimesformerConfig'" in t[tid]["why"]
    assert t["correct-kernel"]["met"] is None and t["sweep-complete"]["met"] is None
    text = targets.format_targets(list(t.values()))
    assert "NOT MET" in text and "not measured" in text
    assert [ln.split()[1] for ln in text.splitlines() if ln.startswith("train-vs-hf")] == ["FAILED"]


def test_source_fingerprint_changes_with_the_code(tmp_path):
    from fast_timesformer.environment import source_fingerprint

    pkg = tmp_path / "fast_timesformer"
    (pkg / "kernels").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    one = source_fingerprint(pkg)
    (pkg / "kernels" / "k.py").write_text("y = 2\n")
    assert source_fingerprint(pkg) != one
    assert len(source_fingerprint()) == 16


@pytest.mark.slow
def test_default_workload_kernels_compile_for_sm90_without_spills(tmp_path):
    """The kernels a GPU loan runs first compile ahead of time for sm_90 with the installed Triton (no GPU
    needed: Triton -> PTX -> ptxas), spill-free. The full check, and the one with triton 3.6:
    tools/compile_check.py (docs/triton.md)."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "tools/compile_check.py", "--arch", "90", "--dtypes", "bf16", "--cases",
                          "time T=8 d=64", "space N=196 d=64", "--json", str(tmp_path / "cc.json")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    rows = json.loads((tmp_path / "cc.json").read_text())["rows"]
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    assert all(r["registers"] and r["spill_bytes"] == 0 for r in rows), rows
