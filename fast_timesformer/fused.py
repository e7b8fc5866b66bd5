"""Training-memory savers: a block's LayerNorm, MLP and output projections as autograd Functions that keep
fewer activations for backward and recompute the cheap ones (elementwise) instead.

What plain autograd keeps for ``linear(layer_norm(x))`` is x (for the norm) *and* the norm's output (for
the GEMM's weight gradient); for ``fc2(gelu(fc1(z)))`` it keeps z, fc1's output *and* gelu's output; for
``fc(proj(a))`` it keeps a *and* proj's output. Per token of a ViT-B TimeSformer block (divided) that is
24 rows of width ``dim`` in all; with these Functions it is 14 (each step's x and q/k/v, the space step's
attention output, the MLP's x and fc1's output):

========================= =================================== ==========================================
Function                  keeps for backward                  recomputes in backward
========================= =================================== ==========================================
``layer_norm_linear``     x, mean, rstd                       the norm's output (one elementwise pass)
``layer_norm_mlp``        x, mean, rstd, fc1's output h       the norm's output, gelu(h)
``linear_linear``         the first linear's input a          nothing: fc's weight gradient is
                                                              ``(g^T a) proj.W^T + (g^T 1) proj.b^T``
                                                              (a dim x dim GEMM instead of keeping
                                                              proj's output)
``attend_linear_linear``  q, k, v (kept anyway)               the attention (short sequences: time)
========================= =================================== ==========================================

The GEMMs, the norm and the GELU are the same ATen kernels autograd would run (``native_layer_norm`` and
its backward, ``gelu_backward``), so results agree with the plain path to float round-off (tested in
float64 against it). Why not :mod:`torch.utils.checkpoint` (selective activation checkpointing): it
keeps every GEMM's output it is told to save, the ones backward never reads included (fc2's, proj's), and
reruns the region's Python and layout copies in backward; these Functions keep exactly what backward reads.

They are used only where they are exact drop-ins (see :func:`fusable`): eager (under ``torch.compile``
the partitioner of AOTAutograd decides what to keep and recompute), grad enabled, no functorch
transform, plain ``nn.LayerNorm``/``nn.Linear``/``nn.GELU`` modules without hooks. Double
backward (``create_graph=True``) through them raises :class:`DoubleBackwardError` at once (never a
silently missing second-order term); run the forward under :func:`unfused` for that.

Under autocast they do what autocast does to the plain modules: the weights are cast to autocast's dtype
outside the Function (so their gradients come back in the parameters' dtype), LayerNorm runs in its
parameters' dtype (float32) and the GEMMs, GELU and the kept fc1 output in autocast's (bf16 training
keeps h in bf16, as the plain path does).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["layer_norm_linear", "layer_norm_mlp", "linear_linear", "attend_linear_linear", "attention_rows",
           "fusable", "mlp_fusable", "no_hooks", "unfused", "DoubleBackwardError"]

_STATE = threading.local()


@contextlib.contextmanager
def unfused():
    """Run the plain (unfused) modules inside this context: e.g. for double backward, or to compare."""
    before = getattr(_STATE, "off", False)
    _STATE.off = True
    try:
        yield
    finally:
        _STATE.off = before


def _global_hooks() -> bool:
    m = nn.modules.module
    return any(getattr(m, name, None) for name in ("_global_forward_hooks", "_global_forward_pre_hooks",
                                                   "_global_backward_hooks", "_global_backward_pre_hooks",
                                                   "_global_forward_hooks_always_called"))


def no_hooks(*modules: Optional[nn.Module]) -> bool:
    """No forward/backward hook on any of the modules (a fused path skips their ``__call__``)."""
    return not any(m is not None and (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                                      or getattr(m, "_backward_pre_hooks", None)) for m in modules)


_KINDS = (nn.LayerNorm, nn.Linear, nn.GELU)


def fusable(x: torch.Tensor, *modules: Optional[nn.Module]) -> bool:
    """Whether the fused Functions may replace these modules' plain calls here: eager, training with grad
    (otherwise nothing is kept anyway and the plain path runs), no functorch transform, no hooks, and
    every module exactly nn.LayerNorm / nn.Linear / nn.GELU (a subclass or wrapper, e.g. LoRA or
    quantized, keeps its own forward)."""
    if getattr(_STATE, "off", False) or not torch.is_grad_enabled():
        return False
    if torch.compiler.is_compiling():  # the compiler's partitioner chooses what to keep and recompute itself
        return False
    if torch._C._are_functorch_transforms_active():
        return False
    if _global_hooks() or not no_hooks(*modules):
        return False
    if any(m is not None and type(m) not in _KINDS for m in modules):
        return False
    if not (x.requires_grad or any(p.requires_grad for m in modules if m is not None for p in m.parameters())):
        return False
    return True


def mlp_fusable(x: torch.Tensor, norm, fc1, act, fc2, *around: nn.Module) -> bool:
    """:func:`fusable` for ``fc2(act(fc1(norm(x))))``; ``around``: the MLP module itself and its dropouts,
    which must carry no hooks and (dropouts) be inactive, as the fused Function skips them."""
    active = any(isinstance(m, nn.Dropout) and m.training and m.p > 0 for m in around)
    return not active and no_hooks(*around) and fusable(x, norm, fc1, act, fc2)


def _norm_parts(norm: nn.LayerNorm):
    if len(norm.normalized_shape) != 1:
        raise ValueError("fused layer norm takes a norm over the last axis only")
    return norm.normalized_shape, norm.weight, norm.bias, norm.eps


class DoubleBackwardError(RuntimeError):
    """Backward with ``create_graph=True`` through a fused Function (they compute first derivatives only)."""


def _first_order_only() -> None:
    # grad mode is on inside a Function's backward exactly when the caller asked for create_graph=True
    if torch.is_grad_enabled():
        raise DoubleBackwardError(
            "fast_timesformer's fused training path computes first derivatives only, and this backward was "
            "asked for create_graph=True (double backward, e.g. a gradient penalty): run the forward under "
            "`with fast_timesformer.fused.unfused():`")


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


def _autocast_dtype(x: torch.Tensor):
    """The autocast dtype in force for x's device, or None."""
    d = x.device.type
    return torch.get_autocast_dtype(d) if torch.is_autocast_enabled(d) else None


def _cast(t, dtype):
    """t in ``dtype`` (an autograd cast outside the Functions, like autocast's own: gradients return in
    the parameter's dtype), or t unchanged."""
    return t if (t is None or dtype is None or t.dtype == dtype) else t.to(dtype)


def _norm_input(x, ln_w):
    """LayerNorm's input: under autocast x may be lower precision than the norm's (float32) parameters;
    the norm runs in theirs, as autocast runs layer_norm in float32."""
    return x if ln_w is None or x.dtype == ln_w.dtype else x.to(ln_w.dtype)


class _LayerNormLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, shape, ln_w, ln_b, eps, w, b):
        with torch.autocast(x.device.type, enabled=False):  # the wrapper cast w and b to autocast's dtype
            xn, mean, rstd = torch.native_layer_norm(_norm_input(x, ln_w), shape, ln_w, ln_b, eps)
            y = F.linear(xn.to(w.dtype), w, b)
        ctx.shape, ctx.eps, ctx.has_b = shape, eps, b is not None
        ctx.save_for_backward(x, mean, rstd, ln_w, ln_b, w)
        return y

    @staticmethod
    def backward(ctx, gy):
        _first_order_only()
        x, mean, rstd, ln_w, ln_b, w = ctx.saved_tensors
        nx, _, nlw, nlb, _, nw, nb = ctx.needs_input_grad
        g2 = _rows(gy)
        xin = _norm_input(x, ln_w)
        dw = None
        if nw:
            xn = torch.native_layer_norm(xin, ctx.shape, ln_w, ln_b, ctx.eps)[0]  # the forward's, again
            dw = g2.t().mm(_rows(xn.to(w.dtype)))
            del xn
        db = g2.sum(0) if (ctx.has_b and nb) else None
        dx = dlw = dlb = None
        if nx or nlw or nlb:
            dxn = gy.matmul(w).to(xin.dtype)
            dx, dlw, dlb = torch.ops.aten.native_layer_norm_backward(
                dxn, xin, ctx.shape, mean, rstd, ln_w, ln_b, [nx, nlw and ln_w is not None, nlb and ln_b is not None])
            dx = _cast(dx, x.dtype)
        return dx, None, dlw, dlb, None, dw, db


def layer_norm_linear(x: torch.Tensor, norm: nn.LayerNorm, linear: nn.Linear) -> torch.Tensor:
    """``linear(norm(x))``, keeping x and the norm's statistics for backward, not the norm's output."""
    shape, lw, lb, eps = _norm_parts(norm)
    dt = _autocast_dtype(x)
    return _LayerNormLinear.apply(x, shape, lw, lb, eps, _cast(linear.weight, dt), _cast(linear.bias, dt))


class _LayerNormMlp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, shape, ln_w, ln_b, eps, w1, b1, w2, b2, approximate):
        with torch.autocast(x.device.type, enabled=False):  # the wrapper cast the weights to autocast's dtype
            xn, mean, rstd = torch.native_layer_norm(_norm_input(x, ln_w), shape, ln_w, ln_b, eps)
            h = F.linear(xn.to(w1.dtype), w1, b1)
            del xn
            y = F.linear(F.gelu(h, approximate=approximate), w2, b2)
        ctx.shape, ctx.eps, ctx.approximate = shape, eps, approximate
        ctx.has_b1, ctx.has_b2 = b1 is not None, b2 is not None
        ctx.save_for_backward(x, mean, rstd, ln_w, ln_b, w1, w2, h)
        return y

    @staticmethod
    def backward(ctx, gy):
        _first_order_only()
        x, mean, rstd, ln_w, ln_b, w1, w2, h = ctx.saved_tensors
        nx, _, nlw, nlb, _, nw1, nb1, nw2, nb2, _ = ctx.needs_input_grad
        g2 = _rows(gy)
        h2 = _rows(h)
        dw2 = None
        if nw2:
            a = F.gelu(h2, approximate=ctx.approximate)  # recomputed: one elementwise pass over h
            dw2 = g2.t().mm(a)
            del a
        db2 = g2.sum(0) if (ctx.has_b2 and nb2) else None
        dh = g2.mm(w2)
        # gelu's backward written into dh's own buffer (an elementwise kernel reading and writing the same
        # element): one hidden-width buffer live here, not two
        torch.ops.aten.gelu_backward.grad_input(dh, h2, approximate=ctx.approximate, grad_input=dh)
        xin = _norm_input(x, ln_w)
        dw1 = db1 = None
        if nw1:
            xn = torch.native_layer_norm(xin, ctx.shape, ln_w, ln_b, ctx.eps)[0]
            dw1 = dh.t().mm(_rows(xn.to(w1.dtype)))
            del xn
        if ctx.has_b1 and nb1:
            db1 = dh.sum(0)
        dx = dlw = dlb = None
        if nx or nlw or nlb:
            dxn = dh.mm(w1).view(x.shape[:-1] + (w1.shape[1],)).to(xin.dtype)
            del dh
            dx, dlw, dlb = torch.ops.aten.native_layer_norm_backward(
                dxn, xin, ctx.shape, mean, rstd, ln_w, ln_b, [nx, nlw and ln_w is not None, nlb and ln_b is not None])
            dx = _cast(dx, x.dtype)
        return dx, None, dlw, dlb, None, dw1, db1, dw2, db2, None


def layer_norm_mlp(x: torch.Tensor, norm: nn.LayerNorm, fc1: nn.Linear, act: nn.GELU, fc2: nn.Linear) -> torch.Tensor:
    """``fc2(act(fc1(norm(x))))`` keeping x, the norm's statistics and fc1's output; the norm's output and
    the GELU's are recomputed in backward (elementwise)."""
    shape, lw, lb, eps = _norm_parts(norm)
    dt = _autocast_dtype(x)
    return _LayerNormMlp.apply(x, shape, lw, lb, eps, _cast(fc1.weight, dt), _cast(fc1.bias, dt), _cast(fc2.weight, dt),
                               _cast(fc2.bias, dt), act.approximate)


def _seq_rows(t: torch.Tensor):
    """(B, S, W) sequences -> ((B*S, W) rows, s_major) in t's memory order: a view where t is laid out
    (B, S, W) or (S, B, W) (SDPA's CPU kernels write (S, B, h, d)); a B-major copy otherwise. The GEMMs
    do not care about the order of rows, so none is forced on them."""
    if t.shape[0] > 1 and t.shape[1] > 1 and t.transpose(0, 1).is_contiguous():
        return t.transpose(0, 1).reshape(-1, t.shape[2]), True
    return t.reshape(-1, t.shape[2]), False


def _rows_like(t: torch.Tensor, s_major: bool) -> torch.Tensor:
    """Another (B, S, W) tensor (a gradient) as rows in the same order."""
    return (t.transpose(0, 1) if s_major else t).reshape(-1, t.shape[2])


def _unrows(r: torch.Tensor, b: int, s: int, s_major: bool) -> torch.Tensor:
    """Rows back to a (B, S, W) view."""
    w = r.shape[-1]
    return r.view(s, b, w).transpose(0, 1) if s_major else r.view(b, s, w)


def _scale_rows(scale, b: int, s: int, s_major: bool):
    """A per-sequence factor (B, 1, 1) as one factor per row, or None."""
    if scale is None:
        return None
    f = scale.reshape(b, 1)
    return (f.unsqueeze(0).expand(s, b, 1) if s_major else f.unsqueeze(1).expand(b, s, 1)).reshape(-1, 1)


def _two_linear_grads(needs, g2, a2, w1, b1, w2, s_rows, has_b2):
    """Gradients of ``y = linear(s * linear(a, w1, b1), w2, b2)`` from g = dL/dy (rows), without the
    first linear's output p: ``dw2 = (s g)^T p = ((s g)^T a) w1^T + (s g)^T 1 b1^T``. The two products
    with a (``dp^T a`` for dw1, ``(s g)^T a`` for dw2) are one GEMM over [dp, s g] side by side, so the
    backward makes as many GEMM calls as plain autograd's (4); the fifth is the small square one."""
    na, nw1, nb1, nw2, nb2 = needs
    n, d_out = g2.shape
    d_mid = w2.shape[1]
    both = g2.new_empty(n, d_mid + d_out)  # [dp, s g]
    dp, sg = both[:, :d_mid], both[:, d_mid:]
    torch.mm(g2, w2, out=dp)
    if s_rows is None:
        sg.copy_(g2)
    else:
        dp.mul_(s_rows)
        torch.mul(g2, s_rows, out=sg)
    dw1 = dw2 = None
    if nw1 or nw2:
        products = both.t().mm(a2)  # (d_mid + d_out, width of a)
        dw1 = products[:d_mid] if nw1 else None
        if nw2:
            dw2 = products[d_mid:].mm(w1.t())
            if b1 is not None:
                dw2.addr_(sg.sum(0), b1)
    db2 = g2.sum(0) if (has_b2 and nb2) else None
    db1 = dp.sum(0) if (b1 is not None and nb1) else None
    da = dp.mm(w1) if na else None
    return da, dw1, db1, dw2, db2


def _forward_two_linears(a, w1, b1, w2, b2, scale):
    """(B, S, W) -> (B, S, out) through both linears, rows in a's memory order (no copy of a); in the
    weights' dtype (autocast's, where the wrapper cast them)."""
    b, n = a.shape[:2]
    a2, s_major = _seq_rows(a)
    with torch.autocast(a.device.type, enabled=False):
        p = F.linear(a2.to(w1.dtype), w1, b1)
        if scale is not None:
            p.mul_(_scale_rows(scale, b, n, s_major))
        return _unrows(F.linear(p, w2, b2), b, n, s_major)


def _backward_two_linears(needs, gy, a, w1, b1, w2, scale, has_b2):
    b, n = a.shape[:2]
    a2, s_major = _seq_rows(a)
    da, dw1, db1, dw2, db2 = _two_linear_grads(needs, _rows_like(gy, s_major), a2.to(w1.dtype), w1, b1, w2,
                                               _scale_rows(scale, b, n, s_major), has_b2)
    return (None if da is None else _cast(_unrows(da, b, n, s_major), a.dtype)), dw1, db1, dw2, db2


class _LinearLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, w1, b1, w2, b2, scale):
        ctx.has_b2 = b2 is not None
        ctx.save_for_backward(a, w1, b1, w2, scale)
        return _forward_two_linears(a, w1, b1, w2, b2, scale)

    @staticmethod
    def backward(ctx, gy):
        _first_order_only()
        a, w1, b1, w2, scale = ctx.saved_tensors
        grads = _backward_two_linears(ctx.needs_input_grad[:5], gy, a, w1, b1, w2, scale, ctx.has_b2)
        return (*grads, None)


def linear_linear(a: torch.Tensor, first: nn.Linear, second: nn.Linear,
                  scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``second(scale * first(a))`` for a (B, S, width) keeping only a (and the per-sequence ``scale``,
    (B, 1, 1): a drop-path mask): second's weight gradient is rebuilt from a and first's parameters (one
    square GEMM of the output width) instead of keeping first's output."""
    dt = _autocast_dtype(a)
    return _LinearLinear.apply(a, _cast(first.weight, dt), _cast(first.bias, dt), _cast(second.weight, dt),
                               _cast(second.bias, dt), scale)


def attention_rows(out: torch.Tensor) -> torch.Tensor:
    """(B, h, S, d) attention output -> (B, S, h*d): a view wherever h and d are adjacent in memory, whatever
    the order of B and S (SDPA's CPU kernels write (S, B, h, d)); the projections read it as it is."""
    return out.transpose(1, 2).flatten(2)


class _AttendLinearLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, w1, b1, w2, b2, scale, attend):
        ctx.attend, ctx.has_b2 = attend, b2 is not None
        ctx.save_for_backward(q, k, v, w1, b1, w2, scale)
        with torch.autocast(q.device.type, enabled=False):  # as in backward's recompute (no autocast there)
            out = attend(q, k, v)
        return _forward_two_linears(attention_rows(out), w1, b1, w2, b2, scale)

    @staticmethod
    def backward(ctx, gy):
        _first_order_only()
        q, k, v, w1, b1, w2, scale = ctx.saved_tensors
        nq, nk, nv = ctx.needs_input_grad[:3]
        with torch.enable_grad():  # the attention again (cheap: short sequences), with its graph this time
            inputs = [t.detach().requires_grad_(n) for t, n in zip((q, k, v), (nq, nk, nv))]
            out = ctx.attend(*inputs)
        needs = (nq or nk or nv,) + tuple(ctx.needs_input_grad[3:7])
        da, dw1, db1, dw2, db2 = _backward_two_linears(needs, gy, attention_rows(out.detach()), w1, b1, w2,
                                                       scale, ctx.has_b2)
        dq = dk = dv = None
        if da is not None:  # (B, S, h*d) -> out's (B, h, S, d)
            g_out = da.unflatten(-1, (out.shape[1], out.shape[3])).transpose(1, 2)
            want = [t for t in inputs if t.requires_grad]
            grads = iter(torch.autograd.grad(out, want, g_out))
            dq, dk, dv = (next(grads) if t.requires_grad else None for t in inputs)
        return dq, dk, dv, dw1, db1, dw2, db2, None, None


def attend_linear_linear(q, k, v, attend, first: nn.Linear, second: nn.Linear,
                         scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``second(scale * first(rows(attend(q, k, v))))`` keeping q, k and v only (views of the q/k/v
    projection, kept anyway): the attention output is recomputed in backward, for steps whose attention
    costs little next to the two projections (the temporal step: 8 frames against width 768). ``attend``
    must be deterministic (no attention dropout)."""
    dt = _autocast_dtype(q)
    return _AttendLinearLinear.apply(q, k, v, _cast(first.weight, dt), _cast(first.bias, dt), _cast(second.weight, dt),
                                     _cast(second.bias, dt), scale, attend)
