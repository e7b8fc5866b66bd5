"""Activation memory (fast_timesformer.activation_memory): every mode gives the plain path's forward and
gradients (float64, every scheme, both models, dropout and drop path on: a recomputed piece must draw the
same masks), keeps the declared rows per block, and where a mode cannot apply the block says so once and
the record shows the mode that ran."""
import warnings

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from fast_timesformer import DividedAttention, TokenGroups
from fast_timesformer import activation_memory as memory
from fast_timesformer.models import GenerativeTimeSformer, TimeSformer
from fast_timesformer.schemes import list_schemes

# float64: the modes run the same ATen kernels on the same values, in the same order except where backward
# sums partial gradients; 1e-10 relative is ~1e6 ulps, far below any real difference (an O(1) term)
TOL = dict(rtol=1e-10, atol=1e-12)
SAVING = [m for m in memory.MODES if m != "full"]


def _randomize(*modules):
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.3)  # temporal_fc starts at 0: make every path carry signal


def _step(model, video, mode):
    """Output and every gradient (the video's too) of one training step in ``mode``."""
    model.set_activation_memory(mode)
    model.zero_grad()
    video = video.clone().requires_grad_(True)
    torch.manual_seed(7)  # the same dropout and drop-path draws in every mode
    out = model(video)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)).sum().backward()
    return [out.detach(), video.grad] + [p.grad for p in model.parameters()]


def _same_for_every_mode(model, video):
    ref = _step(model, video, "full")
    for mode in SAVING:
        got = _step(model, video, mode)
        assert len(got) == len(ref)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, **TOL)


def _timesformer(scheme="divided_space_time", depth=2, **kw):
    torch.manual_seed(0)
    return TimeSformer(image_size=32, patch_size=8, num_frames=4, num_classes=5, dim=48, depth=depth, heads=3,
                       scheme=scheme, **kw).double().train()


@pytest.mark.parametrize("scheme", list_schemes())
def test_every_mode_equals_the_plain_path_timesformer(scheme):
    model = _timesformer(scheme, drop_path=0.3, ff_dropout=0.2, attn_dropout=0.2)
    _randomize(model)
    _same_for_every_mode(model, torch.randn(2, 4, 3, 32, 32, dtype=torch.float64))


@pytest.mark.parametrize("cls_mode", ["global", "per_group"])
def test_every_mode_equals_the_plain_path_other_cls_modes(cls_mode):
    model = _timesformer(cls_mode=cls_mode, drop_path=0.3)
    _randomize(model)
    _same_for_every_mode(model, torch.randn(1, 4, 3, 32, 32, dtype=torch.float64))


@pytest.mark.parametrize("scheme", ["divided_space_time", "joint_space_time"])
@pytest.mark.parametrize("target_attention", ["per_position", "all_context"])
def test_every_mode_equals_the_plain_path_generative(target_attention, scheme):
    torch.manual_seed(0)
    model = GenerativeTimeSformer(dim=24, image_size=16, patch_size=4, num_frames=4, num_target_frames=2, depth=2,
                                  heads=2, dim_head=12, target_attention=target_attention, scheme=scheme,
                                  ff_dropout=0.2).double().train()
    _randomize(model)
    _same_for_every_mode(model, torch.randn(2, 4, 3, 16, 16, dtype=torch.float64))


def test_a_layer_with_a_pre_norm_equals_the_composition():
    """DividedAttention(x, norm=...) is attn(norm(x)) for any norm module, a multi-axis LayerNorm included
    (the norm runs on x as given, before any regrouping)."""
    attn = DividedAttention(12, heads=2, dim_head=6, cls="per_group").double()
    x = torch.randn(2, 1 + 12, 12, dtype=torch.float64)
    for norm in (nn.LayerNorm(12).double(), nn.LayerNorm((13, 12)).double()):
        _randomize(attn, norm)
        for groups in (TokenGroups.space(3, 4), TokenGroups.time(3, 4)):
            want = attn(norm(x), groups=groups)
            for recompute in (False, True):
                xr = x.clone().requires_grad_(True)
                got = attn(xr, groups=groups, norm=norm, recompute=recompute)
                torch.testing.assert_close(got, want, **TOL)
                got.sum().backward()  # runs


def _held_bytes(fn) -> int:
    """Bytes allocated during ``fn()`` and still held at its end (CPU allocation replay of the profiler)."""
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    prof.__enter__()
    try:
        out = fn()  # held (with the graph it carries) until the profiler stops
    finally:
        prof.__exit__(None, None, None)
    del out
    return sum(e.nbytes() for e in prof.profiler.kineto_results.events()
               if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)


@pytest.mark.parametrize("mode,rows,pieces", [("full", 24, 0), ("selective", 15, 5), ("checkpoint", 1, 1)])
def test_rows_kept_per_block(mode, rows, pieces):
    """Rows of width dim kept per token and block after a training forward (divided, official CLS), counted
    as the difference between depth 3 and depth 1 (the model-level tensors cancel). Besides the rows, each
    recomputed piece keeps the CPU RNG state (5 KB, for dropout in the recompute); 64x64 frames of 8x8
    patches give 257 tokens; the small extras (attention statistics: 3 heads of 1 float vs 48, per-frame
    CLS copies) stay < 0.4 rows."""
    video = torch.randn(1, 4, 3, 64, 64)
    held = []
    for depth in (1, 3):
        torch.manual_seed(0)
        model = TimeSformer(image_size=64, patch_size=8, num_frames=4, num_classes=5, dim=48, depth=depth,
                            heads=3, activation_memory=mode)
        held.append(_held_bytes(lambda: model(video)))
    row = (1 + 4 * 64) * 48 * 4
    per_block = ((held[1] - held[0]) / 2 - pieces * torch.get_rng_state().nbytes) / row
    assert rows - 0.1 <= per_block <= rows + 0.4, per_block


def test_set_grad_checkpointing_is_the_checkpoint_mode():
    model = _timesformer()
    assert model.set_grad_checkpointing() is model
    assert set(model.activation_memory_record().values()) == {"checkpoint"}
    model.set_grad_checkpointing(False)
    assert set(model.activation_memory_record().values()) == {memory.DEFAULT}
    assert list(model.activation_memory_record()) == ["blocks.0", "blocks.1"]
    assert model.config["activation_memory"] == memory.DEFAULT
    with pytest.raises(ValueError, match="selective"):
        TimeSformer(depth=1, activation_memory="selectiv")


def test_a_hook_stops_recomputing_with_one_warning_and_the_record_says_so():
    model = _timesformer(drop_path=0.3)
    _randomize(model)
    video = torch.randn(1, 4, 3, 32, 32, dtype=torch.float64)
    ref = _step(model, video, "full")
    calls = []
    handle = model.blocks[1].mlp.fc1.register_forward_hook(lambda *a: calls.append(1))
    try:
        for mode in SAVING:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                calls.clear()
                got = _step(model, video, mode)
                _step(model, video, mode)
            msgs = [str(w.message) for w in caught]
            assert len(msgs) == 1, msgs  # once, naming the block and the reason
            assert msgs[0].startswith(f"blocks.1: activation_memory={mode!r} cannot apply") and "mlp.fc1" in msgs[0]
            assert "runs 'full'" in msgs[0]
            assert len(calls) == 2  # the hook ran once per forward: nothing was recomputed
            record = model.activation_memory_record()
            assert record["blocks.0"] == mode and record["blocks.1"].startswith("full (module(s) mlp.fc1")
            for a, b in zip(got, ref):
                torch.testing.assert_close(a, b, **TOL)
    finally:
        handle.remove()
    assert model.activation_memory_record()["blocks.1"] == "checkpoint"


def test_a_stateful_attention_core_is_not_recomputed():
    model = _timesformer(backend={"time": ("performer", {"feature_redraw_interval": 2})}).float()
    model.set_activation_memory("selective")
    with pytest.warns(UserWarning, match=r"blocks.0: .* temporal_attn.cores.performer change their state per call"
                                         r" .* runs 'full'"):
        model(torch.randn(1, 4, 3, 32, 32)).sum().backward()
    record = model.activation_memory_record()
    assert record["blocks.1"].startswith("full (attention core(s) temporal_attn.cores.performer change"), record
    assert [c.name for c in memory.CONDITIONS] == ["hooks", "stateful attention"]


def test_double_backward_through_every_mode():
    """Second derivatives (a gradient penalty) through recomputed pieces equal the plain path's."""
    model = _timesformer(backend="regular", sdpa_backend="math")  # SDPA's math kernel has a double backward
    _randomize(model)
    video = torch.randn(1, 4, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    out = {}
    for mode in memory.MODES:
        model.set_activation_memory(mode)
        torch.manual_seed(7)  # the same drop-path draws
        (g,) = torch.autograd.grad(model(video).sum(), video, create_graph=True)
        out[mode] = torch.autograd.grad(g.pow(2).sum(), model.blocks[0].mlp.fc1.weight)[0]
    assert out["full"].abs().sum() > 0
    for mode in SAVING:
        torch.testing.assert_close(out[mode], out["full"], **TOL)


def test_inference_is_the_same_in_every_mode():
    model = _timesformer().eval()
    video = torch.randn(2, 4, 3, 32, 32, dtype=torch.float64)
    outs = []
    for mode in memory.MODES:
        model.set_activation_memory(mode)
        with torch.inference_mode():
            outs.append(model(video))
    assert all(torch.equal(o, outs[0]) for o in outs)


def test_train_records_the_mode_each_block_ran(tmp_path, capsys):
    """``train --activation-memory``: the model runs it, and the metrics file's first record and every
    checkpoint's config say which mode each block ran; an unknown mode is one line, exit 2."""
    import json

    from fast_timesformer.cli import console
    from fast_timesformer.train import checkpoint as ckpt

    args = ["train", "--model", '{"dim": 32, "depth": 2, "heads": 2, "dim_head": 16, "patch_size": 8}',
            "--frames", "4", "--image-size", "16", "--train-samples", "8", "--eval-samples", "4", "--batch", "4",
            "--steps", "1", "--no-progress", "--out", str(tmp_path), "--activation-memory", "checkpoint"]
    assert console(args) == 0
    want = {"blocks.0": "checkpoint", "blocks.1": "checkpoint"}
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["activation_memory_in_effect"] == want
    config = ckpt.read_metadata(str(tmp_path / "last.safetensors"))["config"]
    assert config["activation_memory"] == "checkpoint" and config["activation_memory_in_effect"] == want
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # argparse's choices: usage, then the one error line
        console(args[:-1] + ["fulll"])
    assert exit_info.value.code == 2
    assert "argument --activation-memory: invalid choice: 'fulll'" in capsys.readouterr().err


def test_the_memory_suite_holds_the_published_configurations_and_runs_each_in_a_fresh_process(tmp_path):
    """README's and docs/activation_memory.md's peaks come from ``bench --suite memory``: every mode and Hugging
    Face's at ViT-B 8x224 (float32, bf16 autocast) and 8x448 (float32); ``--max-tokens 1568`` keeps 8x224. A tiny
    point runs in its own process and records its peak."""
    from fast_timesformer.bench.runner import run_sweep
    from fast_timesformer.bench.suites import filter_points, suite_points

    pts = suite_points("memory")
    assert {(c.path, c.amp, c.image_size) for c in pts} == {
        (p, amp, s) for s, amps in ((224, ("float32", "bfloat16")), (448, ("float32",))) for amp in amps
        for p in (*memory.MODES, "hf")}
    assert all(c.frames == 8 and c.depth == 12 for c in pts)
    assert {c.image_size for c in filter_points(pts, max_tokens=1568)} == {224}
    tiny = [c for c in suite_points("memory", tiny=True) if c.amp == "float32" and c.path in ("selective", "hf")]
    recs = run_sweep(tiny, tmp_path, progress=False, log=lambda _m: None, settings={"suite": "memory"})
    assert [r["status"] for r in recs] == ["ok", "ok"], [r["reason"] for r in recs]
    assert all(r["peak_mem_bytes"] > 0 and "profiler" in r["mem_method"] for r in recs)
