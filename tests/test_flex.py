"""The ``flex`` backend (FlexAttention): exact against the float64 reference for every CLS mode and both
layouts (eager, float64), one compiled shape (float32), the block-mask cache, and its declared refusals."""
import pytest
import torch
from attn_reference import divided_reference, grouped_reference

from fast_timesformer import BackendUnavailable, DividedAttention, TokenGroups, get_backend, resolve_backend
from fast_timesformer.backends import flex
from fast_timesformer.schemes import width_groups

BE = get_backend("flex")
MODES = ["global", "per_group", "exclude", "official", "none"]
# (b, f, gh, gw, heads, dim_head): N = 7 and 50 patches per frame, T = 1 and 5 frames, d = 40
# (each new shape costs FlexAttention's eager path a dynamo trace, ~0.5 s: the grid is kept small)
CASES = [(1, 1, 1, 7, 2, 40), (2, 5, 5, 10, 1, 40)]
KINDS = {
    "time": lambda f, gh, gw: TokenGroups.time(f, gh * gw),
    "space": lambda f, gh, gw: TokenGroups.space(f, gh * gw),
    "joint": lambda f, gh, gw: TokenGroups.joint(f, gh * gw),
    "width": width_groups,  # two group axes (frame, row)
}
# float64 through FlexAttention's eager path: exact but for round-off (~1e-16 x the O(10) sizes summed)
TOL64 = BE.tolerance(torch.float64)


def _resolved(mode, groups):
    return ("exclude" if groups.is_time else "per_group") if mode == "official" else mode


@pytest.mark.parametrize("layout", flex.LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}f{}g{}x{}h{}d{}".format(*c))
@pytest.mark.parametrize("kind", list(KINDS))
def test_layer_matches_float64_reference_every_cls_mode(layout, case, kind):
    b, f, gh, gw, h, d = case
    groups = KINDS[kind](f, gh, gw)
    torch.manual_seed(0)
    layer = DividedAttention(24, heads=h, dim_head=d, backend="flex", compile=False, layout=layout).double()
    for mode in MODES:
        x = torch.randn(b, (mode != "none") + f * gh * gw, 24, dtype=torch.float64)
        with torch.no_grad():
            y = layer(x, groups=groups, cls=mode)
        ref = divided_reference(layer, x, groups.index(), _resolved(mode, groups))
        torch.testing.assert_close(y, ref, atol=TOL64[0], rtol=TOL64[1], msg=lambda m: f"{mode}: {m}")


@pytest.mark.parametrize("shape", [(1, 1, 1, 7, 7, 40, 0), (3, 2, 2, 5, 5, 40, 1), (2, 2, 2, 1, 9, 16, 1),
                                   (0, 2, 2, 5, 5, 16, 1)], ids=str)
def test_core_contract_float64(shape):
    g, b, h, sq, sk, d, p = shape
    q = torch.randn(b * g, h, sq, d, dtype=torch.float64)
    k, v = (torch.randn(b * g, h, sk, d, dtype=torch.float64) for _ in range(2))
    pk = pv = None
    if p:
        pk, pv = (torch.randn(b, h, p, d, dtype=torch.float64) for _ in range(2))
    out = BE.build(d, h, compile=False)(q, k, v, pk, pv, scale=0.3)
    assert out.shape == q.shape
    if b * g:
        torch.testing.assert_close(out, grouped_reference(q, k, v, pk, pv, scale=0.3), atol=TOL64[0], rtol=TOL64[1])


@pytest.mark.slow
def test_compiled_once_per_shape_float32():
    """One compiled shape (compiling costs ~15 s on CPU): exact to float32's tolerance, the compile time is
    recorded on the core, and a second call of the same shape compiles nothing."""
    torch.manual_seed(1)
    q, k, v = (torch.randn(6, 2, 5, 40) for _ in range(3))
    pk, pv = (torch.randn(2, 2, 1, 40) for _ in range(2))
    core = BE.build(40, 2)  # compile=True by default
    with torch.no_grad():
        out = core(q, k, v, pk, pv)
        assert core.compile_seconds > 0 or core.compiled_shapes == []  # 0 only if this process compiled it before
        first = (core.compile_seconds, list(core.compiled_shapes))
        again = core(q, k, v, pk, pv)
    # float32 vs the float64 reference: the backend's declared float32 tolerance (see registry.EXACT_TOLERANCES)
    atol, rtol = BE.tolerance(torch.float32)
    ref = grouped_reference(q, k, v, pk, pv)
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol)
    assert torch.equal(out, again)
    assert (core.compile_seconds, core.compiled_shapes) == first  # no second compile
    assert all(key in flex.COMPILE_SECONDS for key in core.compiled_shapes)


def test_mask_cache_second_call_builds_no_mask(monkeypatch):
    monkeypatch.setattr(flex, "MASK_CACHE", type(flex.MASK_CACHE)())
    f, n = 3, 10
    layer = DividedAttention(16, heads=2, dim_head=8, backend="flex", compile=False, layout="mask").double()
    other = DividedAttention(16, heads=2, dim_head=8, backend="flex", compile=False, layout="mask").double()
    x = torch.randn(2, 1 + f * n, 16, dtype=torch.float64)
    with torch.no_grad():
        layer(x, "b (f n) d", "(b f) n d", f=f, cls="per_group")
        core = layer.cores["flex"]
        assert core.masks_built == 2  # the patches' mask and the per-group CLS rows' mask
        layer(x, "b (f n) d", "(b f) n d", f=f, cls="per_group")
        layer(x[:1], "b (f n) d", "(b f) n d", f=f, cls="per_group")  # another batch size: the same masks
        assert core.masks_built == 2
        other(x, "b (f n) d", "(b f) n d", f=f, cls="per_group")  # another layer, same step: shared cache
        assert other.cores["flex"].masks_built == 0
        layer(x, "b (f n) d", "(b n) f d", n=n, cls="global")  # another step: its own mask
        assert core.masks_built == 3
    assert len(flex.MASK_CACHE) == 3


def test_batch_layout_builds_no_mask(monkeypatch):
    monkeypatch.setattr(flex, "MASK_CACHE", type(flex.MASK_CACHE)())
    layer = DividedAttention(16, heads=2, dim_head=8, backend="flex", compile=False).double()
    with torch.no_grad():
        layer(torch.randn(2, 1 + 12, 16, dtype=torch.float64), "b (f n) d", "(b n) f d", n=4, cls="per_group")
    assert layer.cores["flex"].masks_built == 0 and len(flex.MASK_CACHE) == 0


# ---- refusals: declared, in words, never a silent fallback -------------------------------------------
def test_cpu_backward_is_refused_with_the_declared_reason():
    q = torch.randn(2, 2, 5, 16, requires_grad=True)
    assert BE.why_not(q, q, q) == [flex.CPU_BACKWARD_REASON]
    with torch.no_grad():
        assert BE.why_not(q, q, q) == []
        assert BE.why_not(q, q, q, needs_grad=True) == [flex.CPU_BACKWARD_REASON]  # the caller says grad is needed
    layer = DividedAttention(16, heads=2, dim_head=8, backend="flex", compile=False)
    with pytest.raises(BackendUnavailable) as e:
        layer(torch.randn(1, 1 + 6, 16), "b (f n) d", "(b f) n d", f=2)  # weights require grad
    assert flex.CPU_BACKWARD_REASON in e.value.reasons
    # the declaration is true of this torch: FlexAttention itself raises for a CPU input requiring grad
    from torch.nn.attention.flex_attention import flex_attention

    with pytest.raises(NotImplementedError, match="backward on CPU"):
        flex_attention(q, q, q)


def test_gradients_where_supported():
    """Gradients against the float64 reference where this torch has a flex backward (CUDA); elsewhere the
    skip reason must be the backend's own declared refusal."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float32
    q, k, v = (torch.randn(4, 2, 9, 40, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    reasons = BE.why_not(q, k, v)
    if reasons:
        assert reasons == [flex.CPU_BACKWARD_REASON], reasons
        pytest.skip("flex: " + "; ".join(reasons))
    out = BE.build(40, 2)(q, k, v)
    w = torch.randn_like(out)
    grads = torch.autograd.grad((out * w).sum(), [q, k, v])
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref_grads = torch.autograd.grad((grouped_reference(*ref_in) * w.double()).sum(), ref_in)
    atol, rtol = BE.tolerance(dtype)
    for g, r in zip(grads, ref_grads):  # gradients pass three more matmuls: 10x the output tolerance
        torch.testing.assert_close(g.double(), r, atol=10 * atol, rtol=10 * rtol)


def test_other_refusals():
    q = torch.randn(2, 2, 5, 16)
    with torch.no_grad():
        assert any("dropout" in r for r in BE.why_not(q, q, q, dropout_p=0.1))
        with pytest.raises(BackendUnavailable, match="dtype torch.float64 not supported"):
            BE.build(16, 2)(q.double(), q.double(), q.double())  # compiled float64: refused before compiling
        assert flex.EAGER.why_not(q.double()) == []  # the eager path (compile=False) takes it
    with pytest.raises(ValueError, match="Did you mean 'mask'"):
        BE.build(16, 2, layout="masks")
    with pytest.raises(TypeError):
        BE.build(16, 2, nb_features=4)


def test_core_pickles_with_its_options():
    import pickle

    core = BE.build(8, 2, compile=False, layout="mask")
    twin = pickle.loads(pickle.dumps(core))
    assert twin.backend is BE and (twin.compile, twin.layout, twin.capabilities.plain_sequences) == (False, "mask", False)


def test_capabilities_and_auto():
    assert BE.exact and BE.kind == "exact" and not BE.supports_dropout
    assert BE.priority > get_backend("regular").priority  # never chosen where regular runs
    q = torch.randn(2, 2, 5, 16)
    with torch.no_grad():
        assert resolve_backend("auto", q, q, q).name != "flex"
    row = BE.describe()
    assert row["name"] == "flex" and row["status"] == "available"
