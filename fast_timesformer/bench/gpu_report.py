"""The report of ``fast-timesformer gpu-check``: the target table, ``summary.md`` and ``plots.png``.

Everything here reads the stage files (``env.json``, ``correctness.json``, ``kernels.json``,
``targets.json``, ``sweep.json``), so a report can be redrawn later from files that came back from a
loan: ``python -m fast_timesformer.bench.gpu_report DIR``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .kernels import KERNEL, SDPA, is_sdpa, sdpa_label
from .measure import spread_text

# the contenders are named once, in .kernels (our Triton kernel vs the best SDPA implementation, by design)
KERNEL_LABEL, SDPA_LABEL = f"ours/{KERNEL}", f"ours/{SDPA}"

# (id, what, threshold, source) - the thresholds are the project's stated targets
TARGETS = (
    ("correct-kernel", "triton: output and every gradient within tolerance of float64, every case", None,
     "issue 11; tolerances fp32 1e-4, fp16 2e-2, bf16 5e-2 of the largest reference value"),
    ("correct-backends", "every other exact backend within the same tolerance", None, "issue 11"),
    ("correct-model", "model level: triton vs regular logits and gradients", None, "issue 11"),
    ("temporal-roofline", "temporal fwd+bwd, triton: fraction of the roofline (measured copy bandwidth)", 0.70,
     "docs/triton.md: >= 70 %"),
    ("temporal-speedup", "temporal fwd+bwd: best SDPA backend time / triton time", 3.0, "docs/triton.md: >= 3x"),
    ("spatial-speedup", "spatial fwd+bwd: best SDPA backend time / triton time", 1.0, "docs/triton.md: >= 1x"),
    ("layer-temporal", "DividedAttention layer fwd+bwd, temporal: regular / triton", 1.5, "docs/triton.md: >= 1.5x"),
    ("layer-spatial", "DividedAttention layer fwd+bwd, spatial: regular / triton", 1.5, "docs/triton.md: >= 1.5x"),
    ("train-vs-hf", "training step TimeSformer-B B=8 8x224 bf16: Hugging Face / ours-triton", 1.5,
     "issue 12: >= 1.5x Hugging Face"),
    ("train-vs-regular", "training step: ours-regular / ours-triton", 1.2, "issue 12: >= 1.2x our regular"),
    ("train-memory", "training step peak memory: ours-triton / Hugging Face", 0.6, "issue 12: <= 0.6x Hugging Face's"),
    ("sweep-complete", "reduced Figure 3: points measured or OOM-recorded / all points", 1.0, "issue 11"),
    ("wall-time", "whole gpu-check, seconds", 480, "issue 11: under 8 minutes"),
)


def _mem(nbytes) -> str:
    return f"{nbytes / 2 ** 30:.2f} GiB" if nbytes >= 2 ** 30 else f"{nbytes / 2 ** 20:.1f} MiB"


def _row(rows, step, mode, backend):
    return next((r for r in rows if r.get("step") == step and r.get("mode") == mode and r.get("backend") == backend
                 and r.get("status") == "ok"), None)


def _best_sdpa(rows, step, mode):
    cands = [r for r in rows if r.get("step") == step and r.get("mode") == mode and r.get("status") == "ok"
             and is_sdpa(r["backend"])]
    return min(cands, key=lambda r: r["ms"]) if cands else None


def evaluate_targets(results: dict, total_s: float, limit: float = 480, dry: bool = False) -> list:
    """One row per target: value, threshold, met (True / False / None = not measured) and why."""
    out = []
    corr = results.get("correctness", {})
    att = corr.get("attention", [])
    kern = results.get("kernels", {}).get("rows", [])
    tg = results.get("targets", {})
    layer, train = tg.get("layer", []), tg.get("train", [])
    sweep = results.get("sweep", {})

    def thr(tid):  # the threshold as declared in TARGETS (the one place the numbers live)
        return next(t[2] for t in TARGETS if t[0] == tid)

    def add(tid, value, met, shown, why="", failed=False):
        t = next(t for t in TARGETS if t[0] == tid)
        out.append({"id": tid, "what": t[1], "threshold": t[2], "source": t[3], "value": value, "met": met,
                    "shown": shown, "why": why, "failed": failed})

    def correctness(tid, rows):
        if not rows:
            return add(tid, None, None, "-", f"not measured (correctness: {corr.get('status', 'not run')})")
        bad = [r for r in rows if r["status"] in ("fail", "error")]
        notrun = [r for r in rows if r["status"] == "not run"]
        passed = [r for r in rows if r["status"] == "pass"]
        why = "; ".join(f"{r['backend']} {r['dtype']} {r['mode']}/{r['step']}: {r['reason']}" for r in bad[:4])
        if notrun:
            why = (why + "; " if why else "") + f"{len(notrun)} case(s) not run (time)"
        add(tid, len(passed), (not bad) and not notrun if passed else None,
            f"{len(passed)} pass, {len(bad)} fail" + (f", {len(notrun)} not run" if notrun else ""), why)

    correctness("correct-kernel", [r for r in att if r["backend"] in (KERNEL, "*")])
    correctness("correct-backends", [r for r in att if r["backend"] != KERNEL])
    models = corr.get("model", [])
    if models:
        bad = [m for m in models if m["status"] != "pass"]
        add("correct-model", None, not bad, ", ".join(f"{m['dtype']} {m['status']}" + (
            f" (logits {m['logits_rel_err']:.1e}, grads {m['max_grad_rel_err']:.1e})" if "logits_rel_err" in m else "")
            for m in models), "; ".join(m.get("reason", "") for m in bad))
    else:
        add("correct-model", None, None, "-", "not measured")

    tri = _row(kern, "temporal", "both", KERNEL)
    if tri:
        frac = tri["pct_bw"] / 100
        add("temporal-roofline", frac, frac >= thr("temporal-roofline"), f"{frac * 100:.0f} % ({tri['TB/s']:.2f} TB/s, {tri['ms']:.3f} ms)")
    else:
        add("temporal-roofline", None, None, "-", "triton temporal fwd+bwd not timed")
    for tid, step in (("temporal-speedup", "temporal"), ("spatial-speedup", "spatial")):
        tri, best = _row(kern, step, "both", KERNEL), _best_sdpa(kern, step, "both")
        if tri and best:
            sp = best["ms"] / tri["ms"]
            add(tid, sp, sp >= thr(tid), f"{sp:.2f}x ({best['backend']} {best['ms']:.3f} ms vs {tri['ms']:.3f} ms)")
        else:
            add(tid, None, None, "-", "not timed (triton or every SDPA backend missing)")
    for tid, step in (("layer-temporal", "layer-temporal"), ("layer-spatial", "layer-spatial")):
        tri = next((r for r in layer if r["step"] == step and r["backend"] == KERNEL and r["status"] == "ok"), None)
        reg = next((r for r in layer if r["step"] == step and r["backend"] == sdpa_label("default")
                    and r["status"] == "ok"),
                   None)
        if tri and reg:
            sp = reg["ms"] / tri["ms"]
            add(tid, sp, sp >= thr(tid), f"{sp:.2f}x ({reg['ms']:.3f} vs {tri['ms']:.3f} ms)")
        else:
            add(tid, None, None, "-", "not timed")
    tr = {r.get("label"): r for r in train if r.get("status") == "ok"}
    t_tri, t_reg, t_hf = tr.get(KERNEL_LABEL), tr.get(SDPA_LABEL), tr.get("Hugging Face")
    hf_failed = next((r for r in train if r.get("label") == "Hugging Face" and r.get("status") == "failed"), None)
    for tid, a, b in (("train-vs-hf", t_hf, t_tri), ("train-vs-regular", t_reg, t_tri)):
        if tid == "train-vs-hf" and hf_failed:
            add(tid, None, False, "-", f"Hugging Face: {hf_failed['reason']}", failed=True)
        elif a and b:
            sp = a["median_s"] / b["median_s"]
            add(tid, sp, sp >= thr(tid), f"{sp:.2f}x ({a['median_s'] * 1e3:.1f} vs {b['median_s'] * 1e3:.1f} ms)")
        else:
            missing = [r.get("label") + ": " + r.get("reason", r.get("status")) for r in train if r.get("status") != "ok"]
            add(tid, None, None, "-", "; ".join(missing) or "not measured")
    if t_tri and t_hf and t_hf.get("peak_mem_bytes"):
        ratio = t_tri["peak_mem_bytes"] / t_hf["peak_mem_bytes"]
        add("train-memory", ratio, ratio <= thr("train-memory"), f"{ratio:.2f} ({_mem(t_tri['peak_mem_bytes'])} vs "
                                                 f"{_mem(t_hf['peak_mem_bytes'])})")
    elif hf_failed:
        add("train-memory", None, False, "-", f"Hugging Face: {hf_failed['reason']}", failed=True)
    else:
        add("train-memory", None, None, "-", "not measured")
    recs = sweep.get("records", [])
    if recs or sweep.get("not_run"):
        done = sum(r["status"] in ("ok", "oom") for r in recs)
        allp = len(recs) + len(sweep.get("not_run", []))
        st = {}
        for r in recs:
            st[r["status"]] = st.get(r["status"], 0) + 1
        add("sweep-complete", done / allp if allp else None, done == allp,
            f"{done}/{allp} ({', '.join(f'{k} {v}' for k, v in sorted(st.items()))}"
            + (f", not run {len(sweep['not_run'])}" if sweep.get("not_run") else "") + ")",
            "; ".join(sorted({r["reason"][:120] for r in recs if r["status"] in ("error", "skipped")}))[:300])
    else:
        add("sweep-complete", None, None, "-", f"sweep: {sweep.get('status', 'not run')} {sweep.get('reason', '')}")
    add("wall-time", total_s, total_s < limit, f"{total_s:.0f} s")
    if dry:
        for t in out:
            if t["id"] not in ("correct-kernel", "correct-backends", "correct-model", "sweep-complete"):
                t["why"] = ("dry run: CPU and the interpreter, not a GPU figure; " + t["why"]).rstrip("; ")
    return out


def format_targets(targets: list) -> str:
    """The short table printed last: every target, met or not, with its figure."""
    from ..tables import format_table

    rows = [{"target": t["id"], "met": "FAILED" if t.get("failed") else
             {True: "MET", False: "NOT MET", None: "not measured"}[t["met"]],
             "figure": t["shown"], "needed": _needed(t)} for t in targets]
    text = "targets:\n" + format_table(rows, ["target", "met", "figure", "needed"])
    notes = [f"- {t['id']}: {t['why']}" for t in targets if t["why"]]
    return text + ("\n" + "\n".join(notes) if notes else "")


def _needed(t) -> str:
    thr = t["threshold"]
    if thr is None:
        return "all pass"
    if t["id"] == "train-memory":
        return f"<= {thr:g}"
    if t["id"] == "wall-time":
        return f"< {thr:g} s"
    if t["id"] == "temporal-roofline":
        return f">= {thr * 100:.0f} %"
    if t["id"] == "sweep-complete":
        return "all"
    return f">= {thr:g}x"


def _bar_panel(ax, labels, ylabel: str, title: str, small_ticks: bool = False) -> None:
    """A bar panel's axes: one tick per label, a linear axis from 0, legend and title."""
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, **({"fontsize": 7} if small_ticks else {}))
    ax.set_ylim(bottom=0)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)


# ---- plots.png ------------------------------------------------------------------------------------------------
def draw_plots(results: dict, path: Path, dry: bool = False) -> Path:
    """One PNG, six panels: kernel times (fwd+bwd), % of the roofline, the layer, the training step (time and
    memory), latency vs frames and vs resolution from the sweep. A panel without data says why."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import readable_log_axis, scheme_colour, schemes_in
    from .workloads import scheme_label

    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    kern = results.get("kernels", {}).get("rows", [])

    def empty(ax, title, why):
        ax.set_title(title, fontsize=10)
        ax.text(0.5, 0.5, "no data:\n" + why, ha="center", va="center", fontsize=8, wrap=True, transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])

    # 1. kernel fwd+bwd per step and backend (linear axis, quartile bars)
    ax = axes[0][0]
    steps = [s for s in ("temporal", "spatial", "joint") if any(r.get("step") == s for r in kern)]
    ok = [r for r in kern if r.get("mode") == "both" and r.get("status") in ("ok", "bound")
          and not r["backend"].startswith("sdpa-only")]
    if ok:
        backends = sorted({r["backend"] for r in ok}, key=lambda b: (b != "roofline", b != KERNEL, b))
        width = 0.8 / len(backends)
        for j, be in enumerate(backends):
            xs, ys, lo, hi = [], [], [], []
            for i, st in enumerate(steps):
                r = next((r for r in ok if r["step"] == st and r["backend"] == be), None)
                if r:
                    xs.append(i + (j - (len(backends) - 1) / 2) * width)
                    ys.append(r["ms"])
                    lo.append(r["ms"] - r["q1_ms"] if r.get("q1_ms") is not None else 0)
                    hi.append(r["q3_ms"] - r["ms"] if r.get("q3_ms") is not None else 0)
            color = "tab:red" if be == KERNEL else "0.6" if be == "roofline" else None
            ax.bar(xs, ys, width=width, label=be, color=color, yerr=[lo, hi], error_kw={"elinewidth": 0.7})
        _bar_panel(ax, steps, "ms per fwd+bwd (median, q1-q3)", "attention step, forward+backward (eager)")
    else:
        empty(ax, "attention step, forward+backward", results.get("kernels", {}).get("reason", "kernels stage not run"))

    # 2. fraction of roofline, triton and best SDPA, per step x mode
    ax = axes[0][1]
    pts = [r for r in kern if r.get("status") == "ok" and "pct_bw" in r and (r["backend"] == KERNEL
                                                                           or is_sdpa(r["backend"]))]
    if pts:
        labels = [f"{s}\n{m}" for s in steps for m in ("fwd", "bwd", "both")]
        for j, who in enumerate((KERNEL, "best SDPA")):
            ys = []
            for s in steps:
                for m in ("fwd", "bwd", "both"):
                    if who == KERNEL:
                        r = _row(kern, s, m, KERNEL)
                    else:
                        r = _best_sdpa(kern, s, m)
                    ys.append(r["pct_bw"] if r else 0)
            ax.bar([i + (j - 0.5) * 0.4 for i in range(len(labels))], ys, width=0.4, label=who,
                   color="tab:red" if who == KERNEL else "tab:blue")
        ax.axhline(70, color="k", lw=0.8, ls="--", label="target 70 % (temporal)")
        _bar_panel(ax, labels, "% of the roofline (minimum bytes / measured copy bandwidth)", "achieved bandwidth",
                   small_ticks=True)
    else:
        empty(ax, "achieved bandwidth", "no timed kernel rows")

    # 3. the layer
    ax = axes[0][2]
    layer = [r for r in results.get("targets", {}).get("layer", []) if r.get("status") == "ok"]
    if layer:
        kinds = sorted({r["step"] for r in layer})
        backends = sorted({r["backend"] for r in layer}, key=lambda b: (b != KERNEL, b))
        width = 0.8 / len(backends)
        for j, be in enumerate(backends):
            xs, ys = [], []
            for i, k in enumerate(kinds):
                r = next((r for r in layer if r["step"] == k and r["backend"] == be), None)
                if r:
                    xs.append(i + (j - (len(backends) - 1) / 2) * width)
                    ys.append(r["ms"])
            ax.bar(xs, ys, width=width, label=be, color="tab:red" if be == KERNEL else None)
        _bar_panel(ax, kinds, "ms per forward+backward (median)", "DividedAttention layer (qkv + attention + proj)")
    else:
        empty(ax, "DividedAttention layer", "targets stage: no layer rows")

    # 4. training step: time and memory
    ax = axes[1][0]
    train = [r for r in results.get("targets", {}).get("train", []) if r.get("status") == "ok"]
    if train:
        xs = range(len(train))
        lo = [r["median_s"] - r["q1_s"] if r.get("q1_s") is not None else 0 for r in train]
        hi = [r["q3_s"] - r["median_s"] if r.get("q3_s") is not None else 0 for r in train]
        ax.bar(xs, [r["median_s"] * 1e3 for r in train], color=["tab:red" if r["label"] == KERNEL_LABEL else "0.5"
                                                                  for r in train],
               yerr=[[v * 1e3 for v in lo], [v * 1e3 for v in hi]])
        for x, r in zip(xs, train):
            ax.annotate(f"{r['median_s'] * 1e3:.1f} ms\n{spread_text(r)}\npeak {_mem(r['peak_mem_bytes'])}",
                        (x, r["median_s"] * 1e3), ha="center", fontsize=7, xytext=(0, 4), textcoords="offset points")
        ax.set_xticks(list(xs))
        ax.set_xticklabels([r["label"] for r in train])
        ax.set_ylim(0, max(r["median_s"] * 1e3 for r in train) * 1.35)
        ax.set_ylabel("ms per training step (median, q1-q3)")
        ax.set_title("TimeSformer training step (forward, backward, AdamW)", fontsize=10)
    else:
        empty(ax, "training step", "targets stage: no training rows")

    # 5-6. the sweep
    recs = results.get("sweep", {}).get("records", [])
    base = (results.get("sweep", {}).get("meta", {}).get("runs") or [{}])[-1].get("settings", {}).get("sweep_base", {})
    for ax, (x_field, fixed_field, fixed, xlabel) in zip(axes[1][1:], (("frames", "image_size", base.get("image_size"),
                                                                       "frames"),
                                                                      ("image_size", "frames", base.get("frames"),
                                                                       "resolution (px)"))):
        sel = [r for r in recs if r["workload"][fixed_field] == fixed and r["status"] in ("ok", "oom")]
        if not any(r["status"] == "ok" for r in sel):
            empty(ax, f"latency vs {xlabel}", "sweep stage: no points")
            continue
        for scheme in schemes_in(sel):
            colour = scheme_colour(scheme)
            for be, style in ((SDPA, "-"), (KERNEL, "--")):
                line = sorted((r for r in sel if r["workload"]["scheme"] == scheme and r["workload"]["backend"] == be),
                              key=lambda r: r["workload"][x_field])
                okl = [r for r in line if r["status"] == "ok"]
                if okl:
                    ax.plot([r["workload"][x_field] for r in okl], [r["median_s"] * 1e3 for r in okl], style,
                            marker="o", ms=3, color=colour, label=f"{scheme_label(scheme)} {be}")
                for r in line:
                    if r["status"] == "oom":
                        ax.scatter([r["workload"][x_field]], [0.96], marker="x", color=colour,
                                   transform=ax.get_xaxis_transform())
        ax.set_yscale("log")
        xs = sorted({r["workload"][x_field] for r in sel})
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs])
        readable_log_axis(ax, "y")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("forward ms (median)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
        ax.set_title(f"reduced Figure 3: latency vs {xlabel} (at {fixed}; x = out of memory)", fontsize=10)
    env = results.get("env", {})
    dev = env.get("device", {}).get("name", "?")
    fig.suptitle(f"gpu-check on {dev}" + (" - DRY RUN on CPU, tiny sizes: not GPU figures" if dry else "")
                 + f" | torch {env.get('versions', {}).get('torch')} triton {env.get('versions', {}).get('triton')}"
                 + f" | source {env.get('source_fingerprint')}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ---- summary.md --------------------------------------------------------------------------------------------------
def _md(rows, cols):
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(str(r.get(c, "")).replace("|", "/") for c in cols) + " |" for r in rows]
    return "\n".join(out)


def write_summary(results: dict, targets: list, path: Path, total_s: float, dry: bool = False) -> Path:
    from .gpu_check import STAGES

    env = results.get("env", {})
    lines = [f"# gpu-check: {env.get('device', {}).get('name', '?')}" + (" (DRY RUN on CPU)" if dry else ""), ""]
    if dry:
        lines += ["**Dry run**: every stage on CPU at tiny sizes, kernels under `TRITON_INTERPRET=1`. It proves the "
                  "command and its files, not the kernel's speed: no figure here is a GPU figure.", ""]
    v = env.get("versions", {})
    lines += [f"- versions: torch {v.get('torch')}, triton {v.get('triton')}, transformers {v.get('transformers')}, "
              f"python {env.get('python')}; CUDA {env.get('torch_cuda')}",
              f"- commit: {(env.get('git') or {}).get('commit')}; source fingerprint {env.get('source_fingerprint')}",
              f"- whole command: {total_s:.0f} s", ""]
    smi = (env.get("nvidia_smi") or {}).get("gpus")
    if smi:
        lines += ["- nvidia-smi: " + "; ".join(f"{k} {val}" for k, val in smi[0].items()), ""]
    lines += ["## Targets", "", _md([{"target": t["id"], "what": t["what"], "met": "**failed**" if t.get("failed") else {
        True: "met", False: "**not met**", None: "not measured"}[t["met"]],
                                      "figure": t["shown"], "needed": _needed(t), "source": t["source"],
                                      "note": t["why"]} for t in targets],
                                    ["target", "what", "met", "figure", "needed", "source", "note"]), ""]
    lines += ["## Stages", "", _md([{"stage": s.name, "file": s.file, "status": results.get(s.name, {}).get("status"),
                                     "seconds": f"{results.get(s.name, {}).get('wall_s', 0):.1f}",
                                     "budget s": f"{results.get(s.name, {}).get('budget_s', 0):.0f}",
                                     "reason": results.get(s.name, {}).get("reason", "")} for s in STAGES],
                                   ["stage", "file", "status", "seconds", "budget s", "reason"]), ""]
    corr = results.get("correctness", {})
    if corr.get("attention"):
        lines += ["## Correctness (vs float64, max |error| / max |reference|)", "",
                  f"Counts: {corr.get('counts')}. Outputs start as NaN and torch fills uninitialised memory with NaN, "
                  "so an element a backend does not write fails the check; every case draws fresh inputs (seed "
                  "listed).", ""]
        rows = [{"shape": r["shape"], "dtype": r["dtype"], "mode": f"{r['mode']}/{r['step']}", "backend": r["backend"],
                 "status": r["status"], "out": f"{r['errors']['out']:.1e}" if "errors" in r else "-",
                 "dqkv": f"{r['errors']['dqkv']:.1e}" if "errors" in r else "-",
                 "dcls": f"{r['errors']['dcls']:.1e}" if "errors" in r else "-", "reason": r.get("reason", "")}
                for r in corr["attention"] if r["status"] != "refused"]
        lines += [_md(rows, ["shape", "dtype", "mode", "backend", "status", "out", "dqkv", "dcls", "reason"]), ""]
        refused = sorted({(r["backend"], r["reason"]) for r in corr["attention"] if r["status"] == "refused"})
        if refused:
            lines += ["Refused (not run, with the backend's reason): " + "; ".join(f"{b}: {why}" for b, why in refused[:12]),
                      ""]
        for m in corr.get("model", []):
            lines += [f"- model {m['dtype']}: {m['status']} " + (f"(logits {m['logits_rel_err']:.2e}, worst gradient "
                                                                  f"{m['max_grad_rel_err']:.2e} in {m['worst_param']})"
                                                                  if "logits_rel_err" in m else m.get("reason", ""))]
        lines += [""]
    kern = results.get("kernels", {})
    if kern.get("rows"):
        m = kern.get("meta", {})
        lines += ["## Kernel benchmark", "", f"Workload {m.get('workload')}; copy bandwidth "
                  f"{m.get('copy_bandwidth_GBps', 0):.0f} GB/s" + (f", HBM spec {m['hbm_spec_Bps'] / 1e12:.2f} TB/s"
                                                                  if m.get("hbm_spec_Bps") else "")
                  + ". Times: median of n calls (q1-q3); graph = replayed from a CUDA graph.", ""]
        rows = [{"step": r["step"], "backend": r["backend"], "mode": r.get("mode", "-"),
                 "ms": f"{r['ms']:.4f}" if "ms" in r else "-",
                 "q1-q3 (n)": (f"{r['q1_ms']:.4f}-{r['q3_ms']:.4f} (n={r['n']})" if r.get("q1_ms") is not None
                               else ("1 run" if r.get("n") == 1 else "-")),
                 "graph ms": f"{r['graph_ms']:.4f}" if "graph_ms" in r else (r.get("graph_status", "-")[:60]),
                 "TB/s": f"{r['TB/s']:.2f}" if "TB/s" in r else "-",
                 "% roofline": f"{r['pct_bw']:.1f}" if "pct_bw" in r else "-",
                 "status": r["status"]} for r in kern["rows"]]
        lines += [_md(rows, ["step", "backend", "mode", "ms", "q1-q3 (n)", "graph ms", "TB/s", "% roofline", "status"]),
                  ""]
    tg = results.get("targets", {})
    if tg.get("layer") or tg.get("train"):
        lines += ["## Layer and training step", ""]
        lines += [_md([{"step": r["step"], "backend": r["backend"], "ms": f"{r['ms']:.4f}" if "ms" in r else "-",
                        "n": r.get("n", "-"), "status": r["status"]} for r in tg.get("layer", [])],
                      ["step", "backend", "ms", "n", "status"]), ""]
        lines += [_md([{"implementation": r.get("label"), "median ms": f"{r['median_s'] * 1e3:.2f}" if "median_s" in r
                        else "-", "IQR ms (n)": spread_text(r) if "median_s" in r else "-",
                        "peak above start": _mem(r["peak_mem_bytes"]) if "peak_mem_bytes" in r else "-",
                        "status": r.get("status"), "note": "; ".join(r.get("notes", [])) or r.get("reason", "")}
                       for r in tg.get("train", [])],
                      ["implementation", "median ms", "IQR ms (n)", "peak above start", "status", "note"]), ""]
    sw = results.get("sweep", {})
    if sw.get("records"):
        lines += ["## Reduced Figure 3 sweep (forward)", ""]
        rows = [{"point": r["label"], "status": r["status"],
                 "median ms": f"{r['median_s'] * 1e3:.2f}" if r.get("median_s") else "-",
                 "IQR ms (n)": spread_text(r) if r.get("median_s") else "-",
                 "peak MiB": f"{r['peak_mem_bytes'] / 2 ** 20:.0f}" if r.get("peak_mem_bytes") else "-",
                 "reason": " ".join((r.get("reason") or "").split())[:160]} for r in sw["records"]]
        lines += [_md(rows, ["point", "status", "median ms", "IQR ms (n)", "peak MiB", "reason"]), ""]
        if sw.get("not_run"):
            lines += [f"Not run (time budget): {len(sw['not_run'])} points: " + ", ".join(sw["not_run"][:20]), ""]
    lines += ["![plots](plots.png)", ""]
    path.write_text("\n".join(lines))
    return path


def main(argv=None) -> int:
    """Redraw summary.md and plots.png (and print the target table) from a gpu-check folder."""
    folder = Path((argv or sys.argv[1:])[0])
    results = {}
    for name in ("env", "correctness", "kernels", "targets", "sweep"):
        try:
            results[name] = json.loads((folder / f"{name}.json").read_text())
        except (OSError, ValueError):
            results[name] = {"status": "missing"}
    dry = bool(results["env"].get("dry_run"))
    total = sum(results[n].get("wall_s", 0) for n in results)
    targets = evaluate_targets(results, total, dry=dry)
    draw_plots(results, folder / "plots.png", dry=dry)
    write_summary(results, targets, folder / "summary.md", total, dry=dry)
    print(format_targets(targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
