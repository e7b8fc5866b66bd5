"""ViT -> TimeSformer initialisation (timm layout; timm itself is not installed, so a tiny ViT is built
here with timm's parameter names and a plain forward)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fast_timesformer.models.resample import resample_pos_embed
from fast_timesformer.models.timesformer import TimeSformer
from fast_timesformer.models.vit import load_vit_weights_into_timesformer

DIM, HEADS = 32, 2


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-2, -1)) * (DIM // HEADS) ** -0.5).softmax(-1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, n, DIM))


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(DIM, 2 * DIM), nn.Linear(2 * DIM, DIM)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class ViTBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(DIM, eps=1e-6), Attention()
        self.norm2, self.mlp = nn.LayerNorm(DIM, eps=1e-6), Mlp()

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """timm VisionTransformer's names and computation (class token, learned 2-D position table)."""

    def __init__(self, image=32, patch=8, depth=2, classes=5, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        n = (image // patch) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, DIM) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + n, DIM) * 0.5)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, DIM, patch, stride=patch)
        self.blocks = nn.ModuleList(ViTBlock() for _ in range(depth))
        self.norm = nn.LayerNorm(DIM, eps=1e-6)
        self.head = nn.Linear(DIM, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.add_(0.05 * torch.randn_like(p))

    def forward(self, img):
        x = self.patch_embed.proj(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])


def timesformer(**kw):
    cfg = dict(num_classes=5, num_frames=3, image_size=32, patch_size=8, dim=DIM, depth=2, heads=HEADS,
               mlp_ratio=2.0, drop_path=0.0)
    return TimeSformer(**{**cfg, **kw}).eval()


@pytest.mark.parametrize("temporal_init", ["copy", "fresh"])
def test_clip_of_one_repeated_image_gives_the_vit_logits(temporal_init):
    """temporal_fc starts at zero and time_embed at zero, so a clip of one image repeated is classified
    exactly as the ViT classifies the image."""
    vit = TinyViT().eval()
    model = timesformer()
    report = load_vit_weights_into_timesformer(model, vit, temporal_init=temporal_init)
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        # float32, identical math but the space step groups the frames in one batch: ~1e-7 on O(1) logits
        torch.testing.assert_close(model(img[:, None].expand(-1, 3, -1, -1, -1)), vit(img), atol=1e-5, rtol=0)
    assert model.transfer_report is report
    assert not report.resampled
    left = set(report.left_at_init)
    assert {"time_embed", "blocks.0.temporal_fc.weight", "blocks.1.temporal_fc.bias"} <= left
    temporal_copied = ("blocks.1.temporal_attn.qkv.weight", "blocks.1.attn.qkv.weight") in report.copied
    assert temporal_copied == (temporal_init == "copy")


def test_copy_makes_temporal_attention_equal_spatial_fresh_leaves_it():
    vit = TinyViT()
    copied, fresh = timesformer(), timesformer()
    before = fresh.blocks[0].temporal_attn.qkv.weight.clone()
    load_vit_weights_into_timesformer(copied, vit, temporal_init="copy")
    load_vit_weights_into_timesformer(fresh, vit, temporal_init="fresh")
    for block, src in zip(copied.blocks, vit.blocks):
        for name in ("qkv", "proj"):
            assert torch.equal(getattr(block.temporal_attn, name).weight, getattr(src.attn, name).weight)
        assert torch.equal(block.temporal_norm1.weight, src.norm1.weight)
        assert torch.equal(block.temporal_fc.weight, torch.zeros(DIM, DIM))
    assert torch.equal(fresh.blocks[0].temporal_attn.qkv.weight, before)
    assert "blocks.0.temporal_attn.qkv.weight" in fresh.transfer_report.left_at_init
    assert torch.equal(fresh.blocks[0].attn.qkv.weight, vit.blocks[0].attn.qkv.weight)


def test_state_dict_input_equals_module_input():
    vit = TinyViT()
    a, b = timesformer(), timesformer()
    load_vit_weights_into_timesformer(a, vit)
    load_vit_weights_into_timesformer(b, {"model": dict(vit.state_dict())})
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


def test_other_grid_is_resampled_in_2d_and_head_mismatch_skipped():
    vit = TinyViT(image=32, classes=10)  # 4x4 grid, 10 classes
    model = timesformer(image_size=48)  # 6x6 grid, 5 classes
    report = load_vit_weights_into_timesformer(model, vit)
    assert report.resampled == [("pos_embed", (1, 17, DIM), (1, 37, DIM))]
    torch.testing.assert_close(model.pos_embed, resample_pos_embed(vit.pos_embed, 6), atol=0, rtol=0)
    skipped = dict(report.skipped)
    assert "shape (10, 32)" in skipped["head.weight"] and "head.bias" in skipped
    assert "head.weight" in report.left_at_init
    assert "head.weight" in report.describe() and "resampled" in report.describe()


def test_depth_mismatch_is_reported():
    deep = TinyViT(depth=3)
    report = load_vit_weights_into_timesformer(timesformer(), deep)
    assert any(k.startswith("blocks.2.") and "2 blocks" in why for k, why in report.skipped)
    shallow = TinyViT(depth=1)
    report = load_vit_weights_into_timesformer(timesformer(), shallow)
    assert "blocks.1.attn.qkv.weight" in report.left_at_init


def test_every_earlier_step_of_other_schemes_gets_the_copy():
    vit = TinyViT()
    model = timesformer(scheme="axial", num_frames=2)
    load_vit_weights_into_timesformer(model, vit)
    steps = [s for s, *_ in model.blocks[0].attention_layers()]
    assert len(steps) == 3
    for step, norm, attn, fc in model.blocks[0].attention_layers():
        assert torch.equal(attn.qkv.weight, vit.blocks[0].attn.qkv.weight), step
        assert torch.equal(norm.weight, vit.blocks[0].norm1.weight), step


def test_deit_distillation_token_is_dropped():
    vit = TinyViT()
    state = dict(vit.state_dict())
    dist_row = torch.randn(1, 1, DIM)
    state["pos_embed"] = torch.cat([state["pos_embed"][:, :1], dist_row, state["pos_embed"][:, 1:]], 1)
    state["dist_token"] = torch.randn(1, 1, DIM)
    model = timesformer()
    report = load_vit_weights_into_timesformer(model, state)
    assert torch.equal(model.pos_embed, vit.pos_embed)
    assert "dist_token" in dict(report.skipped)


def test_vit_without_class_position_and_non_square_grid():
    """timm ``no_embed_class=True``: pos_embed holds the patches only, the class token gets no position;
    a 2x8 grid is given by ``patch_embed.grid_size`` (as timm does) or ``vit_grid``."""
    vit = TinyViT()
    state = dict(vit.state_dict())
    state["pos_embed"] = state["pos_embed"][:, 1:]  # 16 patch rows, no class row
    model = timesformer()
    report = load_vit_weights_into_timesformer(model, state)
    assert torch.equal(model.pos_embed[:, 0], torch.zeros(1, DIM))
    assert torch.equal(model.pos_embed[:, 1:], vit.pos_embed[:, 1:])
    assert any("no position to its class token" in n for n in report.notes) and not report.resampled
    # the same 16 rows read as a 2x8 grid resize differently from a 4x4 one
    wide = timesformer()
    report = load_vit_weights_into_timesformer(wide, state, vit_grid=(2, 8))
    assert report.resampled == [("pos_embed", (1, 16, DIM), (1, 17, DIM))]
    expected = resample_pos_embed(state["pos_embed"], (4, 4), old_hw=(2, 8), num_prefix_tokens=0)
    torch.testing.assert_close(wide.pos_embed[:, 1:], expected, atol=0, rtol=0)
    with pytest.raises(ValueError, match="does not fit a 3x3 grid"):
        load_vit_weights_into_timesformer(timesformer(), state, vit_grid=3)


def test_bad_inputs():
    with pytest.raises(ValueError, match="width is 32, the model's dim is 64"):
        load_vit_weights_into_timesformer(timesformer(dim=64, heads=2), TinyViT())
    with pytest.raises(ValueError, match="temporal_init"):
        load_vit_weights_into_timesformer(timesformer(), TinyViT(), temporal_init="zero")
    with pytest.raises(ValueError, match="not a timm ViT state dict"):
        load_vit_weights_into_timesformer(timesformer(), {"weight": torch.ones(2)})
    with pytest.raises(TypeError, match="ViT module"):
        load_vit_weights_into_timesformer(timesformer(), 3)
