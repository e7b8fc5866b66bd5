"""``summary.md`` next to the results: run metadata, the peer comparison, tables, the plots embedded."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..outputs import write_text
from .measure import FLOPS_METHOD, spread_text
from .plots import _size_pairs, _sweep_base, plot_all, schemes_in
from .runner import baseline_backend, kind_of, latest_by_key, load_meta, load_results, peer_ratios
from .targets import MET, evaluate
from .workloads import scheme_label

PLOT_TITLES = {
    "peers.png": "Target workload: ours vs the peers (same run)",
    "hf_sizes.png": "Ours vs Hugging Face by size (same run)",
    "latency_vs_frames.png": "Latency vs frames",
    "latency_vs_resolution.png": "Latency vs resolution",
    "memory_vs_tokens.png": "Peak memory vs tokens",
    "backend_bars.png": "Backends at the base workload",
    "error_vs_speed.png": "Approximation error vs speed",
    "flops_vs_frames_resolution.png": "FLOPs vs frames and resolution (paper Figure 3 style)",
    "kernels.png": "Attention steps on every exact backend (checked against float64 first)",
    "train.png": "Training step: time and peak memory",
}
#: the sweep's groups, drawn and tabled above; every other group gets a table of its own
SWEEP_GROUPS = ("sweep", "approx", "target", "sizes")
#: figures a record of another group may carry, with their column names
FIGURES = (("median_s", "median ms", lambda v: _ms(v)), ("peak_mem_bytes", "peak MiB", lambda v: _mb(v)),
           ("pct_roofline", "% roofline", lambda v: f"{v:.1f}"), ("graph_s", "graph ms", lambda v: _ms(v)),
           ("compile_s", "compile s", lambda v: f"{v:.2f}"), ("first_call_s", "first call s", lambda v: f"{v:.2f}"),
           ("mask_s", "mask s", lambda v: f"{v:.3f}"), ("gemm_calls", "GEMM calls", str),
           ("copy_bytes", "copied MB", lambda v: f"{v / 1e6:.1f}"), ("wall_s", "seconds", lambda v: f"{v:.1f}"))


def _md_table(rows, columns):
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    out += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(out)


def _ms(v):
    return "-" if v is None else (f"{v * 1e3:.1f}" if v * 1e3 >= 10 else f"{v * 1e3:.3g}")


def _mb(v):
    return "-" if v is None else f"{v / 2 ** 20:.1f}"


def write_summary(results_dir, plots=None, out_dir=None) -> Path:
    """Write ``summary.md`` into ``out_dir`` (default: ``results_dir``, beside the PNGs)."""
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir else results_dir
    recs = list(latest_by_key(load_results(results_dir)).values())
    meta = load_meta(results_dir)
    runs = meta.get("runs", [])
    last = runs[-1] if runs else {}
    lines = [f"# Benchmark results: {last.get('device', '?')}", ""]
    cmd = " ".join(["fast-timesformer"] + [a for a in last.get("argv", [])[1:]]) if last.get("argv") else "?"
    counts = Counter(r["status"] for r in recs)
    lines += [f"- command (last run): `{cmd}`",
              f"- points: {len(recs)} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}), "
              f"{len(runs)} run(s), last started {last.get('started', '?')}, finished {last.get('finished', '?')}",
              f"- device: {last.get('device', '?')}, {last.get('cpu_threads', '?')} torch threads on "
              f"{last.get('cpu_count', '?')} cores; load average (1/5/15 min) at start {last.get('load_avg_start')}, "
              f"at end {last.get('load_avg_end')}; "
              f"platform {last.get('platform', '?')}, python {last.get('python', '?')}",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in (last.get("versions") or {}).items() if v),
              f"- git commit: {(last.get('git') or {}).get('commit')}"
              + (" (with local changes)" if (last.get("git") or {}).get("dirty") else ""),
              f"- settings: {last.get('settings', {})}",
              ""]
    mem = sorted({r.get("mem_method") for r in recs if r.get("mem_method")})
    tm = sorted({r.get("time_method") for r in recs if r.get("time_method")})
    lines += ["Methods: latency = median of the timed runs (" + "; ".join(tm) + "); spread = IQR (first to third "
              "quartile) of n repeated measurements, written `IQR (n=...)`, and `1 run` where a point was timed "
              "once (no spread is claimed for it); "
              "peak memory = " + "; ".join(mem) + " (bytes the step allocates above what was live before it: "
              "activations, gradients, workspace; not the weights); FLOPs = torch.utils.flop_counter."
              "FlopCounterMode (matmul/conv/SDPA, counted as 2 per multiply-add); throughput = batch / median. "
              "`fwd` runs in `torch.inference_mode()` in eval mode; `fwd+bwd` is forward, mean of the output, "
              "backward (no optimizer step). Raw points: `results.jsonl`, run metadata: `meta.json`.", ""]
    other = Counter((r["workload"].get("backend"), r["flops_method"]) for r in recs
                    if r["status"] == "ok" and r.get("flops_method") not in (None, FLOPS_METHOD))
    compiled = [r for r in recs if r["status"] == "ok" and r.get("compile_s") is not None]
    if other or compiled:
        lines += ["Compiled backends (`Backend.compiled`: torch.compile cannot run under FlopCounterMode) are timed "
                  "outside any dispatch mode after an untimed first call, which compiles; that compile time is in "
                  "no latency and is listed below. Their FLOPs:"]
        lines += [f"- `{b}` ({n} points): {m}" for (b, m), n in sorted(other.items())]
        lines += [""]

    targets = evaluate(recs, every=any(r.get("suite") == "gpu-check" for r in recs),
                       dry=any(r.get("settings", {}).get("tiny") for r in runs))
    if targets:
        lines += ["## Targets", "", _md_table([{"target": t["id"], "what": t["what"], "met": MET[t["met"]],
                                                "figure": t["figure"], "needed": t["needed"], "source": t["source"],
                                                "note": t["why"].replace("|", "/")} for t in targets],
                                              ["target", "what", "met", "figure", "needed", "source", "note"]), ""]
    ratios = peer_ratios(recs)
    if ratios:
        lines += ["## Ours vs the peers (same run)", "",
                  _md_table([{"config": r["config"], "mode": r["mode"], "ours": f"ours/{r['ours']}",
                              "ours ms": _ms(r["ours_s"]), "peer": r["peer"], "peer ms": _ms(r["peer_s"]),
                              "speed-up (peer/ours)": f"{r['speedup']:.2f}x",
                              "peak MiB ours/peer": f"{_mb(r['ours_mem'])} / {_mb(r['peer_mem'])}",
                              "memory ratio": "-" if r["mem_ratio"] is None else f"{r['mem_ratio']:.2f}"}
                             for r in ratios],
                            ["config", "mode", "ours", "ours ms", "peer", "peer ms", "speed-up (peer/ours)",
                             "peak MiB ours/peer", "memory ratio"]), ""]
        pairs = _size_pairs(recs)
        if len(pairs) >= 2:
            base = next(iter(pairs.values()))["ours"]["workload"]["backend"]
            lines += [f"Ours (`{base}`) vs Hugging Face by size (forward, same weights, timed alternately): "
                      + "; ".join(f"{f}x{s_}: {p['hf']['median_s'] / p['ours']['median_s']:.2f}x faster, memory "
                                  f"{p['ours']['peak_mem_bytes'] / p['hf']['peak_mem_bytes']:.2f}x of HF's "
                                  f"(ours {_ms(p['ours']['median_s'])} ms, {spread_text(p['ours'])}; HF "
                                  f"{_ms(p['hf']['median_s'])} ms, {spread_text(p['hf'])})"
                                  for (f, s_), p in pairs.items()), ""]
        notes = sorted({n for r in recs if r["workload"].get("group") in ("target", "sizes") for n in r.get("notes", [])})
        lines += [f"- {n}" for n in notes] + [""]

    plots = [Path(p).name for p in (plots or [])] or [p for p in PLOT_TITLES if (out_dir / p).exists()]
    for name in PLOT_TITLES:
        if name in plots:
            lines += [f"## {PLOT_TITLES[name]}", "", f"![{PLOT_TITLES[name]}]({name})", ""]
            if name == "error_vs_speed.png":
                kinds = {}
                for r in recs:
                    if r.get("rel_error") is not None:
                        kinds.setdefault(kind_of(r), set()).add(r["workload"].get("backend"))
                approx = ", ".join(sorted(kinds.get("approximate", ()))) or "none"
                other = ", ".join(sorted(kinds.get("different_model", ()))) or "none"
                lines += [f"Approximate backends ({approx}) estimate softmax attention: their error is measured "
                          f"against backend `{baseline_backend(recs)}` (the exact backend `auto` picks) with the "
                          f"same projection weights. Backends that are a different model ({other}: their own "
                          "parameters) show the output *deviation* from softmax attention at equal projection "
                          "weights, not an approximation error. The error is taken on the model's output "
                          "features, after residual connections and the MLPs, so it is smaller than the error of "
                          "the attention output alone.", ""]

    f, s = _sweep_base(recs, meta)
    base = [r for r in recs if r["workload"].get("group") == "sweep" and r["workload"]["frames"] == f
            and r["workload"]["image_size"] == s and r["status"] != "skipped"]  # skips: listed below
    if base:
        rows = []
        for scheme in schemes_in(base):
            for r in sorted((r for r in base if r["workload"].get("scheme") == scheme),
                            key=lambda r: (r["workload"].get("backend"), r["workload"]["mode"])):
                ok = r["status"] == "ok"
                rows.append({"scheme": scheme_label(scheme), "backend": r["workload"].get("backend"),
                             "mode": r["workload"]["mode"], "status": r["status"],
                             "median ms": _ms(r.get("median_s")) if ok else "-",
                             "IQR ms (n)": spread_text(r) if ok else "-",
                             "peak MiB": _mb(r.get("peak_mem_bytes")) if ok else "-",
                             "GFLOP": f"{r['flops'] / 1e9:.2f}" if ok and r.get("flops") is not None else "-",
                             "clips/s": f"{r['throughput_clips_s']:.3g}" if ok else "-",
                             "rel. error": f"{r['rel_error']:.3f}" if ok and r.get("rel_error") is not None else "-"})
        w = base[0]["workload"]
        lines += [f"## All schemes x backends at the base workload ({w['impl']}, dim {w['dim']}, depth {w['depth']}, "
                  f"{f} frames x {s} px, batch {w['batch']}, {w['dtype']})", "",
                  _md_table(rows, ["scheme", "backend", "mode", "status", "median ms", "IQR ms (n)", "peak MiB",
                                   "GFLOP", "clips/s", "rel. error"]), ""]

    for group in dict.fromkeys(r["workload"].get("group") for r in recs if r["workload"].get("group")
                               not in SWEEP_GROUPS):
        sel = [r for r in recs if r["workload"].get("group") == group]
        cols = [(k, name, f) for k, name, f in FIGURES if any(r.get(k) is not None for r in sel)]
        rows = [{"point": r["label"], "status": r["status"], **{name: f(r[k]) if r.get(k) is not None else "-"
                                                                for k, name, f in cols},
                 "error vs float64": "-" if not r.get("error") else
                 f"{max(r['error']['max_rel'].values()):.1e} ({'within' if r['error']['within'] else 'OVER'} "
                 f"tolerance)", "reason": " ".join((r.get("reason") or "").split())[:160].replace("|", "/")}
                for r in sel]
        lines += [f"## {sel[0].get('suite') or ''}: {group}", "",
                  _md_table(rows, ["point", "status", *(c[1] for c in cols), "error vs float64", "reason"]), ""]
    odd = Counter((r["status"], r["workload"].get("backend") or "-", r["reason"][:160]) for r in recs
                  if r["status"] in ("skipped", "oom", "error", "failed") and r["workload"].get("group") in SWEEP_GROUPS)
    if odd:
        lines += ["## Points not measured", "",
                  _md_table([{"status": s_, "backend": b, "points": n, "reason": reason.replace("|", "/")}
                             for (s_, b, reason), n in sorted(odd.items())], ["status", "backend", "points", "reason"]),
                  ""]
    missing = Counter((r["workload"].get("backend"), k, v[:300]) for r in recs if r["status"] == "ok"
                      for k, v in (r.get("not_measured") or {}).items())
    if missing:
        lines += ["## Figures not measured (points otherwise ok)", "",
                  _md_table([{"backend": b, "figure": k, "points": n, "reason": why.replace("|", "/")}
                             for (b, k, why), n in sorted(missing.items())], ["backend", "figure", "points", "reason"]),
                  ""]
    if compiled:
        lines += ["## Compile time (compiled backends; in no latency)", "",
                  "`compile s`: seconds the point's untimed first call spent compiling shapes new to the process "
                  "(0: compiled earlier in the run, by the warm-up or a point of the same shapes); `first call s`: "
                  "that call's wall time.", "",
                  _md_table([{"point": r["label"], "compile s": f"{r['compile_s']:.2f}",
                              "first call s": f"{r['first_call_s']:.2f}" if r.get("first_call_s") is not None else "-"}
                             for r in compiled], ["point", "compile s", "first call s"]), ""]
    path = out_dir / "summary.md"
    write_text(path, "\n".join(lines))
    return path


def draw(results, out, only=None) -> list:
    """Every figure the records in ``results`` support (``only``: these file names), then ``summary.md``."""
    paths = plot_all(results, out, only=only)
    summary = write_summary(results, paths, out)
    for p in paths:
        print(f"plot: {p}")
    print(f"summary: {summary}")
    return paths
