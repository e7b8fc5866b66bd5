"""The fused Triton divided-attention kernel vs its plain-PyTorch twin and a float64 reference.

Without a GPU the kernels run on CPU in Triton's interpreter: tests/conftest.py sets TRITON_INTERPRET=1
before collection (Triton reads it when the kernels are decorated, i.e. when
``fast_timesformer.kernels.divided_attention`` is first imported). With a GPU (and the variable unset)
the same tests run the compiled kernels on CUDA tensors, plus a bfloat16 check.
"""
import os

import pytest
import torch

pytest.importorskip("triton")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st

from fast_timesformer.kernels import divided_attention as K  # noqa: E402
from fast_timesformer.kernels import naive as N  # noqa: E402

DEV = "cpu" if K.INTERPRETED else "cuda"
if DEV == "cuda" and not torch.cuda.is_available():  # pragma: no cover
    pytest.skip("the kernels were compiled for a GPU (TRITON_INTERPRET unset) and there is none",
                allow_module_level=True)
# Relative to O(1) values: a few hundred ulp of the dtype (float32 6e-8, float16 5e-4, bfloat16 4e-3), as
# the kernel accumulates in float32 in another order (online softmax over key blocks) than the twin.
TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}


@pytest.fixture(autouse=True)
def _default_device():
    """Tensors made without a device land on DEV (cuda with a GPU, else cpu for the interpreter)."""
    prev = torch.get_default_device()
    torch.set_default_device(DEV)
    yield
    # set_default_device("cpu") is not a no-op: it leaves a function mode installed, through which later
    # tests' torch.compile cannot trace; None is the untouched default
    torch.set_default_device(None if prev == torch.device("cpu") else prev)


def qkv_buffer(b, m, h, d, dtype, *, strided=False):
    """A fused-projection-like (b, m, 3, h, d) buffer; ``strided`` makes it a non-contiguous slice of a
    wider, permuted allocation (heads outermost, padded dim)."""
    if strided:
        big = torch.randn(h, b, m, 3, d + 3, dtype=torch.float32, device=DEV).to(dtype)
        return big.permute(1, 2, 3, 0, 4)[..., 1:d + 1]
    return torch.randn(b, m, 3, h, d, dtype=torch.float32, device=DEV).to(dtype)


def axes(kind, f, n):
    return ((n, 1), (f, n)) if kind == "time" else ((f, n), (n, 1))


def run(fn, qkv, pkv, kind, f, n, w):
    """fn on token-layout views; returns output and grads of sum(out * w) w.r.t. the buffers."""
    qkv = qkv.detach().requires_grad_()
    pkv = None if pkv is None else pkv.detach().requires_grad_()
    q5, k5, v5 = (K.token_view(t, *axes(kind, f, n)) for t in qkv.unbind(2))
    pk, pv = (None, None) if pkv is None else pkv.unbind(2)
    out = fn(q5, k5, v5, pk, pv)
    leaves = [qkv] + ([] if pkv is None else [pkv])
    grads = torch.autograd.grad((out.to(w.dtype) * w).sum(), leaves)
    return out, grads


def check_against_twin_and_float64(b, f, n, h, d, prefix, dtype, kind, strided=False):
    m = f * n
    qkv = qkv_buffer(b, m, h, d, dtype, strided=strided)
    pkv = torch.randn(b, prefix, 2, h, d, device=DEV).to(dtype) if prefix else None
    w = torch.randn(b, *K.token_view(qkv[:, :, 0], *axes(kind, f, n)).shape, device=DEV, dtype=torch.float64)
    out, grads = run(K.divided_attention, qkv, pkv, kind, f, n, w)
    twin, twin_grads = run(N.divided_attention, qkv, pkv, kind, f, n, w)
    ref, ref_grads = run(N.divided_attention, qkv.double(), None if pkv is None else pkv.double(), kind, f, n, w)
    assert out.shape == ref.shape and out.dtype == dtype
    tol = TOL[dtype]
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
    torch.testing.assert_close(out, twin, atol=tol, rtol=tol)
    for g, tg, rg in zip(grads, twin_grads, ref_grads):
        assert g.dtype == dtype
        scale = rg.abs().max().item() + 1e-3
        torch.testing.assert_close(g.double(), rg, atol=tol * scale, rtol=tol)
        torch.testing.assert_close(g.double(), tg.double(), atol=tol * scale, rtol=tol)
    if prefix:  # the prefix got gradient from every group
        assert grads[1].abs().sum() > 0


# ---- the grid named in the issue ---------------------------------------------------------------
@pytest.mark.parametrize("prefix", [0, 1], ids=["noprefix", "cls"])
@pytest.mark.parametrize("d", [16, 40, 64])
@pytest.mark.parametrize("n", [7, 50])
@pytest.mark.parametrize("f", [1, 5, 8])
def test_fp32_time_and_space_match_twin_and_float64(f, n, d, prefix):
    for kind in ("time", "space"):
        check_against_twin_and_float64(1, f, n, 1, d, prefix, torch.float32, kind, strided=(d == 40))


@pytest.mark.parametrize("f,n,d,prefix", [(8, 7, 64, 1), (5, 50, 40, 1), (1, 7, 16, 0), (8, 50, 16, 0)])
def test_fp16_matches_twin_and_float64(f, n, d, prefix):
    for kind in ("time", "space"):
        check_against_twin_and_float64(2, f, n, 1, d, prefix, torch.float16, kind, strided=(prefix == 1))


@pytest.mark.skipif(DEV != "cuda", reason="the Triton interpreter has no bfloat16 arithmetic")
@pytest.mark.parametrize("f,n,d,prefix", [(8, 196, 64, 1), (8, 7, 40, 0)])
def test_bf16_on_gpu_matches_float64(f, n, d, prefix):
    for kind in ("time", "space"):
        check_against_twin_and_float64(2, f, n, 3, d, prefix, torch.bfloat16, kind, strided=True)


@pytest.mark.parametrize("n,prefix", [(50, 1), (70, 0), (130, 2)])
def test_flash_tiling_long_groups(monkeypatch, n, prefix):
    """Groups longer than the packing limit: query/key blocks, a separate delta, dk/dv and dq pass."""
    monkeypatch.setattr(K, "PACK_LIMIT", 4)
    assert not K._plan(2, n, n, prefix, 24).packed
    check_against_twin_and_float64(1, 2, n, 1, 24, prefix, torch.float32, "space", strided=True)
    check_against_twin_and_float64(1, 5, 3, 1, 24, prefix, torch.float32, "time")  # T=5 > 4: flash too


def test_two_prefix_tokens_and_custom_scale():
    qkv = qkv_buffer(2, 12, 2, 16, torch.float32)
    pkv = torch.randn(2, 2, 3, 2, 16)
    q5, k5, v5 = (K.token_view(t, *axes("time", 3, 4)) for t in qkv.unbind(2))
    out = K.divided_attention(q5, k5, v5, pkv[:, :, 0], pkv[:, :, 1], scale=0.37)
    ref = N.divided_attention(q5.double(), k5.double(), v5.double(), pkv[:, :, 0].double(), pkv[:, :, 1].double(),
                              scale=0.37)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_output_is_in_token_order_and_out_is_written_in_place():
    b, f, n, h, d = 2, 3, 5, 2, 16
    qkv = qkv_buffer(b, f * n, h, d, torch.float32)
    q, k, v = qkv.unbind(2)
    for kind in ("time", "space"):
        ax = axes(kind, f, n)
        q5, k5, v5 = (K.token_view(t, *ax) for t in (q, k, v))
        y = K.divided_attention(q5, k5, v5)
        # a fresh output lies in token order: its (b, M, h, d) flattening is a view
        tok = y.transpose(1, 2) if kind == "time" else y
        assert tok.flatten(1, 2).data_ptr() == y.data_ptr() and tok.is_contiguous()
        buf = torch.full((b, 1 + f * n, h, d), 7.0)  # a layer's buffer: CLS row + patches
        out5 = K.token_view(buf[:, 1:], *ax)
        ret = K.divided_attention(q5, k5, v5, out=out5)
        assert ret is out5
        torch.testing.assert_close(out5, y)
        assert (buf[:, 0] == 7.0).all()  # the CLS row is untouched


def test_attention_4d_contract_with_noncontiguous_inputs():
    """(B, heads, S, d) with B = batch * groups, the prefix shared per batch item, any strides."""
    batch, groups, h, s, d = 2, 3, 2, 6, 40
    q = torch.randn(batch * groups, s, h, d).transpose(1, 2)  # (B, h, S, d) non-contiguous
    k = torch.randn(batch * groups, h, 9, d)
    v = torch.randn(batch * groups, h, d, 9).transpose(2, 3)
    pk, pv = torch.randn(batch, h, 1, d), torch.randn(batch, h, 1, d)
    for t in (q, k, v, pk, pv):
        t.requires_grad_()
    out = K.attention_4d(q, k, v, pk, pv, scale=0.2)
    ref = N.attention_4d(*(t.double() for t in (q, k, v, pk, pv)), scale=0.2)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    w = torch.randn_like(ref)
    g = torch.autograd.grad((out.double() * w).sum(), [q, k, v, pk, pv])
    gr = torch.autograd.grad((ref * w).sum(), [q, k, v, pk, pv])
    for a, r in zip(g, gr):
        torch.testing.assert_close(a.double(), r.double(), atol=1e-4, rtol=1e-4)


# ---- shape fuzz ----------------------------------------------------------------------------------
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(b=st.integers(1, 2), g=st.integers(1, 5), sq=st.integers(1, 20), sk=st.integers(1, 20),
       h=st.integers(1, 2), d=st.integers(1, 72), p=st.integers(0, 2), pack=st.sampled_from([4, 64]),
       order=st.permutations(range(5)), data=st.data())
def test_fuzz_shapes_strides_and_tilings(b, g, sq, sk, h, d, p, pack, order, data):
    K.PACK_LIMIT, saved = pack, K.PACK_LIMIT
    try:
        def make(s):  # (b, g, s, h, d) stored in a random axis order
            shape = (b, g, s, h, d)
            return torch.randn(*[shape[i] for i in order]).permute(*[order.index(i) for i in range(5)])
        q, k, v = make(sq), make(sk), make(sk)
        pk = pv = None
        if p:
            pk, pv = torch.randn(b, p, h, d), torch.randn(b, h, p, d).transpose(1, 2)
        leaves = [t.requires_grad_() for t in (q, k, v, pk, pv) if t is not None]
        scale = data.draw(st.sampled_from([None, 0.5]))
        out = K.divided_attention(q, k, v, pk, pv, scale=scale)
        ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
        it = iter(ref_leaves)
        rq, rk, rv = next(it), next(it), next(it)
        rpk, rpv = (next(it), next(it)) if p else (None, None)
        ref = N.divided_attention(rq, rk, rv, rpk, rpv, scale=scale)
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
        w = torch.randn_like(ref)
        grads = torch.autograd.grad((out.double() * w).sum(), leaves)
        ref_grads = torch.autograd.grad((ref * w).sum(), ref_leaves)
        for a, r in zip(grads, ref_grads):
            torch.testing.assert_close(a.double(), r, atol=1e-4, rtol=1e-4)
    finally:
        K.PACK_LIMIT = saved


# ---- errors ------------------------------------------------------------------------------------
def _qkv(shape=(1, 2, 3, 2, 16), dtype=torch.float32):
    return torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)


@pytest.mark.parametrize("args, match", [
    (lambda: _qkv(dtype=torch.float64), "dtype torch.float64 not supported"),
    (lambda: _qkv(dtype=torch.bfloat16), "bfloat16"),
    (lambda: tuple(t[0] for t in _qkv()), "must be 5-D"),
    (lambda: (*_qkv()[:2], torch.randn(1, 2, 4, 2, 16)), "k and v shapes differ"),
    (lambda: (torch.randn(1, 2, 3, 2, 16), torch.randn(1, 3, 3, 2, 16), torch.randn(1, 3, 3, 2, 16)),
     "must agree on batch, groups, heads and dim"),
    (lambda: _qkv((1, 1, 2, 1, 130)), "head dim 130 > 128"),
    (lambda: (*_qkv(), torch.randn(1, 1, 2, 8), torch.randn(1, 1, 2, 8)), "prefix_k must be"),
    (lambda: (*_qkv(), torch.randn(1, 1, 2, 16), None), "given together"),
    (lambda: (*_qkv()[:2], _qkv()[2].long()), "dtypes differ"),
])
def test_bad_arguments_raise_clear_errors(args, match):
    if match == "bfloat16" and not K.INTERPRETED:
        pytest.skip("bfloat16 is supported on the GPU")
    with pytest.raises(ValueError, match=match):
        K.divided_attention(*args())


def test_bad_out_and_token_view_raise():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="out must have q's shape"):
        K.divided_attention(q, k, v, out=torch.empty(1, 2, 3, 2, 8))
    with pytest.raises(ValueError, match="cover 12 tokens"):
        K.token_view(torch.randn(1, 10, 2, 16), (3, 1), (4, 3))


def test_interpreter_flag_reflects_environment():
    assert K.INTERPRETED == (os.environ.get("TRITON_INTERPRET") == "1")


# ---- torch.compile ---------------------------------------------------------------------------
def test_compiles_fullgraph_with_autograd_and_inplace_out():
    """The custom ops trace without graph breaks (aot_eager: the interpreter cannot run inductor's
    Triton code on CPU, and inductor's CPU compile costs a minute; it was checked by hand)."""
    torch.set_default_device(None)  # dynamo cannot trace through set_default_device's function mode
    qkv = qkv_buffer(1, 12, 2, 16, torch.float32)
    pkv = torch.randn(1, 1, 3, 2, 16, device=DEV)

    def f(qkv, pkv):
        q5, k5, v5 = (K.token_view(t, *axes("time", 3, 4)) for t in qkv.unbind(2))
        return K.divided_attention(q5, k5, v5, pkv[:, :, 0], pkv[:, :, 1]).sum(dim=(1, 2))

    def f_out(qkv, pkv, buf):
        q5, k5, v5 = (K.token_view(t, *axes("space", 3, 4)) for t in qkv.unbind(2))
        K.divided_attention(q5, k5, v5, pkv[:, :, 0], pkv[:, :, 1], out=K.token_view(buf[:, 1:], *axes("space", 3, 4)))
        return buf * 2

    torch._dynamo.reset()
    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    a, b = qkv.clone().requires_grad_(), qkv.clone().requires_grad_()
    y, yc = f(a, pkv), cf(b, pkv)
    torch.testing.assert_close(yc, y)
    torch.testing.assert_close(torch.autograd.grad(yc.sum(), b)[0], torch.autograd.grad(y.sum(), a)[0])
    cfo = torch.compile(f_out, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        ref = f_out(qkv, pkv, torch.zeros(1, 13, 2, 16, device=DEV))
        torch.testing.assert_close(cfo(qkv, pkv, torch.zeros(1, 13, 2, 16, device=DEV)), ref)
    assert (ref[:, 0] == 0).all() and (ref[:, 1:] != 0).any()


def test_autotune_times_candidates_and_caches_the_fastest(monkeypatch):
    """The mechanics (on CPU the interpreter's timings mean nothing; on a GPU this picks tiles per shape)."""
    monkeypatch.setattr(K, "AUTOTUNE", True)
    monkeypatch.setattr(K, "_TUNED", {})
    shape = (1, 3, 6, 1, 16)
    cands = [K._packed_plan(3, 6, 6, 1, 16, 16), K._flash_plan(3, 6, 6, 1, 16, 16, 32)]
    monkeypatch.setattr(K, "_candidates", lambda *a: cands)
    q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
    pk, pv = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    out = K.divided_attention(q, k, v, pk, pv)
    dq, = torch.autograd.grad(out.sum(), q)
    ref = N.divided_attention(q, k, v, pk, pv)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dq, torch.autograd.grad(ref.sum(), q)[0], atol=1e-4, rtol=1e-4)
    assert sorted(key[0] for key in K._TUNED) == ["bwd", "fwd"]
    assert all(plan in cands for plan in K._TUNED.values())


def test_candidate_plans_cover_both_tilings():
    plans = K._candidates(196, 8, 8, 0, 64)
    assert plans[0] == K._plan(196, 8, 8, 0, 64) and plans[0].packed
    assert any(not p.packed for p in plans) and len(set(plans)) == len(plans)
    for p in plans:  # every tile is legal for tl.dot on a GPU
        assert min(p.block_m, p.block_n, p.block_d, p.block_p) >= 16
        assert not p.packed or p.gpb * 8 <= min(p.block_m, p.block_n)


@pytest.mark.parametrize("kind", ["time", "space"])
def test_fused_projection_entry_matches_views(kind):
    """divided_attention_qkv on the whole (b, M, 3*h*d) projection output: same values and gradients."""
    b, f, n, h, d = 2, 3, 5, 2, 16
    lin = torch.nn.Linear(8, 3 * h * d)
    x = torch.randn(b, f * n, 8)
    pk, pv = (torch.randn(b, 1, h, d, requires_grad=True) for _ in range(2))
    proj = lin(x)
    q, k, v = proj.unflatten(-1, (3, h, d)).unbind(2)
    src = K.fused_qkv_source(q, k, v)
    assert src is not None and src.data_ptr() == proj.data_ptr() and src.shape == proj.shape
    y = K.divided_attention_qkv(src, h, *axes(kind, f, n), pk, pv)
    ref = N.divided_attention(*(K.token_view(t.double(), *axes(kind, f, n)) for t in (q, k, v)), pk.double(),
                              pv.double())
    torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)
    w = torch.randn_like(ref)
    leaves = [lin.weight, lin.bias, pk, pv]
    g = torch.autograd.grad((y.double() * w).sum(), leaves, retain_graph=True)
    gr = torch.autograd.grad((ref * w).sum(), leaves)
    for a, r in zip(g, gr):
        torch.testing.assert_close(a.double(), r.double(), atol=1e-4, rtol=1e-4)
    # not one projection buffer -> None
    assert K.fused_qkv_source(*(t.clone() for t in (q, k, v))) is None
    assert K.fused_qkv_source(*proj.detach().unflatten(-1, (3, h, d)).unbind(2)) is None
    with pytest.raises(ValueError, match="qkv must be"):
        K.divided_attention_qkv(src, 5, *axes(kind, f, n))
