"""GenerativeTimeSformer: shapes, every layer used, un-patchify, linear target cost, backends, training."""
from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fast_timesformer import (
    AttentionCore,
    Backend,
    BackendUnavailable,
    TokenGroups,
    get_backend,
    list_backends,
    reference_attention,
    register_backend,
    unregister_backend,
)
from fast_timesformer.models.generative import CrossAttention, GenerativeTimeSformer, patchify, unpatchify
from fast_timesformer.schemes import get_scheme

TINY = dict(dim=32, image_size=16, patch_size=4, num_frames=3, num_target_frames=2, channels=3, depth=2,
            heads=2, dim_head=8)



def tiny(**overrides):
    return GenerativeTimeSformer(**{**TINY, **overrides})


# ---- shapes and arguments ---------------------------------------------------------------------------
def test_seed_config_at_tiny_size_gives_the_seed_shape():
    # seed 000's arguments with the sizes shrunk: 8 frames -> 4 targets, 3 -> 1 channels, dropout on
    model = GenerativeTimeSformer(dim=32, image_size=32, patch_size=8, num_frames=8, num_target_frames=4,
                                  channels=3, out_channels=1, depth=2, heads=2, dim_head=16, attn_dropout=0.1,
                                  ff_dropout=0.1)
    assert model(torch.randn(2, 8, 3, 32, 32)).shape == (2, 4, 1, 32, 32)
    model.eval()
    x = torch.randn(1, 8, 3, 32, 32)
    torch.testing.assert_close(model(x), model(x))  # no dropout in eval mode


def test_out_channels_defaults_to_channels_and_rectangular_frames():
    model = tiny(image_size=(8, 12), channels=2)
    assert model(torch.randn(1, 3, 2, 8, 12)).shape == (1, 2, 2, 8, 12)
    assert model.config["out_channels"] == 2


@pytest.mark.parametrize("video, match", [
    (torch.randn(1, 4, 3, 16, 16), "4 frames"),
    (torch.randn(1, 3, 1, 16, 16), "1 channels"),
    (torch.randn(1, 3, 3, 16, 20), "16x20"),
    (torch.randn(3, 3, 16, 16), "batch, frames"),
])
def test_bad_input_is_named(video, match):
    with pytest.raises(ValueError, match=match):
        tiny()(video)


@pytest.mark.parametrize("overrides, match", [
    (dict(image_size=18), "not divisible by patch_size"),
    (dict(num_target_frames=0), "num_target_frames"),
    (dict(backend={"temporal": "regular"}), "unknown attention step"),
    (dict(backend="regualr"), "Did you mean 'regular'"),
])
def test_bad_arguments_are_named(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny(**overrides)


# ---- every layer is used ----------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["regular", "fastformer"])
def test_every_parameter_receives_gradient(backend):
    model = tiny(depth=3, backend=backend)
    video = torch.randn(2, 3, 3, 16, 16)
    loss = (model(video) * torch.randn(2, 2, 3, 16, 16)).sum()
    loss.backward()
    params = dict(model.named_parameters())
    assert any(name.startswith("layers.2.target.") for name in params)
    silent = [name for name, p in params.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, f"parameters without gradient: {silent}"


# ---- un-patchify ------------------------------------------------------------------------------------
def test_unpatchify_matches_an_explicit_loop():
    b, t, gh, gw, p, c = 2, 3, 2, 3, 4, 2
    tokens = torch.randn(b, t, gh * gw, p * p * c)
    expected = torch.empty(b, t, c, gh * p, gw * p)
    for row in range(gh):
        for col in range(gw):
            patch = tokens[:, :, row * gw + col].reshape(b, t, p, p, c)  # (p1 p2 c)
            for i in range(p):
                for j in range(p):
                    expected[:, :, :, row * p + i, col * p + j] = patch[:, :, i, j, :]
    torch.testing.assert_close(unpatchify(tokens, p, gh), expected, rtol=0, atol=0)
    torch.testing.assert_close(patchify(expected, p), tokens, rtol=0, atol=0)


def test_a_single_bright_output_token_lands_in_its_patch():
    # Make the model's last hidden state one-hot: token (t', p) carries a 1 in feature 0, all else 0; the
    # output projection maps feature 0 to one pixel (i, j, channel) of the patch. Exactly one output pixel
    # may light up, at row (p // grid_w) * P + i, column (p % grid_w) * P + j of target frame t'.
    P, H, W, C = 4, 8, 12, 2  # non-square grid (2 x 3 patches) catches swapped axes
    model = tiny(image_size=(H, W), patch_size=P, out_channels=C).eval()
    gw, n = W // P, (H // P) * (W // P)
    t_target, patch, i, j, ch = 1, 4, 3, 1, 1  # patch 4 = grid row 1, column 1
    hidden = torch.zeros(1, model.num_target_frames * n, TINY["dim"])
    hidden[0, t_target * n + patch, 0] = 1.0
    model.norm.register_forward_hook(lambda mod, inp, out: hidden)
    with torch.no_grad():
        model.to_pixels.weight.zero_()
        model.to_pixels.bias.zero_()
        model.to_pixels.weight[(i * P + j) * C + ch, 0] = 1.0  # pixel order inside a patch: (p1 p2 c)
        out = model(torch.randn(1, 3, 3, H, W))
    bright = (out != 0).nonzero().tolist()
    assert bright == [[0, t_target, ch, (patch // gw) * P + i, (patch % gw) * P + j]]


def test_output_pixels_follow_the_input_layout_end_to_end():
    # A model whose output is its own input frame (patch embed and pixel head as inverse linear maps, all
    # residual updates zeroed) must reproduce the last context frame pixel for pixel: patchify and
    # un-patchify agree on the spatial arrangement.
    P, C = 4, 3
    model = tiny(image_size=(8, 12), patch_size=P, channels=C, num_target_frames=1, dim=P * P * C).eval()
    k = P * P * C
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if name.startswith("layers.") and name.endswith((".proj.weight", ".proj.bias", "mlp.3.weight",
                                                             "mlp.3.bias")):
                prm.zero_()  # every residual branch adds 0
        model.patch_embed.weight.copy_(torch.eye(k))
        model.patch_embed.bias.zero_()
        model.pos_embed.zero_()
        model.time_embed.zero_()
        model.norm.weight.fill_(1.0)
        model.to_pixels.weight.copy_(torch.eye(k))
        model.to_pixels.bias.zero_()
    video = torch.rand(1, 3, C, 8, 12)
    # the target tokens only see their own query, so feed the last frame's patches in as the query
    with torch.no_grad():
        model.target_query.copy_(model.patch_embed(patchify(video[:, -1:], P)))
        out = model(video)
    norm = torch.nn.functional.layer_norm(patchify(video[:, -1:], P), (k,), eps=1e-6)
    # float32: an identity projection and attention over one key (weight 1) reproduce layer_norm up to ~1e-7
    torch.testing.assert_close(out, unpatchify(norm, P, 2), rtol=1e-5, atol=1e-5)
    # and that is the frame's own picture, normalised per patch: same arrangement as the input
    torch.testing.assert_close(unpatchify(patchify(video[:, -1:], P), P, 2), video[:, -1:], rtol=0, atol=0)


# ---- cross-attention -----------------------------------------------------------------------------------
def test_cross_attention_target_reads_the_context_at_its_own_position():
    # written out: target (t', p) attends to the f context tokens at position p, per head
    b, f, t, n, dim, heads, d = 2, 3, 2, 5, 12, 3, 4
    layer = CrossAttention(dim, heads, d).eval()
    y, x = torch.randn(b, t * n, dim), torch.randn(b, f * n, dim)
    out = layer(y, x, groups=TokenGroups.time(t, n), context_groups=TokenGroups.time(f, n))
    w, bias = layer.qkv.weight, layer.qkv.bias
    q = (y @ w[:heads * d].T + bias[:heads * d]).view(b, t, n, heads, d)
    k = (x @ w[heads * d:2 * heads * d].T + bias[heads * d:2 * heads * d]).view(b, f, n, heads, d)
    v = (x @ w[2 * heads * d:].T + bias[2 * heads * d:]).view(b, f, n, heads, d)
    expected = torch.empty(b, t, n, heads, d)
    for i in range(b):
        for tt in range(t):
            for p in range(n):
                for h in range(heads):
                    weights = torch.softmax(k[i, :, p, h] @ q[i, tt, p, h] * d ** -0.5, 0)  # over the f frames
                    expected[i, tt, p, h] = weights @ v[i, :, p, h]
    expected = layer.proj(expected.reshape(b, t * n, heads * d))
    # float32, the same formula computed per head in loops: softmax over 3 keys, ~1e-7 on O(1) outputs
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="groups"):
        layer(y, x, groups=TokenGroups.time(t, n), context_groups=TokenGroups.space(f, n))


# ---- attention cost of the targets ------------------------------------------------------------------
class CountingCore(AttentionCore):
    """Exact softmax attention written with matmuls (so FlopCounterMode sees it), counting scores."""

    scores = []

    def attend(self, q, k, v, prefix_k, prefix_v, *, scale, dropout_p):
        pk = 0 if prefix_k is None else prefix_k.shape[2]
        CountingCore.scores.append(q.shape[0] * q.shape[1] * q.shape[2] * (k.shape[2] + pk))
        return reference_attention(q, k, v, prefix_k, prefix_v, scale=scale)


@pytest.fixture
def counting_backend():
    be = register_backend(Backend(name="counting_reference", factory=CountingCore, kind="exact", priority=10_000))
    CountingCore.scores = []
    yield be.name
    unregister_backend(be.name)


def test_target_cost_is_linear_in_the_number_of_targets(counting_backend):
    b, f, n, depth, heads = 2, 3, 16, 2, 2
    scores, flops = {}, {}
    for t in (1, 2, 4, 8):
        model = tiny(num_target_frames=t, backend=counting_backend, depth=depth, heads=heads).eval()
        CountingCore.scores = []
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.randn(b, f, 3, 16, 16))
        scores[t], flops[t] = sum(CountingCore.scores), counter.get_total_flops()
    context = depth * b * heads * (n * f * f + f * n * n)  # time + space attention of the context
    for t in scores:  # targets: cross (f keys at their position) + space (n keys in their frame)
        assert scores[t] == context + depth * b * heads * t * n * (f + n)
    # FLOPs of the whole forward pass (projections, MLPs, attention) are affine in t: equal increments
    step = flops[2] - flops[1]
    assert step > 0
    assert flops[4] - flops[2] == 2 * step and flops[8] - flops[4] == 4 * step


# ---- backends ----------------------------------------------------------------------------------------
def _cpu_probe():
    q = torch.randn(2, 2, 3, 8)
    return q, torch.randn(2, 2, 5, 8)


def test_exact_backends_agree_with_regular(counting_backend):
    model = tiny().eval()
    video = torch.randn(2, 3, 3, 16, 16)
    with torch.no_grad():
        expected = model(video)
        q, k = _cpu_probe()
        checked = []
        for name in list_backends():
            be = get_backend(name)
            if not be.exact or be.why_not(q, k, k) or be.why_not(q, q, q):
                continue  # refuses CPU float32 here (e.g. xformers: CUDA only)
            model.set_backend(name)
            # float32, exact backends differ by summation order only: ~1e-6 through 2 layers on O(1) pixels
            torch.testing.assert_close(model(video), expected, rtol=1e-4, atol=1e-5)
            checked.append(name)
        model.set_backend("regular", sdpa_backend="math")
        torch.testing.assert_close(model(video), expected, rtol=1e-4, atol=1e-5)
    assert {"regular", counting_backend} <= set(checked)


@pytest.mark.parametrize("backend", ["performer", "fastformer", {"time": "performer", "cross": "fastformer"}])
def test_approximate_backends_run_train_and_use_the_context(backend):
    model = tiny(backend=backend)
    video = torch.randn(2, 3, 3, 16, 16)
    out = model(video)
    assert out.shape == (2, 2, 3, 16, 16) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert model.layers[0].target.cross_attn.qkv.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        changed = video.clone()
        changed[1, 0] += 1.0  # another first context frame for item 1 only
        a, b = model(video), model(changed)
    assert not torch.allclose(a[1], b[1]) and torch.allclose(a[0], b[0], atol=1e-6)


def test_use_backend_switches_every_step_and_restores():
    from fast_timesformer import use_backend

    model = tiny()
    layers = [m for m in model.modules() if hasattr(m, "backend_name")]
    assert {m.step for m in layers} == {"time", "space", "cross"}
    with use_backend(model, {"cross": "performer"}):
        assert {m.backend_name for m in layers if m.step == "cross"} == {"performer"}
        assert {m.backend_name for m in layers if m.step != "cross"} == {"regular"}
        model(torch.randn(1, 3, 3, 16, 16))
    assert {m.backend_name for m in layers} == {"regular"}


def test_an_exact_backend_without_cross_attention_is_refused_with_its_reason():
    be = register_backend(replace(get_backend("regular"), name="regular_self_only", supports_cross=False))
    try:
        model = tiny(backend={"cross": be.name})
        with pytest.raises(BackendUnavailable, match="more keys than queries"):
            model(torch.randn(1, 3, 3, 16, 16))
    finally:
        unregister_backend(be.name)


# ---- training ----------------------------------------------------------------------------------------
def bouncing_squares(batch, frames, size=16, side=4, generator=None):
    """(batch, frames, 1, size, size): a bright square moving with constant velocity, bouncing off walls."""
    g = generator
    video = torch.zeros(batch, frames, 1, size, size)
    span = size - side
    for i in range(batch):
        pos = torch.randint(0, span + 1, (2,), generator=g)
        vel = torch.randint(1, 3, (2,), generator=g) * (torch.randint(0, 2, (2,), generator=g) * 2 - 1)
        for t in range(frames):
            y, x = pos.tolist()
            video[i, t, 0, y:y + side, x:x + side] = 1.0
            pos = pos + vel
            for a in range(2):
                if pos[a] < 0 or pos[a] > span:
                    vel[a] = -vel[a]
                    pos[a] = pos[a].clamp(0, span) if pos[a] < 0 else 2 * span - pos[a]
    return video


def fit(model, context, target, *, steps, lr=3e-3):
    """``steps`` AdamW steps on the MSE of the predicted frames; the losses before each step."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(context), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_loss_falls_on_bouncing_squares():
    g = torch.Generator().manual_seed(0)
    clips = bouncing_squares(8, 6, generator=g)
    context, target = clips[:, :4], clips[:, 4:]
    model = GenerativeTimeSformer(dim=32, image_size=16, patch_size=4, num_frames=4, num_target_frames=2,
                                  channels=1, depth=2, heads=2, dim_head=16)
    losses = fit(model, context, target, steps=25)
    # it falls, and ends below the best prediction that ignores the context (the per-pixel mean target)
    best_constant = (target - target.mean(0, keepdim=True)).square().mean().item()
    assert losses[-1] < 0.75 * losses[0] and losses[-1] < best_constant, (best_constant, losses)


# ---- the context encoder's scheme and all-context target attention -----------------------------------
def test_all_context_cost_is_what_the_docs_say(counting_backend):
    """``target_attention="all_context"``: every target query over every context token, f' n f n scores per
    layer and head for the cross step (per_position: f' n f); the context and the target space step are
    unchanged."""
    b, f, n, depth, heads = 2, 3, 16, 2, 2
    for t in (1, 2, 4):
        model = tiny(num_target_frames=t, backend=counting_backend, depth=depth, heads=heads,
                     target_attention="all_context").eval()
        CountingCore.scores = []
        with torch.no_grad():
            model(torch.randn(b, f, 3, 16, 16))
        context = depth * b * heads * (n * f * f + f * n * n)
        assert sum(CountingCore.scores) == context + depth * b * heads * (t * n * f * n + t * n * n)


@pytest.mark.parametrize("target_attention", ["per_position", "all_context"])
def test_all_context_reads_every_position(target_attention):
    """The cross step of a target block: with per_position a change in the context at patch 0 reaches the
    targets at patch 0 only; with all_context it reaches the targets at every patch."""
    f, t, n, dim = 3, 2, 16, 32
    block = tiny(target_attention=target_attention, depth=1).layers[0].target.eval()
    seen = []
    block.cross_attn.register_forward_hook(lambda mod, args, out: seen.append(out))
    y, context = torch.randn(1, t * n, dim), torch.randn(1, f * n, dim)
    changed = context.clone()
    changed[:, 0::n] += torch.randn(f, dim)  # patch 0 of every context frame (not a constant: LayerNorm)
    with torch.no_grad():
        block(y, context, f, t, n, target_attention)
        block(y, changed, f, t, n, target_attention)
    moved = (seen[0] - seen[1]).abs().amax(-1).view(t, n) > 1e-6  # (target frame, patch)
    assert moved[:, 0].all()
    assert moved[:, 1:].all() if target_attention == "all_context" else not moved[:, 1:].any()


@pytest.mark.parametrize("scheme", ["axial", "joint_space_time", "sparse_local_global", "space_only"])
@pytest.mark.parametrize("target_attention", ["per_position", "all_context"])
def test_any_registered_scheme_as_context_encoder_trains(scheme, target_attention):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    clips = bouncing_squares(8, 6, generator=g)
    context, target = clips[:, :4], clips[:, 4:]
    model = GenerativeTimeSformer(dim=32, image_size=16, patch_size=4, num_frames=4, num_target_frames=2,
                                  channels=1, depth=1, heads=2, dim_head=16, scheme=scheme,
                                  target_attention=target_attention)
    steps = set(model.attention_steps)
    assert steps == set(get_scheme(scheme).step_names) | {"space", "cross"}
    assert {m.step for m in model.modules() if hasattr(m, "backend_name")} == steps
    losses = fit(model, context, target, steps=8)
    assert losses[-1] < 0.8 * losses[0], losses


def test_scheme_and_target_attention_are_checked():
    with pytest.raises(ValueError, match="Did you mean 'axial'"):
        tiny(scheme="axail")
    with pytest.raises(ValueError, match="Did you mean 'all_context'"):
        tiny(target_attention="all")
    with pytest.raises(ValueError, match="odd"):
        tiny(scheme="sparse_local_global")  # 3 context frames
