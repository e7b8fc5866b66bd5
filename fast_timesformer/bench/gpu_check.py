"""``fast-timesformer gpu-check --out DIR``: prove the kernel and measure every target in one command.

Made for a short GPU loan (one H100/H200, minutes, no network): each stage runs in its own process with
its own time budget, writes its own file into DIR as soon as it finishes, and a stage that fails, crashes
(a CUDA error poisons only its own process) or runs out of time is recorded with its reason while the
next stage runs. The target table is printed last. ``--dry-run`` runs every stage on CPU at tiny sizes
(kernels under ``TRITON_INTERPRET=1``) and writes the same files: ``tests/test_gpu_check.py`` runs it.

Stages and files (8 at most come back from a loan, so this is all of them)::

    env          env.json          device, driver, clocks, versions, commit / source fingerprint, install log
    correctness  correctness.json  every exact backend vs a float64 reference, output and gradients, poisoned
                                   outputs, fresh inputs; model-level triton vs regular
    kernels      kernels.json      time / space / joint steps, fwd / bwd / both, eager and CUDA graph, TB/s,
                                   fraction of the roofline, triton vs SDPA flash / efficient / cuDNN
    targets      targets.json      DividedAttention layer fwd+bwd; TimeSformer-Base training step (B=8, 8x224,
                                   bf16): ours regular, ours triton, Hugging Face, with peak memory
    sweep        sweep.json        reduced Figure 3: every registered scheme x regular/triton, frames 8-96 at
                                   224 px, 224-448 px at 8 frames, forward; OOM points recorded
    report       summary.md, plots.png, and gpu_check.log (everything printed)

See docs/gpu.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[2]
# the contenders, by design (docs/triton.md: our Triton kernel vs the best SDPA): named once, in .kernels
from .kernels import CONTENDERS, KERNEL, SDPA, is_sdpa, sdpa_label  # noqa: E402

LOG = "gpu_check.log"
TOTAL_LIMIT_S = 480  # the limit for the whole command on one H100/H200


@dataclass(frozen=True)
class Stage:
    name: str
    file: str
    budget_s: float  # on the GPU
    dry_budget_s: float  # the CPU dry run
    what: str


STAGES = (
    Stage("env", "env.json", 20, 30, "device, driver, clocks, versions, commit"),
    Stage("correctness", "correctness.json", 130, 60, "every backend vs float64, output and gradients; model level"),
    Stage("kernels", "kernels.json", 75, 40, "kernel benchmark: time / space / joint, fwd / bwd / both, graphs"),
    Stage("targets", "targets.json", 75, 40, "layer fwd+bwd; TimeSformer-Base training step vs Hugging Face"),
    Stage("sweep", "sweep.json", 90, 40, "reduced Figure 3 sweep, forward, every scheme x regular/triton"),
)
REPORT_FILES = ("summary.md", "plots.png", LOG)
# the stage's own checks stop starting new work at this fraction of its budget; the process is killed at 100 %
SOFT_FRACTION = 0.85


# ---- sizes ----------------------------------------------------------------------------------------
def config(dry: bool) -> dict:
    """Every stage's sizes: the GPU ones, or tiny CPU ones for the dry run."""
    if not dry:
        return {
            "device": "cuda",
            "attn": dict(batch=8, frames=8, patches=196, heads=12, dim_head=64),
            "awkward": [dict(batch=2, frames=5, patches=50, heads=12, dim_head=40)],
            # bf16 first: if Triton's compiles eat the budget, the dtype that matters ran
            "dtypes": ["bfloat16", "float16", "float32"], "awkward_dtypes": ["bfloat16", "float32"],
            "model_check": dict(dim=768, depth=4, heads=12, frames=8, image_size=224, batch=2),
            "model_dtypes": ["bfloat16", "float32"],
            "kernels": dict(batch=8, frames=8, patches=196, heads=12, dim_head=64, dtype="bfloat16", reps=100,
                            rep_ms=60, modes=["fwd", "bwd", "both"], steps=["temporal", "spatial", "joint"],
                            backends=list(CONTENDERS)),  # the contenders (correctness checks all)
            "layer": dict(batch=8, frames=8, patches=196, heads=12, dim_head=64, dtype="bfloat16", reps=100, rep_ms=150,
                          backends=list(CONTENDERS)),
            "train": dict(dim=768, depth=12, heads=12, frames=8, image_size=224, batch=8, dtype="bfloat16",
                          rep_ms=1200, num_classes=400),
            "sweep": dict(dim=768, depth=12, heads=12, dtype="bfloat16", frames=(8, 16, 32, 64, 96),
                          resolutions=(256, 320, 384, 448), base_frames=8, base_res=224, min_run_time=0.03,
                          backends=(SDPA, KERNEL)),
        }
    return {
        "device": "cpu",
        "attn": dict(batch=1, frames=3, patches=5, heads=2, dim_head=16),
        "awkward": [dict(batch=1, frames=5, patches=7, heads=1, dim_head=8)],
        "dtypes": ["float32", "float16"], "awkward_dtypes": ["float32"],
        "model_check": dict(dim=32, depth=1, heads=2, frames=2, image_size=32, batch=1),
        "model_dtypes": ["float32", "float16"],
        "kernels": dict(batch=1, frames=2, patches=4, heads=1, dim_head=16, dtype="float32", reps=2, rep_ms=10,
                        modes=["fwd", "bwd", "both"], steps=["temporal", "spatial", "joint"], time_interpreter=True,
                        backends=[KERNEL, SDPA]),
        "layer": dict(batch=1, frames=2, patches=4, heads=2, dim_head=16, dtype="float32", reps=2, rep_ms=10,
                      time_interpreter=True, backends=[KERNEL, SDPA]),
        "train": dict(dim=32, depth=1, heads=2, frames=2, image_size=32, batch=2, dtype="float32", rep_ms=10,
                      num_classes=5),
        "sweep": dict(dim=32, depth=1, heads=2, dtype="float32", frames=(2, 4), resolutions=(64,), base_frames=2,
                      base_res=32, min_run_time=0.0005, backends=(SDPA, KERNEL),
                      interpreted_at_base_only=True),  # the interpreter is slow: triton at 2x32 only
    }


# ---- small helpers ----------------------------------------------------------------------------------
def write_json(path: Path, data: dict) -> None:
    """Atomic: a reader (or a kill) never sees half a file."""
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def one_line(text, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut + " ..."


def source_fingerprint(pkg_dir: Optional[Path] = None) -> str:
    """sha256 over the package's Python sources (name inside the package + content), the same for a source
    tree, an editable or a plain install: tells which code ran where the copy of the tree has no .git.
    ``fast-timesformer gpu-check --fingerprint`` prints it here, to compare."""
    if pkg_dir is None:
        pkg_dir = Path(__file__).resolve().parents[1]  # fast_timesformer/
    h = hashlib.sha256()
    for p in sorted(Path(pkg_dir).rglob("*.py")):
        h.update(("fast_timesformer/" + p.relative_to(pkg_dir).as_posix()).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


class Ctx:
    """What a stage gets: its sizes, its soft deadline, a logger, and ``save(data)`` for partial results."""

    def __init__(self, name: str, out: Path, dry: bool, deadline: float, work: Path, install_log: Optional[str]):
        self.name, self.out, self.dry, self.deadline, self.work = name, out, dry, deadline, work
        self.cfg = config(dry)
        self.install_log = install_log
        self.path = out / next(s.file for s in STAGES if s.name == name)
        self.t0 = time.monotonic()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def out_of_time(self) -> bool:
        return time.monotonic() > self.deadline

    def log(self, msg: str) -> None:
        print(msg, flush=True)

    def save(self, data: dict, status: str = "running") -> None:
        write_json(self.path, {"stage": self.name, "status": status, "wall_s": time.monotonic() - self.t0, **data})


# ---- stage: env ---------------------------------------------------------------------------------------
def _version(name: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001
        return None


def _nvidia_smi() -> dict:
    fields = ("name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.draw,power.limit,"
              "temperature.gpu,memory.total,memory.used,persistence_mode,compute_mode")
    for query in (fields, "name,driver_version,clocks.sm,clocks.mem,temperature.gpu,memory.total"):
        try:
            res = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv"], capture_output=True,
                                 text=True, timeout=20)
        except (OSError, subprocess.SubprocessError) as e:
            return {"error": f"nvidia-smi: {e}"}
        lines = [ln for ln in res.stdout.strip().splitlines() if ln.strip()]
        if not res.returncode and len(lines) >= 2:
            break
    else:
        return {"error": one_line(res.stderr or res.stdout or f"exit {res.returncode}")}
    keys = [k.strip() for k in lines[0].split(",")]
    return {"gpus": [dict(zip(keys, (v.strip() for v in ln.split(",")))) for ln in lines[1:]]}


def stage_env(ctx: Ctx) -> dict:
    import torch

    info = {"python": platform.python_version(), "platform": platform.platform(), "executable": sys.executable,
            "cpu_count": os.cpu_count(), "dry_run": ctx.dry,
            "versions": {m: _version(m) for m in ("torch", "triton", "transformers", "einops", "safetensors", "numpy",
                                                  "xformers", "performer-pytorch", "timesformer-pytorch", "matplotlib",
                                                  "fast_timesformer")},
            "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
            "source_fingerprint": source_fingerprint(),
            "env": {k: os.environ.get(k) for k in ("TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES",
                                                   "FAST_TIMESFORMER_TRITON_AUTOTUNE", "PYTHONPATH")}}
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10)
        info["git"] = {"commit": res.stdout.strip() or None, "dirty": bool(dirty.stdout.strip()) if not res.returncode
                       else None, "note": None if res.stdout.strip() else "no .git in this copy of the tree: compare "
                       "source_fingerprint with `fast-timesformer gpu-check --fingerprint` at the commit"}
    except (OSError, subprocess.SubprocessError) as e:
        info["git"] = {"commit": None, "note": str(e)}
    if ctx.install_log and Path(ctx.install_log).exists():
        info["install_log"] = Path(ctx.install_log).read_text()[-6000:]
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["device"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
                          "memory_GiB": round(p.total_memory / 2 ** 30, 1)}
        info["nvidia_smi"] = _nvidia_smi()
        try:
            import triton

            info["triton_target"] = str(triton.runtime.driver.active.get_current_target())
        except Exception as e:  # noqa: BLE001
            info["triton_target"] = f"unknown: {one_line(e, 200)}"
    else:
        info["device"] = {"name": f"cpu ({platform.processor() or platform.machine()})", "capability": None}
    from ..backends import get_backend, list_backends

    info["backends"] = {n: get_backend(n).describe().get("status") for n in list_backends()}
    ctx.log(f"device {info['device']['name']}; torch {info['versions']['torch']}, triton {info['versions']['triton']}, "
            f"transformers {info['versions']['transformers']}; source {info['source_fingerprint']}")
    return info


# ---- stage: correctness ---------------------------------------------------------------------------------
def _poisoning():
    """Uninitialised memory filled with NaN (torch's deterministic mode) so an unwritten element shows."""
    import contextlib

    import torch

    @contextlib.contextmanager
    def ctx():
        was, fill = torch.are_deterministic_algorithms_enabled(), None
        det = getattr(torch.utils, "deterministic", None)
        try:
            torch.use_deterministic_algorithms(True, warn_only=True)
            if det is not None and hasattr(det, "fill_uninitialized_memory"):
                fill = det.fill_uninitialized_memory
                det.fill_uninitialized_memory = True
            yield
        finally:
            torch.use_deterministic_algorithms(was)
            if fill is not None:
                det.fill_uninitialized_memory = fill
    return ctx()


def _err(a, r) -> float:
    """max |a - r| / max |r| (NaN anywhere -> inf)."""
    import torch

    a, r = a.double(), r.double()
    if not torch.isfinite(a).all():
        return float("inf")
    return float((a - r).abs().max() / r.abs().max().clamp_min(1e-12))


def attention_cases(ctx: Ctx) -> dict:
    import torch

    from ..backends import get_backend
    from .kernels import TOLERANCE, Step, candidates, grads_of, reference

    device = ctx.cfg["device"]
    shapes = [("default", ctx.cfg["attn"], ctx.cfg["dtypes"])]
    shapes += [(f"awkward N={s['patches']} T={s['frames']} d={s['dim_head']}", s, ctx.cfg["awkward_dtypes"])
               for s in ctx.cfg["awkward"]]
    modes = [("official", "temporal", "exclude"), ("official", "spatial", "per_group"),
             ("global", "temporal", "global"), ("global", "spatial", "global")]
    rows, seed = [], 0
    for shape_name, sz, dtypes in shapes:
        for dt_name in dtypes:
            dtype = getattr(torch, dt_name)
            for mode, kind, cls in modes:
                seed += 1
                base = {"shape": shape_name, "dtype": dt_name, "mode": mode, "step": kind, "cls": cls, "seed": seed}
                if ctx.out_of_time():
                    rows.append({**base, "backend": "*", "status": "not run", "reason": "stage time budget ran out"})
                    continue
                step = Step(kind, sz["batch"], sz["frames"], sz["patches"], sz["heads"], sz["dim_head"], dtype, device,
                            seed=seed, cls=cls)
                qkv64, cls64 = (t.detach().double().requires_grad_() for t in (step.qkv, step.cls_qkv))
                ref = reference(step, qkv64, cls64)
                ref_grads = grads_of(ref, (qkv64, cls64), step.grad_out.double())
                refs = [ref.detach(), *ref_grads]
                for label, name, opts in candidates(timed=False):
                    row = {**base, "backend": label}
                    be = get_backend(name)
                    q, k, v = (t.transpose(1, 2) for t in step.qkv.unbind(2))
                    pk = pv = None
                    if cls != "exclude":
                        pk, pv = (t.transpose(1, 2) for t in step.cls_qkv.unbind(2)[1:])
                    reasons = be.why_not(q, k, v, pk, pv, needs_grad=True)
                    if reasons:
                        rows.append({**row, "status": "refused", "reason": one_line("; ".join(reasons), 300)})
                        continue
                    try:
                        core = be.build(sz["dim_head"], sz["heads"], **opts).to(device)
                        with _poisoning():
                            qkv, cls_qkv = step.inputs(True)
                            out = step.run(core, qkv, cls_qkv, poison=True)
                            got = [out, *grads_of(out, (qkv, cls_qkv), step.grad_out)]
                        errs = dict(zip(("out", "dqkv", "dcls"), (_err(a, r) for a, r in zip(got, refs))))
                        tol = TOLERANCE[dtype]
                        bad = [k_ for k_, e in errs.items() if not e <= tol]
                        rows.append({**row, "errors": errs, "tolerance": tol, "status": "fail" if bad else "pass",
                                     "reason": (f"{', '.join(bad)} error above {tol:g}" + (
                                         " (NaN/inf: an element left unwritten?)" if any(errs[b_] == float("inf")
                                                                                        for b_ in bad) else ""))
                                     if bad else ""})
                    except Exception as e:  # noqa: BLE001 - a backend refusing at run time (SDPA impls) or crashing
                        msg = one_line(f"{type(e).__name__}: {e}", 300)
                        # a pinned SDPA implementation that cannot take these inputs (flash in fp32, cuDNN at some
                        # head dims) raises at the call: a refusal, not a wrong result
                        pinned = is_sdpa(label) and label != sdpa_label("default")
                        status = "refused" if (pinned and isinstance(e, RuntimeError)) or "No viable backend" in msg \
                            or "not supported" in msg.lower() else "error"
                        rows.append({**row, "status": status, "reason": msg})
                fails = [r for r in rows if r.get("seed") == seed and r["status"] in ("fail", "error")]
                ctx.log(f"  {shape_name} {dt_name} {mode}/{kind}: " + (
                    "all pass" if not fails else "; ".join(f"{r['backend']} {r['status']} {r['reason']}" for r in fails)))
                ctx.save({"attention": rows})
                del step, ref, refs
    return rows


def model_check(ctx: Ctx) -> list:
    """Model level: the same TimeSformer weights with ``triton`` and ``regular``: logits and every
    parameter's gradient (relative Frobenius error)."""
    import torch

    from ..attention import use_backend
    from ..models import TimeSformer

    c, device = ctx.cfg["model_check"], ctx.cfg["device"]
    rows = []
    for dt_name in ctx.cfg["model_dtypes"]:
        row = {"dtype": dt_name, **c}
        if ctx.out_of_time():
            rows.append({**row, "status": "not run", "reason": "stage time budget ran out"})
            continue
        try:
            torch.manual_seed(0)
            model = TimeSformer(num_classes=10, num_frames=c["frames"], image_size=c["image_size"], patch_size=16,
                                dim=c["dim"], depth=c["depth"], heads=c["heads"], drop_path=0.0).to(device)
            with torch.no_grad():  # temporal_fc starts at zero: give every path a say
                for p in model.parameters():
                    p.add_(0.02 * torch.randn_like(p))
            x = torch.randn(c["batch"], c["frames"], 3, c["image_size"], c["image_size"], device=device)
            params = [p for p in model.parameters() if p.requires_grad]
            amp = dt_name != "float32"

            def run(backend, amp_on):
                with use_backend(model, backend):
                    with torch.autocast(device_type=device, dtype=getattr(torch, dt_name), enabled=amp_on):
                        logits = model(x)
                    grads = torch.autograd.grad(logits.float().square().mean(), params)
                return logits.detach().float(), [g.float() for g in grads]

            rel = lambda a, b: float((a - b).norm() / b.norm().clamp_min(1e-30))  # noqa: E731
            names = [n for n, p in model.named_parameters() if p.requires_grad]

            def errors(got, ref):
                ge = [rel(a, b) for a, b in zip(got[1], ref[1])]
                worst = max(range(len(ge)), key=lambda i: ge[i])
                return rel(got[0], ref[0]), ge[worst], names[worst]

            tri = run(KERNEL, amp)
            if not amp:  # fp32: triton against regular directly
                logit_err, grad_err, worst = errors(tri, run(SDPA, False))
                tol = 1e-4
                ok = logit_err <= tol and grad_err <= tol
                extra = {}
            else:  # bf16: both against regular in fp32; triton may not be worse than SDPA in the same dtype
                ref32 = run(SDPA, False)
                logit_err, grad_err, worst = errors(tri, ref32)
                reg_l, reg_g, _ = errors(run(SDPA, True), ref32)
                tol = max(2 * reg_l, 2 * reg_g, 1e-3)
                ok = logit_err <= max(2 * reg_l, 1e-3) and grad_err <= max(2 * reg_g, 1e-3)
                extra = {"regular_same_dtype_logits_rel_err": reg_l, "regular_same_dtype_max_grad_rel_err": reg_g,
                         "reference": f"{SDPA} in float32"}
            rows.append({**row, "status": "pass" if ok else "fail", "logits_rel_err": logit_err,
                         "max_grad_rel_err": grad_err, "worst_param": worst, "tolerance": tol, **extra,
                         "reason": "" if ok else (f"error above {tol:g}" if not amp else
                                                  "triton further from fp32 than 2x regular in the same dtype")})
            ctx.log(f"  model {dt_name}: logits {logit_err:.2e}, worst gradient {grad_err:.2e} "
                    f"({worst}) -> {rows[-1]['status']}" + (f" (regular {dt_name}: {extra['regular_same_dtype_logits_rel_err']:.2e}, "
                                                            f"{extra['regular_same_dtype_max_grad_rel_err']:.2e})" if amp else ""))
            model = None
        except Exception as e:  # noqa: BLE001
            rows.append({**row, "status": "error", "reason": one_line(f"{type(e).__name__}: {e}", 300)})
            ctx.log(f"  model {dt_name}: {rows[-1]['reason']}")
    return rows


def stage_correctness(ctx: Ctx) -> dict:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here
    torch.backends.cudnn.allow_tf32 = False
    rows = attention_cases(ctx)
    models = model_check(ctx)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("pass", "fail", "error", "refused", "not run")}
    ctx.log(f"attention cases: {counts}; model: {[m['status'] for m in models]}")
    return {"attention": rows, "model": models, "counts": counts}


# ---- stage: kernels -----------------------------------------------------------------------------------------
def stage_kernels(ctx: Ctx) -> dict:
    from .kernels import default_config, format_rows, run_benchmark

    cfg = default_config(ctx.cfg["device"])
    cfg.update(ctx.cfg["kernels"], layer=False)
    data = run_benchmark(cfg, deadline=ctx.deadline, log=ctx.log)
    ctx.log(format_rows(data["rows"]))
    return data


# ---- stage: targets -----------------------------------------------------------------------------------------
def training_step(ctx: Ctx, impl: str, backend: Optional[str]) -> dict:
    """One optimizer step of a TimeSformer (ours with ``backend``, or Hugging Face with our weights):
    forward under bf16 autocast (fp32 weights), cross-entropy, backward, AdamW. Returns timing and peak
    memory above the level before the step (weights, gradients and optimizer state already allocated)."""
    import torch

    from . import measure
    from .workloads import Workload, build

    c, device = ctx.cfg["train"], ctx.cfg["device"]
    w = Workload(impl=impl, backend=backend or SDPA, batch=c["batch"],
                 frames=c["frames"], image_size=c["image_size"], dim=c["dim"], depth=c["depth"], heads=c["heads"],
                 num_classes=c["num_classes"], dtype="float32", device=device, mode="fwd+bwd", group="target")
    built = build(w)  # ours and HF get the same weights (seed 0)
    model, x = built.model, built.inputs
    model.train()
    labels = torch.randint(0, c["num_classes"], (c["batch"],), device=device)
    fused = {"fused": True} if device == "cuda" else {}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **fused)
    amp_dtype = getattr(torch, c["dtype"])

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
            out = model(x)
            logits = out.logits if hasattr(out, "logits") else out
        torch.nn.functional.cross_entropy(logits.float(), labels).backward()
        opt.step()

    for _ in range(1 if ctx.dry else 2):  # optimizer state exists, kernels compiled
        step()
    measure.sync(device)
    mem = measure.peak_memory(step, device)
    if device == "cuda":
        times, method = measure.gpu_times_ms(step, warmup_ms=50, rep_ms=c["rep_ms"])
        st = measure.summarize([t / 1e3 for t in times], method)
    else:
        st = measure.time_step(step, device, min_run_time=c["rep_ms"] / 1e3)
    rec = {"impl": impl, "backend": backend, "label": f"ours/{backend}" if impl == "ours" else "Hugging Face",
           "notes": built.notes, "params": sum(p.numel() for p in model.parameters()), **st, **mem}
    built = model = opt = None
    measure.free_memory(device)
    return rec


def stage_targets(ctx: Ctx) -> dict:
    import torch

    from .kernels import bench_layer, default_config

    out: dict = {"layer": [], "train": []}
    cfg = default_config(ctx.cfg["device"])
    cfg.update(ctx.cfg["layer"])
    dtype = getattr(torch, cfg["dtype"])
    out["layer"] = bench_layer(cfg, dtype, deadline=ctx.deadline - ctx.left() * 0.6, log=ctx.log)
    ctx.save(out)
    c = ctx.cfg["train"]
    ctx.log(f"training step: TimeSformer dim {c['dim']} depth {c['depth']}, B={c['batch']}, {c['frames']}x"
            f"{c['image_size']}, {c['dtype']} autocast, AdamW")
    for impl, backend in (("ours", SDPA), ("ours", KERNEL), ("hf", None)):
        label = f"ours/{backend}" if impl == "ours" else "Hugging Face"
        if ctx.out_of_time():
            out["train"].append({"impl": impl, "backend": backend, "label": label, "status": "not run",
                                 "reason": "stage time budget ran out"})
            continue
        try:
            rec = training_step(ctx, impl, backend)
            rec["status"] = "ok"
            ctx.log(f"  {label}: {rec['median_s'] * 1e3:.2f} ms (n={rec['n_times']}), peak "
                    f"{rec['peak_mem_bytes'] / 2 ** 20:.1f} MiB above start")
        except Exception as e:  # noqa: BLE001
            from ..errors import BrokenDependencyError
            from .measure import is_oom

            rec = {"impl": impl, "backend": backend, "label": label,
                   "status": "oom" if is_oom(e) else "error", "reason": one_line(f"{type(e).__name__}: {e}", 300)}
            if isinstance(e, BrokenDependencyError):  # a peer that is installed but does not import: a fault
                rec["status"] = "failed"
                out["failed"] = f"{label}: {rec['reason']}"
            ctx.log(f"  {label}: {rec['status']}: {rec['reason']}")
        out["train"].append(rec)
        ctx.save(out)
    return out


# ---- stage: sweep --------------------------------------------------------------------------------------------
def sweep_points(cfg: dict, device: str) -> list:
    """Every registered scheme x the contenders at each size; a point the scheme or the backend declares it
    cannot run (the scheme's ``why_not`` at that size, a mask-defined step on a backend without masks, ...)
    is not a point of the comparison and is left out."""
    from ..schemes import list_schemes
    from .workloads import Workload, refusals

    base = Workload(impl="ours", dim=cfg["dim"], heads=cfg["heads"], depth=cfg["depth"], num_classes=400,
                    device=device, dtype=cfg["dtype"], min_run_time=cfg["min_run_time"], mode="fwd", group="sweep")
    configs = [(f, cfg["base_res"]) for f in cfg["frames"]] + [(cfg["base_frames"], r) for r in cfg["resolutions"]]
    pts = [base.replace(scheme=s, backend=b, frames=f, image_size=r)
           for f, r in configs for s in list_schemes() for b in cfg["backends"]
           if not (cfg.get("interpreted_at_base_only") and b == KERNEL
                   and (f, r) != (cfg["base_frames"], cfg["base_res"]))]
    return [w for w in pts if not refusals(w, here=False)]


def pack_sweep(work: Path, points=None) -> dict:
    """results.jsonl + meta.json of the sweep's work folder as one dict (one file comes back, not two)."""
    from .runner import latest_by_key, load_meta, load_results

    recs = list(latest_by_key(load_results(work)).values())
    done = {r["key"] for r in recs}
    not_run = [p.label for p in points or [] if p.key not in done]
    return {"meta": load_meta(work), "records": recs, "not_run": not_run}


def stage_sweep(ctx: Ctx) -> dict:
    from .runner import run_sweep

    c = ctx.cfg["sweep"]
    points = sweep_points(c, ctx.cfg["device"])
    ctx.log(f"{len(points)} points: frames {list(c['frames'])} at {c['base_res']} px, {list(c['resolutions'])} px at "
            f"{c['base_frames']} frames; {len({p.scheme for p in points})} schemes x {', '.join(c['backends'])}; forward")
    settings = {"sweep_base": {"frames": c["base_frames"], "image_size": c["base_res"]}, "suite": "gpu-check sweep"}
    run_sweep(points, ctx.work / "sweep", progress=False, settings=settings, warm_up_s=1.0 if not ctx.dry else 0.0,
              deadline=ctx.deadline, log=ctx.log)
    data = pack_sweep(ctx.work / "sweep", points)
    by = {}
    for r in data["records"]:
        by[r["status"]] = by.get(r["status"], 0) + 1
    ctx.log(f"sweep: {by}; not run: {len(data['not_run'])}")
    return data


STAGE_FUNCS = {"env": stage_env, "correctness": stage_correctness, "kernels": stage_kernels,
               "targets": stage_targets, "sweep": stage_sweep}


def run_stage(name: str, out: Path, dry: bool, budget_s: float, work: Path, install_log: Optional[str]) -> int:
    """Child process: one stage, its result file written at the end (and partial ones on the way)."""
    if dry:
        import torch

        torch.set_num_threads(1)
    deadline = time.monotonic() + budget_s * SOFT_FRACTION
    ctx = Ctx(name, out, dry, deadline, work, install_log)
    # tests only: FAST_TIMESFORMER_GPU_CHECK_TEST="fail:STAGE,hang:STAGE,quick:STAGE"
    hooks = set(os.environ.get("FAST_TIMESFORMER_GPU_CHECK_TEST", "").split(","))
    if f"fail:{name}" in hooks:
        raise RuntimeError(f"injected failure in stage {name} (FAST_TIMESFORMER_GPU_CHECK_TEST)")
    if f"hang:{name}" in hooks:
        ctx.save({"note": "hanging on purpose"})
        time.sleep(3600)
    data = {"note": "skipped on purpose (test hook)"} if f"quick:{name}" in hooks else STAGE_FUNCS[name](ctx)
    status = "ok"
    if data.get("failed"):  # a measurement the stage owes could not be made (a peer failed to import)
        status = "failed"
        data["reason"] = data["failed"]
    elif time.monotonic() > deadline:
        status = "partial"
        data["reason"] = "the stage's time budget ran out: later items not run (see 'not run' entries)"
    ctx.save(data, status=status)
    return 0


# ---- the orchestrator --------------------------------------------------------------------------------------------
class Tee:
    def __init__(self, path: Path):
        self.fh = open(path, "a", buffering=1)
        self.lock = threading.Lock()

    def __call__(self, line: str = "") -> None:
        with self.lock:
            print(line, flush=True)
            self.fh.write(line + "\n")

    def close(self):
        self.fh.close()


def _run_child(stage: Stage, budget: float, args, work: Path, log: Tee) -> tuple:
    """(status, reason, wall) of one stage process; killed (its whole process group) at ``budget``."""
    cmd = [sys.executable, "-m", "fast_timesformer.bench.gpu_check", "--stage", stage.name, "--out", str(args.out),
           "--budget-s", f"{budget:.1f}", "--work", str(work)]
    if args.dry_run:
        cmd.append("--dry-run")
    if args.install_log:
        cmd += ["--install-log", args.install_log]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if stage.name == "correctness":  # deterministic mode (NaN-filled allocations) wants this for cuBLAS
        env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if args.dry_run:
        env.update(TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, cwd=str(ROOT))
    tail: list = []

    def pump():
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            del tail[:-40]
            log(f"[{stage.name}] {line}")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=budget)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        rc = proc.wait()
    reader.join(timeout=5)
    wall = time.monotonic() - t0
    if timed_out:
        return "timeout", f"killed after its budget of {budget:.0f} s", wall
    if rc != 0:
        err = next((ln for ln in reversed(tail) if ln.strip() and not ln.startswith(" ")), f"exit status {rc}")
        return "failed", one_line(f"exit status {rc}: {err}", 500), wall
    return None, "", wall


def _finish_stage_file(stage: Stage, out: Path, status, reason: str, wall: float, budget: float, args, work: Path,
                       points=None) -> dict:
    path = out / stage.file
    data = read_json(path) or {"stage": stage.name}
    if stage.name == "sweep" and status in ("timeout", "failed"):
        data.update(pack_sweep(work / "sweep", points))
    if status is not None:  # crashed or killed: keep what it saved, say why
        data.update(status=status, reason=reason)
    data.update(wall_s=wall, budget_s=budget)
    write_json(path, data)
    for tmp in out.glob(".*.tmp"):
        tmp.unlink()
    return data


def orchestrate(args) -> int:
    import tempfile

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for s in STAGES:  # a fresh run: no stale file from an earlier one
        (out / s.file).unlink(missing_ok=True)
    for f in REPORT_FILES:
        (out / f).unlink(missing_ok=True)
    log = Tee(out / LOG)
    t_start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    limit = args.total_s or (TOTAL_LIMIT_S - 40 if not args.dry_run else 240)
    only = set(args.stages) if args.stages else None
    stages = [s for s in STAGES if only is None or s.name in only]
    overrides = dict(args.budget or [])
    log(f"fast-timesformer gpu-check {'--dry-run (CPU, tiny sizes, TRITON_INTERPRET=1)' if args.dry_run else ''}"
        f" -> {out}; stages: {', '.join(s.name for s in stages)}; whole-command limit {limit:.0f} s")
    results = {}
    sweep_pts = None
    for i, stage in enumerate(stages):
        budget = overrides.get(stage.name, stage.dry_budget_s if args.dry_run else stage.budget_s)
        later = sum(overrides.get(s.name, s.dry_budget_s if args.dry_run else s.budget_s) for s in stages[i + 1:])
        left = limit - (time.monotonic() - t_start) - 10  # 10 s for the report
        if stage.name == "sweep":  # the last stage gets what the others left unused
            budget = max(budget, left - later)
            sweep_pts = sweep_points(config(args.dry_run)["sweep"], config(args.dry_run)["device"])
        budget = min(budget, left - later * 0.5)
        if budget < 2:
            results[stage.name] = _finish_stage_file(stage, out, "not run", "no time left in the whole-command limit",
                                                     0.0, budget, args, work)
            log(f"== {stage.name}: not run (no time left)")
            continue
        log(f"== stage {stage.name} ({stage.what}); budget {budget:.0f} s")
        status, reason, wall = _run_child(stage, budget, args, work, log)
        data = _finish_stage_file(stage, out, status, reason, wall, budget, args, work, sweep_pts)
        results[stage.name] = data
        log(f"== {stage.name}: {data.get('status')} in {wall:.1f} s" + (f" ({data['reason']})" if data.get("reason") else ""))
    from .gpu_report import draw_plots, evaluate_targets, format_targets, write_summary

    total = time.monotonic() - t_start
    for name in ("env", "correctness", "kernels", "targets", "sweep"):
        results.setdefault(name, read_json(out / f"{name}.json") or {"status": "not run"})
    targets = evaluate_targets(results, total, limit=TOTAL_LIMIT_S, dry=args.dry_run)
    try:
        draw_plots(results, out / "plots.png", dry=args.dry_run)
    except Exception as e:  # noqa: BLE001 - the summary still gets written
        log(f"plots failed: {type(e).__name__}: {e}")
    write_summary(results, targets, out / "summary.md", total, dry=args.dry_run)
    log("")
    log(f"gpu-check finished in {total:.0f} s ({'dry run on CPU: the figures are not GPU figures' if args.dry_run else 'GPU'})"
        f"; files in {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    log(format_targets(targets))
    log.close()
    bad = [s.name for s in stages if results[s.name].get("status") != "ok"]
    corr = results.get("correctness", {}).get("counts", {})
    return 1 if bad or corr.get("fail") or corr.get("error") else 0


# ---- command line -------------------------------------------------------------------------------------------
def _budget_arg(text: str):
    name, _, secs = text.partition("=")
    if name not in STAGE_FUNCS or not secs:
        raise argparse.ArgumentTypeError(f"--budget takes STAGE=SECONDS with STAGE in {', '.join(STAGE_FUNCS)}")
    return name, float(secs)


def _add_arguments(p) -> None:
    p.add_argument("--out", required=False, help="folder for the files (at most 8: see docs/gpu.md)")
    p.add_argument("--dry-run", action="store_true", help="every stage on CPU at tiny sizes, kernels under "
                                                          "TRITON_INTERPRET=1 (what CI runs)")
    p.add_argument("--stages", type=lambda t: [x for x in t.split(",") if x], default=None,
                   help=f"comma list, default all: {','.join(STAGE_FUNCS)}")
    p.add_argument("--budget", type=_budget_arg, action="append", help="override a stage's seconds, STAGE=S")
    p.add_argument("--total-s", type=float, default=None, help="whole-command limit in seconds (default 440 on GPU)")
    p.add_argument("--install-log", default=None, help="the install step's log, stored in env.json")
    p.add_argument("--fingerprint", action="store_true", help="print the source fingerprint and exit")


def add_subcommand(sub) -> None:
    g = sub.add_parser("gpu-check", help="prove the kernel and measure every target on a GPU in one command "
                                         "(--dry-run: the same on CPU at tiny sizes)",
                       description=__doc__.split("\n\n")[0])
    _add_arguments(g)
    g.set_defaults(func=cmd_gpu_check)


def cmd_gpu_check(args) -> int:
    if args.fingerprint:
        print(source_fingerprint())
        return 0
    if not args.out:
        raise ValueError("gpu-check needs --out DIR")
    if not args.dry_run:
        from .cli import require_device

        require_device("cuda")
    return orchestrate(args)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fast_timesformer.bench.gpu_check")
    _add_arguments(p)
    p.add_argument("--stage", choices=list(STAGE_FUNCS), help="(internal) run one stage in this process")
    p.add_argument("--budget-s", type=float, default=60.0)
    p.add_argument("--work", default=None)
    args = p.parse_args(argv)
    if args.stage:
        return run_stage(args.stage, Path(args.out), args.dry_run, args.budget_s, Path(args.work), args.install_log)
    return cmd_gpu_check(args)


if __name__ == "__main__":
    sys.exit(main())
