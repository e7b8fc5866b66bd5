"""No speed without correctness: attention on one backend against a float64 reference (docs/bench.md).

:func:`check` compares a backend core on :class:`StepData` (the kernel suite, tests/test_gpu_correctness.py);
:func:`check_workload` runs each step of a model point's scheme as a ``DividedAttention`` layer at the point's shape
against the same weights in float64: the calls the model makes, so a compiled backend compiles nothing new for it.
Tolerance: the backend's declared one for the dtype, gradients 10x; a point over it is ``failed``, never timed."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..attention import DividedAttention, step_cls_mode
from ..backends import get_backend
from ..groups import SequenceMask, TokenGroups
from ..kernels.naive import per_group
from ..schemes import get_scheme

GRAD_FACTOR = 10  # gradients pass three more matmuls than the output: 10x the output's tolerance


class StepData:
    """One step's data: ``groups`` (a :class:`TokenGroups`), ``cls`` in exclude / per_group / global."""

    def __init__(self, groups: TokenGroups, cls: str, b: int, h: int, d: int, dtype, device, seed: int = 0):
        g = torch.Generator(device="cpu").manual_seed(seed)
        self.groups, self.cls, self.b, self.h, self.d, self.dtype = groups, cls, b, h, d, dtype
        m = groups.num_tokens
        self.qkv = (torch.randn(b, m, 3, h, d, generator=g) * 0.5).to(device=device, dtype=dtype)
        self.cls_qkv = (torch.randn(b, 1, 3, h, d, generator=g) * 0.5).to(device=device, dtype=dtype)
        self.grad_out = torch.randn(b, 1 + m, h, d, generator=g).to(device=device, dtype=dtype)
        if cls == "exclude":
            self.grad_out[:, :1] = 0  # the CLS row is a constant 0 here

    def run(self, core, qkv, cls_qkv, poison: bool = False):
        """The step's output (b, 1 + M, h, d); ``poison``: the buffer starts as NaN, so an unwritten row shows."""
        q, k, v = qkv.unbind(2)
        cq, ck, cv = cls_qkv.unbind(2)
        out = q.new_empty(self.b, 1 + self.groups.num_tokens, self.h, self.d)
        if poison:
            out.fill_(float("nan"))
        kw = dict(scale=self.d ** -0.5, dropout_p=0.0, out=out[:, 1:])
        if self.groups.mask is not None:  # one [CLS; group] sequence per group and a mask, as DividedAttention
            g, n_p = self.groups, int(self.cls != "exclude")
            q, k, v = (g.split(t) for t in (q, k, v))
            if n_p:
                q, k, v = (torch.cat([per_group(c.transpose(1, 2), g.num_groups), t], 2)
                           for c, t in ((cq, q), (ck, k), (cv, v)))
            y = core(q, k, v, scale=kw["scale"], dropout_p=0.0, mask=SequenceMask(g, n_p))
            g.merge_into(y[:, :, n_p:], out[:, 1:])
            out[:, :1] = y[:, :, :1].reshape(self.b, g.num_groups, self.h, 1, self.d).mean(1).transpose(1, 2) \
                if n_p else 0
        elif self.cls == "exclude":
            core.attend_groups(q, k, v, self.groups, **kw)
            out[:, :1] = 0
        elif self.cls == "per_group":
            out[:, :1] = core.attend_groups(q, k, v, self.groups, prefix_k=ck, prefix_v=cv, prefix_q=cq,
                                            want_prefix_out=True, **kw)
        else:  # global
            core.attend_groups(q, k, v, self.groups, prefix_k=ck, prefix_v=cv, prefix_q=cq, **kw)
            out[:, :1] = core.attend_global_prefix(cq, ck, cv, q, k, v, scale=kw["scale"], dropout_p=0.0)
        return out

    def inputs(self, requires_grad: bool):
        return tuple(t.detach().requires_grad_(requires_grad) for t in (self.qkv, self.cls_qkv))

    def refusal(self, backend) -> list:
        """The backend's declared reasons not to take these inputs ([] = it takes them)."""
        q, k, v = (t.transpose(1, 2) for t in self.qkv.unbind(2))
        pk, pv = (t.transpose(1, 2) for t in self.cls_qkv.unbind(2)[1:]) if self.cls != "exclude" else (None, None)
        if self.groups.mask is not None:
            return backend.why_not(q, k, v, needs_grad=True, mask=SequenceMask(self.groups, int(pk is not None)))
        return backend.why_not(q, k, v, pk, pv, needs_grad=True)


def reference(groups: TokenGroups, cls: str, qkv: torch.Tensor, cls_qkv: torch.Tensor) -> torch.Tensor:
    """The step's output in float64 from the groups' token index lists (and mask), no backend code:
    softmax(q k^T d^-1/2) v within each group, the CLS as ``cls`` (exclude / per_group / global) says."""
    qkv, cls_qkv = qkv.double(), cls_qkv.double()
    b, m, _, h, d = qkv.shape
    idx = groups.index().to(qkv.device)  # (G, S) patch-token indices
    G, S = idx.shape
    q, k, v = qkv.unbind(2)
    cq, ck, cv = cls_qkv.unbind(2)
    qg, kg, vg = q[:, idx], k[:, idx], v[:, idx]  # (b, G, S, h, d)
    allow = torch.ones(G, S, S, dtype=torch.bool, device=qkv.device)
    if groups.mask is not None:
        allow = groups.mask.allows(idx[:, :, None].cpu(), idx[:, None, :].cpu()).to(qkv.device)
    if cls != "exclude":  # the CLS key/value in front of every group, met by everyone
        kg = torch.cat([ck.unsqueeze(1).expand(b, G, 1, h, d), kg], 2)
        vg = torch.cat([cv.unsqueeze(1).expand(b, G, 1, h, d), vg], 2)
        allow = torch.cat([allow.new_ones(G, S, 1), allow], 2)

    def attend(qq, kk, vv, mask=None):  # (..., Sq, h, d) x (..., Sk, h, d), one head at a time (memory)
        outs = []
        for i in range(h):
            s = torch.einsum("...qd,...kd->...qk", qq[..., i, :], kk[..., i, :]) * d ** -0.5
            if mask is not None:
                s = s.masked_fill(~mask, float("-inf"))
            outs.append(torch.softmax(s, -1) @ vv[..., i, :])
        return torch.stack(outs, -2)

    out = qkv.new_zeros(b, 1 + m, h, d)
    out[:, 1 + idx.flatten()] = attend(qg, kg, vg, allow).flatten(1, 2)
    if cls == "per_group":
        out[:, :1] = attend(cq.unsqueeze(1).expand(b, G, 1, h, d), kg, vg).mean(1)
    elif cls == "global":
        out[:, :1] = attend(cq, torch.cat([ck, k], 1), torch.cat([cv, v], 1))
    return out


def grads_of(out, leaves, grad_out):
    """Gradients of ``out`` w.r.t. ``leaves``; zeros for a leaf the output does not use (an excluded CLS)."""
    gs = torch.autograd.grad(out, leaves, grad_out, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(gs, leaves)]


def _verdict(got: list, refs: list, names: tuple, atol: float, rtol: float) -> dict:
    """``max_rel`` per tensor (max |a - r| / max |r|), the tolerance, and ``within``: every tensor within
    ``torch.allclose``'s rule (gradients GRAD_FACTOR x the tolerance); a NaN or inf is never within."""
    max_rel, over = {}, 0.0
    for i, (name, a, r) in enumerate(zip(names, got, refs)):
        a, r, f = a.double(), r.double(), 1 if i == 0 else GRAD_FACTOR
        if not torch.isfinite(a).all():
            max_rel[name] = over = float("inf")
            continue
        err = (a - r).abs()
        max_rel[name] = float(err.max() / r.abs().max().clamp_min(1e-12))
        over = max(over, float((err / (atol * f + rtol * f * r.abs())).max()))
    return {"vs": "float64", "max_rel": max_rel, "tolerance": [atol, rtol], "over_tolerance": over,
            "within": over <= 1.0}


def check(step: StepData, core, backend, grads: bool = True, poison: bool = False) -> dict:
    """The backend's output (and gradients) on ``step`` against :func:`reference` (:func:`_verdict`)."""
    qkv64, cls64 = (t.detach().double().requires_grad_(grads) for t in (step.qkv, step.cls_qkv))
    ref = reference(step.groups, step.cls, qkv64, cls64)
    refs = [ref.detach(), *(grads_of(ref, (qkv64, cls64), step.grad_out.double()) if grads else ())]
    qkv, cls_qkv = step.inputs(grads)
    with torch.inference_mode(not grads):  # as a forward point runs (a compiled backend's guards see the mode)
        out = step.run(core, qkv, cls_qkv, poison=poison)
    got = [out.detach(), *(grads_of(out, (qkv, cls_qkv), step.grad_out) if grads else ())]
    return _verdict(got, refs, ("out", "dqkv", "dcls"), *backend.tolerance(step.dtype))


@functools.lru_cache(maxsize=512)
def _check_cached(backend: str, options: tuple, scheme: str, frames: int, grid: int, h: int, d: int, dtype: str,
                  device: str) -> dict:
    """The worst step: each a ``DividedAttention`` layer (official CLS rule, batch 1) against its own weights in
    float64 (:func:`reference` between its projections); output and, where the backend takes gradients here,
    input gradient."""
    be, dt, worst = get_backend(backend), getattr(torch, dtype), None

    def f64(lin, t):  # the layer's projection in float64
        return F.linear(t, lin.weight.double(), None if lin.bias is None else lin.bias.double())

    for name, groups in get_scheme(scheme).step_groups(frames, grid):
        layer = DividedAttention(h * d, heads=h, dim_head=d, cls="official", backend=backend, step=name,
                                 **dict(options)).to(device, dt).eval()
        cls = step_cls_mode("official", groups)
        grads = be.supports_backward and not StepData(groups, cls, 1, h, d, dt, device).refusal(be)
        x = torch.randn(1, 1 + groups.num_tokens, h * d, generator=torch.Generator().manual_seed(0))
        x64 = x.double().requires_grad_(grads)
        qkv = f64(layer.qkv, x64).unflatten(-1, (3, h, d))
        ref = f64(layer.proj, reference(groups, cls, qkv[:, 1:], qkv[:, :1]).flatten(2))
        xi = x.to(device, dt).requires_grad_(grads)
        with torch.inference_mode(not grads):  # as a forward point runs (a compiled backend's guards see the mode)
            out = layer(xi, groups=groups)
        got, refs = [out.detach()], [ref.detach()]
        if grads:
            go = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
            got.append(torch.autograd.grad(out, xi, go.to(out))[0])
            refs.append(torch.autograd.grad(ref, x64, go.double())[0])
        res = dict(_verdict(got, refs, ("out", "dx"), *be.tolerance(dt)), step=name)
        if worst is None or res["over_tolerance"] > worst["over_tolerance"]:
            worst = res
    return worst


def check_workload(w) -> dict:
    """The worst step of ``w``'s scheme, each a ``DividedAttention`` layer on ``w``'s backend at ``w``'s frames,
    grid, heads, head dim, dtype and device, against float64 (:func:`_check_cached`; cached per shape)."""
    return dict(_check_cached(w.backend, tuple(w.backend_options), w.scheme, w.frames, w.grid, w.heads,
                              w.dim // w.heads, w.dtype, w.device))
