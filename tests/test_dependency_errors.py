"""An optional package or peer that is installed but fails to import is reported as exactly that, quoting
the real ImportError; "not installed" is said only when ``importlib.metadata`` finds no distribution.

The broken installs are real: a package folder placed first on ``PYTHONPATH`` whose ``__init__`` raises the
ImportError a broken release raises (transformers 5.25 did, through a shadowing ``kernels`` folder), in a
fresh interpreter, while the real distribution stays installed.
"""
import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap

import pytest

from fast_timesformer import DividedAttention
from fast_timesformer.backends import BackendUnavailable
from fast_timesformer.bench import targets
from fast_timesformer.bench.runner import load_results
from fast_timesformer.errors import BrokenDependencyError, MissingDependencyError, import_failure

REAL_ERROR = "cannot import name 'CUDAProperties' from 'kernels' (/repo/kernels/__init__.py)"


def installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def broken_package(tmp_path, module: str):
    """A folder for PYTHONPATH in which ``import module`` raises the real-looking ImportError."""
    (tmp_path / module).mkdir()
    (tmp_path / module / "__init__.py").write_text(f"raise ImportError({REAL_ERROR!r})\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}


def run_python(code: str, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=300)


def test_missing_distribution_is_not_installed():
    try:
        import no_such_package_ft  # noqa: F401
    except ImportError as e:
        err = import_failure("no-such-package-ft", e, "bench")
    assert isinstance(err, MissingDependencyError)
    assert str(err) == "no-such-package-ft is not installed (pip install 'fast_timesformer[bench]')"


def test_installed_distribution_that_fails_is_quoted_not_called_missing():
    err = import_failure("torch", ImportError(REAL_ERROR), "bench")
    assert isinstance(err, BrokenDependencyError) and isinstance(err, ImportError)
    assert "not installed" not in str(err)
    assert str(err).startswith(f"torch {importlib.metadata.version('torch')} is installed but fails to import")
    assert REAL_ERROR in str(err)


@pytest.mark.skipif(not installed("performer-pytorch"), reason="performer-pytorch (extra 'performer') absent")
def test_backend_with_a_broken_package_says_so(tmp_path):
    out = run_python("""
        from fast_timesformer import DividedAttention
        from fast_timesformer.backends import BackendUnavailable
        try:
            DividedAttention(32, heads=2, dim_head=16, backend="performer")
        except BackendUnavailable as e:
            print(e)
        """, broken_package(tmp_path, "performer_pytorch"))
    assert out.returncode == 0, out.stderr
    assert "performer-pytorch" in out.stdout and "is installed but fails to import" in out.stdout
    assert REAL_ERROR in out.stdout and "not installed" not in out.stdout


def test_backend_whose_package_is_missing_says_not_installed(monkeypatch):
    from fast_timesformer.backends import registry

    def no_distribution(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(registry.importlib.metadata, "version", no_distribution)
    with pytest.raises(BackendUnavailable, match="'performer-pytorch' is not installed"):
        DividedAttention(32, heads=2, dim_head=16, backend="performer")


@pytest.mark.skipif(not installed("transformers"), reason="transformers (extras 'bench', 'test') absent")
def test_bench_peer_that_fails_to_import_is_an_error_not_a_skip(tmp_path):
    out = run_python("""
        import json
        from fast_timesformer.bench.runner import _fail
        from fast_timesformer.bench.workloads import Workload, build
        rec = {}
        try:
            build(Workload(impl="hf", dim=32, heads=2, depth=1, frames=2, image_size=32, patch_size=16,
                           num_classes=3))
        except Exception as e:
            _fail(rec, e)
        print(json.dumps(rec))
        """, broken_package(tmp_path, "transformers"))
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    assert rec["status"] == "error"
    assert "transformers" in rec["reason"] and "is installed but fails to import" in rec["reason"]
    assert REAL_ERROR in rec["reason"] and "not installed" not in rec["reason"]


@pytest.mark.slow
@pytest.mark.skipif(not installed("transformers"), reason="transformers (extras 'bench', 'test') absent")
def test_gpu_check_counts_a_peer_import_failure_as_a_failed_stage(tmp_path):
    """The dry run's targets stage with transformers broken: the stage fails with the real reason, the HF
    target rows read FAILED with it (not "not measured"), and the command exits non-zero."""
    env = broken_package(tmp_path, "transformers")
    out_dir = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "fast_timesformer.cli", "gpu-check", "--dry-run", "--stages",
                          "train", "--out", str(out_dir),
                          # generous budgets: this test is about the failure's report, not the stage's time
                          "--budget", "train=500", "--total-s", "560"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-2000:]
    recs = load_results(out_dir)
    (stage,) = [r for r in recs if r["suite"] == "gpu-check"]
    assert stage["status"] == "error" and stage["reason"].startswith("failed: exit status 1")
    (hf,) = [r for r in recs if r["suite"] == "train" and r["workload"].get("impl") == "hf"]
    assert hf["status"] == "error" and REAL_ERROR in hf["reason"]
    table = run.stdout[run.stdout.rindex("targets:"):]
    for target in ("train-vs-hf", "train-memory"):
        line = next(ln for ln in table.splitlines() if ln.startswith(target + " "))
        assert "FAILED" in line, line
        note = next(ln for ln in table.splitlines() if ln.startswith(f"- {target}:"))
        assert REAL_ERROR in note and "not installed" not in note


def test_target_rows_of_a_failed_peer_read_failed():
    def rec(status, reason="", **w):
        return {"suite": "train", "status": status, "reason": reason, "label": "x", "median_s": 0.05,
                "peak_mem_bytes": 9e9, "workload": {"group": "train", **w}}

    recs = [rec("ok", impl="ours", backend="regular"), rec("ok", impl="ours", backend="triton"),
            rec("error", "BrokenDependencyError: " + REAL_ERROR, impl="hf")]
    recs[1]["median_s"] = 0.04
    t = {r["id"]: r for r in targets.evaluate(recs)}
    for tid in ("train-vs-hf", "train-memory"):
        assert t[tid]["met"] is False and t[tid]["figure"] == "FAILED" and REAL_ERROR in t[tid]["why"]
    assert t["train-vs-regular"]["met"] is True
    text = targets.format_targets(list(t.values()))
    assert any(ln.startswith("train-vs-hf") and "FAILED" in ln for ln in text.splitlines())
