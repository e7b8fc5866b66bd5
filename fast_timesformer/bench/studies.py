"""Suites that answer one question each (``flex``, ``memory``, ``sdpa-cpu``, ``counts``), and gpu-check's ``train``
and ``gpu-sweep``: each one's ``help`` says what it measures; docs/bench.md the rest."""
from __future__ import annotations

import json
import subprocess
import sys

import torch

from ..schemes import get_scheme, list_schemes
from . import measure
from .correctness import check_workload
from .counts import count_training_step
from .kernels import kernel_cases, timed_sdpa
from .runner import Case, failed
from .suites import register_suite
from .workloads import Skip, Workload, build, refusals

# the two contenders of gpu-check's targets, by design (docs/triton.md: our Triton kernel vs the best SDPA)
KERNEL, SDPA = "triton", "regular"


@register_suite("flex", help="flex (compiled; batch and block-mask layouts) vs regular, every scheme, inference")
def flex_suite(device="cpu", tiny=False):
    base = Workload(impl="ours", dim=32 if tiny else 192, heads=2 if tiny else 3, depth=1 if tiny else 2,
                    num_classes=10, device=device, mode="fwd", group="flex", min_run_time=0.01 if tiny else 0.5)
    sizes = [(2, 32)] if tiny else [(f, 128) for f in (2, 4, 8, 16)] + [(8, s) for s in (64, 192, 224)]
    pts = []
    for s in list_schemes():
        masked = any(g.mask is not None for g in get_scheme(s).token_groups(2, 2, 2))
        layouts = [{"layout": "batch"}] + ([] if masked else [{"layout": "mask"}])
        for f, r in sizes:
            w = base.replace(scheme=s, frames=f, image_size=r)
            pts += [w.replace(backend="regular")] + [w.replace(backend="flex", backend_options=o) for o in layouts]
    return pts


def memory_step(path: str, amp: str, image_size: int, frames: int, depth: int, threads: int) -> dict:
    """One configuration, in this (fresh) process: build, one warm-up step, the measured step's peak. ``path``:
    an ``activation_memory`` mode of ours, or ``"hf"`` (Hugging Face's model, our weights)."""
    torch.set_num_threads(threads)
    built = build(Workload(impl="hf" if path == "hf" else "ours", backend="regular", mode="fwd+bwd", frames=frames,
                           image_size=image_size, depth=depth, num_classes=400))
    if path != "hf":
        built.model.set_activation_memory(path)

    def step():
        with torch.autocast("cpu", dtype=getattr(torch, amp), enabled=amp != "float32"):
            built.step()
    step()
    return measure.peak_memory(step, "cpu")


def _memory_case(c: Case) -> dict:
    args = json.dumps({k: c.fields[k] for k in ("path", "amp", "image_size", "frames", "depth", "threads")})
    res = subprocess.run([sys.executable, "-m", "fast_timesformer.bench.studies", args], capture_output=True,
                         text=True)
    if res.returncode:
        raise RuntimeError(f"the fresh process failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


@register_suite("memory", help="training-step peak memory per activation_memory mode and Hugging Face's, ViT-B "
                               "B=1: 8x224 float32 and bf16 autocast, 8x448 float32; each in a fresh process (CPU "
                               "allocation replay: bytes above the level at the step's start)")
def memory_suite(device="cpu", tiny=False):
    from ..activation_memory import MODES

    frames, depth = (2, 1) if tiny else (8, 12)
    sizes = [(32, "float32"), (32, "bfloat16")] if tiny else [(224, "float32"), (224, "bfloat16"), (448, "float32")]
    return [Case("memory", f"{path}/{amp} ViT-B depth {depth} {frames}x{size}", _memory_case, device=device,
                 impl="hf" if path == "hf" else "ours", path=path, amp=amp, threads=2, image_size=size, frames=frames,
                 depth=depth, tokens=frames * (size // 16) ** 2)
            for size, amp in sizes for path in (*MODES, "hf")]


def _sdpa_case(c: Case) -> dict:
    return timed_sdpa(*(torch.randn(*c.shape) for _ in range(3)), c.impl, c.mode, "cpu", c.min_run_time)


@register_suite("sdpa-cpu", help="SDPA's CPU flash kernel vs its math path per sequence length, fwd and fwd+bwd")
def sdpa_cpu_suite(device="cpu", tiny=False):
    # (batch*groups, heads, seq, dim_head) of ViT-B steps: time at 8x224 B=8, time at 8x448, space at 8x224 and
    # 8x448, time at 16 and 32 frames
    shapes = [(2, 2, 8, 16)] if tiny else [(1568, 12, 8, 64), (784, 12, 8, 64), (8, 12, 197, 64), (8, 12, 785, 64),
                                           (196, 12, 16, 64), (196, 12, 32, 64)]
    return [Case("sdpa-cpu", f"{shape} {m} {impl}", _sdpa_case, shape=list(shape), mode=m, impl=impl,
                 min_run_time=0.01 if tiny else 0.25, tokens=shape[2])
            for shape in shapes for m in ("fwd", "fwd+bwd") for impl in ("flash", "math")]


def _count_case(c: Case) -> dict:
    return count_training_step(Workload.from_dict(c.workload))


@register_suite("counts", help="GEMM calls and bytes copied in one training step, ours vs Hugging Face (no timing)")
def counts_suite(device="cpu", tiny=False):
    w = Workload(impl="ours", mode="fwd+bwd", **(dict(dim=32, depth=1, heads=2, frames=2, image_size=32) if tiny
                                                  else {}))
    return [Case("counts", f"{impl} training step", _count_case, impl=impl,
                 workload=w.replace(impl=impl).to_dict()) for impl in ("ours", "hf")]


def _train_case(c: Case) -> dict:
    """One optimizer step (forward under autocast over float32 weights, cross-entropy, backward, AdamW); timing and
    peak memory above the level before the step (weights, gradients and optimizer state already allocated)."""
    w = Workload.from_dict(c.workload)
    why = refusals(w)
    if why:
        raise Skip("; ".join(why))
    out = {}
    if w.impl == "ours":  # no speed without correctness: the attention error at this shape, in the step's dtype
        out["error"] = check_workload(w.replace(dtype=c.amp))
        if not out["error"]["within"]:
            return failed(out["error"])
    built = build(w)  # ours and HF get the same weights (seed 0)
    model, x, device = built.model, built.inputs, w.device
    labels = torch.randint(0, w.num_classes, (w.batch,), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if device.startswith("cuda") else {}))
    amp = getattr(torch, c.amp)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=torch.device(device).type, dtype=amp, enabled=amp != torch.float32):
            y = model(x)
        torch.nn.functional.cross_entropy((y.logits if hasattr(y, "logits") else y).float(), labels).backward()
        opt.step()
    for _ in range(2):  # optimizer state exists, kernels compiled
        step()
    out.update(measure.peak_memory(step, device), notes=built.notes)
    out.update(measure.time_step(step, device, min_run_time=c.min_run_time))
    return out


@register_suite("train", help="gpu-check targets: a DividedAttention layer fwd+bwd per contender; a TimeSformer-B "
                              "training step (B=8, 8x224, bf16 autocast, AdamW): ours regular / triton vs HF",
                device="cuda")
def train_suite(device="cuda", tiny=False):
    size = dict(dim=32, depth=1, heads=2, frames=2, image_size=32, batch=2, num_classes=5) if tiny else \
        dict(dim=768, depth=12, heads=12, frames=8, image_size=224, batch=8, num_classes=400)
    amp = "float32" if tiny else "bfloat16"
    cases = [c for c in kernel_cases(device, tiny, labels=(KERNEL, f"{SDPA}[default]")) if c.group == "layer"]
    for impl, be in (("ours", SDPA), ("ours", KERNEL), ("hf", SDPA)):
        w = Workload(impl=impl, backend=be, mode="fwd+bwd", device=device, group="train", **size)
        cases.append(Case("train", f"{'ours/' + be if impl == 'ours' else 'Hugging Face'} training step",
                          _train_case, device=device, impl=impl, backend=be, amp=amp, workload=w.to_dict(),
                          min_run_time=0.01 if tiny else 1.2))
    return cases


@register_suite("gpu-sweep", help="gpu-check's reduced Figure 3: every scheme x regular / triton, forward, ViT-B bf16",
                device="cuda")
def gpu_sweep_suite(device="cuda", tiny=False):
    if tiny:  # the interpreter is slow: triton at the base size only
        base = Workload(impl="ours", dim=32, depth=1, heads=2, num_classes=5, device=device, min_run_time=0.0005)
        configs, at_base = [(2, 32), (4, 32), (2, 64)], (2, 32)
    else:
        base = Workload(impl="ours", dim=768, depth=12, heads=12, num_classes=400, device=device, dtype="bfloat16",
                        min_run_time=0.03)
        configs = [(f, 224) for f in (8, 16, 32, 64, 96)] + [(8, r) for r in (256, 320, 384, 448)]
        at_base = None
    pts = [base.replace(scheme=s, backend=b, frames=f, image_size=r, group="sweep")
           for f, r in configs for s in list_schemes() for b in (SDPA, KERNEL)
           if not (at_base and b == KERNEL and (f, r) != at_base)]
    return [w for w in pts if not refusals(w, here=False)]  # a declared refusal is not a point of the comparison


if __name__ == "__main__":  # the memory suite's fresh process
    print(json.dumps(memory_step(**json.loads(sys.argv[1]))))
