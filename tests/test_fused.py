"""The training-memory Functions (fast_timesformer.fused) and the fused residual branches: the same forward
and gradients as the plain modules (float64, so any difference beyond round-off is a bug: 1e-12 is
~1e4 ulps at these magnitudes), fewer activations kept, and the plain path wherever fusing is not a
drop-in (hooks, autocast, no grad, wrappers, double backward)."""
import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fast_timesformer import DividedAttention, TokenGroups, fused
from fast_timesformer.models import TimeSformer
from fast_timesformer.models.timesformer import DropPath
from fast_timesformer.schemes import list_schemes

TOL = dict(rtol=1e-10, atol=1e-12)  # float64: the fused and plain paths differ by summation order only


def _grads(fn, tensors):
    for t in tensors:
        t.grad = None
    out = fn()
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)  # no symmetric cancellation
    (out * weights).sum().backward()
    return out.detach(), [None if t.grad is None else t.grad.clone() for t in tensors]


def _same(a, b):
    out_a, g_a = a
    out_b, g_b = b
    torch.testing.assert_close(out_a, out_b, **TOL)
    for x, y in zip(g_a, g_b):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, **TOL)


def _randomize(*modules):
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.3)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_linear_matches_plain(affine, bias):
    norm = nn.LayerNorm(13, eps=1e-6, elementwise_affine=affine).double()
    lin = nn.Linear(13, 7, bias=bias).double()
    _randomize(norm, lin)
    x = torch.randn(3, 5, 13, dtype=torch.float64, requires_grad=True)
    params = [x, *norm.parameters(), *lin.parameters()]
    _same(_grads(lambda: fused.layer_norm_linear(x, norm, lin), params), _grads(lambda: lin(norm(x)), params))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_layer_norm_mlp_matches_plain(approximate):
    norm, fc1, act, fc2 = nn.LayerNorm(11).double(), nn.Linear(11, 29).double(), nn.GELU(approximate), nn.Linear(29, 11).double()
    _randomize(norm, fc1, fc2)
    x = torch.randn(2, 9, 11, dtype=torch.float64, requires_grad=True)
    params = [x, *norm.parameters(), *fc1.parameters(), *fc2.parameters()]
    _same(_grads(lambda: fused.layer_norm_mlp(x, norm, fc1, act, fc2), params),
          _grads(lambda: fc2(act(fc1(norm(x)))), params))


def test_layer_norm_mlp_without_input_grad():
    """A frozen input (e.g. the first block of a partly frozen model): only the parameters get gradients."""
    norm, fc1, act, fc2 = nn.LayerNorm(6).double(), nn.Linear(6, 10).double(), nn.GELU(), nn.Linear(10, 6).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    params = [*fc1.parameters(), *fc2.parameters(), *norm.parameters()]
    _same(_grads(lambda: fused.layer_norm_mlp(x, norm, fc1, act, fc2), params),
          _grads(lambda: fc2(act(fc1(norm(x)))), params))


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_linear_matches_plain(scaled, bias):
    first, second = nn.Linear(10, 6, bias=bias).double(), nn.Linear(6, 6).double()
    _randomize(first, second)
    a = torch.randn(4, 5, 10, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor([0.0, 1.25, 1.25, 0.0], dtype=torch.float64).view(4, 1, 1) if scaled else None
    params = [a, *first.parameters(), *second.parameters()]

    def plain():
        p = first(a)
        return second(p if scale is None else p * scale)

    _same(_grads(lambda: fused.linear_linear(a, first, second, scale), params), _grads(plain, params))


@pytest.mark.parametrize("scaled", [False, True])
def test_attend_linear_linear_recomputes_the_attention_exactly(scaled):
    b, h, s, d = 5, 3, 4, 6
    first, second = nn.Linear(h * d, 8).double(), nn.Linear(8, 8).double()
    _randomize(first, second)
    q, k, v = (torch.randn(b, h, s, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
    scale = torch.tensor([1.0, 0.0, 2.0, 2.0, 1.0], dtype=torch.float64).view(b, 1, 1) if scaled else None
    calls = []

    def attend(q_, k_, v_):
        calls.append(1)
        return F.scaled_dot_product_attention(q_, k_, v_)

    def plain():
        rows = attend(q, k, v).transpose(1, 2).reshape(b, s, h * d)
        p = first(rows)
        return second(p if scale is None else p * scale)

    params = [q, k, v, *first.parameters(), *second.parameters()]
    calls.clear()
    got = _grads(lambda: fused.attend_linear_linear(q, k, v, attend, first, second, scale), params)
    assert len(calls) == 2  # forward, and once more in backward
    _same(got, _grads(plain, params))


CASES = [  # (cls, groups, fc, zero_cls)
    ("per_group", TokenGroups.space(3, 4), False, False),
    ("per_group", TokenGroups.joint(3, 4), False, False),
    ("exclude", TokenGroups.time(3, 4), False, False),
    ("exclude", TokenGroups.time(3, 4), True, True),  # the official temporal step
    ("exclude", TokenGroups.time(3, 4), True, False),  # fc without zero_cls: the plain composition
    ("none", TokenGroups.time(3, 4), True, False),
    ("per_group", TokenGroups.time(3, 4), True, False),
    ("global", TokenGroups.space(3, 4), True, False),  # not a plain-sequence mode: composed as written
]


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("drop_p", [0.0, 0.5])
@pytest.mark.parametrize("dim_head", [4, 20])  # 8 * 3 frames <= 12 (attention recomputed) and > 60 (kept)
@pytest.mark.parametrize("cls,groups,with_fc,zero_cls", CASES)
def test_residual_branch_matches_the_composition(cls, groups, with_fc, zero_cls, dim_head, drop_p, batch):
    dim = 3 * dim_head
    attn = DividedAttention(dim, heads=3, dim_head=dim_head, cls=cls).double()
    norm = nn.LayerNorm(dim).double()
    fc = nn.Linear(dim, dim).double() if with_fc else None
    drop = DropPath(drop_p)
    _randomize(attn, norm, *([fc] if fc else []))
    x = torch.randn(batch, (0 if cls == "none" else 1) + 12, dim, dtype=torch.float64, requires_grad=True)
    params = [x, *attn.parameters(), *norm.parameters(), *(fc.parameters() if fc else [])]

    def composed():
        y = drop(attn(norm(x), groups=groups))
        if fc is not None:
            y = fc(y)
            if zero_cls:
                y = torch.cat([torch.zeros_like(y[:, :1]), y[:, 1:]], 1)
        return y

    torch.manual_seed(3)
    got = _grads(lambda: attn.residual_branch(x, groups, norm=norm, fc=fc, drop=drop, zero_cls=zero_cls), params)
    torch.manual_seed(3)  # the same drop-path draws
    _same(got, _grads(composed, params))


def _model(scheme, drop_path=0.0, **kw):
    torch.manual_seed(0)
    return TimeSformer(image_size=32, patch_size=8, num_frames=4, num_classes=5, dim=48, depth=2, heads=3,
                       scheme=scheme, drop_path=drop_path, **kw).double().train()


@pytest.mark.parametrize("scheme", list_schemes())
def test_model_training_step_fused_equals_unfused(scheme):
    model = _model(scheme, drop_path=0.2)
    _randomize(model)  # temporal_fc starts at 0: make every path carry signal
    video = torch.randn(2, 4, 3, 32, 32, dtype=torch.float64)
    params = list(model.parameters())

    def step(ctx):
        def run():
            torch.manual_seed(7)  # the same drop-path draws in both runs
            with ctx:
                return model(video)
        return _grads(run, params)

    _same(step(contextlib.nullcontext()), step(fused.unfused()))


def _saved_bytes(model, video):
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(video)
    return sum(seen.values())


def test_divided_block_keeps_fewer_activations():
    """Rows of width dim kept per token and block (divided, official CLS): 24 plain, 14 fused (x, q/k/v
    and the attention output of the space step; x and q/k/v of the time step; x and fc1's output).
    Counted as the difference between depth 4 and depth 2 (the model-level tensors cancel)."""
    video = torch.randn(1, 4, 3, 32, 32)
    row = (1 + 4 * 16) * 48 * 4  # one (tokens, dim) float32 activation

    def per_block():
        counts = []
        for depth in (2, 4):
            torch.manual_seed(0)
            model = TimeSformer(image_size=32, patch_size=8, num_frames=4, num_classes=5, dim=48, depth=depth,
                                heads=3, drop_path=0.0)
            counts.append(_saved_bytes(model, video))
        return (counts[1] - counts[0]) / 2 / row

    fused_rows = per_block()
    with fused.unfused():
        plain_rows = per_block()
    assert 23.5 <= plain_rows <= 24.5, plain_rows
    assert 13.5 <= fused_rows <= 14.5, fused_rows


class _MyLinear(nn.Linear):
    pass


def test_plain_path_where_fusing_is_no_drop_in():
    model = _model("divided_space_time")
    video = torch.randn(1, 4, 3, 32, 32, dtype=torch.float64)
    block = model.blocks[0]
    seen = []
    handle = block.mlp.fc1.register_forward_hook(lambda *a: seen.append("fc1"))
    handle2 = block.temporal_fc.register_forward_hook(lambda *a: seen.append("temporal_fc"))
    handle3 = block.attn.register_forward_hook(lambda *a: seen.append("attn"))
    try:
        model(video).sum().backward()
    finally:
        handle.remove(), handle2.remove(), handle3.remove()
    assert sorted(seen) == ["attn", "fc1", "temporal_fc"]  # hooks fire: those modules ran as modules
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    norm, lin = nn.LayerNorm(8).double(), nn.Linear(8, 8).double()
    assert fused.fusable(x, norm, lin)
    assert not fused.fusable(x, norm, _MyLinear(8, 8))  # a subclass keeps its own forward
    with torch.no_grad():
        assert not fused.fusable(x, norm, lin)
    with fused.unfused():
        assert not fused.fusable(x, norm, lin)
    mlp = block.mlp
    assert fused.mlp_fusable(x.new_ones(2, 5, 48, requires_grad=True), block.norm2, mlp.fc1, mlp.act, mlp.fc2, mlp,
                             mlp.drop)
    mlp.drop.p = 0.1  # an active dropout sits inside: the plain Mlp runs
    assert not fused.mlp_fusable(x.new_ones(2, 5, 48, requires_grad=True), block.norm2, mlp.fc1, mlp.act, mlp.fc2,
                                 mlp, mlp.drop)
    frozen = torch.randn(2, 5, 8, dtype=torch.float64)
    for p in (*norm.parameters(), *lin.parameters()):
        p.requires_grad_(False)
    assert not fused.fusable(frozen, norm, lin)  # nothing to keep for backward


def test_double_backward_raises_at_once_and_runs_unfused():
    """Never a silently missing second-order term: create_graph=True through a fused Function raises."""
    model = _model("divided_space_time", backend="regular", sdpa_backend="math")
    video = torch.randn(1, 4, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    with pytest.raises(fused.DoubleBackwardError, match="unfused"):
        torch.autograd.grad(model(video).sum(), video, create_graph=True)
    with fused.unfused():
        (g,) = torch.autograd.grad(model(video).sum(), video, create_graph=True)
    (gg,) = torch.autograd.grad(g.pow(2).sum(), model.blocks[0].mlp.fc1.weight)
    assert gg.abs().sum() > 0


def test_inference_path_unchanged():
    """No grad: the plain modules run (nothing is kept, so nothing to save); the result is the same."""
    model = _model("divided_space_time").eval()
    video = torch.randn(2, 4, 3, 32, 32, dtype=torch.float64)
    with torch.inference_mode():
        a = model(video)
    with fused.unfused(), torch.inference_mode():
        b = model(video)
    assert torch.equal(a, b)


@pytest.mark.parametrize("target_attention", ["per_position", "all_context"])
def test_generative_training_step_fused_equals_unfused(target_attention):
    from fast_timesformer.models import GenerativeTimeSformer

    torch.manual_seed(0)
    model = GenerativeTimeSformer(dim=24, image_size=16, patch_size=4, num_frames=4, num_target_frames=2, depth=2,
                                  heads=2, dim_head=12, target_attention=target_attention).double().train()
    _randomize(model)
    video = torch.randn(2, 4, 3, 16, 16, dtype=torch.float64)
    params = list(model.parameters())

    def step(ctx):
        def run():
            with ctx:
                return model(video)
        return _grads(run, params)

    _same(step(contextlib.nullcontext()), step(fused.unfused()))
    # the fused path ran: each MLP (context and target, 2 layers) kept its hidden layer once (h, 3-d), not
    # GELU's output for fc2 (a (rows, 96) view)
    param_storage = {p.untyped_storage().data_ptr() for p in params}
    kept = []

    def pack(t):
        if t.untyped_storage().data_ptr() not in param_storage:
            kept.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(video)
    hidden = [shape for shape in kept if shape[-1] == 96]
    assert len(hidden) == 4 and all(len(shape) == 3 for shape in hidden), hidden


def test_autocast_training_step_matches_plain_autocast():
    """bf16 autocast (the trainer's --amp bf16): the fused path runs, casts as autocast does, and agrees with
    the plain autocast path within bf16 round-off: per-parameter gradient error norm <= 2e-2 relative (bf16
    has 8 bits of mantissa, eps 7.8e-3; bf16 autocast itself is ~1.4e-2 from float32 on this model)."""
    torch.manual_seed(0)
    model = TimeSformer(image_size=32, patch_size=8, num_frames=4, num_classes=5, dim=48, depth=2, heads=3,
                        drop_path=0.2).train()
    _randomize(model)
    video = torch.randn(2, 4, 3, 32, 32)

    def step(ctx):
        model.zero_grad()
        torch.manual_seed(5)
        with ctx, torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(video)
        (out.float() * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        return out.detach().float(), {n: p.grad.clone() for n, p in model.named_parameters()}

    out_f, grads_f = step(contextlib.nullcontext())
    out_p, grads_p = step(fused.unfused())
    torch.testing.assert_close(out_f, out_p, rtol=2e-2, atol=2e-2)
    for name, g in grads_p.items():
        assert grads_f[name].dtype == torch.float32, name  # gradients in the parameters' dtype
        assert (grads_f[name] - g).norm() <= 2e-2 * g.norm() + 1e-6, name
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kept_fused = _saved_bytes(model, video)
        with fused.unfused():
            kept_plain = _saved_bytes(model, video)
    assert kept_fused < 0.75 * kept_plain, (kept_fused, kept_plain)
