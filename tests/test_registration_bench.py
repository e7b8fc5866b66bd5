"""A scheme and a backend registered from user code (here: test code) are benchmarked, plotted and summarised
with no edit to the package: the suites, the runner, the plots and the summary read the registries (the
scheme's steps, ``short`` label, ``why_not`` and colour; the backend's ``kind``, ``error_sweep``, devices and
``diagnostic``). The rest of registration from user code: tests/test_registration.py."""
import os

import matplotlib.figure
import pytest
import torch

from fast_timesformer import (
    AttentionCore,
    Backend,
    Scheme,
    Step,
    register_backend,
    register_scheme,
    scheme_color,
    unregister_backend,
    unregister_scheme,
)
from fast_timesformer.backends import get_backend, list_backends
from fast_timesformer.bench.plots import plot_all
from fast_timesformer.bench.runner import load_results, run_sweep
from fast_timesformer.bench.suites import SUITES, filter_points, suite_points
from fast_timesformer.bench.summary import write_summary
from fast_timesformer.bench.workloads import Workload, auto_backend
from fast_timesformer.kernels.naive import with_prefix
from fast_timesformer.schemes import joint_groups, time_groups

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def quiet(_msg):
    pass


@pytest.fixture
def time_then_joint():
    """A scheme the package does not know: attention along time, then over the whole clip."""
    scheme = register_scheme(Scheme(
        "time_then_joint", "T+ST", (Step("time", "temporal", time_groups), Step("joint", "", joint_groups)),
        description="time, then joint"))
    try:
        yield scheme.name
    finally:
        unregister_scheme(scheme.name)


class TopKCore(AttentionCore):
    """Softmax over each query's ``k`` largest scores only: an approximation of softmax attention."""

    def __init__(self, backend, dim_head, heads, k=4):
        super().__init__(backend, dim_head, heads)
        self.k = k

    def attend(self, q, k, v, prefix_k, prefix_v, *, scale, dropout_p):
        k, v = with_prefix(k, v, prefix_k, prefix_v)
        scores = q @ k.transpose(-1, -2) * scale
        kth = scores.topk(min(self.k, scores.shape[-1]), dim=-1).values[..., -1:]
        return torch.softmax(scores.masked_fill(scores < kth, float("-inf")), dim=-1) @ v


@pytest.fixture
def user_topk():
    be = register_backend(Backend("user_topk", TopKCore, kind="approximate", error_sweep=[{"k": 2}, {"k": 3}]))
    try:
        yield be.name
    finally:
        unregister_backend(be.name)


def _legends_while_plotting(monkeypatch):
    """{png name: [(legend label, colour of its handle)]} of every figure plot_all saves."""
    from matplotlib.colors import to_hex

    seen = {}
    real = matplotlib.figure.Figure.savefig

    def savefig(fig, path, *args, **kwargs):
        entries = []
        for ax in fig.axes:
            leg = ax.get_legend()
            if leg is None:
                continue
            for text, handle in zip(leg.get_texts(), leg.legend_handles):
                colour = handle.get_color() if hasattr(handle, "get_color") else handle.get_facecolor()
                entries.append((text.get_text(), to_hex(colour)))
        name = os.path.basename(str(path))  # written as NAME.<random>.tmp next to NAME, then moved over it
        seen[name.rsplit(".", 2)[0] if name.endswith(".tmp") else name] = entries
        return real(fig, path, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return seen


def test_registered_scheme_is_benchmarked_plotted_and_summarised(time_then_joint, tmp_path, monkeypatch):
    # the suites take it from the registry
    tiny = suite_points("tiny")
    assert time_then_joint in {p.scheme for p in tiny if p.group == "sweep"}
    # one point per implementation level through the runner, at tiny sizes
    base = Workload(scheme=time_then_joint, dim=16, heads=2, depth=1, frames=2, image_size=32, num_classes=3,
                    min_run_time=0.001, group="sweep", backend=auto_backend("cpu"))
    pts = [base.replace(impl=impl) for impl in ("attention", "ours")]
    recs = run_sweep(pts, tmp_path, progress=False, log=quiet, warm_up_s=0,
                     settings={"sweep_base": {"frames": 2, "image_size": 32}})
    assert [r["status"] for r in recs] == ["ok", "ok"], [r["reason"] for r in recs]
    assert all("/T+ST/" in r["label"] and r["median_s"] > 0 and r["flops"] > 0 for r in recs)
    # on the plots with its short label and its registry colour, and in the summary's table
    legends = _legends_while_plotting(monkeypatch)
    paths = plot_all(tmp_path)
    assert "latency_vs_frames.png" in {p.name for p in paths}
    assert ("T+ST", scheme_color(time_then_joint)) in legends["latency_vs_frames.png"]
    summary = write_summary(tmp_path, paths).read_text()
    assert "| T+ST |" in summary
    # a size the scheme cannot split is a skip with the scheme's own reasons
    odd = register_scheme(Scheme("halves_time", "H", (Step("joint", "", joint_groups),),
                                 why_not=lambda f, gh, gw: [f"frames = {f} is odd"] if f % 2 else []))
    try:
        (rec,) = run_sweep([base.replace(scheme=odd.name, frames=3)], tmp_path / "odd", progress=False, log=quiet,
                           warm_up_s=0)
        assert rec["status"] == "skipped" and "frames = 3 is odd" in rec["reason"]
    finally:
        unregister_scheme(odd.name)


def test_registered_approximate_backend_gets_its_error_measured(user_topk, tmp_path):
    base = auto_backend("cpu")
    pts = suite_points("tiny")
    # the tiny suite chose it by kind: swept, its forward points and its error_sweep option sets measured
    mine = [p for p in pts if p.backend == user_topk]
    assert {p.group for p in mine} == {"sweep", "approx"}
    assert all(p.reference == (p.mode == "fwd") for p in mine if p.group == "sweep")
    assert {p.backend_options for p in mine if p.group == "approx"} == {(("k", 2),), (("k", 3),)}
    pts = filter_points(pts, schemes=["divided_space_time"], backends=[user_topk, base], max_tokens=8)
    recs = run_sweep(pts, tmp_path, progress=False, log=quiet, warm_up_s=0,
                     settings={"sweep_base": {"frames": 2, "image_size": 32}})
    assert all(r["status"] == "ok" for r in recs), [r["reason"] for r in recs]
    measured = [r for r in load_results(tmp_path) if r.get("rel_error") is not None]
    assert {(r["workload"]["group"], str(r["workload"]["backend_options"])) for r in measured} == {
        ("sweep", "{}"), ("approx", "{'k': 2}"), ("approx", "{'k': 3}")}
    assert all(r["workload"]["backend"] == user_topk and 0 < r["rel_error"] < 2
               and r["error_kind"] == "approximation error" and r["reference_backend"] == base for r in measured)
    assert "error_vs_speed.png" in {p.name for p in plot_all(tmp_path)}


def test_diagnostic_backends_are_in_no_suite_and_never_auto():
    diagnostic = [b for b in list_backends() if get_backend(b).diagnostic]
    assert diagnostic, "the recording backend declares diagnostic=True"
    for name in SUITES:
        if name not in ("memory", "counts"):  # their points build no attention of a chosen backend
            assert not {getattr(p, "backend", None) for p in suite_points(name)} & set(diagnostic), name
    from fast_timesformer.bench.kernels import contenders

    assert not {name for _label, name, _opts in contenders()} & set(diagnostic)
    assert auto_backend("cpu") not in diagnostic


class EinsumCore(AttentionCore):
    """Plain softmax attention in einsum: an exact backend the package does not know."""

    def attend(self, q, k, v, prefix_k, prefix_v, *, scale, dropout_p):
        k, v = with_prefix(k, v, prefix_k, prefix_v)
        return torch.softmax(torch.einsum("bhqd,bhkd->bhqk", q, k) * scale, -1) @ v


def test_a_user_backend_is_in_the_kernel_comparison_checked_timed_and_drawn(tmp_path):
    """Registered from user code, an exact backend is a contender of the kernel suite with no edit: checked
    against float64 first (its error on every record), timed, drawn; one over its tolerance is failed, not drawn."""
    from fast_timesformer.cli import main

    register_backend(Backend("user_einsum", EinsumCore, kind="exact", devices=("cpu",)))
    register_backend(Backend("user_wrong", WrongCore, kind="exact", devices=("cpu",)))
    register_backend(Backend("user_crash", CrashCore, kind="exact", devices=("cpu",)))
    try:
        assert main(["bench", "--suite", "kernels", "--tiny", "--out", str(tmp_path), "--no-progress",
                     "--backends", "user_einsum,user_wrong,user_crash", "--groups", "kernel",
                     "--threads", str(torch.get_num_threads())]) == 1
    finally:
        for name in ("user_einsum", "user_wrong", "user_crash"):
            unregister_backend(name)
    recs = load_results(tmp_path)
    mine = [r for r in recs if r["workload"]["backend"] == "user_einsum"]
    assert {(r["workload"]["step"], r["workload"]["mode"]) for r in mine} == {
        (s, m) for s in ("time", "space", "joint") for m in ("fwd", "bwd", "fwd+bwd")}
    assert all(r["status"] == "ok" and r["median_s"] > 0 and r["error"]["within"] for r in mine)
    assert all(r["error"]["max_rel"]["out"] < 1e-5 for r in mine)  # float32 softmax: round-off only
    wrong = [r for r in recs if r["workload"]["backend"] == "user_wrong"]
    assert wrong and all(r["status"] == "failed" and "median_s" not in r for r in wrong)
    assert all("declared tolerance" in r["reason"] for r in wrong)
    crash = [r for r in recs if r["workload"]["backend"] == "user_crash"]  # a failure, never a refusal
    assert crash and all(r["status"] == "error" and "launch failed" in r["reason"] for r in crash)
    assert (tmp_path / "kernels.png").exists()
    assert "user_wrong: failed" in " ".join(
        t.get_text() for t in _texts_of_kernels_figure(tmp_path))


class WrongCore(EinsumCore):
    """Off by a little: must be reported failed, never timed."""

    def attend(self, q, k, v, prefix_k, prefix_v, *, scale, dropout_p):
        return super().attend(q, k, v, prefix_k, prefix_v, scale=scale, dropout_p=dropout_p) * 1.01


class CrashCore(EinsumCore):
    """Raises a RuntimeError that is not SDPA refusing a pinned implementation: an error record, not a skip."""

    def attend(self, q, k, v, prefix_k, prefix_v, *, scale, dropout_p):
        raise RuntimeError("user kernel launch failed")


def _texts_of_kernels_figure(results):
    """The texts of kernels.png, redrawn."""
    from fast_timesformer.bench import plots

    seen = []
    real = matplotlib.figure.Figure.savefig

    def savefig(fig, path, *a, **k):
        seen.extend(t for ax in fig.axes for t in ax.texts)
        return real(fig, path, *a, **k)
    matplotlib.figure.Figure.savefig = savefig
    try:
        plots.plot_all(results, only=("kernels.png",))
    finally:
        matplotlib.figure.Figure.savefig = real
    return seen


def test_every_exact_sweep_point_carries_its_float64_error_and_a_wrong_one_is_failed(tmp_path):
    """No speed without correctness in the sweeps too: an exact point records its error against float64 at its
    shape; one over its backend's declared tolerance is 'failed', has no timing, and is drawn nowhere."""
    register_backend(Backend("user_wrong", WrongCore, kind="exact", devices=("cpu",)))
    try:
        base = Workload(impl="attention", dim=16, heads=2, depth=1, frames=2, image_size=32, num_classes=3,
                        min_run_time=0.001, group="sweep")
        pts = [base.replace(backend=b, mode=m) for b in ("regular", "user_wrong") for m in ("fwd", "fwd+bwd")]
        recs = run_sweep(pts, tmp_path, progress=False, log=quiet, warm_up_s=0)
    finally:
        unregister_backend("user_wrong")
    good, bad = recs[:2], recs[2:]
    assert all(r["status"] == "ok" and r["error"]["within"] and r["error"]["max_rel"]["out"] < 1e-5 for r in good)
    assert all(r["status"] == "failed" and "median_s" not in r and not r["error"]["within"] for r in bad)
    assert all("declared tolerance" in r["reason"] for r in bad)
    summary = write_summary(tmp_path, plot_all(tmp_path)).read_text()
    rows = [ln for ln in summary.splitlines() if "| user_wrong | fwd" in ln]
    assert rows and all("| failed | - |" in ln for ln in rows)  # reported failed, with no time
