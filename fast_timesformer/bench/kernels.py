"""Kernel benchmark: divided attention (temporal, spatial and joint steps), forward / backward / both.

Every exact backend in the registry runs through ``AttentionCore.attend_groups`` on the *same data*: q, k,
v as strided views of a fused qkv projection output (b, f*n, 3, heads, d) and a (b, 1 + f*n, heads, d)
output buffer, exactly what ``DividedAttention`` hands them, so each backend pays for the copies it needs
(SDPA: splitting tokens into (B, heads, S, d) and merging back). ``regular`` is run once per SDPA
implementation (flash, efficient, cudnn, math). Backends that refuse the inputs are listed with their
reasons. The ``sdpa-only`` rows time SDPA alone on pre-split contiguous tensors (no layout copies).

Steps follow the official model: temporal = time groups, CLS excluded; spatial = space groups with the CLS
key/value as prefix and the CLS query attending within every frame (averaged); joint = the whole clip as
one group, the CLS token attended by every token and attending to every token (``global``).

Roofline: bytes that must move at least once (forward: q, k, v read + o written; backward: q, k, v, o, dO
read, dq, dk, dv written, plus the fp32 LSE), divided by the device's measured copy bandwidth (and, where
the GPU is known, by its HBM specification).

On a GPU the forward and forward+backward are also timed replayed from a CUDA graph (``graph ms``): GPU
time without the Python and launch overhead that the eager column (an eager loop) includes.

Before anything is timed, each backend's output and gradients are checked against ``regular``/math in
float32 on the same data; a backend that fails the check is reported as failed, not timed.

    python -m fast_timesformer.bench.kernels --device cuda    # B=8 T=8 N=196 H=12 d=64 bf16
    python -m fast_timesformer.bench.kernels                  # CPU: tiny size, no triton timing
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from ..backends import get_backend, list_backends
from ..groups import TokenGroups
from .measure import gpu_times_ms, summarize

SDPA_IMPLS = ("flash", "efficient", "cudnn", "math")

# The kernel benchmark and gpu-check's targets compare *our Triton kernel* with *the best SDPA implementation*
# by design ("triton vs best SDPA", docs/triton.md): the two contenders are named here, once. Every other
# backend is read from the registry by what it declares.
KERNEL = "triton"  # the backend running our fused Triton kernel
SDPA = "regular"  # the backend running torch's scaled_dot_product_attention, timed once per implementation
XFORMERS = "xformers"  # the other fused memory-efficient kernel, timed beside them on a GPU for reference
CONTENDERS = (KERNEL, SDPA, XFORMERS)


def sdpa_label(impl: str) -> str:
    """The row label of the SDPA backend pinned to one implementation (``"default"``: torch's choice)."""
    return f"{SDPA}[{impl}]"


def is_sdpa(label: str) -> bool:
    return label.startswith(f"{SDPA}[")
MODES = ("fwd", "bwd", "both")
STEPS = ("temporal", "spatial", "joint")
STEP_CLS = {"temporal": "exclude", "spatial": "per_group", "joint": "global"}
ROOT = Path(__file__).resolve().parents[2]

# HBM bandwidth from the vendors' specifications, bytes/s (matched against the device name, first hit wins)
HBM_SPEC = (("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100 NVL", 3.9e12), ("H100", 3.35e12), ("A100-SXM4-80GB", 2.04e12),
            ("A100", 1.56e12))


def hbm_spec(name: str) -> Optional[float]:
    for key, bw in HBM_SPEC:
        if key.lower() in name.lower():
            return bw
    return None


# ---- timing -------------------------------------------------------------------------------------
def timed(fn, device: str, reps: int, rep_ms: int = 100) -> dict:
    """Latency statistics in milliseconds (median, q1, q3, min, max, n) of repeated calls."""
    if device == "cuda":
        times, method = gpu_times_ms(fn, warmup_ms=25, rep_ms=rep_ms)
    else:
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        method = "time.perf_counter per call"
    st = summarize(times, method)
    return {"ms": st["median_s"], "q1_ms": st["q1_s"], "q3_ms": st["q3_s"], "min_ms": st["min_s"],
            "n": st["n_times"], "time_method": method}


def graphed(fn, rep_ms: int = 50) -> dict:
    """Median ms per call replayed from a CUDA graph (triton's do_bench_cudagraph: n calls unrolled in one
    graph, 10 replays), i.e. the GPU time without the Python and launch overhead of the eager loop."""
    import triton.testing

    times = triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="all")
    st = summarize(times, "do_bench_cudagraph")
    return {"graph_ms": st["median_s"], "graph_n": st["n_times"]}


def copy_bandwidth(device: str, dtype) -> float:
    """Measured device copy bandwidth in GB/s (read + write of a 256 MiB buffer; 16 MiB on CPU)."""
    n = (256 << 20) // (torch.finfo(dtype).bits // 8) if device == "cuda" else (16 << 20) // 4
    src = torch.empty(n, dtype=dtype if device == "cuda" else torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    ms = timed(lambda: dst.copy_(src), device, 20)["ms"]
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


# ---- the workload -----------------------------------------------------------------------------
class Step:
    """One attention step's data in token layout, as DividedAttention prepares it.

    kind: temporal (time groups, CLS excluded), spatial (space groups, CLS per group) or joint (one group,
    CLS global); ``cls`` may override the CLS rule (exclude / per_group / global)."""

    def __init__(self, kind, b, f, n, h, d, dtype, device, seed=0, cls=None):
        g = torch.Generator(device="cpu").manual_seed(seed)
        self.kind, self.b, self.f, self.n, self.h, self.d = kind, b, f, n, h, d
        self.groups = {"temporal": TokenGroups.time, "spatial": TokenGroups.space, "joint": TokenGroups.joint}[kind](f, n)
        self.cls = cls or STEP_CLS[kind]
        self.dtype = dtype
        m = f * n
        self.qkv = (torch.randn(b, m, 3, h, d, generator=g) * 0.5).to(device=device, dtype=dtype)
        self.cls_qkv = (torch.randn(b, 1, 3, h, d, generator=g) * 0.5).to(device=device, dtype=dtype)
        self.grad_out = torch.randn(b, 1 + m, h, d, generator=g).to(device=device, dtype=dtype)
        if self.cls == "exclude":
            self.grad_out[:, :1] = 0  # the CLS row is a constant 0 here
        self.elem = torch.finfo(dtype).bits // 8

    def run(self, core, qkv, cls_qkv, poison: bool = False):
        """The step's output (b, 1 + M, h, d); ``poison``: the buffer starts as NaN, so a row the backend
        fails to write shows up."""
        q, k, v = qkv.unbind(2)
        cq, ck, cv = cls_qkv.unbind(2)
        out = q.new_empty(self.b, 1 + self.f * self.n, self.h, self.d)
        if poison:
            out.fill_(float("nan"))
        scale = self.d ** -0.5
        if self.cls == "exclude":
            core.attend_groups(q, k, v, self.groups, scale=scale, dropout_p=0.0, out=out[:, 1:])
            out[:, :1] = 0
        elif self.cls == "per_group":
            y = core.attend_groups(q, k, v, self.groups, prefix_k=ck, prefix_v=cv, prefix_q=cq, want_prefix_out=True,
                                   scale=scale, dropout_p=0.0, out=out[:, 1:])
            out[:, :1] = y
        else:  # global
            core.attend_groups(q, k, v, self.groups, prefix_k=ck, prefix_v=cv, prefix_q=cq, scale=scale,
                               dropout_p=0.0, out=out[:, 1:])
            out[:, :1] = core.attend_global_prefix(cq, ck, cv, q, k, v, scale=scale, dropout_p=0.0)
        return out

    def inputs(self, requires_grad):
        return (self.qkv.detach().requires_grad_(requires_grad), self.cls_qkv.detach().requires_grad_(requires_grad))

    def bytes_moved(self, mode):
        """Minimum HBM traffic: each tensor read or written once (the CLS prefix is negligible but counted)."""
        t = self.b * self.f * self.n * self.h * self.d * self.elem  # one q/k/v/o tensor
        extra = self.b * self.h * self.d * self.elem * 4 if self.cls != "exclude" else 0
        lse = self.b * self.h * self.f * self.n * 4
        fwd, bwd = 4 * t + lse + extra, 8 * t + 2 * lse + 2 * extra
        return {"fwd": fwd, "bwd": bwd, "both": fwd + bwd}[mode]


def reference(step: Step, qkv: torch.Tensor, cls_qkv: torch.Tensor) -> torch.Tensor:
    """The step's output in float64, from the groups' token index lists (no backend code, no strides):
    softmax(q k^T * d^-1/2) v within each group, the CLS handled as ``step.cls`` says."""
    qkv, cls_qkv = qkv.double(), cls_qkv.double()
    b, m, _, h, d = qkv.shape
    scale = d ** -0.5
    idx = step.groups.index().to(qkv.device)  # (G, S) patch-token indices
    q, k, v = qkv.unbind(2)  # (b, M, h, d)
    cq, ck, cv = cls_qkv.unbind(2)  # (b, 1, h, d)
    qg, kg, vg = q[:, idx], k[:, idx], v[:, idx]  # (b, G, S, h, d)
    G = idx.shape[0]
    if step.cls != "exclude":
        kg = torch.cat([ck.unsqueeze(1).expand(b, G, 1, h, d), kg], 2)
        vg = torch.cat([cv.unsqueeze(1).expand(b, G, 1, h, d), vg], 2)

    def attend(qq, kk, vv):  # (..., Sq, h, d) x (..., Sk, h, d)
        w = torch.softmax(torch.einsum("...qhd,...khd->...hqk", qq, kk) * scale, dim=-1)
        return torch.einsum("...hqk,...khd->...qhd", w, vv)

    out = qkv.new_zeros(b, 1 + m, h, d)
    out[:, 1 + idx.flatten()] = attend(qg, kg, vg).flatten(1, 2)
    if step.cls == "per_group":
        out[:, :1] = attend(cq.unsqueeze(1).expand(b, G, 1, h, d), kg, vg).mean(1)
    elif step.cls == "global":
        out[:, :1] = attend(cq, torch.cat([ck, k], 1), torch.cat([cv, v], 1))
    return out


def grads_of(out, leaves, grad_out):
    """Gradients of ``out`` w.r.t. ``leaves``; zeros for a leaf the output does not use (the CLS's q/k/v
    when the CLS is excluded)."""
    gs = torch.autograd.grad(out, leaves, grad_out, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(gs, leaves)]


def callables(step, core):
    """fwd / bwd / both closures for one backend core on one step."""
    def fwd():
        with torch.no_grad():
            step.run(core, step.qkv, step.cls_qkv)

    state = {}

    def prep_bwd():
        qkv, cls_qkv = step.inputs(True)
        state["out"] = step.run(core, qkv, cls_qkv)
        state["leaves"] = (qkv, cls_qkv)

    def bwd():
        torch.autograd.grad(state["out"], state["leaves"], step.grad_out, retain_graph=True, allow_unused=True)

    def both():
        qkv, cls_qkv = step.inputs(True)
        out = step.run(core, qkv, cls_qkv)
        torch.autograd.grad(out, (qkv, cls_qkv), step.grad_out, allow_unused=True)

    return {"fwd": fwd, "bwd": bwd, "both": both}, prep_bwd


def candidates(timed: bool = True):
    """(label, backend name, options) for every exact backend (with ``timed``, only the benchmarked ones:
    not ``Backend.diagnostic``); :data:`SDPA` once per SDPA implementation."""
    out = []
    for name in list_backends():
        be = get_backend(name)
        if not be.exact or (timed and be.diagnostic):
            continue
        if name == SDPA:
            out += [(sdpa_label(impl), name, {"sdpa_backend": impl}) for impl in SDPA_IMPLS]
            out.append((sdpa_label("default"), name, {}))
        else:
            out.append((name, name, {}))
    return out


TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}


def check(step, core, ref_core, dtype):
    """Max error of output and grads vs regular/math in float32 on the same data; (ok, errors)."""
    def eval_(c, dt):
        qkv, cls_qkv = (t.detach().to(dt).requires_grad_() for t in (step.qkv, step.cls_qkv))
        out = step.run(c, qkv, cls_qkv)
        grads = grads_of(out, (qkv, cls_qkv), step.grad_out.to(dt))
        return [out.float(), *(g.float() for g in grads)]

    got, ref = eval_(core, dtype), eval_(ref_core, torch.float32)
    errs = [((a - r).abs().max() / r.abs().max().clamp_min(1e-6)).item() for a, r in zip(got, ref)]
    return all(e < TOLERANCE[dtype] for e in errs), dict(zip(("out", "dqkv", "dcls"), errs))


def _refusal(be, step, device):
    q, k, v = (t.transpose(1, 2) for t in step.qkv.unbind(2))
    ck, cv = (t.transpose(1, 2) for t in step.cls_qkv.unbind(2)[1:])
    pk, pv = (ck, cv) if step.cls != "exclude" else (None, None)
    reasons = be.why_not(q, k, v, pk, pv, needs_grad=True)
    return reasons


def _rate(row, nbytes, peak_gbps, spec_bps):
    ms = row["ms"]
    row.update(bytes=nbytes, **{"TB/s": nbytes / (ms * 1e-3) / 1e12}, pct_bw=100 * nbytes / (ms * 1e-3) / 1e9 / peak_gbps,
               roofline_ms=nbytes / (peak_gbps * 1e9) * 1e3)
    if spec_bps:
        row["pct_hbm_spec"] = 100 * nbytes / (ms * 1e-3) / spec_bps
    return row


def bench_steps(cfg, dtype, peak_gbps, spec_bps=None, deadline=None, log=print):
    rows = []
    device = cfg["device"]
    for kind in cfg["steps"]:
        step = Step(kind, cfg["batch"], cfg["frames"], cfg["patches"], cfg["heads"], cfg["dim_head"], dtype, device)
        ref_core = get_backend(SDPA).build(cfg["dim_head"], cfg["heads"], sdpa_backend="math")
        for label, name, opts in candidates():
            if cfg.get("backends") and name not in cfg["backends"] and label not in cfg["backends"]:
                continue
            base = {"step": kind, "backend": label, "dtype": str(dtype).replace("torch.", "")}
            if deadline is not None and time.monotonic() > deadline:
                rows.append({**base, "status": "not run: the stage's time budget ran out"})
                continue
            be = get_backend(name)
            reasons = _refusal(be, step, device)
            if device == "cpu" and name == KERNEL and not cfg.get("time_interpreter"):
                reasons = reasons or ["CPU: the Triton interpreter runs programs one by one; timing it is meaningless"]
            if device == "cuda" and label == sdpa_label("math"):
                reasons = reasons or ["math is the reference, not a contender (not timed on the GPU)"]
            if reasons:
                rows.append({**base, "status": "skipped: " + "; ".join(reasons)})
                continue
            core = be.build(cfg["dim_head"], cfg["heads"], **opts).to(device)
            try:
                ok, errs = check(step, core, ref_core, dtype)
            except Exception as e:  # a backend that cannot run these inputs after all (e.g. SDPA impl refuses)
                rows.append({**base, "status": f"failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}"})
                continue
            if not ok:
                rows.append({**base, "status": f"failed check (max rel err {errs})", "errors": errs})
                continue
            fns, prep_bwd = callables(step, core)
            for mode in cfg["modes"]:
                if mode == "bwd":
                    prep_bwd()
                row = {**base, "mode": mode, "errors": errs}
                try:
                    row.update(timed(fns[mode], device, cfg["reps"], cfg.get("rep_ms", 100)))
                except Exception as e:  # noqa: BLE001
                    rows.append({**row, "status": f"failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}"})
                    continue
                if device == "cuda" and mode in ("fwd", "both") and cfg.get("graphs", True):
                    try:
                        row.update(graphed(fns[mode]))
                    except Exception as e:  # e.g. a backend that cannot be captured in a CUDA graph
                        row["graph_status"] = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
                rows.append(_rate({**row, "status": "ok"}, step.bytes_moved(mode), peak_gbps, spec_bps))
            log(f"  {kind:8s} {label:18s} " + " ".join(f"{r['mode']} {r['ms']:.4g} ms" for r in rows
                                                       if r.get("backend") == label and r.get("step") == kind
                                                       and "ms" in r))
        for mode in cfg["modes"]:  # the roofline itself as a row
            nbytes = step.bytes_moved(mode)
            rows.append({"step": kind, "backend": "roofline", "dtype": str(dtype).replace("torch.", ""), "mode": mode,
                         "ms": nbytes / (peak_gbps * 1e9) * 1e3, "bytes": nbytes, "TB/s": peak_gbps / 1e3,
                         "pct_bw": 100.0, "status": "bound"})
        if cfg.get("sdpa_only", True):
            rows += sdpa_only(cfg, step, dtype, peak_gbps, spec_bps)
        del step
    return rows


def sdpa_only(cfg, step, dtype, peak_gbps, spec_bps=None):
    """SDPA alone on contiguous pre-split (B, heads, S, d) tensors: what the copies cost is left out."""
    import torch.nn.functional as F

    from ..backends.regular import sdpa_context

    rows = []
    device = cfg["device"]
    q, k, v = (step.groups.split(t).contiguous() for t in step.qkv.unbind(2))
    if step.cls != "exclude":  # CLS key/value in front of every group (what regular builds)
        ng = step.groups.num_groups
        ck, cv = (t.transpose(1, 2).repeat_interleave(ng, 0) for t in step.cls_qkv.unbind(2)[1:])
        k, v = torch.cat([ck, k], 2), torch.cat([cv, v], 2)
    for impl in SDPA_IMPLS:
        if impl == "math" and device == "cuda":
            continue
        base = {"step": step.kind, "backend": f"sdpa-only[{impl}]", "dtype": str(dtype).replace("torch.", "")}
        try:
            with sdpa_context(impl):
                F.scaled_dot_product_attention(q, k, v)
        except RuntimeError as e:
            rows.append({**base, "status": f"skipped: {' '.join(str(e).split())[:200]}"})
            continue
        for mode in cfg["modes"]:
            if mode != "fwd":
                qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))

            def fwd():
                with torch.no_grad(), sdpa_context(impl):
                    F.scaled_dot_product_attention(q, k, v)

            def both():
                with sdpa_context(impl):
                    o = F.scaled_dot_product_attention(qq, kk, vv)
                torch.autograd.grad(o, (qq, kk, vv), torch.ones_like(o))
            if mode == "bwd":
                with sdpa_context(impl):
                    o = F.scaled_dot_product_attention(qq, kk, vv)
                go = torch.ones_like(o)
                fn = lambda: torch.autograd.grad(o, (qq, kk, vv), go, retain_graph=True)  # noqa: E731
            else:
                fn = fwd if mode == "fwd" else both
            try:
                row = {**base, "mode": mode, **timed(fn, device, cfg["reps"], cfg.get("rep_ms", 100)), "status": "ok"}
            except RuntimeError as e:
                rows.append({**base, "mode": mode, "status": f"failed: {' '.join(str(e).split())[:200]}"})
                continue
            rows.append(_rate(row, step.bytes_moved(mode), peak_gbps, spec_bps))
    return rows


def bench_layer(cfg, dtype, deadline=None, log=print):
    """A whole DividedAttention layer (qkv + attention + proj, official CLS rule), forward + backward, per
    backend, for the temporal and the spatial step."""
    from ..attention import DividedAttention

    rows = []
    device = cfg["device"]
    dim = cfg["heads"] * cfg["dim_head"]
    g = torch.Generator(device="cpu").manual_seed(1)
    x0 = torch.randn(cfg["batch"], 1 + cfg["frames"] * cfg["patches"], dim, generator=g).to(device, dtype)
    for kind, pattern in (("temporal", ("b (f n) d", "(b n) f d", {"n": cfg["patches"]})),
                          ("spatial", ("b (f n) d", "(b f) n d", {"f": cfg["frames"]}))):
        layer = DividedAttention(dim, heads=cfg["heads"], dim_head=cfg["dim_head"], cls="official").to(device, dtype)
        for label, name, opts in candidates():
            if cfg.get("backends") and name not in cfg["backends"] and label not in cfg["backends"]:
                continue
            if (device == "cpu" and name == KERNEL and not cfg.get("time_interpreter")) or \
                    (device == "cuda" and label == sdpa_label("math")):
                continue
            base = {"step": f"layer-{kind}", "backend": label, "dtype": str(dtype).replace("torch.", ""),
                    "mode": "both"}
            if deadline is not None and time.monotonic() > deadline:
                rows.append({**base, "status": "not run: the stage's time budget ran out"})
                continue
            try:
                layer.set_backend(name, **opts)
                x = x0.detach().requires_grad_()
                params = [x] + list(layer.parameters())

                def both():
                    y = layer(x, pattern[0], pattern[1], **pattern[2])
                    torch.autograd.grad(y, params, torch.ones_like(y))
                both()
                rows.append({**base, **timed(both, device, cfg["reps"], cfg.get("rep_ms", 100)), "status": "ok"})
            except Exception as e:  # noqa: BLE001
                rows.append({**base, "status": f"skipped: {type(e).__name__}: {' '.join(str(e).split())[:200]}"})
                continue
            log(f"  layer-{kind} {label:18s} both {rows[-1]['ms']:.4g} ms")
    return rows


def speedups(rows):
    """triton vs the best other backend, per step and mode (only rows that passed their check)."""
    out = []
    keys = {(r["step"], r.get("mode")) for r in rows if r.get("status") == "ok"}
    for step, mode in sorted(keys):
        ok = [r for r in rows if r["step"] == step and r.get("mode") == mode and r.get("status") == "ok"
              and not r["backend"].startswith("sdpa-only")]
        tri = [r for r in ok if r["backend"] == KERNEL]
        others = [r for r in ok if r["backend"] != KERNEL]
        if tri and others:
            best = min(others, key=lambda r: r["ms"])
            out.append({"step": step, "mode": mode, "triton_ms": tri[0]["ms"], "best_other": best["backend"],
                        "best_other_ms": best["ms"], "speedup": best["ms"] / tri[0]["ms"]})
    return out


def device_name(device):
    if device == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    return "cpu"


def meta(cfg, peak_gbps, spec_bps=None):
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name() if cfg["device"] == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "python": platform.python_version(), "commit": commit,
            "copy_bandwidth_GBps": peak_gbps, "hbm_spec_Bps": spec_bps,
            "workload": {k: cfg[k] for k in ("batch", "frames", "patches", "heads", "dim_head", "dtype")}}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    return info


def default_config(device: str) -> dict:
    gpu = device == "cuda"
    cfg = dict(batch=8, frames=8, patches=196, heads=12, dim_head=64, dtype="bfloat16") if gpu else \
        dict(batch=1, frames=4, patches=16, heads=2, dim_head=16, dtype="float32")
    cfg.update(device=device, modes=list(MODES), steps=list(STEPS), backends=None, reps=100 if gpu else 5, rep_ms=100,
               layer=True)
    return cfg


def run_benchmark(cfg: dict, deadline: Optional[float] = None, log=print) -> dict:
    """The whole benchmark for one config (see :func:`default_config`): {meta, rows, speedups}."""
    dtype = getattr(torch, cfg["dtype"])
    peak = cfg.get("peak_gbps") or copy_bandwidth(cfg["device"], dtype)
    spec = hbm_spec(torch.cuda.get_device_name()) if cfg["device"] == "cuda" else None
    info = meta(cfg, peak, spec)
    log(f"device {cfg['device']} ({info['device']}), copy bandwidth {peak:.0f} GB/s"
        + (f" (HBM spec {spec / 1e12:.2f} TB/s)" if spec else "") + f", workload B={cfg['batch']} T={cfg['frames']} "
        f"N={cfg['patches']} H={cfg['heads']} d={cfg['dim_head']} {cfg['dtype']}")
    rows = bench_steps(cfg, dtype, peak, spec, deadline=deadline, log=log)
    if cfg.get("layer", True):
        rows += bench_layer(cfg, dtype, deadline=deadline, log=log)
    return {"meta": info, "rows": rows, "speedups": speedups(rows)}


def format_rows(rows) -> str:
    from ..tables import format_table

    table = [{"step": r["step"], "backend": r["backend"], "mode": r.get("mode", "-"),
              "ms": f"{r['ms']:.4f}" if "ms" in r else "-",
              "q1-q3 (n)": (f"{r['q1_ms']:.4f}-{r['q3_ms']:.4f} (n={r['n']})" if r.get("q1_ms") is not None
                            else ("1 run" if r.get("n") == 1 else "-")),
              "graph ms": f"{r['graph_ms']:.4f}" if "graph_ms" in r else "-",
              "TB/s": f"{r['TB/s']:.2f}" if "TB/s" in r else "-",
              "%roofline": f"{r['pct_bw']:.1f}" if "pct_bw" in r else "-",
              "status": r["status"] if r["status"] in ("ok", "bound") else "see below"} for r in rows]
    text = format_table(table, ["step", "backend", "mode", "ms", "q1-q3 (n)", "graph ms", "TB/s", "%roofline",
                                "status"])
    notes = [f"{r['step']} {r['backend']}: {r['status']}" for r in rows if r["status"] not in ("ok", "bound")]
    return text + ("\n\n" + "\n".join(notes) if notes else "")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int)
    p.add_argument("--frames", type=int)
    p.add_argument("--patches", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--dim-head", type=int)
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    p.add_argument("--backends", nargs="*", help="names or labels to run (default: every exact backend)")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--peak-gbps", type=float, help="bandwidth for the roofline (default: measured copy bandwidth)")
    p.add_argument("--no-layer", action="store_true", help="skip the whole-layer rows")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/<device>/bench_kernels.json)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        from ..errors import DeviceUnavailableError

        raise DeviceUnavailableError("--device cuda: this machine has no CUDA device "
                                     f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'})")
    cfg = default_config(args.device)
    for k in ("batch", "frames", "patches", "heads", "dim_head", "dtype", "reps", "peak_gbps"):
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    cfg.update(modes=args.modes, steps=args.steps, backends=args.backends, layer=not args.no_layer)
    data = run_benchmark(cfg)
    print(format_rows(data["rows"]))
    sp = data["speedups"]
    if sp:
        from ..tables import format_table

        print("\ntriton vs the best other backend (same data, token layout):")
        print(format_table([{**s, "triton_ms": f"{s['triton_ms']:.4f}", "best_other_ms": f"{s['best_other_ms']:.4f}",
                             "speedup": f"{s['speedup']:.2f}x"} for s in sp],
                           ["step", "mode", "triton_ms", "best_other", "best_other_ms", "speedup"]))
    path = args.out or ROOT / "benchmarks" / "results" / device_name(args.device) / "bench_kernels.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    print(f"\nsaved {os.path.relpath(path)}")
    failed = [r for r in data["rows"] if r["status"].startswith("failed check") and r["backend"] == KERNEL]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
