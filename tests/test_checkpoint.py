"""Loading Hugging Face and official checkpoints: same logits as the source, safe reading, honest reports,
and correct results at other frame counts where Hugging Face's are silently wrong."""
import json
import re

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers", reason="transformers is a test dependency (extra 'test')")
from transformers import TimesformerConfig, TimesformerForVideoClassification  # noqa: E402

from fast_timesformer.models.checkpoint import (  # noqa: E402
    CheckpointMismatchError,
    CheckpointWarning,
    UnsafeCheckpointError,
)
from fast_timesformer.models.timesformer import TimeSformer  # noqa: E402
from fast_timesformer.models.timesformer_layouts import hf_to_official_key, official_to_hf_key  # noqa: E402

TINY = dict(image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=64, num_labels=5)
# Tolerances below: our float32 model vs HF's float32 model (or ours on the same weights) differ by
# summation order only, ~1e-6 on O(1) logits of this 2-block model: atol 1e-4 between two implementations,
# 1e-5 between two of ours; a wrong key, eps (checked: > 1e-3) or time embedding is off by > 1e-3.

# REFERENCE.md §2, written out here independently of the loader's own table.
BLOCK_NAMES = [("layernorm_before", "norm1"), ("attention.attention.qkv", "attn.qkv"),
               ("attention.output.dense", "attn.proj"), ("temporal_layernorm", "temporal_norm1"),
               ("temporal_attention.attention.qkv", "temporal_attn.qkv"),
               ("temporal_attention.output.dense", "temporal_attn.proj"), ("temporal_dense", "temporal_fc"),
               ("layernorm_after", "norm2"), ("intermediate.dense", "mlp.fc1"), ("output.dense", "mlp.fc2")]
TOP_NAMES = [("timesformer.embeddings.cls_token", "cls_token"),
             ("timesformer.embeddings.position_embeddings", "pos_embed"),
             ("timesformer.embeddings.time_embeddings", "time_embed"),
             ("timesformer.embeddings.patch_embeddings.projection", "patch_embed.proj"),
             ("timesformer.layernorm", "norm"), ("classifier", "head")]


def to_official(hf_state):
    out = {}
    for k, v in hf_state.items():
        new = None
        for hf, off in TOP_NAMES:
            if k == hf or k.startswith(hf + "."):
                new = off + k[len(hf):]
        m = re.fullmatch(r"timesformer\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", k)
        if m:
            new = next(f"blocks.{m[1]}.{off}.{m[3]}" for hf, off in BLOCK_NAMES if hf == m[2])
        assert new is not None, k
        out[new] = v.clone()
    return out


def make_hf(attention_type="divided_space_time", seed=0, **over):
    torch.manual_seed(seed)
    hf = TimesformerForVideoClassification(TimesformerConfig(**{**TINY, **over}, attention_type=attention_type))
    with torch.no_grad():  # HF initialises time embeddings and biases to 0: make every tensor matter
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return hf.eval()


def video(frames=4, size=32, batch=2, seed=1):
    return torch.randn(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def hf_divided(tmp_path_factory):
    hf = make_hf()
    folder = tmp_path_factory.mktemp("hf_divided")
    hf.save_pretrained(folder)
    return hf, folder


@pytest.mark.parametrize("attention_type", ["divided_space_time", "joint_space_time"])
def test_hf_folder_safetensors_same_logits(tmp_path, attention_type):
    hf = make_hf(attention_type)
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    model = TimeSformer.from_pretrained(tmp_path)
    assert model.config["scheme"] == attention_type
    assert (model.config["dim"], model.config["depth"], model.config["heads"]) == (32, 2, 2)
    assert model.config["num_classes"] == 5 and model.config["mlp_ratio"] == 2.0
    assert model.load_report.ok and not model.load_report.resampled
    assert len(model.load_report.loaded) == len(hf.state_dict())
    x = video()
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(pixel_values=x).logits, atol=1e-4, rtol=0)


def test_hf_layer_norm_eps_is_honoured(tmp_path):
    hf = make_hf(layer_norm_eps=0.5)
    hf.save_pretrained(tmp_path)
    model = TimeSformer.from_pretrained(tmp_path)
    assert any("eps set to 0.5" in n for n in model.load_report.notes)
    x = video()
    with torch.no_grad():
        want = hf(pixel_values=x).logits
        torch.testing.assert_close(model(x), want, atol=1e-4, rtol=0)
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.eps = 1e-6
        assert (model(x) - want).abs().max() > 1e-3  # the eps matters at this size: the test can fail


def test_hf_folder_bin_same_logits(tmp_path, hf_divided):
    hf, _ = hf_divided
    hf.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    model = TimeSformer.from_pretrained(tmp_path)
    assert model.load_report.format == "huggingface" and model.load_report.ok
    x = video()
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(pixel_values=x).logits, atol=1e-4, rtol=0)


def test_hf_space_only_returns_per_frame_logits_ours_follows_official(tmp_path):
    """HF's space_only gives b*T logits (one per frame). The official model averages all tokens over the
    frames, then norms, then classifies: computed here from HF's own last hidden states."""
    hf = make_hf("space_only")
    hf.save_pretrained(tmp_path)
    model = TimeSformer.from_pretrained(tmp_path)
    assert model.config["scheme"] == "space_only" and model.load_report.ok
    x = video()
    with torch.no_grad():
        out = hf(pixel_values=x, output_hidden_states=True)
        assert out.logits.shape == (2 * 4, 5)  # HF: one row per frame
        last = out.hidden_states[-1].view(2, 4, 1 + 16, 32)  # before the final norm
        official = hf.classifier(hf.timesformer.layernorm(last.mean(1))[:, 0])
        torch.testing.assert_close(model(x), official, atol=1e-4, rtol=0)


def write_official(path, hf, *, drop=(), extra=None):
    state = {f"model.{k}": v for k, v in to_official(hf.state_dict()).items() if k not in drop}
    state.update(extra or {})
    optimizer_state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4)}},
                       "param_groups": [{"lr": 0.005, "momentum": 0.9, "params": [0]}]}
    torch.save({"model_state": state, "optimizer_state": optimizer_state, "epoch": 15,
                "cfg": "MODEL:\n  ARCH: vit\nDATA:\n  NUM_FRAMES: 4\n"}, path)
    return path


def test_official_pyth_same_logits(tmp_path, hf_divided):
    hf, _ = hf_divided
    path = write_official(tmp_path / "checkpoint_epoch_00015.pyth", hf)
    with pytest.raises(ValueError, match="pass heads="):  # width 32: heads cannot be read from shapes
        TimeSformer.from_pretrained(path)
    model = TimeSformer.from_pretrained(path, heads=2)
    cfg = model.config
    assert (cfg["num_classes"], cfg["num_frames"], cfg["image_size"], cfg["patch_size"]) == (5, 4, 32, 8)
    assert (cfg["dim"], cfg["depth"], cfg["mlp_ratio"], cfg["scheme"]) == (32, 2, 2.0, "divided_space_time")
    assert model.load_report.format == "official" and model.load_report.ok
    x = video()
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(pixel_values=x).logits, atol=1e-4, rtol=0)


def test_official_state_dict_in_safetensors_and_hf_names_without_config(tmp_path, hf_divided):
    from safetensors.torch import save_file

    hf, _ = hf_divided
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, tmp_path / "weights.safetensors")
    model = TimeSformer.from_pretrained(tmp_path / "weights.safetensors", heads=2)
    assert model.load_report.format == "huggingface" and model.load_report.ok
    x = video()
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(pixel_values=x).logits, atol=1e-4, rtol=0)


def test_key_tables_are_inverse_and_cover_hf(hf_divided):
    hf, _ = hf_divided
    for k, v in hf.state_dict().items():
        (expected,) = to_official({k: v})
        assert hf_to_official_key(k) == expected
        assert official_to_hf_key(expected) == k
    assert hf_to_official_key("timesformer.pooler.dense.weight") is None


TRIPPED = []


def _trip(*args):
    TRIPPED.append(args)
    raise RuntimeError("arbitrary code ran while loading")


class Booby:
    """A config object whose unpickling would run _trip."""

    def __reduce__(self):
        return (_trip, ("payload",))


def test_pickled_object_is_refused_and_never_run(tmp_path, hf_divided):
    hf, _ = hf_divided
    path = write_official(tmp_path / "with_object.pyth", hf)
    ck = torch.load(path, weights_only=True)
    ck["cfg"] = Booby()
    torch.save(ck, path)
    TRIPPED.clear()
    with pytest.raises(UnsafeCheckpointError, match=r"(?s)_trip.*weights_only=True.*model_state") as err:
        TimeSformer.from_pretrained(path, heads=2)
    assert "arbitrary unpickling" in str(err.value)
    assert TRIPPED == []  # nothing from the file ran
    with pytest.raises(RuntimeError, match="arbitrary code ran"):  # what a plain torch.load would do
        torch.load(path, weights_only=False)
    assert TRIPPED == [("payload",)]


def test_missing_and_unexpected_keys_strict_raises_lax_reports(tmp_path, hf_divided):
    hf, _ = hf_divided
    path = write_official(tmp_path / "partial.pyth", hf, drop=("blocks.1.temporal_fc.weight",),
                          extra={"model.blocks.0.extra_gate": torch.ones(3)})
    with pytest.raises(CheckpointMismatchError) as err:
        TimeSformer.from_pretrained(path, heads=2)
    msg = str(err.value)
    assert "missing (1): blocks.1.temporal_fc.weight" in msg and "unexpected (1): blocks.0.extra_gate" in msg
    assert err.value.report.missing == ["blocks.1.temporal_fc.weight"]
    with pytest.warns(CheckpointWarning, match="blocks.1.temporal_fc.weight"):
        model = TimeSformer.from_pretrained(path, heads=2, strict=False)
    report = model.load_report
    assert not report.ok
    assert report.missing == ["blocks.1.temporal_fc.weight"] and report.unexpected == ["blocks.0.extra_gate"]
    reference = to_official(hf.state_dict())
    assert torch.equal(model.blocks[1].temporal_fc.bias, reference["blocks.1.temporal_fc.bias"])
    assert torch.equal(model.blocks[1].temporal_fc.weight, torch.zeros(32, 32))  # left at its init


def test_shape_mismatch_is_reported(tmp_path, hf_divided):
    _, folder = hf_divided
    expected = r"mismatched \(2\):.*head.weight \(5, 32\) in the checkpoint, \(3, 32\) in the model"
    with pytest.raises(CheckpointMismatchError, match=expected):
        TimeSformer.from_pretrained(folder, num_classes=3)
    with pytest.warns(CheckpointWarning):
        model = TimeSformer.from_pretrained(folder, num_classes=3, strict=False)
    assert sorted(k for k, *_ in model.load_report.mismatched) == ["head.bias", "head.weight"]
    assert len(model.load_report.loaded) == len(TimeSformer.from_pretrained(folder).state_dict()) - 2


def test_backend_state_is_reported_backend_weights_are_missing(hf_divided):
    hf, folder = hf_divided
    model = TimeSformer.from_pretrained(folder, backend="performer")  # random features: not an error
    report = model.load_report
    assert report.ok and len(report.backend_state) == 8  # 2 blocks x (time, space) x (features, redraw counter)
    assert all(".cores.performer." in k for k in report.backend_state)
    with pytest.raises(CheckpointMismatchError, match=r"(?s)cores\.fastformer\.w_q.*model\.set_backend"):
        TimeSformer.from_pretrained(folder, backend="fastformer")  # its own parameters: a different model


def test_hf_base_model_without_classifier(tmp_path):
    from transformers import TimesformerModel

    torch.manual_seed(0)
    base = TimesformerModel(TimesformerConfig(**{k: v for k, v in TINY.items() if k != "num_labels"})).eval()
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.1 * torch.randn_like(p))
    base.save_pretrained(tmp_path)
    model = TimeSformer.from_pretrained(tmp_path)
    assert model.config["num_classes"] == 0 and model.load_report.ok
    x = video()
    with torch.no_grad():
        torch.testing.assert_close(model(x), base(pixel_values=x).last_hidden_state[:, 0], atol=1e-4, rtol=0)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        TimeSformer.from_pretrained(tmp_path / "nothing.pyth")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "timesformer"}))
    with pytest.raises(FileNotFoundError, match="no weights"):
        TimeSformer.from_pretrained(tmp_path)
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(ValueError, match="holds no tensors"):
        TimeSformer.from_pretrained(tmp_path / "empty.pth")


# ---- other frame counts and resolutions -------------------------------------------------------------

def interpolate_time(table, new_t, mode):
    kw = {"align_corners": False} if mode == "linear" else {}
    return F.interpolate(table.transpose(1, 2), size=new_t, mode=mode, **kw).transpose(1, 2)


def model_with(official_state, time_embed=None, pos_embed=None, **config):
    """Our model built for ``config`` with the checkpoint's tensors and embeddings set by hand."""
    state = dict(official_state)
    if time_embed is not None:
        state["time_embed"] = time_embed
    if pos_embed is not None:
        state["pos_embed"] = pos_embed
    model = TimeSformer(**{**dict(num_classes=5, num_frames=4, image_size=32, patch_size=8, dim=32, depth=2, heads=2,
                                  mlp_ratio=2.0, drop_path=0.0), **config}).eval()
    model.load_state_dict(state)
    return model


@pytest.mark.parametrize("new_t", [8, 2])
def test_other_frame_count_correct_where_hf_is_wrong(hf_divided, new_t):
    """A T=4 checkpoint run on ``new_t`` frames. Correct = the same weights in a ``new_t``-frame model whose
    time embedding is the T=4 one linearly interpolated (frames as equal cells of the clip).

    Hugging Face runs it without complaint but its layers reshape tokens with ``config.num_frames``: with
    8 frames, temporal attention sees frames 0-3 and 4-7 as two separate clips and spatial attention mixes
    frame t with frame t+4. Even with HF's own (nearest) time embedding the result is not what a correct
    8-frame model computes.
    """
    hf, folder = hf_divided
    official = to_official(hf.state_dict())
    x = video(frames=new_t)
    correct = model_with(official, interpolate_time(official["time_embed"], new_t, "linear"), num_frames=new_t)
    loaded = TimeSformer.from_pretrained(folder, num_frames=new_t)
    assert [k for k, *_ in loaded.load_report.resampled] == ["time_embed"]
    on_the_fly = TimeSformer.from_pretrained(folder)  # 4-frame model fed new_t frames
    # what HF would compute if its blocks were right: an HF model configured for new_t frames with HF's
    # own nearest-interpolated time embedding; and ours with that same embedding
    hf_right = make_hf(num_frames=new_t)
    state = hf.state_dict()
    state["timesformer.embeddings.time_embeddings"] = interpolate_time(official["time_embed"], new_t, "nearest")
    hf_right.load_state_dict(state)
    ours_nearest = model_with(official, state["timesformer.embeddings.time_embeddings"], num_frames=new_t)
    with torch.no_grad():
        want = correct(x)
        torch.testing.assert_close(loaded(x), want, atol=1e-5, rtol=0)
        torch.testing.assert_close(on_the_fly(x), want, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours_nearest(x), hf_right(pixel_values=x).logits, atol=1e-4, rtol=0)
        hf_logits = hf(pixel_values=x).logits  # runs, no warning, wrong
        assert hf_logits.shape == want.shape
        assert (hf_logits - hf_right(pixel_values=x).logits).abs().max() > 1e-2
        assert (hf_logits - want).abs().max() > 1e-2


def test_other_resolution_is_bicubic_resampled(hf_divided):
    """A 32 px (4x4 patches) checkpoint at 48 px (6x6). Correct = the position grid bicubic-resized in 2-D.
    HF resizes the grid with 2-D nearest at run time; its blocks handle the size correctly, so it equals
    our model given the nearest-resized table (a choice of interpolation, not a fault)."""
    hf, folder = hf_divided
    official = to_official(hf.state_dict())
    pos = official["pos_embed"]
    grid = pos[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)

    def table(mode):
        kw = {"align_corners": False} if mode == "bicubic" else {}
        g = F.interpolate(grid, size=(6, 6), mode=mode, **kw).permute(0, 2, 3, 1).reshape(1, 36, 32)
        return torch.cat([pos[:, :1], g], 1)

    x = video(size=48)
    correct = model_with(official, pos_embed=table("bicubic"), image_size=48)
    loaded = TimeSformer.from_pretrained(folder, image_size=48)
    assert [k for k, *_ in loaded.load_report.resampled] == ["pos_embed"]
    with torch.no_grad():
        want = correct(x)
        torch.testing.assert_close(loaded(x), want, atol=1e-5, rtol=0)
        torch.testing.assert_close(TimeSformer.from_pretrained(folder)(x), want, atol=1e-5, rtol=0)
        nearest = model_with(official, pos_embed=table("nearest"), image_size=48)
        torch.testing.assert_close(nearest(x), hf(pixel_values=x).logits, atol=1e-4, rtol=0)
