"""Kernel benchmark: divided attention (temporal and spatial steps), forward / backward / both.

Every exact backend in the registry runs through ``AttentionCore.attend_groups`` on the *same data*: q, k,
v as strided views of a fused qkv projection output (b, f*n, 3, heads, d) and a (b, 1 + f*n, heads, d)
output buffer, exactly what ``DividedAttention`` hands them, so each backend pays for the copies it needs
(SDPA: splitting tokens into (B, heads, S, d) and merging back). ``regular`` is run once per SDPA
implementation (flash, efficient, cudnn, math). Backends that refuse the inputs are listed with their
reasons. The ``sdpa-only`` rows time SDPA alone on pre-split contiguous tensors (no layout copies).

Steps follow the official model: temporal = time groups, CLS excluded; spatial = space groups with the CLS
key/value as prefix and the CLS query attending within every frame (averaged). A whole
``DividedAttention`` layer (qkv + attention + proj) is timed too.

Roofline: bytes that must move at least once (forward: q, k, v read + o written; backward: q, k, v, o, dO
read, dq, dk, dv written, plus the fp32 LSE), divided by the device's measured copy bandwidth.

On a GPU the forward is also timed replayed from a CUDA graph (``fwd-graph``): GPU time without the
Python and launch overhead that the plain rows (an eager loop) include.

Before anything is timed, each backend's output and gradients are checked against ``regular``/math in
float32 on the same data; a backend that fails the check is reported as failed, not timed.

    python benchmarks/bench_kernels.py --device cuda          # B=8 T=8 N=196 H=12 d=64 bf16
    python benchmarks/bench_kernels.py                        # CPU: tiny size, regular only

Results: benchmarks/results/<device>/bench_kernels.json (plot: benchmarks/plot_kernels.py).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fast_timesformer import DividedAttention, TokenGroups, get_backend, list_backends  # noqa: E402
from fast_timesformer.cli import format_table  # noqa: E402

SDPA_IMPLS = ("flash", "efficient", "cudnn", "math")
MODES = ("fwd", "bwd", "both")


# ---- timing -------------------------------------------------------------------------------------
def timed(fn, device: str, reps: int) -> float:
    """Median milliseconds per call."""
    if device == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=max(reps, 50), return_mode="median"))
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def graphed_ms(fn) -> float:
    """Median ms per call replayed from a CUDA graph: the GPU time without Python/launch overhead (the
    plain rows include it, as a user's eager loop does)."""
    import triton.testing

    return float(triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median"))


def copy_bandwidth(device: str, dtype) -> float:
    """Measured device copy bandwidth in GB/s (read + write of a 256 MB buffer)."""
    n = (256 << 20) // torch.finfo(dtype).bits * 8 if device == "cuda" else (16 << 20) // 4
    src = torch.empty(n, dtype=dtype, device=device).normal_()
    dst = torch.empty_like(src)
    ms = timed(lambda: dst.copy_(src), device, 20)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


# ---- the workload -----------------------------------------------------------------------------
class Step:
    """One attention step's data in token layout, as DividedAttention prepares it."""

    def __init__(self, kind, b, f, n, h, d, dtype, device, seed=0):
        g = torch.Generator(device="cpu").manual_seed(seed)
        self.kind, self.b, self.f, self.n, self.h, self.d = kind, b, f, n, h, d
        self.groups = TokenGroups.time(f, n) if kind == "temporal" else TokenGroups.space(f, n)
        self.cls = "exclude" if kind == "temporal" else "per_group"
        m = f * n
        self.qkv = (torch.randn(b, m, 3, h, d, generator=g) * 0.5).to(device=device, dtype=dtype)
        self.cls_qkv = (torch.randn(b, 1, 3, h, d, generator=g) * 0.5).to(device=device, dtype=dtype)
        self.grad_out = torch.randn(b, 1 + m, h, d, generator=g).to(device=device, dtype=dtype)
        self.elem = torch.finfo(dtype).bits // 8

    def run(self, core, qkv, cls_qkv):
        q, k, v = qkv.unbind(2)
        cq, ck, cv = cls_qkv.unbind(2)
        out = q.new_empty(self.b, 1 + self.f * self.n, self.h, self.d)
        if self.cls == "exclude":
            core.attend_groups(q, k, v, self.groups, scale=self.d ** -0.5, dropout_p=0.0, out=out[:, 1:])
            out[:, :1] = 0
        else:
            y = core.attend_groups(q, k, v, self.groups, prefix_k=ck, prefix_v=cv, prefix_q=cq, want_prefix_out=True,
                                   scale=self.d ** -0.5, dropout_p=0.0, out=out[:, 1:])
            out[:, :1] = y
        return out

    def inputs(self, requires_grad):
        return (self.qkv.detach().requires_grad_(requires_grad), self.cls_qkv.detach().requires_grad_(requires_grad))

    def bytes_moved(self, mode):
        """Minimum HBM traffic: each tensor read or written once (the CLS prefix is negligible but counted)."""
        t = self.b * self.f * self.n * self.h * self.d * self.elem  # one q/k/v/o tensor
        extra = self.b * self.h * self.d * self.elem * 4 if self.cls == "per_group" else 0
        lse = self.b * self.h * self.f * self.n * 4
        fwd, bwd = 4 * t + lse + extra, 8 * t + 2 * lse + 2 * extra
        return {"fwd": fwd, "bwd": bwd, "both": fwd + bwd}[mode]


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
        torch.autograd.grad(state["out"], state["leaves"], step.grad_out, retain_graph=True)

    def both():
        qkv, cls_qkv = step.inputs(True)
        out = step.run(core, qkv, cls_qkv)
        torch.autograd.grad(out, (qkv, cls_qkv), step.grad_out)

    return {"fwd": fwd, "bwd": bwd, "both": both}, prep_bwd


def candidates(device):
    """(label, backend name, options) for every exact backend; regular once per SDPA implementation."""
    out = []
    for name in list_backends():
        be = get_backend(name)
        if not be.exact:
            continue
        if name == "regular":
            out += [(f"regular[{impl}]", name, {"sdpa_backend": impl}) for impl in SDPA_IMPLS]
            out.append(("regular[default]", name, {}))
        else:
            out.append((name, name, {}))
    return out


def check(step, core, ref_core, dtype):
    """Max error of output and grads vs regular/math in float32 on the same data; (ok, errors)."""
    def eval_(c, dt):
        qkv, cls_qkv = (t.detach().to(dt).requires_grad_() for t in (step.qkv, step.cls_qkv))
        out = step.run(c, qkv, cls_qkv)
        grads = torch.autograd.grad(out, (qkv, cls_qkv), step.grad_out.to(dt))
        return [out.float(), *(g.float() for g in grads)]

    got, ref = eval_(core, dtype), eval_(ref_core, torch.float32)
    errs = [((a - r).abs().max() / r.abs().max().clamp_min(1e-6)).item() for a, r in zip(got, ref)]
    tol = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}[dtype]
    return all(e < tol for e in errs), dict(zip(("out", "dqkv", "dcls"), errs))


def bench_steps(args, dtype, peak_gbps):
    rows = []
    for kind in ("temporal", "spatial"):
        step = Step(kind, args.batch, args.frames, args.patches, args.heads, args.dim_head, dtype, args.device)
        ref_core = get_backend("regular").build(args.dim_head, args.heads, sdpa_backend="math")
        for label, name, opts in candidates(args.device):
            if args.backends and name not in args.backends and label not in args.backends:
                continue
            be = get_backend(name)
            q, k, v = (t.transpose(1, 2) for t in step.qkv.unbind(2))
            ck, cv = (t.transpose(1, 2) for t in step.cls_qkv.unbind(2)[1:])
            pk, pv = (ck, cv) if step.cls == "per_group" else (None, None)
            reasons = be.why_not(q, k, v, pk, pv, needs_grad=True)
            if args.device == "cpu" and name == "triton":
                reasons = reasons or ["CPU: the Triton interpreter runs programs one by one; timing it is meaningless"]
            base = {"step": kind, "backend": label, "dtype": str(dtype).replace("torch.", "")}
            if reasons:
                rows.append({**base, "status": "skipped: " + "; ".join(reasons)})
                continue
            core = be.build(args.dim_head, args.heads, **opts).to(args.device)
            try:
                ok, errs = check(step, core, ref_core, dtype)
            except Exception as e:  # a backend that cannot run these inputs after all (e.g. SDPA impl refuses)
                rows.append({**base, "status": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"})
                continue
            if not ok:
                rows.append({**base, "status": f"failed check (max rel err {errs})", "errors": errs})
                continue
            fns, prep_bwd = callables(step, core)
            for mode in args.modes + (["fwd-graph"] if args.device == "cuda" and "fwd" in args.modes else []):
                if mode == "bwd":
                    prep_bwd()
                try:
                    ms = graphed_ms(fns["fwd"]) if mode == "fwd-graph" else timed(fns[mode], args.device, args.reps)
                except Exception as e:  # e.g. a backend that cannot be captured in a CUDA graph
                    rows.append({**base, "mode": mode, "status": f"skipped: {type(e).__name__}: {str(e)[:120]}"})
                    continue
                nbytes = step.bytes_moved(mode.split("-")[0])
                gbps = nbytes / (ms * 1e-3) / 1e9
                rows.append({**base, "mode": mode, "ms": ms, "bytes": nbytes, "GB/s": gbps,
                             "pct_bw": 100 * gbps / peak_gbps, "roofline_ms": nbytes / (peak_gbps * 1e9) * 1e3,
                             "status": "ok", "errors": errs})
        for mode in args.modes:  # the roofline itself as a row
            nbytes = step.bytes_moved(mode)
            rows.append({"step": kind, "backend": "roofline", "dtype": str(dtype).replace("torch.", ""), "mode": mode,
                         "ms": nbytes / (peak_gbps * 1e9) * 1e3, "bytes": nbytes, "GB/s": peak_gbps, "pct_bw": 100.0,
                         "status": "bound"})
        rows += sdpa_only(args, step, dtype, peak_gbps)
    return rows


def sdpa_only(args, step, dtype, peak_gbps):
    """SDPA alone on contiguous pre-split (B, heads, S, d) tensors: what the copies cost is left out."""
    import torch.nn.functional as F
    from fast_timesformer.backends.regular import sdpa_context

    rows = []
    q, k, v = (step.groups.split(t).contiguous() for t in step.qkv.unbind(2))
    if step.cls == "per_group":  # CLS key/value in front of every group (what regular builds)
        ng = step.groups.num_groups
        ck, cv = (t.transpose(1, 2).repeat_interleave(ng, 0) for t in step.cls_qkv.unbind(2)[1:])
        k, v = torch.cat([ck, k], 2), torch.cat([cv, v], 2)
    for impl in SDPA_IMPLS:
        if impl == "math" and args.device == "cuda":
            continue
        base = {"step": step.kind, "backend": f"sdpa-only[{impl}]", "dtype": str(dtype).replace("torch.", "")}
        try:
            with sdpa_context(impl):
                F.scaled_dot_product_attention(q, k, v)
        except RuntimeError as e:
            rows.append({**base, "status": f"skipped: {str(e).splitlines()[0][:160]}"})
            continue
        for mode in args.modes:
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
            ms = timed(fn, args.device, args.reps)
            nbytes = step.bytes_moved(mode)
            gbps = nbytes / (ms * 1e-3) / 1e9
            rows.append({**base, "mode": mode, "ms": ms, "bytes": nbytes, "GB/s": gbps,
                         "pct_bw": 100 * gbps / peak_gbps, "status": "ok"})
    return rows


def bench_layer(args, dtype):
    """A whole DividedAttention layer (official CLS rule), forward + backward, per backend."""
    rows = []
    dim = args.heads * args.dim_head
    x0 = torch.randn(args.batch, 1 + args.frames * args.patches, dim, device=args.device, dtype=dtype)
    for kind, pattern in (("temporal", ("b (f n) d", "(b n) f d", {"n": args.patches})),
                          ("spatial", ("b (f n) d", "(b f) n d", {"f": args.frames}))):
        layer = DividedAttention(dim, heads=args.heads, dim_head=args.dim_head, cls="official").to(args.device, dtype)
        for label, name, opts in candidates(args.device):
            if args.backends and name not in args.backends and label not in args.backends:
                continue
            if args.device == "cpu" and name == "triton":
                continue
            base = {"step": f"layer-{kind}", "backend": label, "dtype": str(dtype).replace("torch.", ""),
                    "mode": "both"}
            try:
                layer.set_backend(name, **opts)
                x = x0.detach().requires_grad_()

                def both():
                    y = layer(x, pattern[0], pattern[1], **pattern[2])
                    torch.autograd.grad(y, [x] + list(layer.parameters()), torch.ones_like(y))
                both()
            except Exception as e:
                rows.append({**base, "status": f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:160]}"})
                continue
            rows.append({**base, "ms": timed(both, args.device, args.reps), "status": "ok"})
    return rows


def speedups(rows):
    """triton vs the best other exact backend, per step and mode (only rows that passed their check)."""
    out = []
    keys = {(r["step"], r.get("mode")) for r in rows if r.get("status") == "ok"}
    for step, mode in sorted(keys):
        ok = [r for r in rows if r["step"] == step and r.get("mode") == mode and r.get("status") == "ok"
              and not r["backend"].startswith("sdpa-only")]
        tri = [r for r in ok if r["backend"] == "triton"]
        others = [r for r in ok if r["backend"] != "triton"]
        if tri and others:
            best = min(others, key=lambda r: r["ms"])
            out.append({"step": step, "mode": mode, "triton_ms": tri[0]["ms"], "best_other": best["backend"],
                        "best_other_ms": best["ms"], "speedup": best["ms"] / tri[0]["ms"]})
    return out


def device_name(device):
    if device == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    return "cpu"


def meta(args, peak_gbps):
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "python": platform.python_version(), "commit": commit,
            "copy_bandwidth_GBps": peak_gbps,
            "workload": {k: getattr(args, k) for k in ("batch", "frames", "patches", "heads", "dim_head", "dtype")}}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    return info


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
    p.add_argument("--backends", nargs="*", help="names or labels to run (default: every exact backend)")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--peak-gbps", type=float, help="bandwidth for the roofline (default: measured copy bandwidth)")
    p.add_argument("--no-layer", action="store_true", help="skip the whole-layer rows")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/<device>/bench_kernels.json)")
    args = p.parse_args(argv)
    gpu = args.device == "cuda"
    if gpu and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is available")
    defaults = dict(batch=8, frames=8, patches=196, heads=12, dim_head=64, dtype="bfloat16") if gpu else \
        dict(batch=1, frames=4, patches=16, heads=2, dim_head=16, dtype="float32")
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.reps = args.reps or (100 if gpu else 5)
    dtype = getattr(torch, args.dtype)
    peak = args.peak_gbps or copy_bandwidth(args.device, dtype)
    print(f"device {args.device} ({meta(args, peak)['device']}), copy bandwidth {peak:.0f} GB/s, workload "
          f"B={args.batch} T={args.frames} N={args.patches} H={args.heads} d={args.dim_head} {args.dtype}")
    rows = bench_steps(args, dtype, peak)
    if not args.no_layer:
        rows += bench_layer(args, dtype)
    table = [{"step": r["step"], "backend": r["backend"], "mode": r.get("mode", "-"),
              "ms": f"{r['ms']:.4f}" if "ms" in r else "-",
              "GB/s": f"{r['GB/s']:.0f}" if "GB/s" in r else "-",
              "%bw": f"{r['pct_bw']:.1f}" if "pct_bw" in r else "-",
              "status": r["status"][:110]} for r in rows]
    print(format_table(table, ["step", "backend", "mode", "ms", "GB/s", "%bw", "status"]))
    sp = speedups(rows)
    if sp:
        print("\ntriton vs the best other backend (same data, token layout):")
        print(format_table([{**s, "triton_ms": f"{s['triton_ms']:.4f}", "best_other_ms": f"{s['best_other_ms']:.4f}",
                             "speedup": f"{s['speedup']:.2f}x"} for s in sp],
                           ["step", "mode", "triton_ms", "best_other", "best_other_ms", "speedup"]))
    path = args.out or ROOT / "benchmarks" / "results" / device_name(args.device) / "bench_kernels.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta(args, peak), "rows": rows, "speedups": sp}, indent=1))
    print(f"\nsaved {os.path.relpath(path)}")
    failed = [r for r in rows if r["status"].startswith("failed check") and r["backend"] == "triton"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
