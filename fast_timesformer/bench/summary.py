"""``summary.md`` beside the results: run metadata, the targets, the peer comparison, tables, the plots embedded."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..outputs import write_text
from ..tables import format_table
from .measure import FLOPS_METHOD, spread_text
from .plots import PLOTS, _size_pairs, _sweep_base, plot_all, schemes_in
from .runner import baseline_backend, kind_of, latest_by_key, load_meta, load_results, peer_ratios
from .targets import MET, evaluate
from .workloads import scheme_label

#: the sweep's groups, drawn and tabled together; every other group gets a table of its own
SWEEP_GROUPS = ("sweep", "approx", "target", "sizes")
#: a point's figures: (record field, column, cell: a format of the field's value, or a function of the record); a
#: table has a column where one of its points has the field
FIGURES = (("median_s", "median ms", lambda r: _ms(r["median_s"])), ("median_s", "IQR ms (n)", spread_text),
           ("peak_mem_bytes", "peak MiB", lambda r: _mb(r["peak_mem_bytes"])),
           ("flops", "GFLOP", lambda r: f"{r['flops'] / 1e9:.2f}"), ("throughput_clips_s", "clips/s", "{:.3g}"),
           ("rel_error", "rel. error", "{:.3g}"), ("ratio_to_hf", "x HF eager", "{:.2f}x"),
           ("top1_agreement_fp32", "top-1 = float32", "{:.0%}"), ("export_s", "export s", "{:.1f}"),
           ("pct_roofline", "% roofline", "{:.1f}"), ("graph_s", "graph ms", lambda r: _ms(r["graph_s"])),
           ("compile_s", "compile s", "{:.2f}"), ("first_call_s", "first call s", "{:.2f}"),
           ("mask_s", "mask s", "{:.3f}"), ("gemm_calls", "GEMM calls", "{}"),
           ("copy_bytes", "copied MB", lambda r: f"{r['copy_bytes'] / 1e6:.1f}"), ("wall_s", "seconds", "{:.1f}"))


def point_rows(recs: list, reason=lambda r: " ".join((r.get("reason") or "").split())[:160]) -> list:
    """One row per record, for summary.md and the console: label, status, the figures any of them has, the error
    vs float64 (where checked), ``reason(record)``."""
    cols = [(k, name, cell) for k, name, cell in FIGURES if any(r.get(k) is not None for r in recs)]
    checked = any(r.get("error") for r in recs)
    return [{"point": r["label"], "status": r["status"],
             **{name: "-" if r.get(k) is None else cell(r) if callable(cell) else cell.format(r[k])
                for k, name, cell in cols},
             **({"error vs float64": "-" if not r.get("error") else f"{max(r['error']['max_rel'].values()):.1e} "
                 f"({'within' if r['error']['within'] else 'OVER'} tolerance)"} if checked else {}),
             "reason": reason(r)} for r in recs]


def format_summary(records) -> str:
    """The console table; a point's reason (or, for an ok point, why a figure is missing) is a note number
    (``[1]``), its full text printed once after the table (never a sentence cut mid-word)."""
    notes = []

    def note(r):
        not_measured = "; ".join(f"{k} not measured: {v}" for k, v in (r.get("not_measured") or {}).items())
        reason = " ".join((r.get("reason") or (not_measured if r["status"] == "ok" else "")).split())
        reason = reason.split(" Traceback")[0] if r["status"] == "error" else reason
        if reason and reason not in notes:
            notes.append(reason)
        return f"[{notes.index(reason) + 1}]" if reason else ""

    records = list(records)
    rows = [{"group": r["workload"].get("group"), **row} for r, row in zip(records, point_rows(records, note))]
    if not rows:
        return "(no points)"
    text = format_table(rows, list(rows[0]))
    return text + ("\n\nreasons:\n" + "\n".join(f"[{i}] {n}" for i, n in enumerate(notes, 1)) if notes else "")


def peer_rows(recs) -> list:
    """Ours vs the peers at equal configs (:func:`~.runner.peer_ratios`), one row each."""
    return [{"config": r["config"], "mode": r["mode"], "ours": f"ours/{r['ours']}", "ours ms": _ms(r["ours_s"]),
             "peer": r["peer"], "peer ms": _ms(r["peer_s"]), "speed-up (peer/ours)": f"{r['speedup']:.2f}x",
             "peak MiB ours/peer": f"{_mb(r['ours_mem'])} / {_mb(r['peer_mem'])}",
             "memory ratio": "-" if r["mem_ratio"] is None else f"{r['mem_ratio']:.2f}"} for r in peer_ratios(recs)]


def _section(title: str, rows: list, intro=()) -> list:
    """``## title``, the ``intro`` lines, and a table of ``rows`` (dicts with the same keys; '|' in a cell: '/')."""
    cols = list(rows[0])
    return [f"## {title}", "", *intro, "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|",
            *("| " + " | ".join(str(r[c]).replace("|", "/") for c in cols) + " |" for r in rows), ""]


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
    git = last.get("git") or {}
    counts = Counter(r["status"] for r in recs)
    mem = sorted({r.get("mem_method") for r in recs if r.get("mem_method")})
    tm = sorted({r.get("time_method") for r in recs if r.get("time_method")})
    lines = [f"# Benchmark results: {last.get('device', '?')}", "",
             f"- command (last run): `{' '.join(['fast-timesformer', *last['argv'][1:]]) if last.get('argv') else '?'}`",
             f"- points: {len(recs)} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}), "
             f"{len(runs)} run(s), last started {last.get('started', '?')}, finished {last.get('finished', '?')}",
             f"- device: {last.get('device', '?')}, {last.get('cpu_threads', '?')} torch threads on "
             f"{last.get('cpu_count', '?')} cores; load average (1/5/15 min) at start {last.get('load_avg_start')}, "
             f"at end {last.get('load_avg_end')}; platform {last.get('platform', '?')}, python {last.get('python', '?')}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in (last.get("versions") or {}).items() if v),
             f"- git commit: {git.get('commit')}" + (" (with local changes)" if git.get("dirty") else ""),
             f"- settings: {last.get('settings', {})}", "",
             'Methods (docs/bench.md, "What is measured, and how"): latency = median (' + "; ".join(tm) + "); `IQR "
             "(n=...)`: first to third quartile of n measurements, `1 run`: timed once; peak memory = " + "; ".join(mem)
             + " (above the level at the step's start); FLOPs: FlopCounterMode, 2 per multiply-add. Raw points: "
             "`results.jsonl`, run metadata: `meta.json`.", ""]
    other = Counter((r["workload"].get("backend"), r["flops_method"]) for r in recs
                    if r["status"] == "ok" and r.get("flops_method") not in (None, FLOPS_METHOD))
    compiled = [r for r in recs if r["status"] == "ok" and r.get("compile_s") is not None]
    if other or compiled:
        lines += ["Compiled backends (`Backend.compiled`) are timed after an untimed first call, which compiles (in no "
                  "latency; listed below). Their FLOPs:",
                  *(f"- `{b}` ({n} points): {m}" for (b, m), n in sorted(other.items())), ""]

    targets = evaluate(recs, every=any(r.get("suite") == "gpu-check" for r in recs),
                       dry=any(r.get("settings", {}).get("tiny") for r in runs))
    if targets:
        lines += _section("Targets", [{"target": t["id"], "what": t["what"], "met": MET[t["met"]], "figure": t["figure"],
                                       "needed": t["needed"], "source": t["source"], "note": t["why"]}
                                      for t in targets])
    peers = peer_rows(recs)
    if peers:
        lines += _section("Ours vs the peers (same run)", peers)
        pairs = _size_pairs(recs)
        if len(pairs) >= 2:
            lines += [f"Ours (`{next(iter(pairs.values()))['ours']['workload']['backend']}`) vs Hugging Face by size "
                      "(forward, same weights, timed alternately): "
                      + "; ".join(f"{f}x{s_}: {p['hf']['median_s'] / p['ours']['median_s']:.2f}x faster, memory "
                                  f"{p['ours']['peak_mem_bytes'] / p['hf']['peak_mem_bytes']:.2f}x of HF's "
                                  f"(ours {_ms(p['ours']['median_s'])} ms, {spread_text(p['ours'])}; HF "
                                  f"{_ms(p['hf']['median_s'])} ms, {spread_text(p['hf'])})"
                                  for (f, s_), p in pairs.items()), ""]
        notes = sorted({n for r in recs if r["workload"].get("group") in ("target", "sizes") for n in r.get("notes", [])})
        lines += [f"- {n}" for n in notes] + [""]

    plots = [Path(p).name for p in (plots or [])] or [p for p in PLOTS if (out_dir / p).exists()]
    for name, (title, _fn) in PLOTS.items():
        if name in plots:
            lines += [f"## {title}", "", f"![{title}]({name})", ""]
        if name in plots and name == "error_vs_speed.png":
            named = {k: ", ".join(sorted({r["workload"].get("backend") for r in recs if r.get("rel_error") is not None
                                          and kind_of(r) == k})) or "none" for k in ("approximate", "different_model")}
            lines += [f"Error vs backend `{baseline_backend(recs)}` (the exact backend `auto` picks), same weights, on "
                      f"the model's output features: approximate backends ({named['approximate']}) estimate softmax "
                      f"attention; those of a different model ({named['different_model']}) show a deviation, not an "
                      "approximation error.", ""]

    f, s = _sweep_base(recs, meta)
    base = [r for r in recs if r["workload"].get("group") == "sweep" and r["workload"]["frames"] == f
            and r["workload"]["image_size"] == s and r["status"] != "skipped"]  # skips: listed below
    if base:
        w = base[0]["workload"]
        order = schemes_in(base)
        base.sort(key=lambda r: (order.index(r["workload"].get("scheme")), r["workload"].get("backend"),
                                 r["workload"]["mode"]))
        lines += _section(f"All schemes x backends at the base workload ({w['impl']}, dim {w['dim']}, depth "
                          f"{w['depth']}, {f} frames x {s} px, batch {w['batch']}, {w['dtype']})",
                          [{"scheme": scheme_label(r["workload"]["scheme"]), "backend": r["workload"].get("backend"),
                            "mode": r["workload"]["mode"], **{k: v for k, v in row.items() if k != "point"}}
                           for r, row in zip(base, point_rows(base))])

    for group in dict.fromkeys(g for r in recs if (g := r["workload"].get("group")) not in SWEEP_GROUPS):
        sel = [r for r in recs if r["workload"].get("group") == group]
        lines += _section(f"{sel[0].get('suite') or ''}: {group}", point_rows(sel))
        for r in sel:
            if r.get("profile"):
                p = r["profile"]
                lines += [f"Where {r['label']} spends its time ({p['tool']}, {p['total_s']:.3g} s): "
                          + ", ".join(f"{o['op']} {o['share']:.1%}" for o in p["ops"][:8]), ""]
    odd = Counter((r["status"], r["workload"].get("backend") or "-", r["reason"][:160]) for r in recs
                  if r["status"] in ("skipped", "oom", "error", "failed") and r["workload"].get("group") in SWEEP_GROUPS)
    if odd:
        lines += _section("Points not measured", [{"status": s_, "backend": b, "points": n, "reason": reason}
                                                  for (s_, b, reason), n in sorted(odd.items())])
    missing = Counter((r["workload"].get("backend"), k, v[:300]) for r in recs if r["status"] == "ok"
                      for k, v in (r.get("not_measured") or {}).items())
    if missing:
        lines += _section("Figures not measured (points otherwise ok)", [
            {"backend": b, "figure": k, "points": n, "reason": why} for (b, k, why), n in sorted(missing.items())])
    compiled = [r for r in compiled if r["workload"].get("group") in SWEEP_GROUPS]  # the others: in their table
    if compiled:
        lines += _section("Compile time (compiled backends; in no latency)", [
            {"point": r["label"], "compile s": f"{r['compile_s']:.2f}",
             "first call s": f"{r['first_call_s']:.2f}" if r.get("first_call_s") is not None else "-"}
            for r in compiled], intro=["`compile s`: the untimed first call's compiling (0: shapes compiled earlier in "
                                       "the run); `first call s`: its wall time.", ""])
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
