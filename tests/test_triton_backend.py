"""The ``triton`` backend inside DividedAttention, against ``regular``: on CPU under Triton's interpreter
(tests/conftest.py sets TRITON_INTERPRET=1 where there is no GPU), on CUDA tensors where there is one."""
import pytest
import torch

pytest.importorskip("triton")

from fast_timesformer import BackendUnavailable, DividedAttention, TokenGroups, get_backend  # noqa: E402
from fast_timesformer.backends import resolve_backend, triton_backend  # noqa: E402

if get_backend("triton").unavailable_reasons():  # pragma: no cover
    pytest.skip("triton: " + "; ".join(get_backend("triton").unavailable_reasons()), allow_module_level=True)

DEV = "cpu" if triton_backend._interpreting() else "cuda"


@pytest.fixture(autouse=True)
def _default_device():
    prev = torch.get_default_device()
    torch.set_default_device(DEV)
    yield
    # set_default_device("cpu") is not a no-op: it leaves a function mode installed, through which later
    # tests' torch.compile cannot trace; None is the untouched default
    torch.set_default_device(None if prev == torch.device("cpu") else prev)


MODES = ["global", "per_group", "exclude", "official", "none"]


# the triton backend's declared tolerance for the layer's dtype (reasoning at the declaration: float32 2e-5,
# another summation order (online softmax), ~1e-6; float16 3e-3, probabilities rounded to float16 before
# P @ V); grads x10
def _compare(layer, x, call):
    """Output and grads (x and every parameter) with backend triton vs regular on the same weights."""
    atol, rtol = get_backend("triton").tolerance(x.dtype)
    results = []
    for name in ("regular", "triton"):
        layer.set_backend(name)
        xi = x.detach().clone().requires_grad_()
        y = call(layer, xi)
        w = torch.randn_like(y, generator=torch.Generator(device=y.device).manual_seed(1))
        grads = torch.autograd.grad((y * w).sum(), [xi] + list(layer.parameters()))
        results.append((y, grads))
    (yr, gr), (yt, gt) = results
    torch.testing.assert_close(yt, yr, atol=atol, rtol=rtol)
    for a, r in zip(gt, gr):
        torch.testing.assert_close(a, r, atol=atol * 10, rtol=rtol * 10)
    with torch.no_grad():  # inference writes straight into the layer's buffer
        layer.set_backend("triton")
        torch.testing.assert_close(call(layer, x), yr, atol=atol, rtol=rtol)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["time", "space"])
def test_layer_matches_regular_for_every_cls_mode(kind, mode):
    b, f, n, h, d, dim = 2, 3, 5, 2, 16, 24
    layer = DividedAttention(dim, heads=h, dim_head=d, cls=mode)
    x = torch.randn(b, (mode != "none") + f * n, dim)
    if kind == "time":
        call = lambda m, x: m(x, "b (f n) d", "(b n) f d", n=n)  # noqa: E731
    else:
        call = lambda m, x: m(x, "b (f n) d", "(b f) n d", f=f)  # noqa: E731
    _compare(layer, x, call)


def test_layer_fp16_and_joint_and_multi_axis_groups():
    f, n, dim = 2, 6, 32
    x = torch.randn(1, 1 + f * n, dim)
    layer = DividedAttention(dim, heads=2, dim_head=16, cls="per_group")
    _compare(layer, x, lambda m, x: m(x, groups=TokenGroups.joint(f, n)))
    # axial-style: two group axes (frame, column) and one seq axis (row) -> the split path
    axial = TokenGroups(group=((f, n), (3, 1)), seq=((2, 3),))
    _compare(layer, x, lambda m, x: m(x, groups=axial))
    half = DividedAttention(dim, heads=2, dim_head=16, cls="official").half()
    xh = x.half()
    call = lambda m, x: m(x, "b (f n) d", "(b n) f d", n=n)  # noqa: E731
    _compare(half, xh, call)


def test_refusals_are_reasons():
    be = get_backend("triton")
    q = torch.randn(2, 2, 5, 16)
    assert any("dropout" in r for r in be.why_not(q, dropout_p=0.1))
    assert any("not supported" in r for r in be.why_not(q.double()))
    assert any("head dim 160 > 128" in r for r in be.why_not(torch.randn(1, 1, 3, 160)))
    if DEV == "cpu":
        assert any("bfloat16" in r for r in be.why_not(q.bfloat16()))
    layer = DividedAttention(32, heads=2, dim_head=16, backend="triton", attn_dropout=0.5)
    with pytest.raises(BackendUnavailable, match="dropout"):
        layer(torch.randn(1, 7, 32), "b (f n) d", "(b n) f d", n=3)


def test_cpu_without_interpreter_says_how(monkeypatch):
    monkeypatch.setattr(triton_backend, "_interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    be = get_backend("triton")
    assert triton_backend.NEED_GPU in be.unavailable_reasons()
    assert any("TRITON_INTERPRET=1" in r for r in be.why_not(torch.randn(1, 1, 3, 16, device="cpu")))


def test_auto_does_not_pick_the_interpreter_on_cpu():
    q = torch.randn(2, 2, 5, 16, device="cpu")
    if not torch.cuda.is_available():
        assert resolve_backend("auto", q).name != "triton"


def test_training_hands_the_whole_projection_to_the_kernel(monkeypatch):
    from fast_timesformer.kernels import divided_attention as K

    calls = []
    real = K.divided_attention_qkv
    monkeypatch.setattr(K, "divided_attention_qkv", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    layer = DividedAttention(24, heads=2, dim_head=16, cls="official")
    x = torch.randn(2, 1 + 3 * 5, 24)
    _compare(layer, x, lambda m, x: m(x, "b (f n) d", "(b n) f d", n=5))
    assert calls  # temporal, CLS excluded: the fused-projection entry ran (and matched regular)


def test_layer_compiles_fullgraph():
    """torch.compile(fullgraph=True) through DividedAttention (aot_eager; see test_triton_kernel)."""
    torch._dynamo.reset()
    torch.set_default_device(None)  # dynamo cannot trace through set_default_device's function mode
    layer = DividedAttention(24, heads=2, dim_head=16, backend="triton", cls="official").to(DEV)
    x = torch.randn(1, 1 + 2 * 4, 24, device=DEV)
    for pattern in (("b (f n) d", "(b n) f d", {"n": 4}), ("b (f n) d", "(b f) n d", {"f": 2})):
        fn = lambda x: layer(x, pattern[0], pattern[1], **pattern[2])  # noqa: E731
        compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
        xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
        ye, yc = fn(xe), compiled(xc)
        torch.testing.assert_close(yc, ye)
        torch.testing.assert_close(torch.autograd.grad(yc.sum(), xc)[0], torch.autograd.grad(ye.sum(), xe)[0])


def test_priority_prefers_triton_only_when_compiled_on_cuda(monkeypatch):
    be = get_backend("triton")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(triton_backend, "_interpreting", lambda: False)
    assert be.priority < get_backend("regular").priority
    monkeypatch.setattr(triton_backend, "_interpreting", lambda: True)  # e.g. tests on a GPU machine
    assert be.priority > get_backend("regular").priority
