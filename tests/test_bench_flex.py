"""A backend that runs through torch.compile (``Backend.compiled``: flex) in the benchmark runner.

torch.compile cannot trace under a TorchDispatchMode, and the runner counts FLOPs under one
(FlopCounterMode): such a backend is timed outside any mode after an untimed first call (its compile,
reported apart), its FLOPs are counted where its declaration says (flex: on ``regular``, which makes the same
attention calls), and where there is nowhere to count them the point records why instead of a number."""
from __future__ import annotations

import dataclasses
import types

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fast_timesformer import BackendUnavailable, DividedAttention
from fast_timesformer.backends import Compiled, flex, get_backend, register_backend, unregister_backend
from fast_timesformer.bench import runner
from fast_timesformer.bench.counts import count_training_step
from fast_timesformer.bench.runner import measure_point, run_sweep
from fast_timesformer.bench.summary import format_summary, write_summary
from fast_timesformer.bench.workloads import Skip, Workload, build
from fast_timesformer.schemes import list_schemes

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def tiny(**kw):
    base = dict(impl="attention", scheme="joint_space_time", dim=16, heads=2, depth=1, frames=2, image_size=32,
                num_classes=3, min_run_time=0.001)
    base.update(kw)
    return Workload(**base)


@pytest.fixture
def compiled_variant():
    """Register ``regular`` under another name declaring ``compiled=...`` (it compiles nothing: cheap)."""
    names = []

    def make(name, decl):
        register_backend(dataclasses.replace(get_backend("regular"), name=name, compiled=decl))
        names.append(name)
        return name

    try:
        yield make
    finally:
        for name in names:
            unregister_backend(name)


# ---- the declaration ------------------------------------------------------------------------------------
def test_flex_declares_it_runs_compiled_and_where_its_flops_are_counted():
    be = get_backend("flex")
    assert isinstance(be.compiled, Compiled)
    assert get_backend(be.compiled.flops_backend).exact
    assert be.compiled.flops_refusal(be, {}) == ""  # layout defaults to batch
    assert "layout='mask'" in be.compiled.flops_refusal(be, {"layout": "mask"})
    assert get_backend("regular").compiled is None
    assert dataclasses.replace(be, name="copy").compiled is be.compiled
    with pytest.raises(TypeError, match="Compiled"):
        dataclasses.replace(get_backend("regular"), compiled=True)


def test_flex_refuses_under_a_dispatch_mode_and_stays_usable():
    """Refused in words before dynamo is asked (a refused trace would break every later FlexAttention call)."""
    layer = DividedAttention(16, heads=2, dim_head=8, backend="flex", compile=False)
    x = torch.randn(1, 1 + 6, 16)
    with torch.no_grad():
        with FlopCounterMode(display=False):
            assert flex.DISPATCH_MODE_REASON in get_backend("flex").why_not(torch.randn(2, 2, 5, 8))
            assert get_backend("flex").why_not(torch.randn(0, 2, 5, 8)) == []  # an empty batch never reaches it
            with pytest.raises(BackendUnavailable, match="TorchDispatchMode"):
                layer(x, "b (f n) d", "(b f) n d", f=2)
        y = layer(x, "b (f n) d", "(b f) n d", f=2)  # outside the mode: runs as before
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_flex_makes_regulars_attention_calls_shape_for_shape(monkeypatch):
    """What ``flex.BACKEND.compiled.flops_why`` claims, for every scheme: with layout 'batch' flex's calls have the
    shapes (and masks) of regular's SDPA calls, so regular's FLOP count is flex's. The calls are recorded, not
    run through FlexAttention (the same shapes come back from SDPA)."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    calls = []

    def record_sdpa(q, k, v, attn_mask=None, **kw):
        calls.append((tuple(q.shape), tuple(k.shape), tuple(v.shape), attn_mask is not None))
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    def record_flex(q, k, v, block_mask=None, scale=None):
        calls.append((tuple(q.shape), tuple(k.shape), tuple(v.shape), block_mask is not None))
        return sdpa(q, k, v, scale=scale)

    real = flex._flex_module()
    monkeypatch.setattr(flex, "_flex_module", lambda: types.SimpleNamespace(
        flex_attention=record_flex, create_block_mask=real.create_block_mask))
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", record_sdpa)
    checked = 0
    for scheme in list_schemes():
        shapes = {}
        for backend, opts in (("regular", {}), ("flex", {"compile": False})):
            calls.clear()
            try:
                built = build(tiny(impl="ours", scheme=scheme, backend=backend, frames=4, image_size=64,
                                   backend_options=opts))
            except Skip:
                break
            built.step()
            shapes[backend] = sorted(calls)
        if shapes:
            assert shapes["flex"] == shapes["regular"] and shapes["regular"], scheme
            checked += 1
    assert checked >= 5


def test_op_counts_refuse_a_compiled_backend_in_words():
    with pytest.raises(ValueError, match="torch.compile"):
        count_training_step(tiny(impl="ours", backend="flex"))


# ---- the runner -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_flex_point_runs_through_the_runner_with_flops_and_memory():
    """A forward point of the compiled flex backend (one tiny shape: a few seconds of compiling on CPU). Its
    compile is its first call's, recorded as ``compile_s``: the float64 check that follows compiles nothing."""
    size = dict(frames=3, image_size=48)  # a shape no other test compiles
    w = tiny(backend="flex", **size)
    before = set(flex.COMPILE_SECONDS)
    rec = measure_point(w)
    assert rec["status"] == "ok", rec["reason"]
    assert rec["error"]["within"]
    new = set(flex.COMPILE_SECONDS) - before
    assert new and rec["compile_s"] == pytest.approx(sum(flex.COMPILE_SECONDS[k] for k in new))
    assert rec["peak_mem_bytes"] > 0 and rec["median_s"] > 0
    assert rec["flops"] == measure_point(tiny(backend="regular", **size))["flops"] > 0  # counted on regular
    assert "'regular' swapped in" in rec["flops_method"] and not rec.get("not_measured")
    assert rec["first_call_s"] >= rec["compile_s"] > 0
    assert rec["tflops_s"] > 0
    assert "compile s" in format_summary([rec])
    # nothing was left broken: flex still runs compiled after the point (no refused trace happened)
    built = build(w)
    built.step()


def test_a_compiled_backend_without_a_flops_path_records_why(compiled_variant, tmp_path):
    name = compiled_variant("compiled_nowhere", Compiled())
    (rec,) = run_sweep([tiny(backend=name, group="sweep")], tmp_path, progress=False, log=lambda m: None,
                       warm_up_s=0)
    assert rec["status"] == "ok", rec["reason"]
    assert rec["flops"] is None and rec["tflops_s"] is None
    assert "declares no backend" in rec["not_measured"]["flops"]
    assert rec["peak_mem_bytes"] > 0 and rec["median_s"] > 0
    assert rec["compile_s"] == 0.0  # regular's cores compile nothing
    table = format_summary([rec])
    assert "flops not measured: backend 'compiled_nowhere' runs through torch.compile" in table
    summary = write_summary(tmp_path).read_text()
    assert "Figures not measured" in summary and "compiled_nowhere" in summary


def test_a_compiled_backend_outside_its_flops_options_records_why(compiled_variant):
    name = compiled_variant("compiled_default_sdpa", Compiled(flops_backend="regular",
                                                                 flops_options={"sdpa_backend": None},
                                                                 flops_why="the same SDPA calls"))
    rec = measure_point(tiny(backend=name))
    assert rec["status"] == "ok" and rec["flops"] == measure_point(tiny(backend="regular"))["flops"]
    assert rec["flops_method"].endswith("; the same SDPA calls")
    rec = measure_point(tiny(backend=name, backend_options={"sdpa_backend": "math"}))
    assert rec["status"] == "ok" and rec["flops"] is None
    assert "sdpa_backend='math'" in rec["not_measured"]["flops"]


def test_compiled_points_are_never_counted_under_a_dispatch_mode(compiled_variant, monkeypatch):
    """The declaration, not the name, decides: inside count_flops the model runs the declared flops_backend's
    cores, never the compiled backend's, and gets its own cores back afterwards."""
    name = compiled_variant("compiled_checked", Compiled(flops_backend="regular"))
    built = build(tiny(backend=name))

    def core_backends():  # the backend every attention layer runs now
        return {m.backend_name for m in built.model.modules() if isinstance(m, DividedAttention)}

    seen = []
    real = runner.measure.count_flops

    def count_flops(step):
        seen.append(core_backends())
        return real(step)

    monkeypatch.setattr(runner.measure, "count_flops", count_flops)
    rec = measure_point(tiny(backend=name), builder=lambda w: built)
    assert rec["status"] == "ok" and rec["flops"] > 0
    assert seen == [{"regular"}]
    assert core_backends() == {name}
