"""TimeSformer: official semantics against a plain float64 reference, parameter counts, embeddings
resampling, features, gradient checkpointing, autocast, torch.compile, input validation."""
from __future__ import annotations

import pytest
import timesformer_reference as ref
import torch

from fast_timesformer.models import TimeSformer
from fast_timesformer.models.resample import resample_pos_embed, resample_time_embed
from fast_timesformer.models.timesformer import count_parameters
from fast_timesformer.schemes import list_schemes

TINY = dict(num_frames=4, image_size=32, patch_size=8, dim=32, depth=2, heads=2, num_classes=5, drop_path=0.0)


def tiny(**kw):
    return TimeSformer(**{**TINY, **kw})


def randomise(model):
    """Make every parameter non-trivial (zero-initialised temporal_fc and time_embed included)."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def video(b=2, f=4, c=3, h=32, w=32, dtype=torch.float32):
    return torch.randn(b, f, c, h, w, dtype=dtype)


# ---- parameter counts at ViT-Base/16, 8x224, 400 classes (official code / paper Table 1) -------------
@pytest.mark.parametrize("scheme, millions, tol", [
    ("space_only", 86.1, 0.05), ("joint_space_time", 86.1, 0.05), ("divided_space_time", 121.6, 0.05),
    ("sparse_local_global", 121.6, 0.05), ("axial", 157.0, 0.3)])
def test_parameter_count_vit_base(scheme, millions, tol):
    with torch.device("meta"):
        model = TimeSformer(scheme=scheme)
    assert abs(count_parameters(model) / 1e6 - millions) < tol


def test_official_state_dict_names():
    keys = set(tiny(depth=1).state_dict())
    expected = {"cls_token", "pos_embed", "time_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
                "norm.weight", "norm.bias", "head.weight", "head.bias"}
    for sub in ("norm1", "attn.qkv", "attn.proj", "temporal_norm1", "temporal_attn.qkv", "temporal_attn.proj",
                "temporal_fc", "norm2", "mlp.fc1", "mlp.fc2"):
        expected |= {f"blocks.0.{sub}.weight", f"blocks.0.{sub}.bias"}
    assert keys == expected
    assert tiny().pos_embed.shape == (1, 1 + 16, 32) and tiny().time_embed.shape == (1, 4, 32)
    assert "time_embed" not in tiny(scheme="space_only").state_dict()  # as in the official model


def test_extra_modules_of_axial_and_local_global():
    axial = dict(tiny(scheme="axial", depth=1).named_children())["blocks"][0]
    names = {n for n, _ in axial.named_children()}
    assert {"temporal_norm1", "temporal_attn", "temporal_fc", "width_norm1", "width_attn", "width_fc",
            "norm1", "attn"} <= names
    assert [m.step for m in (axial.temporal_attn, axial.width_attn, axial.attn)] == ["time", "width", "height"]
    lg = tiny(scheme="sparse_local_global", depth=1).blocks[0]
    assert (lg.local_attn.step, lg.attn.step) == ("local", "global")


# ---- the forward pass against the float64 reference ------------------------------------------------
@pytest.mark.parametrize("scheme", list_schemes())
def test_matches_reference(scheme):
    model = randomise(tiny(scheme=scheme)).double().eval()
    x = video(dtype=torch.float64)
    torch.testing.assert_close(model(x), ref.forward(model, x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("cls_mode", ["global", "per_group"])
@pytest.mark.parametrize("scheme", list_schemes())
def test_other_cls_modes_match_reference(scheme, cls_mode):
    model = randomise(tiny(scheme=scheme, cls_mode=cls_mode)).double().eval()
    x = video(dtype=torch.float64)
    torch.testing.assert_close(model(x), ref.forward(model, x), rtol=1e-9, atol=1e-9)


def test_space_only_official_is_not_per_block_averaging():
    """Official space_only keeps a CLS per frame through all blocks; averaging every block differs."""
    official = randomise(tiny(scheme="space_only")).double().eval()
    averaged = tiny(scheme="space_only", cls_mode="per_group").double().eval()
    averaged.load_state_dict(official.state_dict(), strict=False)  # no time_embed in either
    x = video(dtype=torch.float64)
    assert not torch.allclose(official(x), averaged(x), atol=1e-6)
    # and the official one is a ViT per frame: one frame alone gives that frame's CLS
    frames = [official.features(x[:, t:t + 1])["patches"][:, 0] for t in range(4)]
    torch.testing.assert_close(official.features(x)["patches"], torch.stack(frames, 1))


def test_zero_temporal_fc_makes_first_block_temporal_path_a_noop():
    model = tiny(depth=2).eval()
    for blk in model.blocks:
        assert torch.count_nonzero(blk.temporal_fc.weight) == 0 and torch.count_nonzero(blk.temporal_fc.bias) == 0
    x, b, f, grid = model._tokens(video())
    groups = model.scheme.token_groups(f, *grid)
    blk = model.blocks[0]
    with torch.no_grad():
        spatial_only = x + blk.attn(blk.norm1(x), groups=groups[1])
        spatial_only = spatial_only + blk.mlp(blk.norm2(spatial_only))
        torch.testing.assert_close(blk(x, groups), spatial_only)
        # ... while the temporal attention itself is not zero
        assert blk.temporal_attn(blk.temporal_norm1(x), groups=groups[0])[:, 1:].abs().max() > 0


def test_cls_left_out_of_temporal_attention():
    model = randomise(tiny(depth=1)).eval()
    blk = model.blocks[0]
    seen = []
    blk.temporal_attn.register_forward_hook(lambda m, i, o: seen.append(o))
    x, b, f, grid = model._tokens(video())
    groups = model.scheme.token_groups(f, *grid)
    x2 = x.clone()
    x2[:, 0] += 5.0  # perturb only the CLS token
    with torch.no_grad():
        blk(x, groups), blk(x2, groups)
    torch.testing.assert_close(seen[0][:, 1:], seen[1][:, 1:])  # temporal outputs of patches unchanged
    # and the temporal step leaves the CLS itself unchanged: with the spatial/MLP steps removed ...
    with torch.no_grad():
        out = blk.temporal_fc(blk.temporal_attn(blk.temporal_norm1(x), groups=groups[0]))
    assert out[:, 0].abs().max() > 0  # (proj bias reaches the CLS row, the block must drop it)
    y = ref.block(blk, x.double(), f, *grid, "official")
    # float32 block vs the float64 reference: round-off of 3 attention steps + MLP on O(1) tokens, ~1e-6
    torch.testing.assert_close(blk(x, groups).double(), y, rtol=1e-4, atol=1e-5)


def test_spatial_cls_is_the_mean_of_per_frame_copies():
    model = randomise(tiny(depth=1)).eval()
    blk = model.blocks[0]
    x, b, f, (gh, gw) = model._tokens(video())
    n = gh * gw
    groups = model.scheme.token_groups(f, gh, gw)
    with torch.no_grad():
        got = blk.attn(x, groups=groups[1])[:, 0]
        per_frame = []
        for t in range(f):  # each frame as its own sequence [CLS; its patches], via the layer's joint mode
            seq = torch.cat([x[:, :1], x[:, 1 + t * n:1 + (t + 1) * n]], 1)
            per_frame.append(blk.attn(seq, cls="per_group")[:, 0])
    # float32, the same sums in another order (one call vs per frame, then a mean of f): ~1e-7 on O(1)
    torch.testing.assert_close(got, torch.stack(per_frame).mean(0), rtol=1e-5, atol=1e-6)


def test_drop_path_rises_linearly():
    model = tiny(depth=4, drop_path=0.3)
    assert [round(b.drop_path.p, 6) for b in model.blocks] == [0.0, 0.1, 0.2, 0.3]


# ---- other frame counts and sizes -----------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["divided_space_time", "space_only"])
def test_other_frames_and_size_resample_embeddings(scheme):
    model = randomise(tiny(scheme=scheme)).double().eval()
    x = video(b=1, f=2, h=48, w=64, dtype=torch.float64)
    pos = resample_pos_embed(model.pos_embed, (6, 8), old_hw=(4, 4), num_prefix_tokens=1)
    time = None if model.time_embed is None else resample_time_embed(model.time_embed, 2)
    torch.testing.assert_close(model(x), ref.forward(model, x, pos=pos, time=time), rtol=1e-9, atol=1e-9)


def test_configured_size_uses_embeddings_unchanged():
    model = tiny()
    pos, time = model._embeddings(4, (4, 4))
    assert pos is model.pos_embed and time is model.time_embed


# ---- features, checkpointing, autocast, compile -----------------------------------------------------
@pytest.mark.parametrize("scheme", ["divided_space_time", "space_only"])
def test_features(scheme):
    model = randomise(tiny(scheme=scheme)).eval()
    x = video()
    feats = model.features(x)
    assert feats["cls"].shape == (2, 32) and feats["patches"].shape == (2, 4, 16, 32)
    torch.testing.assert_close(model.head(feats["cls"]), model(x))
    assert tiny(num_classes=0)(x).shape == (2, 32)


@pytest.mark.parametrize("scheme", ["divided_space_time", "axial"])
def test_gradient_checkpointing_gives_equal_grads(scheme):
    model = randomise(tiny(scheme=scheme, ff_dropout=0.1, drop_path=0.2))
    x = video()

    def grads(checkpointing):
        model.zero_grad()
        model.set_grad_checkpointing(checkpointing)
        torch.manual_seed(1)  # same dropout / drop-path masks in both runs
        model(x).square().sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, ckpt = grads(False), grads(True)
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_on_cpu(dtype):
    model = randomise(tiny()).eval()
    x = video()
    with torch.autocast("cpu", dtype=dtype):
        out = model(x)
    assert out.dtype == dtype and torch.isfinite(out).all()
    ref32 = model(x)
    assert (out.float() - ref32).abs().max() < 0.1 * ref32.abs().max()
    model.train()
    with torch.autocast("cpu", dtype=dtype):
        model(x).float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_torch_compile_regular_backend():
    """The whole model is one graph (fullgraph=True: no graph breaks), forward and backward. The
    aot_eager backend traces exactly what inductor would get; inductor itself (gcc) takes ~60 s here."""
    model = randomise(tiny(depth=1, dim=16, num_frames=2))
    x = video(b=1, f=2)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out = compiled(x)
    # aot_eager runs the same aten ops as eager (decomposed): float32 differences are a few ulp at most
    torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model(x).square().sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-5, atol=1e-6, msg=n)


# ---- backends per step --------------------------------------------------------------------------
def test_backend_mapping_per_step():
    pytest.importorskip("performer_pytorch")
    model = tiny(backend={"time": "regular", "space": ("performer", {"nb_features": 16})})
    assert model.blocks[0].temporal_attn.backend == "regular"
    assert model.blocks[0].attn.backend == "performer"
    assert model.blocks[0].attn.cores["performer"].nb_features == 16
    assert model(video()).shape == (2, 5)
    model.set_backend({"space": "regular"})
    assert {m.backend for m in model.attention_modules()} == {"regular"}
    from fast_timesformer import use_backend

    with use_backend(model, {"time": "fastformer"}):
        assert [m.backend for m in model.attention_modules()][:2] == ["fastformer", "regular"]
        assert model(video()).shape == (2, 5)
    assert {m.backend for m in model.attention_modules()} == {"regular"}
    with pytest.raises(ValueError, match="unknown attention step"):
        tiny(backend={"spcae": "regular"})
    with pytest.raises(ValueError, match="unknown attention step"):
        model.set_backend({"local": "regular"})
    with pytest.raises(ValueError, match="unknown attention backend"):
        tiny(backend="regullar")


# ---- validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, match", [
    ((2, 3, 32, 32), "batch, frames, channels"),
    ((2, 4, 1, 32, 32), "channels"),
    ((2, 4, 3, 30, 32), "not divisible by the patch"),
    ((2, 0, 3, 32, 32), "frames"),
])
def test_bad_input_raises(shape, match):
    with pytest.raises(ValueError, match=match):
        tiny()(torch.randn(*shape))


def test_bad_config_raises():
    with pytest.raises(ValueError, match="not divisible by patch"):
        tiny(image_size=30)
    with pytest.raises(ValueError, match="unknown scheme"):
        tiny(scheme="divided")
    with pytest.raises(ValueError, match="cls_mode"):
        tiny(cls_mode="exclude")
    with pytest.raises(ValueError, match="odd"):
        tiny(scheme="sparse_local_global", num_frames=3)
    with pytest.raises(ValueError, match="odd"):
        tiny(scheme="sparse_local_global")(video(f=3))


# ---- the registry --------------------------------------------------------------------------------
from fast_timesformer.models import create_model, list_models  # noqa: E402
from fast_timesformer.models.registry import model_class, model_config  # noqa: E402


@pytest.mark.parametrize("name", list_models())
def test_registered_models_build_with_overrides(name):
    cfg = model_config(name)
    classifier = model_class(name) is TimeSformer
    with torch.device("meta"):
        model = create_model(name, scheme="space_only", backend="regular",
                             **({"num_classes": 7} if classifier else {"num_target_frames": 3}))
    assert type(model) is model_class(name)
    assert model.num_frames == cfg["num_frames"] and model.image_size == (cfg["image_size"],) * 2
    assert model.scheme.name == "space_only" and model.config["dim"] == cfg["dim"]
    if classifier:
        assert model.head.out_features == 7 and len(model.blocks) == cfg["depth"]
    else:
        assert model.num_target_frames == 3 and len(model.layers) == cfg["depth"]


def test_create_model_refuses_an_argument_the_model_does_not_take():
    """Never dropped: a misspelt argument raises with the closest name, for either class; a backend's option
    (passed through to every attention layer) is an argument too."""
    with pytest.raises(ValueError, match="unknown TimeSformer argument or backend option 'drop_pat'.*Did you mean "
                                         "the TimeSformer argument 'drop_path'"):
        create_model("tiny", drop_pat=0.1)
    with pytest.raises(ValueError, match="unknown GenerativeTimeSformer argument or backend option 'num_classes'"):
        create_model("generative_timesformer", num_classes=3)
    assert create_model("tiny", backend="performer", nb_features=16).blocks[0].attn.backend_name == "performer"


def test_registry_names_and_errors():
    assert {"timesformer_base_patch16_224", "timesformer_hr_patch16_448",
            "timesformer_large_patch16_224"} <= set(list_models())
    assert list_models("*hr*") == ["timesformer_hr_patch16_448"]
    with torch.device("meta"):
        assert count_parameters(create_model("timesformer_base_patch16_224")) == 121_566_352
        hr = create_model("timesformer_hr_patch16_448")
    assert (hr.num_frames, hr.grid, hr.time_embed.shape[1], hr.pos_embed.shape[1]) == (16, (28, 28), 16, 785)
    with pytest.raises(ValueError, match="Did you mean 'timesformer_base_patch16_224'"):
        create_model("timesformer_base_patch16_244")


def test_models_cli(capsys):
    from fast_timesformer.cli import main

    assert main(["models", "*base*", "--scheme", "divided_space_time"]) == 0
    out = capsys.readouterr().out
    assert "timesformer_base_patch16_224" in out and "121.6M" in out and "hr" not in out
    from fast_timesformer.cli import console  # main() raises; the console prints one line and exits 2

    assert console(["models", "--scheme", "divdied"]) == 2
    assert "unknown scheme" in capsys.readouterr().err


def test_create_model_pretrained_official_file(tmp_path):
    kw = dict(depth=1, image_size=32, num_frames=2, num_classes=5)
    model = randomise(create_model("timesformer_tiny_patch16_224", **kw)).eval()
    path = tmp_path / "tiny.pyth"
    torch.save({"model_state": {"model." + k: v for k, v in model.state_dict().items()}}, path)
    loaded = create_model("timesformer_tiny_patch16_224", pretrained=path, **kw).eval()
    x = video(b=1, f=2)
    torch.testing.assert_close(loaded(x), model(x))


def test_no_weight_decay_names_exist():
    for scheme in ("divided_space_time", "space_only"):
        model = tiny(scheme=scheme)
        names = dict(model.named_parameters())
        assert model.no_weight_decay() <= set(names)
        assert ("time_embed" in model.no_weight_decay()) == (scheme != "space_only")
