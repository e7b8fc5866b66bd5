"""The usage snippets of the seeds (/work/shared/seeds 000, 001, 002), run as written.

Each snippet is adapted only by its import line and, where our names differ, by the names mapped:
  000 (generative fork of lucidrains' TimeSformer): ``from timesformer_pytorch import TimeSformer`` ->
      ``from fast_timesformer import GenerativeTimeSformer as TimeSformer``. Sizes as in the seed.
  001 (FastTimeSformer): ``from fast_timesformer.model import DividedAttention`` -> ``from fast_timesformer
      import DividedAttention``; the seed leaves b, f, n, dim, dim_head, heads, dropout undefined, so a line
      defines them (b, f = 16, 5 and n = 64 patches from the seed's 128x128 example at patch 16).
  002 (from-scratch TimeSformer): ``img_size`` -> ``image_size``, ``embed_dim`` -> ``dim``, ``device`` is
      defined, and ``timm.create_model('vit_base_patch16_224', pretrained=True)`` (no timm or hub here) ->
      a random state dict in timm's format (ViT-Base/16, 224). Sizes as in the seed (ViT-Base, 8x224,
      batch 2): about 15 s of CPU time without autograd.
The same texts are shown in docs/generative.md and README.md (a test keeps them in sync).
"""
import os

import pytest
import torch

SEED_000 = '''\
import torch
from fast_timesformer import GenerativeTimeSformer as TimeSformer

model = TimeSformer(
    dim = 512,
    image_size = 224,
    patch_size = 16,
    num_frames = 8,
    num_target_frames = 4,
    channels = 3,
    out_channels = 1,
    depth = 12,
    heads = 8,
    dim_head =  64,
    attn_dropout = 0.1,
    ff_dropout = 0.1
)

video = torch.randn(2, 8, 3, 224, 224) # (batch x frames x channels x height x width)
pred = model(video) # (2, 4, 1, 224, 224)
'''

SEED_001 = '''\
import torch
from fast_timesformer import DividedAttention

b, f, n, dim, dim_head, heads, dropout = 16, 5, 64, 128, 32, 4, 0.1
x = torch.randn(b, n*f + 1, dim)

attention = DividedAttention(dim, dim_head = dim_head, heads = heads, dropout = dropout)

time_attended = attention(x, 'b (f n) d', '(b n) f d', n = n)        # attention across frames
space_attended = attention(x, 'b (f n) d', '(b f) n d', f = f)       # attention across patches
'''

SEED_002 = '''\
import torch
from fast_timesformer import TimeSformer, load_vit_weights_into_timesformer
device = "cpu"

model = TimeSformer(
    num_classes=2,
    num_frames=8,
    image_size=224,
    patch_size=16,
    dim=768,
    depth=12,
    heads=12,
).to(device)

vit = timm_format_vit_state_dict()  # was: timm.create_model('vit_base_patch16_224', pretrained=True)
load_vit_weights_into_timesformer(model, vit)

video = torch.randn(2, 8, 3, 224, 224)  # (batch, frames, C, H, W)
logits = model(video)  # (2, num_classes)
'''

SNIPPETS = {"000": SEED_000, "001": SEED_001, "002": SEED_002}
DOCS = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "generative.md")
README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")



def timm_format_vit_state_dict(depth=12, dim=768, heads=12, patch_size=16, image_size=224, channels=3,
                               mlp_ratio=4, num_classes=1000):
    """Random weights under timm's ``vit_base_patch16_224`` key names and shapes (a stand-in for timm)."""
    del heads  # timm's fused qkv does not show the head count in its shapes
    g = torch.Generator().manual_seed(1)
    n = (image_size // patch_size) ** 2
    hidden = int(dim * mlp_ratio)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.02

    sd = {"cls_token": r(1, 1, dim), "pos_embed": r(1, n + 1, dim),
          "patch_embed.proj.weight": r(dim, channels, patch_size, patch_size), "patch_embed.proj.bias": r(dim)}
    for i in range(depth):
        p = f"blocks.{i}."
        sd.update({p + "norm1.weight": 1 + r(dim), p + "norm1.bias": r(dim),
                   p + "attn.qkv.weight": r(3 * dim, dim), p + "attn.qkv.bias": r(3 * dim),
                   p + "attn.proj.weight": r(dim, dim), p + "attn.proj.bias": r(dim),
                   p + "norm2.weight": 1 + r(dim), p + "norm2.bias": r(dim),
                   p + "mlp.fc1.weight": r(hidden, dim), p + "mlp.fc1.bias": r(hidden),
                   p + "mlp.fc2.weight": r(dim, hidden), p + "mlp.fc2.bias": r(dim)})
    sd.update({"norm.weight": 1 + r(dim), "norm.bias": r(dim), "head.weight": r(num_classes, dim),
               "head.bias": r(num_classes)})
    return sd


def run(snippet, **names):
    namespace = dict(names)
    exec(compile(snippet, "<seed snippet>", "exec"), namespace)
    return namespace


def test_seed_000_generative_snippet():
    with torch.no_grad():  # the snippet is unchanged; without autograd it runs in about half the time
        ns = run(SEED_000)
    assert ns["pred"].shape == (2, 4, 1, 224, 224)
    assert torch.isfinite(ns["pred"]).all()
    assert len(ns["model"].layers) == 12


def test_seed_001_divided_attention_snippet():
    ns = run(SEED_001)
    b, f, n, dim = ns["b"], ns["f"], ns["n"], ns["dim"]
    assert ns["time_attended"].shape == ns["space_attended"].shape == (b, n * f + 1, dim)
    # which tokens meet: perturb patch p of frame t and see which outputs move (eval: no dropout)
    attention, x = ns["attention"].eval(), ns["x"][:2]
    t, p = 2, 7
    x2 = x.clone()
    x2[:, 1 + t * n + p] += 1.0
    with torch.no_grad():
        for pattern, sizes, same_group in (
                ("'(b n) f d'", dict(n=n), lambda i: i % n == p),
                ("'(b f) n d'", dict(f=f), lambda i: i // n == t)):
            to = pattern.strip("'")
            moved = (attention(x2, "b (f n) d", to, **sizes) - attention(x, "b (f n) d", to, **sizes)).abs()
            moved = moved.amax(dim=(0, 2)) > 1e-6
            expected = torch.tensor([True] + [same_group(i) for i in range(f * n)])  # CLS sees every token
            assert torch.equal(moved, expected), pattern


def test_seed_002_timesformer_with_vit_weights_snippet():
    with torch.no_grad():
        ns = run(SEED_002, timm_format_vit_state_dict=timm_format_vit_state_dict)
    model, vit = ns["model"], ns["vit"]
    assert ns["logits"].shape == (2, 2)
    assert torch.isfinite(ns["logits"]).all()
    state = model.state_dict()
    for key in ("patch_embed.proj.weight", "cls_token", "pos_embed", "blocks.11.attn.qkv.weight",
                "blocks.11.mlp.fc2.bias", "blocks.0.norm1.weight", "norm.weight"):
        torch.testing.assert_close(state[key], vit[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("page", [DOCS, README], ids=["docs/generative.md", "README.md"])
def test_docs_show_the_adapted_snippets(page):
    with open(page, encoding="utf-8") as fh:
        text = fh.read()
    for name, snippet in SNIPPETS.items():
        assert snippet in text, f"seed {name}'s snippet differs from {os.path.basename(page)}"
