"""Every backend against plain references, on awkward shapes; performer's and fastformer's own checks."""
import math

import pytest
import torch
from attn_reference import grouped_reference

from fast_timesformer import BackendUnavailable, get_backend, list_backends
from fast_timesformer.backends.registry import check_inputs

# Parametrised from the registry by kind (a backend registered before collection is tested too; see
# tests/test_registration.py): exact ones against the float64 reference within their declared tolerances,
# approximate ones by their error (never by name).
EXACT = [n for n in list_backends() if get_backend(n).kind == "exact"]
APPROXIMATE = [n for n in list_backends() if get_backend(n).kind == "approximate"]

# (groups per item, batch, heads, Sq, Sk, d, prefix length)
SHAPES = [
    (1, 1, 1, 7, 7, 40, 0),
    (3, 2, 2, 5, 5, 72, 1),
    (4, 1, 3, 13, 13, 40, 1),
    (2, 2, 2, 1, 9, 16, 1),  # one query (a CLS row) over many keys
    (5, 1, 2, 1, 1, 64, 2),  # f = 1: single-token groups, two prefix tokens
]


def make_inputs(groups, b, h, sq, sk, d, p, dtype, device="cpu"):
    q = torch.randn(b * groups, h, sq, d, dtype=dtype, device=device)
    k = torch.randn(b * groups, h, sk, d, dtype=dtype, device=device)
    v = torch.randn(b * groups, h, sk, d, dtype=dtype, device=device)
    pk = pv = None
    if p:
        pk = torch.randn(b, h, p, d, dtype=dtype, device=device)
        pv = torch.randn(b, h, p, d, dtype=dtype, device=device)
    return q, k, v, pk, pv


def _skip_unless_accepts(name, *inputs):
    be = get_backend(name)
    reasons = be.why_not(*inputs)
    if reasons:
        pytest.skip(f"{name}: " + "; ".join(reasons))
    return be


@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "g{}b{}h{}q{}k{}d{}p{}".format(*s))
def test_exact_backend_matches_float64_reference(name, shape):
    groups, b, h, sq, sk, d, p = shape
    dtype = torch.float64 if torch.float64 in get_backend(name).dtypes else torch.float32
    inputs = make_inputs(*shape, dtype)
    for t in inputs:
        if t is not None:
            t.requires_grad_(True)
    be = _skip_unless_accepts(name, *inputs)
    core = be.build(d, h)
    out = core(*inputs)
    ref = grouped_reference(*[None if t is None else t.detach().double().requires_grad_() for t in inputs])
    # the backend's declared tolerance in this dtype (reasoning at the declaration: Backend.tolerances and
    # registry.EXACT_TOLERANCES: float64 1e-10, float32 2e-5). Gradients (x10) pass three more matmuls.
    atol, rtol = be.tolerance(dtype)
    torch.testing.assert_close(out.double(), ref.detach(), atol=atol, rtol=rtol)
    # gradients: compare d(sum(out * w)) for a random w
    w = torch.randn_like(ref)
    grads = torch.autograd.grad((out.double() * w).sum(), [t for t in inputs if t is not None])
    ref_inputs = [None if t is None else t.detach().double().requires_grad_() for t in inputs]
    ref_out = grouped_reference(*ref_inputs)
    ref_grads = torch.autograd.grad((ref_out * w).sum(), [t for t in ref_inputs if t is not None])
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), rg, atol=atol * 10, rtol=rtol * 10)


def check_approximate_backend(name, shape=(3, 2, 2, 9, 9, 16, 1)):
    """What every approximate backend must do, whoever registered it: run forward and backward on the
    contract's shapes (prefix included) with finite results, and stay near exact attention: relative error
    below 1 (a mean-field estimate off by its own size is not an approximation)."""
    inputs = make_inputs(*shape, torch.float32)
    be = _skip_unless_accepts(name, *inputs)
    groups, b, h, sq, sk, d, p = shape
    leaves = [t.requires_grad_() for t in inputs if t is not None]
    out = be.build(d, h)(*inputs)
    assert out.shape == (groups * b, h, sq, d) and torch.isfinite(out).all()
    out.square().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in leaves)
    exact = grouped_reference(*[None if t is None else t.detach() for t in inputs])
    assert _rel_err(out.detach(), exact) < 1.0


@pytest.mark.parametrize("name", APPROXIMATE)
def test_approximate_backend_runs_and_approximates(name):
    check_approximate_backend(name)


def test_regular_custom_scale_and_noncontiguous_inputs():
    q, k, v, pk, pv = make_inputs(2, 2, 2, 6, 6, 40, 1, torch.float64)
    qt = q.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    assert not qt.is_contiguous()
    core = get_backend("regular").build(40, 2)
    out = core(qt, k, v, pk, pv, scale=0.3)
    torch.testing.assert_close(out, grouped_reference(q, k, v, pk, pv, scale=0.3))


def test_regular_sdpa_backend_option():
    core = get_backend("regular").build(16, 2, sdpa_backend="math")
    q, k, v, _, _ = make_inputs(1, 1, 2, 5, 5, 16, 0, torch.float32)
    # float32 SDPA (math) vs float64: ~1e-7 round-off on O(1) outputs of 5-term softmax averages
    torch.testing.assert_close(core(q, k, v).double(), grouped_reference(q, k, v), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown SDPA backend 'flsh'"):
        get_backend("regular").build(16, 2, sdpa_backend="flsh")


# ---- performer ---------------------------------------------------------------------------------
def _rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_performer_error_shrinks_with_more_features():
    torch.manual_seed(1)
    d, s = 32, 197
    q, k, v, _, _ = make_inputs(1, 2, 2, s, s, d, 0, torch.float32)
    q, k = q * 0.5, k * 0.5
    exact = grouped_reference(q, k, v)
    errors = []
    for m in (16, 128, 1024):
        errs = []
        for seed in range(3):  # average over feature draws: the estimator is random
            torch.manual_seed(100 + seed)
            core = get_backend("performer").build(d, 2, nb_features=m)
            errs.append(_rel_err(core(q, k, v), exact))
        errors.append(sum(errs) / len(errs))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.5 * errors[0], errors


def test_performer_scale_is_not_applied_twice():
    # with many features, performer approximates exact attention at the *default* scale, not scale**2
    torch.manual_seed(2)
    q, k, v, _, _ = make_inputs(1, 1, 1, 64, 64, 16, 0, torch.float32)
    q, k = q * 0.5, k * 0.5  # moderate norms: performer-pytorch's eps=1e-4 floor biases large logits
    core = get_backend("performer").build(16, 1, nb_features=4096)
    out = core(q, k, v)
    assert _rel_err(out, grouped_reference(q, k, v)) < 0.15
    assert _rel_err(out, grouped_reference(q, k, v, scale=16 ** -1.0)) > _rel_err(out, grouped_reference(q, k, v))


def test_performer_redraw_on_demand_and_interval():
    core = get_backend("performer").build(16, 2, nb_features=32, feature_redraw_interval=2)
    q, k, v, _, _ = make_inputs(1, 1, 2, 5, 5, 16, 0, torch.float32)
    p0 = core.fast_attention.projection_matrix.clone()
    core.eval()
    for _ in range(3):
        core(q, k, v)
    assert torch.equal(p0, core.fast_attention.projection_matrix), "eval calls must not redraw"
    core.train()
    core(q, k, v)
    core(q, k, v)
    assert torch.equal(p0, core.fast_attention.projection_matrix)
    core(q, k, v)  # third training call: interval of 2 reached
    p1 = core.fast_attention.projection_matrix.clone()
    assert not torch.equal(p0, p1)
    core.redraw_features()
    assert not torch.equal(p1, core.fast_attention.projection_matrix)
    # the counter travels with the state dict: a restored core redraws at the same call as the original
    core(q, k, v)
    twin = get_backend("performer").build(16, 2, nb_features=32, feature_redraw_interval=2)
    twin.load_state_dict(core.state_dict())
    assert twin.calls_since_redraw == core.calls_since_redraw == 1
    core(q, k, v), twin(q, k, v)  # second call: no redraw yet
    torch.manual_seed(7)
    core(q, k, v)
    torch.manual_seed(7)
    twin(q, k, v)  # third call: both redraw, from the same RNG state
    assert torch.equal(core.fast_attention.projection_matrix, twin.fast_attention.projection_matrix)
    assert not torch.equal(p1, twin.fast_attention.projection_matrix)


def test_performer_features_in_fp32_under_bf16():
    core = get_backend("performer").build(16, 1, nb_features=64)
    q, k, v, _, _ = make_inputs(1, 1, 1, 9, 9, 16, 0, torch.float32)
    ref = core(q, k, v)
    out = core(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert out.dtype == torch.bfloat16
    assert _rel_err(out, ref) < 2e-2


def test_performer_rejects_attention_dropout():
    q, k, v, _, _ = make_inputs(1, 1, 1, 4, 4, 16, 0, torch.float32)
    core = get_backend("performer").build(16, 1)
    with pytest.raises(BackendUnavailable, match="attention dropout"):
        core(q, k, v, dropout_p=0.1)


# ---- fastformer --------------------------------------------------------------------------------
def fastformer_by_the_paper(core, q, k, v):
    """Per head, per token, the paper's formulas (REFERENCE.md §4) with python loops, float64."""
    B, H, S, d = q.shape
    out = torch.empty(B, H, S, d, dtype=torch.float64)
    for bi in range(B):
        for hh in range(H):
            wq, wk = core.w_q[hh].double(), core.w_k[hh].double()
            W, bias = core.out_weight[hh].double(), core.out_bias[hh].double()
            qs, ks, vs = q[bi, hh].double(), k[bi, hh].double(), v[bi, hh].double()
            a = [torch.dot(wq, qs[i]) / math.sqrt(d) for i in range(S)]
            alpha = torch.softmax(torch.stack(a), 0)
            g_q = sum(alpha[i] * qs[i] for i in range(S))
            p = [g_q * ks[i] for i in range(S)]
            beta = torch.softmax(torch.stack([torch.dot(wk, p[i]) / math.sqrt(d) for i in range(S)]), 0)
            g_k = sum(beta[i] * p[i] for i in range(S))
            for i in range(S):
                u = g_k * vs[i]
                out[bi, hh, i] = W @ u + bias + qs[i]
    return out


@pytest.mark.parametrize("s,d", [(7, 40), (1, 16), (13, 72)])
def test_fastformer_matches_the_paper(s, d):
    core = get_backend("fastformer").build(d, 2)
    torch.nn.init.normal_(core.out_bias)
    q, k, v, _, _ = make_inputs(1, 2, 2, s, s, d, 0, torch.float64)
    core = core.double()
    torch.testing.assert_close(core(q, k, v), fastformer_by_the_paper(core, q, k, v))


def test_fastformer_global_key_pools_over_the_sequence_not_features():
    # FastTimeSformer's fault: reducing over the feature axis. Then permuting tokens would not permute
    # outputs equivariantly. The paper's pooling is permutation-equivariant over tokens.
    core = get_backend("fastformer").build(16, 1).double()
    q, k, v, _, _ = make_inputs(1, 1, 1, 6, 6, 16, 0, torch.float64)
    perm = torch.randperm(6)
    out = core(q, k, v)
    out_p = core(q[:, :, perm], k[:, :, perm], v[:, :, perm])
    torch.testing.assert_close(out_p, out[:, :, perm])


def test_fastformer_refuses_cross_and_prefix():
    core = get_backend("fastformer").build(16, 1)
    q, k, v, pk, pv = make_inputs(1, 1, 1, 1, 5, 16, 1, torch.float32)
    with pytest.raises(BackendUnavailable, match="only self-attention"):
        core(q, k, v)
    q2, k2, v2, pk, pv = make_inputs(1, 1, 1, 5, 5, 16, 1, torch.float32)
    with pytest.raises(BackendUnavailable, match="prefix"):
        core(q2, k2, v2, pk, pv)


# ---- xformers ----------------------------------------------------------------------------------
def test_xformers_matches_reference_or_reports_why():
    be = get_backend("xformers")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v, pk, pv = make_inputs(2, 2, 2, 9, 9, 40, 1, torch.float16, device)
    reasons = be.why_not(q, k, v, pk, pv)
    if not torch.cuda.is_available():
        assert reasons and any("CUDA" in r for r in reasons), reasons
        with pytest.raises(BackendUnavailable, match="CUDA"):
            be.build(40, 2)
        pytest.skip("xformers: " + "; ".join(reasons))
    if reasons:
        pytest.skip("xformers: " + "; ".join(reasons))
    out = be.build(40, 2)(q, k, v, pk, pv)
    ref = grouped_reference(*(t.double() for t in (q, k, v, pk, pv)))
    atol, rtol = be.tolerance(torch.float16)  # 2e-3: float16 outputs (u = 4.9e-4) after float32 accumulation
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol)


# ---- input checks ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_backends())
def test_every_backend_refuses_bad_shapes_with_words(name):
    be = get_backend(name)
    if be.unavailable_reasons():
        pytest.skip(f"{name}: " + "; ".join(be.unavailable_reasons()))
    core = be.build(16, 2)
    good = torch.randn(2, 2, 5, 16)
    with pytest.raises(BackendUnavailable, match="4-D"):
        core(good[0], good[0], good[0])
    with pytest.raises(BackendUnavailable, match="head dim 16"):
        core(torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8))
    with pytest.raises(BackendUnavailable, match="dtypes differ"):
        core(good, good.double(), good)
    with pytest.raises(BackendUnavailable, match="floating point"):
        core(good.long(), good.long(), good.long())
    with pytest.raises(BackendUnavailable, match="multiple of the prefix batch"):
        core(good, good, good, torch.randn(3, 2, 1, 16), torch.randn(3, 2, 1, 16))


def test_check_inputs_is_silent_on_good_inputs():
    q, k, v, pk, pv = make_inputs(2, 2, 2, 5, 7, 16, 1, torch.float32)
    assert check_inputs(q, k, v, pk, pv, dim_head=16, heads=2) == []
