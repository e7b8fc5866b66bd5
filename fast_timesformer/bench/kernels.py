"""The kernel suite (``bench --suite kernels``; docs/bench.md): one scheme-registry step on every exact backend that
takes it; q, k, v are strided views of a fused qkv projection and the output a (b, 1 + f*n, heads, d) buffer, as
``DividedAttention`` hands a core; each contender checked against float64 first (over its tolerance: ``failed``, never
timed). Groups ``kernel``, ``layer`` (a whole layer fwd+bwd), ``sdpa-only`` (SDPA alone, pre-split). Records: minimum
bytes moved, roofline at the measured copy bandwidth (HBM spec on a known GPU), on a GPU the CUDA-graph ``graph_s``."""
from __future__ import annotations

import functools
import inspect
import json

import torch

from ..attention import DividedAttention, step_cls_mode
from ..backends import get_backend
from ..backends.regular import SDPA_BACKENDS, sdpa_context, sdpa_refused
from ..errors import first_line
from ..schemes import SCHEMES
from .correctness import StepData, check, grads_of
from .measure import summarize, time_step
from .runner import Case, failed
from .suites import register_suite
from .workloads import Skip, benchmarked_backends

MODES = ("fwd", "bwd", "fwd+bwd")
# HBM bandwidth from the vendors' specifications, bytes/s (matched against the device name, first hit wins)
HBM_SPEC = (("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100 NVL", 3.9e12), ("H100", 3.35e12),
            ("A100-SXM4-80GB", 2.04e12), ("A100", 1.56e12))


def config(device: str, tiny: bool = False) -> dict:
    """The workload: B=8 T=8 N=196 H=12 d=64 bf16 on a GPU; a small float32 one on CPU; ``tiny``: the dry run's."""
    if tiny:
        return dict(batch=1, frames=2, patches=4, heads=1, dim_head=16, dtype="float32", min_run_time=0.01)
    if device.startswith("cuda"):
        return dict(batch=8, frames=8, patches=196, heads=12, dim_head=64, dtype="bfloat16", min_run_time=0.06)
    return dict(batch=1, frames=4, patches=16, heads=2, dim_head=16, dtype="float32", min_run_time=0.05)


def step_groups(frames: int, patches: int, name: str):
    """The TokenGroups of step ``name`` at this size, from the first registered scheme that has the step and can
    split the size; None if none."""
    grid = int(round(patches ** 0.5))
    return next((g for s in SCHEMES.values() if not s.reasons(frames, grid) for n, g in s.step_groups(frames, grid)
                 if n == name), None)


def contenders() -> list:
    """(label, backend, options): every exact benchmarked backend; one taking ``sdpa_backend`` once per SDPA
    implementation and once with torch's choice."""
    out = []
    for name in benchmarked_backends():
        be = get_backend(name)
        per_impl = be.exact and "sdpa_backend" in inspect.signature(be.factory).parameters
        out += [(f"{name}[{impl}]", name, {"sdpa_backend": impl}) for impl in SDPA_BACKENDS] if per_impl else []
        out += [(f"{name}[default]" if per_impl else name, name, {})] if be.exact else []
    return out


@functools.lru_cache(maxsize=None)
def copy_bandwidth(device: str) -> float:
    """Measured device copy bandwidth in bytes/s (read + write of a 256 MiB buffer; 16 MiB on CPU)."""
    n = (256 << 20) // 2 if device.startswith("cuda") else (16 << 20) // 4
    src = torch.empty(n, device=device).normal_()
    dst = torch.empty_like(src)
    s = time_step(lambda: dst.copy_(src), device, min_run_time=0.05)["median_s"]
    return 2 * src.numel() * src.element_size() / s


def bytes_moved(c: Case) -> int:
    """Minimum traffic of one call: each tensor read or written once (the CLS prefix counted, tiny)."""
    elem = torch.finfo(getattr(torch, c.dtype)).bits // 8
    t = c.batch * c.frames * c.patches * c.heads * c.dim_head * elem  # one q/k/v/o tensor
    extra = c.batch * c.heads * c.dim_head * elem * 4 if c.cls != "exclude" else 0
    lse = c.batch * c.heads * c.frames * c.patches * 4
    fwd, bwd = 4 * t + lse + extra, 8 * t + 2 * lse + 2 * extra
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[c.mode]


def _rates(c: Case, seconds: float) -> dict:
    nbytes, peak = bytes_moved(c), copy_bandwidth(c.device)
    out = {"bytes": nbytes, "tb_s": nbytes / seconds / 1e12, "roofline_s": nbytes / peak,
           "pct_roofline": 100 * nbytes / seconds / peak, "copy_gb_s": peak / 1e9}
    name = torch.cuda.get_device_name().lower() if c.device.startswith("cuda") else ""
    spec = next((bw for key, bw in HBM_SPEC if name and key.lower() in name), None)
    return {**out, "pct_hbm_spec": 100 * nbytes / seconds / spec} if spec else out


@functools.lru_cache(maxsize=64)
def _prepared(key: str):
    """(StepData, core, check record) of one contender on one step (``key``: its fields as JSON), shared by its
    modes and its layer case."""
    d = json.loads(key)
    groups = step_groups(d["frames"], d["patches"], d["step"])
    step = StepData(groups, d["cls"], d["batch"], d["heads"], d["dim_head"], getattr(torch, d["dtype"]), d["device"])
    be = get_backend(d["backend"])
    reasons = step.refusal(be)
    if reasons:
        return step, None, "; ".join(reasons)
    core = be.build(d["dim_head"], d["heads"], **d["options"]).to(d["device"])
    try:
        return step, core, check(step, core, be, grads=be.supports_backward, poison=True)
    except RuntimeError as e:  # a pinned SDPA implementation that cannot take these inputs refuses at the call
        if d["options"].get("sdpa_backend") and sdpa_refused(e):
            return step, None, first_line(e)
        raise  # anything else is the contender's failure (an error record), never a refusal


def _checked(c: Case):
    """(StepData, core, check) of the case's contender on its step; Skip where it refuses the inputs."""
    fields = {k: v for k, v in c.fields.items() if k not in ("mode", "group", "min_run_time")}
    step, core, res = _prepared(json.dumps(fields, sort_keys=True))
    if core is None:
        raise Skip(res)
    return step, core, res


def _time_step(c: Case) -> dict:
    step, core, res = _checked(c)
    if not res["within"]:
        return failed(res)
    if c.mode == "fwd":
        def fn():
            with torch.no_grad():
                step.run(core, step.qkv, step.cls_qkv)
    elif c.mode == "bwd":
        leaves = step.inputs(True)
        out = step.run(core, *leaves)

        def fn():
            torch.autograd.grad(out, leaves, step.grad_out, retain_graph=True, allow_unused=True)
    else:
        def fn():
            leaves = step.inputs(True)
            grads_of(step.run(core, *leaves), leaves, step.grad_out)
    rec = {"error": res, **time_step(fn, c.device, min_run_time=c.min_run_time)}
    rec.update(_rates(c, rec["median_s"]))
    if c.device.startswith("cuda") and c.mode != "bwd":
        try:
            import triton.testing

            rec["graph_s"] = summarize(triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="all"),
                                       "")["median_s"] / 1e3
        except Exception as e:  # noqa: BLE001 - e.g. a backend that cannot be captured in a CUDA graph
                rec["not_measured"] = {"graph_s": first_line(e)}
    return rec


def _time_layer(c: Case) -> dict:
    """A whole ``DividedAttention`` layer (qkv + attention + proj, official CLS rule), forward + backward."""
    _, _, res = _checked(c)  # the contender's check on this step: no speed without it
    if not res["within"]:
        return failed(res)
    groups = step_groups(c.frames, c.patches, c.step)
    dim, dt = c.heads * c.dim_head, getattr(torch, c.dtype)
    layer = DividedAttention(dim, heads=c.heads, dim_head=c.dim_head, cls="official", backend=c.backend,
                             **c.options).to(c.device, dt)
    x = torch.randn(c.batch, 1 + c.frames * c.patches, dim, generator=torch.Generator().manual_seed(1)).to(c.device, dt)
    x.requires_grad_()
    params = [x, *layer.parameters()]

    def fn():
        y = layer(x, groups=groups)
        torch.autograd.grad(y, params, torch.ones_like(y))
    return {"error": res, **time_step(fn, c.device, min_run_time=c.min_run_time)}


def timed_sdpa(q, k, v, impl: str, mode: str, device: str, min_run_time: float) -> dict:
    """:func:`~.measure.time_step` of SDPA alone, pinned to ``impl``, on (B, heads, S, d) tensors: fwd, bwd or
    fwd+bwd; Skip where that implementation cannot take them."""
    import torch.nn.functional as F

    q, k, v = (t.detach().requires_grad_(mode != "fwd") for t in (q, k, v))
    try:
        with sdpa_context(impl):
            o = F.scaled_dot_product_attention(q, k, v)
    except RuntimeError as e:
        if not sdpa_refused(e):
            raise
        raise Skip(first_line(e)) from None

    def fn():
        with sdpa_context(impl), torch.set_grad_enabled(mode != "fwd"):
            y = o if mode == "bwd" else F.scaled_dot_product_attention(q, k, v)
            if mode != "fwd":
                torch.autograd.grad(y, (q, k, v), torch.ones_like(y), retain_graph=mode == "bwd")
    return time_step(fn, device, min_run_time=min_run_time)


def _time_sdpa_only(c: Case) -> dict:
    """SDPA alone on contiguous pre-split (B, heads, S, d) tensors, the CLS key/value in front of each group."""
    groups = step_groups(c.frames, c.patches, c.step)
    step = StepData(groups, c.cls, c.batch, c.heads, c.dim_head, getattr(torch, c.dtype), c.device)
    q, k, v = (groups.split(t).contiguous() for t in step.qkv.unbind(2))
    if c.cls != "exclude":
        ck, cv = (t.transpose(1, 2).repeat_interleave(groups.num_groups, 0) for t in step.cls_qkv.unbind(2)[1:])
        k, v = torch.cat([ck, k], 2), torch.cat([cv, v], 2)
    rec = timed_sdpa(q, k, v, c.impl, c.mode, c.device, c.min_run_time)
    return {**rec, **_rates(c, rec["median_s"])}


def kernel_cases(device: str, tiny: bool = False, labels=None) -> list:
    """Every (step, contender, mode) case, a layer case per contender at ``time`` and ``space``, and SDPA alone;
    ``labels``: only these contenders (labels or backend names)."""
    cfg = config(device, tiny)
    base = dict(device=device, **cfg)
    cs = [(lab, n, o) for lab, n, o in contenders() if labels is None or lab in labels or n in labels]
    if device.startswith("cuda"):  # math is the reference's kind, not a contender, on a GPU
        cs = [t for t in cs if t[2].get("sdpa_backend") != "math"]
    out = []
    for name in ("time", "space", "joint"):
        groups = step_groups(cfg["frames"], cfg["patches"], name)
        if groups is None:
            continue
        cls = step_cls_mode("official", groups)
        for lab, be, opts in cs:
            out += [Case("kernel", f"{name}/{lab}/{m}", _time_step, step=name, cls=cls, backend=be, contender=lab,
                         options=opts, mode=m, **base) for m in MODES]
            if name in ("time", "space"):
                out.append(Case("layer", f"layer-{name}/{lab}/fwd+bwd", _time_layer, step=name, cls=cls, backend=be,
                                contender=lab, options=opts, mode="fwd+bwd", **base))
        out += [Case("sdpa-only", f"{name}/sdpa-only[{impl}]/{m}", _time_sdpa_only, step=name, cls=cls,
                     backend="regular", contender=f"sdpa-only[{impl}]", impl=impl, mode=m, **base)
                for impl in SDPA_BACKENDS if not (impl == "math" and device.startswith("cuda"))
                for m in (MODES if not tiny else ("fwd+bwd",))]
    return out


@register_suite("kernels", help="one attention step (time, space, joint) on every exact backend, fwd / bwd / "
                                "fwd+bwd, checked against float64 first; roofline; a whole layer; SDPA alone")
def kernels_suite(device="cpu", tiny=False):
    return kernel_cases(device, tiny)
