"""Fine-tuning from a checkpoint (issue 25, ``train --init``): official .pyth and Hugging Face folders
with another class count, frame count and resolution; the head is re-initialised and said so, the
embeddings resampled as from_pretrained does, the rest loaded exactly."""
import json

import pytest
import torch
from safetensors.torch import save_file

from fast_timesformer.errors import CheckpointMismatchLineError
from fast_timesformer.models import TimeSformer
from fast_timesformer.models.timesformer_layouts import official_to_hf_key
from fast_timesformer.train.finetune import init_from_checkpoint

SMALL = dict(patch_size=8, dim=32, depth=1, heads=2, drop_path=0.0)


def released(num_classes=5, num_frames=4, image_size=32, seed=0):
    torch.manual_seed(seed)
    model = TimeSformer(num_classes=num_classes, num_frames=num_frames, image_size=image_size, **SMALL)
    with torch.no_grad():  # zero-initialised tensors (time_embed, temporal_fc) made non-zero, so they count
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def write_pyth(path, model):
    torch.save({"model_state": {f"model.{k}": v for k, v in model.state_dict().items()}, "epoch": 15,
                "cfg": "MODEL:\n  ARCH: vit\n"}, path)
    return str(path)


def write_hf_folder(folder, model, num_frames=4, image_size=32):
    folder.mkdir()
    state = {official_to_hf_key(k): v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "timesformer", "image_size": image_size, "patch_size": 8, "num_channels": 3,
        "num_frames": num_frames, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 128, "hidden_act": "gelu", "layer_norm_eps": 1e-6, "qkv_bias": True,
        "attention_type": "divided_space_time"}))
    return str(folder)


@pytest.mark.parametrize("kind", ["pyth", "hf"])
def test_init_other_class_count_frames_and_resolution(tmp_path, kind):
    src = released()
    path = write_pyth(tmp_path / "k400.pyth", src) if kind == "pyth" else write_hf_folder(tmp_path / "hf", src)
    torch.manual_seed(1)
    run = TimeSformer(num_classes=3, num_frames=2, image_size=48, **SMALL)
    fresh_head = run.head.weight.detach().clone()
    lines = init_from_checkpoint(run, path)
    assert lines[0] == (f"--init {path}: the classification head is re-initialised: the checkpoint's head.weight is "
                        "(5, 32) (5 classes), this run's (3, 32) (3 classes)")
    assert any("pos_embed resampled from (1, 17, 32) to (1, 37, 32)" in line for line in lines)
    assert any("time_embed resampled from (1, 4, 32) to (1, 2, 32)" in line for line in lines)
    assert torch.equal(run.head.weight, fresh_head)  # the run's own initialisation
    for key in ("blocks.0.attn.qkv.weight", "blocks.0.temporal_fc.weight", "patch_embed.proj.weight", "cls_token"):
        assert torch.equal(run.state_dict()[key], src.state_dict()[key]), key
    # the resampling is from_pretrained's: the same model built by from_pretrained has the same embeddings
    ref = TimeSformer.from_pretrained(path, heads=2, num_frames=2, image_size=48)
    assert torch.equal(run.pos_embed, ref.pos_embed) and torch.equal(run.time_embed, ref.time_embed)


def test_init_same_class_count_loads_the_head(tmp_path):
    src = released(num_classes=5)
    run = TimeSformer(num_classes=5, num_frames=4, image_size=32, **SMALL)
    assert init_from_checkpoint(run, write_pyth(tmp_path / "a.pyth", src)) == []
    x = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(run.eval()(x), src.eval()(x))


def test_init_refuses_another_architecture_in_one_line(tmp_path):
    path = write_pyth(tmp_path / "wide.pyth", released())
    run = TimeSformer(num_classes=5, num_frames=4, image_size=32, **{**SMALL, "dim": 48, "heads": 3})
    with pytest.raises(CheckpointMismatchLineError, match=r"wide.pyth does not fit this run's model") as e:
        init_from_checkpoint(run, path)
    assert "\n" not in str(e.value) and "mismatched" in str(e.value)
