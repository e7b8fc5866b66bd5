"""The benchmark harness at tiny sizes: valid JSON and PNGs, OOM recorded, resume skips done points."""
from __future__ import annotations

import json
import os

import pytest
import torch

from fast_timesformer.bench import measure, runner, workloads
from fast_timesformer.bench.runner import load_results, run_sweep
from fast_timesformer.bench.suites import filter_points, suite_points
from fast_timesformer.bench.workloads import Workload
from fast_timesformer.schemes import list_schemes

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def tiny(**kw):
    base = dict(impl="attention", dim=16, heads=2, depth=1, frames=2, image_size=32, num_classes=3,
                min_run_time=0.001)
    base.update(kw)
    return Workload(**base)


def quiet(_msg):
    pass


def test_workload_key_roundtrip_and_validation():
    w = tiny(backend="performer", backend_options={"nb_features": 8})
    assert Workload.from_dict(json.loads(w.key)) == w
    assert w.replace(frames=4).key != w.key
    with pytest.raises(ValueError, match="scheme"):
        tiny(scheme="diagonal")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        tiny(image_size=30)


@pytest.mark.parametrize("scheme", list_schemes())
def test_attention_stack_steps_partition_every_token(scheme):
    """impl 'attention' runs the registry's step groups: every patch token in exactly one group per step."""
    steps = workloads.AttentionStack(tiny(scheme=scheme, frames=4, image_size=64)).steps
    from fast_timesformer.schemes import get_scheme

    assert [name for name, _ in steps] == list(get_scheme(scheme).step_names)
    for _name, groups in steps:
        idx = groups.index().flatten().sort().values
        assert torch.equal(idx, torch.arange(4 * 16))


def test_sweep_writes_json_and_plots(tmp_path):
    pts = [tiny(scheme=s, backend=b, mode=m, group="sweep", reference=(b != "regular" and m == "fwd"))
           for s in ("divided_space_time", "joint_space_time") for b in ("regular", "performer")
           for m in ("fwd", "fwd+bwd")]
    pts += [tiny(scheme="joint_space_time", frames=4, group="sweep"),
            tiny(scheme="joint_space_time", image_size=64, group="sweep")]
    pts.append(tiny(backend="no_such_backend", group="sweep"))
    recs = run_sweep(pts, tmp_path, progress=False, settings={"sweep_base": {"frames": 2, "image_size": 32}},
                     log=quiet, warm_up_s=0.1)
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == len(pts) == len(recs)
    parsed = [json.loads(line) for line in lines]
    ok = [r for r in parsed if r["status"] == "ok"]
    assert len(ok) == len(pts) - 1, [r["reason"] for r in parsed if r["status"] != "ok"]
    for r in ok:
        assert r["median_s"] > 0 and r["flops"] > 0 and r["peak_mem_bytes"] > 0 and r["throughput_clips_s"] > 0
        assert r["min_s"] <= r["median_s"] <= r["max_s"]
    skipped = [r for r in parsed if r["status"] == "skipped"]
    assert len(skipped) == 1 and "no_such_backend" in skipped[0]["reason"]
    perf = [r for r in ok if r["workload"]["backend"] == "performer" and r["workload"]["mode"] == "fwd"]
    assert perf and all(0 < r["rel_error"] < 2 for r in perf)
    # training costs more FLOPs than inference at the same point
    by = {(r["workload"]["scheme"], r["workload"]["backend"], r["workload"]["frames"], r["workload"]["image_size"],
           r["workload"]["mode"]): r for r in ok}
    fwd, train = by[("joint_space_time", "regular", 2, 32, "fwd")], by[("joint_space_time", "regular", 2, 32, "fwd+bwd")]
    assert train["flops"] > 2 * fwd["flops"]
    # attention FLOPs are counted on CPU too (SDPA's CPU kernel): 2 frames x 4 patches + CLS = 9 tokens;
    # qkv and output projections (dim 16), plus the two attention matmuls (9 x 9, dim_head 8, 2 heads)
    projections = 2 * 9 * 16 * (3 * 16) + 2 * 9 * 16 * 16
    assert fwd["flops"] == projections + 2 * 2 * 9 * 9 * 8 * 2

    meta = json.loads((tmp_path / "meta.json").read_text())
    run = meta["runs"][0]
    for field in ("device", "versions", "git", "settings", "started", "finished"):
        assert field in run
    assert run["versions"]["torch"] == torch.__version__.split("+")[0] or run["versions"]["torch"]
    assert run["counts"]["ok"] == len(ok)

    from fast_timesformer.bench.plots import plot_all
    from fast_timesformer.bench.summary import write_summary

    paths = plot_all(tmp_path)
    names = {p.name for p in paths}
    assert {"latency_vs_frames.png", "memory_vs_tokens.png", "backend_bars.png", "error_vs_speed.png",
            "flops_vs_frames_resolution.png"} <= names
    import matplotlib.image as mpimg

    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(p)
        assert img.shape[0] > 200 and img.shape[1] > 200
    summary = write_summary(tmp_path, paths).read_text()
    assert "![Latency vs frames](latency_vs_frames.png)" in summary
    assert "no_such_backend" in summary


def test_injected_oom_is_recorded_and_sweep_continues(tmp_path, monkeypatch):
    pts = [tiny(frames=f) for f in (2, 4, 6)]
    real_build = workloads.build

    def build(w, **kw):
        if w.frames == 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        return real_build(w, **kw)

    monkeypatch.setattr(runner, "build", build)
    recs = run_sweep(pts, tmp_path, progress=False, log=quiet, warm_up_s=0)
    assert [r["status"] for r in recs] == ["ok", "oom", "ok"]
    assert "OutOfMemoryError" in recs[1]["reason"]
    on_disk = load_results(tmp_path)
    assert [r["status"] for r in on_disk] == ["ok", "oom", "ok"]


def test_oom_during_the_step_and_cpu_allocator_message(tmp_path, monkeypatch):
    real_build = workloads.build

    def build(w, **kw):
        b = real_build(w, **kw)
        if w.frames == 2:
            def step():
                raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
                                   "memory: you tried to allocate 1000000000000 bytes.")
            b.step = step
        return b

    monkeypatch.setattr(runner, "build", build)
    recs = run_sweep([tiny(frames=2), tiny(frames=4)], tmp_path, progress=False, log=quiet, warm_up_s=0)
    assert [r["status"] for r in recs] == ["oom", "ok"]
    assert not measure.is_oom(RuntimeError("shape mismatch"))


def test_errors_are_recorded_not_raised(tmp_path, monkeypatch):
    def build(w, **kw):
        raise ValueError("broken model")

    monkeypatch.setattr(runner, "build", build)
    (rec,) = run_sweep([tiny()], tmp_path, progress=False, log=quiet, warm_up_s=0)
    assert rec["status"] == "error" and "broken model" in rec["reason"]


def test_resume_skips_done_points(tmp_path, monkeypatch):
    pts = [tiny(frames=f) for f in (2, 4, 6)]
    run_sweep(pts[:2], tmp_path, progress=False, log=quiet, warm_up_s=0)
    # a killed run leaves a truncated last line: it must be ignored
    with (tmp_path / "results.jsonl").open("a") as fh:
        fh.write('{"key": "trunc')
    calls = []
    real_build = workloads.build

    def build(w, **kw):
        calls.append(w.frames)
        return real_build(w, **kw)

    monkeypatch.setattr(runner, "build", build)
    recs = run_sweep(pts, tmp_path, resume=True, progress=False, log=quiet, warm_up_s=0)
    assert calls == [6]
    assert [r["workload"]["frames"] for r in recs] == [2, 4, 6]
    keys = [r["key"] for r in load_results(tmp_path)]
    assert len(keys) == len(set(keys)) == 3
    assert len(json.loads((tmp_path / "meta.json").read_text())["runs"]) == 2
    calls.clear()
    run_sweep(pts, tmp_path, resume=True, progress=False, log=quiet, warm_up_s=0)
    assert calls == []
    # without --resume the file starts over
    run_sweep(pts[:1], tmp_path, progress=False, log=quiet, warm_up_s=0)
    assert calls == [2] and len(load_results(tmp_path)) == 1


def test_cpu_peak_memory_grows_with_the_workload():
    def step_of(n):
        def step():
            x = torch.ones(n, n)
            y = x * 2
            return (y + x).sum()
        return step

    small, big = measure.cpu_peak_bytes(step_of(256)), measure.cpu_peak_bytes(step_of(1024))
    assert small >= 3 * 256 * 256 * 4 * 0.9
    assert big >= 3 * 1024 * 1024 * 4 * 0.9
    assert big > 10 * small


def test_suites_define_the_required_ranges():
    cpu = suite_points("cpu")
    sweep = [p for p in cpu if p.group == "sweep"]
    assert {p.scheme for p in sweep} == set(list_schemes())
    from fast_timesformer.backends import get_backend, list_backends

    # every backend but the diagnostic ones, chosen by what they declare; errors measured where not exact
    assert {p.backend for p in sweep} == {b for b in list_backends() if not get_backend(b).diagnostic}
    assert all(p.reference == (p.mode == "fwd" and not get_backend(p.backend).exact) for p in sweep)
    approx = [p for p in cpu if p.group == "approx"]
    assert {(p.backend, p.backend_options) for p in approx} == {
        (b, tuple(sorted(o.items()))) for b in list_backends() for o in get_backend(b).error_sweep}
    assert {p.mode for p in sweep} == {"fwd", "fwd+bwd"}
    assert {p.frames for p in sweep} >= {2, 16} and {p.image_size for p in sweep} >= {64, 224}
    target = [p for p in cpu if p.group == "target"]
    assert {p.impl for p in target} == {"ours", "hf", "lucidrains"}
    assert all(p.batch == 1 and p.frames == 8 and p.image_size == 224 and p.depth == 12 and p.mode == "fwd"
               and p.dtype == "float32" for p in target)
    gpu = suite_points("gpu")
    gs = [p for p in gpu if p.group == "sweep"]
    assert {p.frames for p in gs if p.image_size == 224} == {8, 16, 32, 64, 96}
    assert {p.image_size for p in gs if p.frames == 8} >= {224, 448}
    assert all(p.dtype == "bfloat16" and p.device == "cuda" for p in gpu)
    assert {p.scheme for p in gs} == set(list_schemes())
    assert len(filter_points(cpu, schemes=["axial"], modes=["fwd"])) < len(cpu)


def test_cli_bench_and_plot(tmp_path, capsys):
    from fast_timesformer.cli import main

    out = tmp_path / "out"
    rc = main(["bench", "--suite", "tiny", "--out", str(out), "--schemes", "divided_space_time",
               "--backends", "regular", "--groups", "sweep", "--limit", "2", "--no-progress",
               "--threads", str(torch.get_num_threads())])  # 'auto' may drop to 1 thread on a busy machine
    assert rc == 0
    text = capsys.readouterr().out
    assert "median ms" in text and "summary:" in text
    assert len(load_results(out)) == 2
    rc = main(["plot", "--results", str(out), "--out", str(tmp_path / "plots")])
    assert rc == 0 and (tmp_path / "plots" / "summary.md").exists()
    assert main(["plot", "--results", str(tmp_path / "nothing")]) == 2


def test_interleaved_points_are_timed_round_robin(tmp_path, monkeypatch):
    """Points of one group and size are timed A B A B A B; another size is its own round-robin batch."""
    calls = []
    real_build = workloads.build

    def build(w, **kw):
        b = real_build(w, **kw)
        inner = b.step

        def step():
            calls.append((w.depth, w.frames))
            return inner()
        b.step = step
        return b

    monkeypatch.setattr(runner, "build", build)
    pts = [tiny(depth=d, frames=f, group="target", interleave=3) for f in (2, 4) for d in (1, 2)] + [tiny(frames=6)]
    recs = run_sweep(pts, tmp_path, progress=False, log=quiet, warm_up_s=0)
    assert [r["status"] for r in recs] == ["ok"] * 5
    # FLOP count + memory pass per point, then three rounds A B A B A B; then the 4-frame pair; the plain point
    a, b, c, d = (1, 2), (2, 2), (1, 4), (2, 4)
    assert calls[:10] == [a, a, b, b, a, b, a, b, a, b]
    assert calls[10:20] == [c, c, d, d, c, d, c, d, c, d]
    assert recs[0]["runs"] == 3 and recs[0]["n_times"] == 3 and "interleaved" in recs[0]["time_method"]
    assert recs[0]["min_s"] <= recs[0]["q1_s"] <= recs[0]["median_s"] <= recs[0]["q3_s"] <= recs[0]["max_s"]


def test_hf_peer_runs_our_weights():
    pytest.importorskip("transformers")
    w = Workload(impl="ours", dim=32, heads=2, depth=1, frames=2, image_size=32, num_classes=5)
    ours, hf = workloads.build(w), workloads.build(w.replace(impl="hf"))
    assert any("ours copied into HF" in n for n in hf.notes)
    with torch.no_grad():
        for p in ours.model.parameters():  # temporal_fc starts at zero: give every path a say
            p.add_(0.01 * torch.randn_like(p))
    workloads.copy_ours_into_hf(ours.model, hf.model)
    # float32, two implementations of one model (HF's and ours): summation order only, ~1e-6
    torch.testing.assert_close(hf.step(), ours.step(), atol=1e-5, rtol=1e-4)


def test_auto_threads_drop_to_one_on_a_busy_cpu(monkeypatch):
    import os

    from fast_timesformer.bench import cli

    before = torch.get_num_threads()
    pts = [tiny()]
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(cli, "busy_cores", lambda *a: 1.7)
        monkeypatch.setattr(os, "cpu_count", lambda: 2)
        assert cli.choose_threads("auto", pts).startswith("1 (auto") and torch.get_num_threads() == 1
        torch.set_num_threads(2)
        monkeypatch.setattr(cli, "busy_cores", lambda *a: 0.05)
        assert "idle" in cli.choose_threads("auto", pts) and torch.get_num_threads() == 2
        assert cli.choose_threads(1, pts).startswith("1 (--threads)")
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit):
        cli_main_quiet(["bench", "--threads", "0", "--list"])
    monkeypatch.undo()
    busy = cli.busy_cores(0.05)
    assert busy is None or 0 <= busy <= (os.cpu_count() or 1) + 0.5


def cli_main_quiet(argv):
    from fast_timesformer.cli import build_parser

    return build_parser().parse_args(argv)


def test_peer_ratios_pair_equal_configs_only():
    def rec(impl, backend, median, mem, frames=8):
        w = Workload(impl=impl, backend=backend, frames=frames, group="target").to_dict()
        return {"status": "ok", "workload": w, "median_s": median, "peak_mem_bytes": mem}

    recs = [rec("ours", "regular", 2.0, 100), rec("ours", "triton", 1.0, 50), rec("hf", "regular", 3.0, 200),
            rec("hf", "regular", 9.0, 900, frames=16)]
    got = {(r["ours"], r["peer"]): (r["speedup"], r["mem_ratio"]) for r in runner.peer_ratios(recs)}
    assert got == {("regular", "hf"): (1.5, 0.5), ("triton", "hf"): (3.0, 0.25),
                   ("triton", "ours/regular"): (2.0, 0.5)}


def _synthetic_gpu_results(tmp_path):
    """GPU-like results (no measuring): joint attention runs out of memory at the largest sizes; 32 frames at
    224 px and 8 frames at 448 px have the same token count (6272); spreads from 5 runs, one point timed once."""
    lines = []
    for scheme in list_schemes():
        for backend in ("regular", "performer"):
            for mode in ("fwd", "fwd+bwd"):
                for f, s in ((8, 224), (16, 224), (32, 224), (8, 336), (8, 448)):
                    w = Workload(scheme=scheme, backend=backend, mode=mode, frames=f, image_size=s, group="sweep",
                                 device="cuda", dtype="bfloat16", reference=backend != "regular" and mode == "fwd")
                    tokens = w.tokens
                    rec = {"key": w.key, "workload": w.to_dict(), "label": w.label, "tokens": tokens, "notes": [],
                           "status": "ok", "reason": ""}
                    if scheme == "joint_space_time" and tokens > 3000 and backend == "regular":
                        rec.update(status="oom", reason="OutOfMemoryError: CUDA out of memory")
                    else:
                        t = 1e-3 * tokens * (tokens / 500 if scheme == "joint_space_time" else 1)
                        rec.update(median_s=t, iqr_s=t / 20, q1_s=t * 0.98, q3_s=t * 1.03, n_times=5,
                                   flops=int(6e11 * tokens / 1568), peak_mem_bytes=tokens * 2e5,
                                   throughput_clips_s=1 / t)
                        if (scheme, backend, mode, f, s) == ("axial", "regular", "fwd", 8, 224):
                            rec.update(iqr_s=None, q1_s=None, q3_s=None, n_times=1)  # timed once
                        if rec["workload"]["reference"]:
                            rec["rel_error"] = 0.01
                    lines.append(json.dumps(rec))
    (tmp_path / "results.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "meta.json").write_text(json.dumps({"runs": [{"device": "synthetic GPU", "settings": {
        "sweep_base": {"frames": 8, "image_size": 224}}}]}))


def test_plots_mark_oom_points(tmp_path):
    from fast_timesformer.bench.plots import plot_all

    _synthetic_gpu_results(tmp_path)
    names = {p.name for p in plot_all(tmp_path)}
    assert {"latency_vs_frames.png", "latency_vs_resolution.png", "memory_vs_tokens.png",
            "flops_vs_frames_resolution.png", "error_vs_speed.png", "backend_bars.png"} <= names


# ---- issue 9: a missing device, a sweep where nothing ran, a full disk --------------------------------------
def test_bench_on_a_missing_cuda_device_is_one_line_and_exit_2(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from fast_timesformer.cli import console, main
    from fast_timesformer.errors import DeviceUnavailableError

    argv = ["bench", "--suite", "tiny", "--device", "cuda", "--out", str(tmp_path / "b"), "--limit", "2",
            "--no-progress", "--no-plots"]
    with pytest.raises(DeviceUnavailableError, match="no CUDA device"):
        main(argv)
    assert console(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fast-timesformer: error: --device cuda: no CUDA device")
    assert not (tmp_path / "b" / "results.jsonl").exists()  # refused before anything ran
    assert console(["bench", "--suite", "gpu", "--out", str(tmp_path / "g"), "--no-progress"]) == 2  # the suite's device
    assert console(["bench", "--suite", "kernels", "--device", "cuda", "--out", str(tmp_path / "k")]) == 2


def test_bench_never_exits_0_with_every_point_skipped(tmp_path, capsys):
    from fast_timesformer.backends import get_backend
    from fast_timesformer.cli import main

    if not get_backend("xformers").unavailable_reasons():
        pytest.skip("xformers runs here")
    rc = main(["bench", "--suite", "cpu", "--backends", "xformers", "--groups", "sweep", "--limit", "2",
               "--out", str(tmp_path), "--no-progress", "--no-plots", "--threads", str(torch.get_num_threads())])
    assert rc == 1
    assert "nothing was measured: all 2 point(s) were skipped" in capsys.readouterr().err


class _FullDisk:
    """Every write on the file system fails with ENOSPC (as on a full disk), after ``allow`` bytes; opening,
    truncating and renaming still work (they need no free space). ``only``: limit writes to files whose name
    ends so (the others succeed)."""

    def __init__(self, monkeypatch, allow: int = 0, only: str = None):
        import builtins
        import errno
        import io

        self.left = allow
        real_open, real_write = io.open, os.write
        disk = self

        def take(n):
            k = min(n, disk.left)
            disk.left -= k
            return k

        def full():
            return OSError(errno.ENOSPC, "No space left on device")

        class Wrapped:
            def __init__(self, fh):
                self._fh = fh

            def write(self, data):
                k = take(len(data))
                if k:
                    self._fh.write(data[:k])
                    self._fh.flush()
                if k < len(data):
                    raise full()
                return k

            def __getattr__(self, name):
                return getattr(self._fh, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._fh.close()

            def __iter__(self):
                return iter(self._fh)

        def limited(name):
            return only is None or str(name).endswith(only)

        def fake_open(file, mode="r", *args, **kwargs):
            fh = real_open(file, mode, *args, **kwargs)
            return Wrapped(fh) if any(c in mode for c in "wax+") and limited(file) else fh

        def fake_write(fd, data):
            if not limited(os.readlink(f"/proc/self/fd/{fd}")):
                return real_write(fd, data)
            k = take(len(data))
            if k:
                real_write(fd, bytes(data[:k]))
            if k < len(data) and not k:
                raise full()
            return k

        monkeypatch.setattr(io, "open", fake_open)
        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(os, "write", fake_write)


def test_a_full_disk_never_damages_the_results(tmp_path, monkeypatch):
    from fast_timesformer.bench.runner import ResultsWriteError
    from fast_timesformer.errors import FastTimesformerError

    pts = [tiny(frames=f) for f in (2, 4, 6)]
    run_sweep(pts[:2], tmp_path, progress=False, log=quiet, warm_up_s=0)
    results, meta = tmp_path / "results.jsonl", tmp_path / "meta.json"
    good, meta_before = results.read_bytes(), meta.read_bytes()
    with results.open("ab") as fh:  # a killed run left half a line
        fh.write(b'{"key": "trunc')
    # the disk is full when the sweep resumes: nothing may be lost
    with monkeypatch.context() as m:
        _FullDisk(m)
        with pytest.raises((FastTimesformerError, OSError)):
            run_sweep(pts, tmp_path, resume=True, progress=False, log=quiet, warm_up_s=0)
    assert results.read_bytes() == good  # the partial line cut off in place, the records intact
    assert meta.read_bytes() == meta_before and not (tmp_path / "meta.json.tmp").exists()
    # the disk fills up in the middle of the third record: the file is cut back to whole records
    with monkeypatch.context() as m:
        _FullDisk(m, allow=100, only="results.jsonl")
        with pytest.raises(ResultsWriteError, match="No space left"):
            run_sweep(pts, tmp_path, resume=True, progress=False, log=quiet, warm_up_s=0)
    data = results.read_bytes()
    assert data.endswith(b"\n") and all(json.loads(line) for line in data.splitlines())
    # space again: the resumed sweep completes, every record whole
    recs = run_sweep(pts, tmp_path, resume=True, progress=False, log=quiet, warm_up_s=0)
    assert [r["workload"]["frames"] for r in recs] == [2, 4, 6]
    assert [json.loads(line)["workload"]["frames"] for line in results.read_text().splitlines()] == [2, 4, 6]


def test_a_full_disk_is_one_line_at_the_console(tmp_path, monkeypatch, capsys):
    from fast_timesformer.bench import runner as runner_mod
    from fast_timesformer.cli import console

    def no_space(path, rec):
        raise runner_mod.ResultsWriteError(f"could not append a result to {path}: No space left on device")

    monkeypatch.setattr(runner_mod, "append_record", no_space)
    before = torch.get_num_threads()
    try:
        assert console(["bench", "--suite", "tiny", "--groups", "sweep", "--limit", "1", "--out", str(tmp_path),
                        "--no-progress", "--no-plots", "--threads", str(before)]) == 2
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0]


def test_every_figure_is_readable_and_honest(tmp_path, monkeypatch):
    """Log axes carry at least two labelled ticks; no plotted line joins two workloads with the same x (a
    vertical segment); no bars on a log axis; a point timed once shows '1 run', never an IQR of 0."""
    import matplotlib.figure

    from fast_timesformer.bench.plots import plot_all
    from fast_timesformer.bench.summary import format_summary, write_summary

    _synthetic_gpu_results(tmp_path)
    checked = []
    real = matplotlib.figure.Figure.savefig

    def savefig(fig, path, *args, **kwargs):
        fig.canvas.draw()
        for ax in fig.axes:
            title = f"{getattr(path, 'name', path)}: {ax.get_title()}"
            for axis, lims, k in ((ax.xaxis, ax.get_xlim(), 0), (ax.yaxis, ax.get_ylim(), 1)):
                if axis.get_scale() != "log":
                    continue
                lo, hi = sorted(lims)
                labels = axis.get_ticklabels()
                shared = (ax.get_shared_x_axes() if k == 0 else ax.get_shared_y_axes()).get_siblings(ax)
                if len(shared) > 1 and not any(t.get_visible() for t in labels):
                    continue  # an inner panel of shared axes: its neighbour carries the labels
                shown = [t.get_text() for t in labels if t.get_visible() and t.get_text()
                         and lo <= t.get_position()[k] <= hi]
                assert len(shown) >= 2, (title, axis.axis_name, shown)
                if axis is ax.yaxis:
                    assert not [p for p in ax.patches if p.get_height() > 0], (title, "bars on a log axis")
            for line in ax.get_lines():
                xs, ys = [list(map(float, v)) for v in line.get_data()]
                if len(xs) < 2 or len(set(xs)) == 1:  # a marker or a vertical guide line
                    continue
                assert all(a != b for a, b in zip(xs, xs[1:])), (title, line.get_label(), xs, ys)
        name = os.path.basename(str(path))  # written as NAME.<random>.tmp next to NAME, then moved over it
        checked.append(name.rsplit(".", 2)[0] if name.endswith(".tmp") else name)
        return real(fig, path, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    plot_all(tmp_path)
    assert {"latency_vs_frames.png", "memory_vs_tokens.png", "backend_bars.png", "error_vs_speed.png"} <= set(checked)
    summary = write_summary(tmp_path, []).read_text()
    assert "| 1 run |" in summary and "(n=5)" in summary
    assert "| 0 |" not in summary.replace("| 0 | ", "")
    recs = load_results(tmp_path)
    text = format_summary(recs)
    assert "1 run" in text and "reasons:" in text
    # reasons are printed whole, once, after the table
    assert "[1] OutOfMemoryError: CUDA out of memory" in text


def test_ours_vs_hugging_face_by_size(tmp_path):
    """The sizes group: ours and HF timed alternately per size; a plot and a summary line per size."""
    pytest.importorskip("transformers")
    from fast_timesformer.bench.plots import plot_all
    from fast_timesformer.bench.suites import hf_by_size
    from fast_timesformer.bench.summary import write_summary

    cpu = suite_points("cpu")
    sizes = [p for p in cpu if p.group == "sizes"]
    assert {(p.impl, p.frames, p.image_size) for p in sizes} == {(i, 8, s) for i in ("ours", "hf") for s in (336, 448)}
    assert all(p.interleave and p.depth == 12 and p.dim == 768 and p.batch == 1 for p in sizes)
    pts = hf_by_size("cpu", (32, 48, 64), rounds=2, tiny=True)
    recs = run_sweep(pts, tmp_path, progress=False, log=quiet, warm_up_s=0)
    assert [r["status"] for r in recs] == ["ok"] * 6, [r["reason"] for r in recs]
    assert all(r["n_times"] == 2 and "interleaved with 1 other" in r["time_method"] for r in recs)
    assert "hf_sizes.png" in {p.name for p in plot_all(tmp_path)}
    summary = write_summary(tmp_path, []).read_text()
    assert "2x32:" in summary and "2x64:" in summary and "x faster, memory" in summary


def test_a_mistyped_filter_or_a_used_output_folder_is_one_line_and_exit_2(tmp_path, capsys):
    from fast_timesformer.cli import console

    assert console(["bench", "--suite", "tiny", "--backends", "regualr", "--list"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'regualr'" in err[0] and "Did you mean 'regular'?" in err[0]
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").write_text('{"key": "k"}\n')
    argv = ["bench", "--suite", "tiny", "--out", str(out), "--limit", "1", "--no-plots", "--no-progress",
            "--threads", str(torch.get_num_threads())]
    assert console(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds results" in err[0] and "--overwrite" in err[0]
    assert (out / "results.jsonl").read_text() == '{"key": "k"}\n'  # untouched
    assert console(argv + ["--overwrite"]) == 0
    assert len(load_results(out)) == 1


def test_cases_measured_together_get_one_call_of_those_left(tmp_path):
    """Cases sharing a ``together`` key reach the suite's function in one call, only those the filters and
    --resume leave; a failure of the call is every one of its records' status."""
    from fast_timesformer.bench.runner import Case

    calls = []

    def rows(cases):
        calls.append([c.label for c in cases])
        if any(c.fields.get("broken") for c in cases):
            raise RuntimeError("the rows could not be built")
        return [{"median_s": 0.1 * (i + 1)} for i, _ in enumerate(cases)]

    pts = [Case("g", f"{s} {r}", rows, together=s, row=r, size=s, broken=s == "big") for s in ("small", "big")
           for r in ("a", "b", "c")]
    kept = filter_points(pts, limit=5)  # a filter leaves "big c" out
    recs = run_sweep(kept, tmp_path, progress=False, log=quiet, warm_up_s=0, settings={"suite": "t"})
    assert calls == [["small a", "small b", "small c"], ["big a", "big b"]]
    assert [r["median_s"] for r in recs[:3]] == pytest.approx([0.1, 0.2, 0.3])
    assert [r["status"] for r in recs[3:]] == ["error", "error"] and "could not be built" in recs[3]["reason"]
    calls.clear()  # resume: the errors are retried, together; the ok cases are not measured again
    run_sweep(pts, tmp_path, resume=True, progress=False, log=quiet, warm_up_s=0, settings={"suite": "t"})
    assert calls == [["big a", "big b", "big c"]]
