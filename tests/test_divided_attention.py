"""DividedAttention: semantics vs an explicit float64 reference, grouping, CLS conventions, switching."""
import pytest
import torch
from attn_reference import divided_reference

from fast_timesformer import (
    BackendUnavailable,
    DividedAttention,
    TokenGroups,
    get_backend,
    list_backends,
    set_backend,
    use_backend,
)

CASES = [  # (b, f, n, heads, dim_head)
    (1, 1, 7, 2, 40),  # f = 1
    (2, 3, 5, 2, 72),
    (1, 5, 3, 1, 40),
    (2, 4, 9, 3, 16),
]
MODES = ["global", "per_group", "exclude", "official", "none"]


def _layer(dim, h, d, backend="regular", **kw):
    return DividedAttention(dim, heads=h, dim_head=d, backend=backend, **kw).double()


def _groups(kind, f, n):
    return TokenGroups.time(f, n) if kind == "time" else TokenGroups.space(f, n)


def _resolved(mode, kind):
    if mode == "official":
        return "exclude" if kind == "time" else "per_group"
    return mode


EXACT = [n for n in list_backends() if get_backend(n).kind == "exact"]


@pytest.mark.parametrize("backend", EXACT)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}f{}n{}h{}d{}".format(*c))
@pytest.mark.parametrize("kind", ["time", "space"])
@pytest.mark.parametrize("mode", MODES)
def test_matches_float64_reference_forward_and_grads(backend, case, kind, mode):
    b, f, n, h, d = case
    dim = 24
    # float64 where the backend has it, else float32 against the same float64 reference
    dtype = torch.float64 if torch.float64 in get_backend(backend).dtypes else torch.float32
    # the backend's declared tolerance in this dtype (reasoning at the declaration: Backend.tolerances and
    # registry.EXACT_TOLERANCES: float64 1e-10, float32 2e-5). Gradients (x10) pass three more matmuls.
    atol, rtol = get_backend(backend).tolerance(dtype)
    reasons = get_backend(backend).why_not(torch.empty(1, h, 1, d, dtype=dtype, requires_grad=True))
    if reasons:
        pytest.skip(f"{backend}: " + "; ".join(reasons))
    layer = _layer(dim, h, d, backend).to(dtype)
    x = torch.randn(b, (mode != "none") + f * n, dim, dtype=dtype, requires_grad=True)
    if kind == "time":
        y = layer(x, "b (f n) d", "(b n) f d", n=n, cls=mode)
    else:
        y = layer(x, "b (f n) d", "(b f) n d", f=f, cls=mode)
    xr = x.detach().double().requires_grad_(True)
    ref = divided_reference(layer, xr, _groups(kind, f, n).index(), _resolved(mode, kind))
    torch.testing.assert_close(y.double(), ref, atol=atol, rtol=rtol)
    w = torch.randn_like(ref)
    params = [layer.qkv.weight, layer.proj.weight]
    g = torch.autograd.grad((y.double() * w).sum(), [x] + params)
    gr = torch.autograd.grad((ref * w).sum(), [xr] + params)
    for a, r in zip(g, gr):
        torch.testing.assert_close(a.double(), r.double(), atol=atol * 10, rtol=rtol * 10)


def test_joint_and_custom_groups():
    b, f, n, dim = 2, 2, 4, 16
    layer = _layer(dim, 2, 8)
    x = torch.randn(b, 1 + f * n, dim, dtype=torch.float64)
    joint = TokenGroups.joint(f, n)
    torch.testing.assert_close(layer(x), divided_reference(layer, x, joint.index(), "global"))
    # axial-style groups with two group axes: rows of a 2x2 patch grid per frame (width attention)
    rows = TokenGroups(group=((f, n), (2, 2)), seq=((2, 1),), kind="width")
    torch.testing.assert_close(layer(x, groups=rows, cls="per_group"),
                               divided_reference(layer, x, rows.index(), "per_group"))
    assert sorted(rows.index().flatten().tolist()) == list(range(f * n))


def test_token_groups_must_partition():
    with pytest.raises(ValueError, match="do not partition"):
        TokenGroups(group=((3, 1),), seq=((4, 2),))
    with pytest.raises(ValueError, match="cover"):
        DividedAttention(8, heads=1, dim_head=8)(torch.randn(1, 1 + 6, 8), groups=TokenGroups.time(2, 4))


def test_space_groups_reach_sdpa_as_views(monkeypatch):
    """regular backend: spatial groups are strided views of the qkv output, not copies."""
    import torch.nn.functional as F

    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((q, k, v))
        return real(q, k, v, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    f, n = 3, 5
    layer = DividedAttention(16, heads=2, dim_head=8)
    x = torch.randn(2, 1 + f * n, 16)
    layer(x, "b (f n) d", "(b f) n d", f=f, cls="exclude")
    q, k, v = seen[0]
    assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr() == v.untyped_storage().data_ptr()
    assert not q.is_contiguous(), "expected a strided view into the fused qkv buffer"


def test_grouping_reaches_only_the_right_tokens():
    """FastTimeSformer's fault: its 'temporal' groups mixed frames. A change to patch (t, p) must reach
    only position p through time attention and only frame t through space attention."""
    b, f, n, dim = 1, 4, 6, 16
    layer = DividedAttention(dim, heads=2, dim_head=8).double()
    x = torch.randn(b, 1 + f * n, dim, dtype=torch.float64)
    t0, p0 = 2, 3
    x2 = x.clone()
    x2[:, 1 + t0 * n + p0] += 1.0
    for kind, call in (("time", lambda z: layer(z, "b (f n) d", "(b n) f d", n=n)),
                       ("space", lambda z: layer(z, "b (f n) d", "(b f) n d", f=f))):
        changed = (call(x2) - call(x)).abs().amax(-1)[0, 1:].view(f, n) > 1e-12
        expect = torch.zeros(f, n, dtype=torch.bool)
        if kind == "time":
            expect[:, p0] = True
        else:
            expect[t0, :] = True
        assert torch.equal(changed, expect), (kind, changed)


def test_official_cls_is_left_out_of_time_attention():
    f, n = 3, 4
    layer = DividedAttention(16, heads=2, dim_head=8, cls="official").double()
    x = torch.randn(2, 1 + f * n, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 0] += 3.0
    y, y2 = (layer(z, "b (f n) d", "(b n) f d", n=n) for z in (x, x2))
    torch.testing.assert_close(y[:, 1:], y2[:, 1:])  # patches don't see the CLS
    torch.testing.assert_close(y[:, 0], layer.proj.bias.expand(2, 16))  # CLS row: proj(0)


@pytest.mark.parametrize("backend", ["performer", "fastformer"])
@pytest.mark.parametrize("mode", ["global", "per_group", "exclude"])
def test_approximate_backends_run_every_mode_with_grads(backend, mode):
    f, n = 3, 4
    layer = DividedAttention(16, heads=2, dim_head=8, backend=backend)
    x = torch.randn(2, 1 + f * n, 16, requires_grad=True)
    for pat, size in ((("b (f n) d", "(b n) f d"), {"n": n}), (("b (f n) d", "(b f) n d"), {"f": f})):
        y = layer(x, *pat, cls=mode, **size)
        assert y.shape == x.shape and torch.isfinite(y).all()
        y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_fastformer_over_cls_and_group_is_self_attention_of_the_materialised_sequence():
    f, n, h, d = 2, 3, 2, 8
    layer = DividedAttention(16, heads=h, dim_head=d, backend="fastformer").double()
    core = layer.cores["fastformer"]
    x = torch.randn(1, 1 + f * n, 16, dtype=torch.float64)
    y = layer(x, "b (f n) d", "(b f) n d", f=f, cls="per_group")
    qkv = (x @ layer.qkv.weight.T + layer.qkv.bias).view(1, 1 + f * n, 3, h, d)
    outs, cls_rows = [], []
    for t in range(f):
        rows = [0] + [1 + t * n + p for p in range(n)]
        q, k, v = (qkv[:, rows, i].transpose(1, 2) for i in range(3))
        o = core(q, k, v)
        cls_rows.append(o[:, :, :1])
        outs.append(o[:, :, 1:])
    expect = torch.cat([torch.stack(cls_rows).mean(0)] + outs, 2).transpose(1, 2).reshape(1, 1 + f * n, h * d)
    torch.testing.assert_close(y, layer.proj(expect))


# ---- backend switching -------------------------------------------------------------------------
def test_switching_backends_keeps_weights_and_restores():
    model = torch.nn.Sequential(DividedAttention(16, heads=2, dim_head=8, step="time"),
                                DividedAttention(16, heads=2, dim_head=8, step="space"))
    x = torch.randn(1, 1 + 2 * 3, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    y0 = model[0](x)
    with use_backend(model, "fastformer"):
        assert all(m.backend == "fastformer" for m in model)
        y1 = model[0](x)
        assert not torch.allclose(y0, y1)
    assert all(m.backend == "regular" for m in model)
    torch.testing.assert_close(model[0](x), y0)
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v)
    assert "cores.fastformer.w_q" not in model[0].state_dict()  # the context left nothing behind
    # set_backend by step; fastformer state is kept when switching back and forth
    set_backend(model, {"time": "fastformer"})
    assert [m.backend for m in model] == ["fastformer", "regular"]
    w = model[0].cores["fastformer"].w_q.detach().clone()
    model[0].set_backend("regular").set_backend("fastformer")
    assert torch.equal(model[0].cores["fastformer"].w_q, w)
    with pytest.raises(ValueError, match="unknown attention step"):
        set_backend(model, {"tiem": "regular"})


def test_use_backend_restores_options():
    layer = DividedAttention(16, heads=2, dim_head=8, backend="performer", nb_features=8)
    with use_backend(layer, "performer", nb_features=32):
        assert layer.cores["performer"].nb_features == 32
    assert layer.cores["performer"].nb_features == 8


def test_auto_picks_an_exact_backend_and_says_why_not_others():
    layer = DividedAttention(16, heads=2, dim_head=8, backend="auto")
    x = torch.randn(1, 1 + 4, 16)
    y = layer(x, "b (f n) d", "(b n) f d", n=2)
    ref = DividedAttention(16, heads=2, dim_head=8)
    ref.load_state_dict(layer.state_dict(), strict=False)
    torch.testing.assert_close(y, ref(x, "b (f n) d", "(b n) f d", n=2))
    (chosen,) = list(layer.cores)
    assert get_backend(chosen).exact and chosen != "xformers"  # xformers refuses on CPU

# ---- bad input ---------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors():
    layer = DividedAttention(16, heads=2, dim_head=8)
    x = torch.randn(1, 1 + 6, 16)
    with pytest.raises(ValueError, match=r"\(batch, tokens, dim\)"):
        layer(torch.randn(7, 16))
    with pytest.raises(ValueError, match="width 8"):
        layer(torch.randn(1, 7, 8))
    with pytest.raises(TypeError, match="float64"):
        layer(x.double())
    with pytest.raises(ValueError, match="6 patch tokens are not divisible by n=4"):
        layer(x, "b (f n) d", "(b n) f d", n=4)
    with pytest.raises(ValueError, match="unsupported patterns"):
        layer(x, "b (f n) d", "(b n) d f", n=3)
    with pytest.raises(ValueError, match="give the size"):
        layer(x, "b (f n) d", "(b n) f d")
    with pytest.raises(ValueError, match="unknown cls mode"):
        layer(x, cls="first")
    with pytest.raises(ValueError, match=r"unknown attention backend 'regulr'.*Did you mean 'regular'"):
        DividedAttention(16, backend="regulr")
    with pytest.raises(TypeError, match="nb_features"):
        DividedAttention(16, backend="regular", nb_features=3)
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="no CUDA device"):
            DividedAttention(16, backend="xformers")
    drop = DividedAttention(16, heads=2, dim_head=8, backend="performer", attn_dropout=0.1)
    with pytest.raises(BackendUnavailable, match="attention dropout"):
        drop(x)
    drop.eval()
    assert drop(x).shape == x.shape  # no dropout at eval time: accepted
