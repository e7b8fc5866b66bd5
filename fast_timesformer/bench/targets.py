"""The project's stated targets, evaluated on records (the one place the thresholds live). A needed point that did
not run (a peer that failed to import, a refusal, an error) fails its target, quoting the point's reason."""
from __future__ import annotations

from collections import namedtuple
from typing import Callable

from ..tables import format_table
from .studies import KERNEL, SDPA

# threshold None: every case must pass; value(records, target) -> (value, met, figure, why)
Target = namedtuple("Target", "id what threshold source suite value needed", defaults=("",))


class Missing(Exception):
    """A point a target needs is absent or not ok: the target fails (or is not measured), with the reason."""

    def __init__(self, why: str, failed: bool = True):
        super().__init__(why)
        self.failed = failed


def _find(recs, what: str, **fields):
    """The record whose workload has ``fields``; Missing (quoting its reason) unless it is ok."""
    hit = [r for r in recs if all(r["workload"].get(k) == v for k, v in fields.items())]
    if not hit:
        raise Missing(f"{what} not measured", failed=False)
    r = hit[-1]
    if r["status"] != "ok":
        raise Missing(f"{what}: {r['status']}: {' '.join((r.get('reason') or '').split())[:300]}")
    return r


def _passing(test: Callable):
    def value(recs, t):
        rows = [r for r in recs if test(r["workload"])]
        if not rows:
            raise Missing("not measured (correctness stage: no such test ran)", failed=False)
        bad = [r for r in rows if r["status"] in ("failed", "error")]
        ok = sum(r["status"] == "ok" for r in rows)
        why = "; ".join(f"{r['label']}: {' '.join(r['reason'].split())[:160]}" for r in bad[:4])
        return ok, not bad and ok > 0, f"{ok} pass, {len(bad)} fail, {len(rows) - ok - len(bad)} skipped", why
    return value


def _kernel(step):
    def value(recs, t):
        tri = _find(recs, f"{KERNEL} {step} fwd+bwd", group="kernel", step=step, mode="fwd+bwd", contender=KERNEL)
        if t.id.endswith("roofline"):
            frac = tri["pct_roofline"] / 100
            return frac, frac >= t.threshold, f"{frac * 100:.0f} % ({tri['tb_s']:.2f} TB/s)", ""
        sdpa = [r for r in recs if r["workload"].get("group") == "kernel" and r["workload"].get("step") == step
                and r["workload"].get("mode") == "fwd+bwd" and r["workload"].get("backend") == SDPA
                and r["status"] == "ok"]
        if not sdpa:
            raise Missing(f"no {SDPA} implementation timed at {step} fwd+bwd", failed=False)
        best = min(sdpa, key=lambda r: r["median_s"])
        sp = best["median_s"] / tri["median_s"]
        return sp, sp >= t.threshold, f"{sp:.2f}x ({best['workload']['contender']} vs {KERNEL})", ""
    return value


def _ratio(a: tuple, b: tuple, memory=False):
    """a / b of the median time (met at >= threshold) or of peak memory (met at <= it); a, b: (label, fields)."""
    def value(recs, t):
        key = "peak_mem_bytes" if memory else "median_s"
        v = _find(recs, a[0], **a[1])[key] / _find(recs, b[0], **b[1])[key]
        return v, (v <= t.threshold) if memory else (v >= t.threshold), f"{v:.2f}{'' if memory else 'x'}", ""
    return value


def _layer(step):
    return _ratio((f"{SDPA} layer {step}", dict(group="layer", step=step, contender=f"{SDPA}[default]")),
                  (f"{KERNEL} layer {step}", dict(group="layer", step=step, contender=KERNEL)))


def _train(backend=None):
    """(label, fields) of the training step of ours with ``backend``, or of Hugging Face's (None)."""
    if backend is None:
        return "Hugging Face training step", dict(group="train", impl="hf")
    return f"ours/{backend} training step", dict(group="train", impl="ours", backend=backend)


def _sweep(recs, t):
    if not recs:
        raise Missing("not measured", failed=False)
    done = sum(r["status"] in ("ok", "oom") for r in recs)
    return done / len(recs), done == len(recs), f"{done}/{len(recs)}", "; ".join(sorted(
        {" ".join(r["reason"].split())[:120] for r in recs if r["status"] not in ("ok", "oom")}))[:300]


TARGETS = (
    Target("correct-kernel", f"{KERNEL}: output and every gradient within its declared tolerance of float64", None,
           "issue 11", "correctness", _passing(lambda w: w.get("backend") == KERNEL and "contender" in w)),
    Target("correct-backends", "every other exact backend within its tolerance", None, "issue 11", "correctness",
           _passing(lambda w: w.get("backend") != KERNEL and "contender" in w)),
    Target("correct-model", f"model level: {KERNEL} vs {SDPA} logits and gradients", None, "issue 11",
           "correctness", _passing(lambda w: w.get("test") == "test_model_with_triton_matches_regular")),
    Target("temporal-roofline", f"time step fwd+bwd, {KERNEL}: fraction of the roofline", 0.70, "docs/triton.md",
           "kernels", _kernel("time"), ">= 70 %"),
    Target("temporal-speedup", f"time step fwd+bwd: best {SDPA} implementation / {KERNEL}", 3.0, "docs/triton.md",
           "kernels", _kernel("time")),
    Target("spatial-speedup", f"space step fwd+bwd: best {SDPA} implementation / {KERNEL}", 1.0, "docs/triton.md",
           "kernels", _kernel("space")),
    Target("layer-temporal", f"DividedAttention layer fwd+bwd, time: {SDPA} / {KERNEL}", 1.5, "docs/triton.md",
           "train", _layer("time")),
    Target("layer-spatial", f"DividedAttention layer fwd+bwd, space: {SDPA} / {KERNEL}", 1.5, "docs/triton.md",
           "train", _layer("space")),
    Target("train-vs-hf", f"training step TimeSformer-B B=8 8x224 bf16: Hugging Face / ours-{KERNEL}", 1.5,
           "issue 12", "train", _ratio(_train(), _train(KERNEL))),
    Target("train-vs-regular", f"training step: ours-{SDPA} / ours-{KERNEL}", 1.2, "issue 12", "train",
           _ratio(_train(SDPA), _train(KERNEL))),
    Target("train-memory", f"training step peak memory: ours-{KERNEL} / Hugging Face", 0.6, "issue 12", "train",
           _ratio(_train(KERNEL), _train(), memory=True), "<= 0.6"),
    Target("sweep-complete", "reduced Figure 3: points measured or OOM-recorded / all points", 1.0, "issue 11",
           "gpu-sweep", _sweep, "all"),
    Target("wall-time", "whole gpu-check, seconds (the stages' processes)", 480, "issue 11", "gpu-check",
           lambda recs, t: (w := sum(r.get("wall_s", 0) for r in recs), w < t.threshold, f"{w:.0f} s", ""), "< 480 s"),
)


def evaluate(records, every: bool = False, dry: bool = False) -> list:
    """One row per target: value, met (True / False / None = not measured), figure and why."""
    by_suite = {}
    for r in records:
        by_suite.setdefault(r.get("suite"), []).append(r)
    out = []
    for t in TARGETS:
        recs = by_suite.get(t.suite, [])
        if not recs and not every:
            continue
        try:
            value, met, shown, why = t.value(recs, t)
        except Missing as e:  # a needed point that did not run: FAILED (its reason); one never reached: not measured
            value, met, shown, why = None, False if e.failed else None, "FAILED" if e.failed else "-", str(e)
        if dry and t.threshold is not None and t.suite != "gpu-sweep":
            why = ("dry run: CPU and the interpreter, not a GPU figure; " + why).rstrip("; ")
        out.append({"id": t.id, "what": t.what, "source": t.source, "value": value, "met": met, "figure": shown,
                    "why": why, "needed": t.needed or ("all pass" if t.threshold is None else f">= {t.threshold:g}x")})
    return out


MET = {True: "MET", False: "NOT MET", None: "not measured"}


def format_targets(rows: list) -> str:
    """The short table printed last: every target, met or not, with its figure; then the reasons."""
    table = format_table([{"target": t["id"], "met": "FAILED" if t["figure"] == "FAILED" else MET[t["met"]],
                           "figure": t["figure"], "needed": t["needed"]}
                          for t in rows], ["target", "met", "figure", "needed"])
    return "targets:\n" + table + "".join(f"\n- {t['id']}: {t['why']}" for t in rows if t["why"])
