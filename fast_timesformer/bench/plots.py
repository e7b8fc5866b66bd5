"""Plots drawn from saved records (``results.jsonl`` + ``meta.json``), never from a live run: ``plot_all`` writes
every figure the records support (:data:`PLOTS`; a figure without points is skipped, not faked). Schemes and
backends are styled from the registries (:mod:`.palette`, a backend's declared ``kind`` for its error marker);
the baseline is the exact backend ``auto`` picked (:func:`~fast_timesformer.bench.runner.baseline_backend`).
What each figure shows: docs/bench.md, "Plots"."""
from __future__ import annotations

import textwrap
from pathlib import Path

from ..outputs import save_figure
from .measure import spread_text
from .palette import BOUND, OURS, PEER, backend_colour, scheme_colour
from .runner import baseline_backend, kind_of, latest_by_key, load_meta, load_results
from .workloads import scheme_label

MODES = ("fwd", "fwd+bwd")
#: the error plot's marker per declared backend kind
KIND_MARKERS = {"approximate": "o", "different_model": "s", "exact": "^"}


def _registered_index(name: str, names: list) -> tuple:
    """Sort key: registration order first, then names this process does not register, alphabetically."""
    return (names.index(name) if name in names else len(names), name)


def schemes_in(recs) -> list:
    """The schemes of ``recs``, in registration order (unregistered ones after, by name)."""
    from ..schemes import list_schemes

    return sorted({r["workload"].get("scheme") for r in recs}, key=lambda s: _registered_index(s, list_schemes()))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path, layout: bool = True):
    """Lay the figure out (unless the caller did), write it as a PNG, close it; returns the path."""
    if layout:
        fig.tight_layout()
    try:
        save_figure(fig, path, dpi=110)  # atomic; a failed write is one line naming the path
    finally:
        plt.close(fig)
    return path


def readable_log_axis(ax, which: str = "y", min_ticks: int = 3) -> None:
    """Label a log axis with at least ``min_ticks`` plain numbers inside its limits (matplotlib's default
    labels only powers of ten, which leaves one label, or none, on an axis spanning less than a decade)."""
    import math

    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    axis = ax.yaxis if which == "y" else ax.xaxis
    lo, hi = sorted(ax.get_ylim() if which == "y" else ax.get_xlim())
    if lo <= 0 or hi <= lo:
        return
    e0, e1 = math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1
    ticks = []
    for mantissas in ((1,), (1, 2, 5), (1, 1.5, 2, 3, 5, 7)):
        ticks = [m * 10.0 ** e for e in range(e0, e1 + 1) for m in mantissas if lo <= m * 10.0 ** e <= hi]
        if len(ticks) >= min_ticks:
            break
    if len(ticks) < min_ticks:  # less than a factor 1.5 between the limits: evenly spaced, 2 digits
        a, b = math.log10(lo), math.log10(hi)
        ticks = sorted({float(f"{10 ** (a + (b - a) * (i + 0.5) / min_ticks):.2g}") for i in range(min_ticks)})
        ticks = [t for t in ticks if lo <= t <= hi]
    while len(ticks) > 9:
        ticks = ticks[::2]
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())
    (ax.set_ylim if which == "y" else ax.set_xlim)(lo, hi)


def _yerr(recs, scale=1e3):
    """Asymmetric error bars from the first to the third quartile; none (0) for a point timed once."""
    lo = [max(r["median_s"] - r["q1_s"], 0) * scale if r.get("q1_s") is not None else 0 for r in recs]
    hi = [max(r["q3_s"] - r["median_s"], 0) * scale if r.get("q3_s") is not None else 0 for r in recs]
    return [lo, hi]


def _spread_label(r) -> str:
    """'IQR 9.1 ms\n(n=3)', or '1 run' where a point was timed once."""
    text = spread_text(r)
    return text if text == "1 run" else "IQR " + text.replace(" (", " ms\n(")


def _records(results_dir):
    recs = list(latest_by_key(load_results(results_dir)).values())
    meta = load_meta(results_dir)
    return recs, meta


def _sweep_base(recs, meta):
    for run in reversed(meta.get("runs", [])):
        base = run.get("settings", {}).get("sweep_base")
        if base:
            return base["frames"], base["image_size"]
    sweep = [r["workload"] for r in recs if r["workload"].get("group") == "sweep"]
    if not sweep:
        return None, None
    from collections import Counter

    f = Counter(w["frames"] for w in sweep).most_common(1)[0][0]
    s = Counter(w["image_size"] for w in sweep).most_common(1)[0][0]
    return f, s


def _device_title(meta):
    runs = meta.get("runs") or [{}]
    return runs[-1].get("device", "")


def _backends_in(recs, status=("ok",)):
    """Backends of ``recs`` (with a point of ``status``), in registration order."""
    from ..backends import list_backends

    seen = {r["workload"].get("backend") for r in recs if r["status"] in status}
    return sorted(seen, key=lambda b: _registered_index(b, list_backends()))


def _latency_figure(plt, recs, x_field, fixed_field, fixed_value, xlabel, title, path):
    from matplotlib.ticker import NullLocator

    pts = [r for r in recs if r["workload"].get("group") == "sweep" and r["workload"][fixed_field] == fixed_value
           and r["status"] in ("ok", "oom")]
    backends = _backends_in(pts)
    if not backends:
        return None
    fig, axes = plt.subplots(2, len(backends), figsize=(3.6 * len(backends) + 1, 6.4), squeeze=False,
                             sharex=True, sharey="row")
    for i, mode in enumerate(MODES):
        for j, be in enumerate(backends):
            ax = axes[i][j]
            if not any(r["workload"].get("backend") == be and r["workload"].get("mode") == mode for r in pts):
                # an empty panel says why (the points' recorded reason), not just nothing
                why = sorted({r.get("reason", "") for r in recs if r["workload"].get("backend") == be
                              and r["workload"].get("mode") == mode and r["status"] == "skipped"} - {""})
                ax.text(0.5, 0.5, "not measured:\n" + textwrap.fill(why[0], 38) if why else "no points",
                        ha="center", va="center", fontsize=7, transform=ax.transAxes, wrap=True)
            for scheme in schemes_in(pts):
                sel = sorted((r for r in pts if r["workload"].get("scheme") == scheme and r["workload"].get("backend") == be
                              and r["workload"].get("mode") == mode and not r["workload"].get("backend_options")),
                             key=lambda r: r["workload"][x_field])
                ok = [r for r in sel if r["status"] == "ok"]
                colour = scheme_colour(scheme)
                if ok:
                    ax.plot([r["workload"][x_field] for r in ok], [r["median_s"] * 1e3 for r in ok], "o-",
                            color=colour, label=scheme_label(scheme), ms=4)
                    ax.errorbar([r["workload"][x_field] for r in ok], [r["median_s"] * 1e3 for r in ok],
                                yerr=_yerr(ok), fmt="none", ecolor=colour, alpha=0.5)
                _mark_oom(ax, [r for r in sel if r["status"] == "oom"], x_field, colour)
            ax.set_yscale("log")
            ax.set_xscale("log", base=2)
            ax.set_title(f"{be} - {mode}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            if j == 0:
                ax.set_ylabel("median latency (ms)")
            if i == 1:
                ax.set_xlabel(xlabel)
            xs = sorted({r["workload"][x_field] for r in pts})
            ax.set_xticks(xs)
            ax.set_xticklabels([str(x) for x in xs])
            ax.xaxis.set_minor_locator(NullLocator())
    for ax in axes.flat:
        readable_log_axis(ax, "y")
    axes[0][0].legend(fontsize=8, title="scheme", title_fontsize=8)
    fig.suptitle(title + "\n(error bars: first to third quartile of the repeated timings; none where a point "
                 "was timed once)", fontsize=10)
    return _save(plt, fig, path)


def _mark_oom(ax, ooms, x_field, color):
    if not ooms:
        return
    xs = [r["workload"][x_field] if x_field != "tokens" else r["tokens"] for r in ooms]
    ax.scatter(xs, [0.97] * len(xs), marker="x", s=60, color=color, transform=ax.get_xaxis_transform(),
               zorder=5, label=None)
    for x in xs:
        ax.annotate("OOM", (x, 0.97), xycoords=("data", "axes fraction"), textcoords="offset points",
                    xytext=(0, -12), ha="center", fontsize=7, color=color)


def plot_latency_vs_frames(plt, recs, meta, out):
    f, s = _sweep_base(recs, meta)
    if s is None:
        return None
    return _latency_figure(plt, recs, "frames", "image_size", s, "frames",
                           f"Latency vs frames at {s}x{s} px - {_device_title(meta)}", out / "latency_vs_frames.png")


def plot_latency_vs_resolution(plt, recs, meta, out):
    f, s = _sweep_base(recs, meta)
    if f is None:
        return None
    return _latency_figure(plt, recs, "image_size", "frames", f, "resolution (px)",
                           f"Latency vs resolution at {f} frames - {_device_title(meta)}",
                           out / "latency_vs_resolution.png")


def plot_memory_vs_tokens(plt, recs, meta, out):
    """Peak memory vs patch tokens. Each line joins the points of one sweep axis: solid = more frames at
    the base resolution, dashed = higher resolution at the base frame count (two different workloads
    can have the same token count; they are never joined)."""
    f0, s0 = _sweep_base(recs, meta)
    pts = [r for r in recs if r["workload"].get("group") == "sweep" and r["status"] in ("ok", "oom")
           and not r["workload"].get("backend_options")]
    mode = "fwd+bwd" if any(r["workload"].get("mode") == "fwd+bwd" for r in pts) else "fwd"
    pts = [r for r in pts if r["workload"].get("mode") == mode]
    if not any(r["status"] == "ok" for r in pts) or f0 is None:
        return None
    base = baseline_backend(pts)
    per_backend = _memory_schemes(pts, f0, s0)
    fig, axes = plt.subplots(1, 1 + len(per_backend), figsize=(5 * (1 + len(per_backend)), 4.8), squeeze=False)
    axes = list(axes[0])
    axes_of_sweep = (("frames", "image_size", s0, "-", "o", f"frames sweep at {s0} px"),
                     ("image_size", "frames", f0, "--", "s", f"resolution sweep at {f0} frames"))

    def lines(ax, sel, color, label):
        for x_field, fixed_field, fixed, style, marker, _ in axes_of_sweep:
            one = sorted((r for r in sel if r["workload"][fixed_field] == fixed), key=lambda r: r["workload"][x_field])
            ok = [r for r in one if r["status"] == "ok"]
            if ok:
                ax.plot([r["tokens"] for r in ok], [r["peak_mem_bytes"] / 2 ** 20 for r in ok], marker=marker, ms=3,
                        color=color, linestyle=style, label=label if x_field == "frames" else None)
            _mark_oom(ax, [r for r in one if r["status"] == "oom"], "tokens", color)

    ax = axes[0]
    for scheme in schemes_in(pts):
        lines(ax, [r for r in pts if r["workload"].get("scheme") == scheme and r["workload"].get("backend") == base],
              scheme_colour(scheme), scheme_label(scheme))
    ax.set_title(f"per scheme (backend {base}, {mode})", fontsize=10)
    for ax, scheme in zip(axes[1:], per_backend):
        for be in _backends_in(pts):
            lines(ax, [r for r in pts if r["workload"].get("scheme") == scheme and r["workload"].get("backend") == be],
                  backend_colour(be), be)
        ax.set_title(f"per backend ({scheme_label(scheme)}, {mode})", fontsize=10)
    from matplotlib.lines import Line2D

    style_handles = [Line2D([], [], color="gray", linestyle=st, marker=mk, ms=3, label=lab)
                     for _x, _f, _v, st, mk, lab in axes_of_sweep]
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        readable_log_axis(ax, "x")
        readable_log_axis(ax, "y")
        ax.set_xlabel("patch tokens per clip (frames x patches)")
        ax.grid(True, which="both", alpha=0.3)
        handles, _ = ax.get_legend_handles_labels()
        ax.legend(handles=handles + style_handles, fontsize=7)
    axes[0].set_ylabel("peak memory above start (MiB)")
    method = next((r.get("mem_method") for r in pts if r.get("mem_method")), "")
    fig.suptitle(f"Peak memory vs tokens - {_device_title(meta)}\n({method})", fontsize=10)
    return _save(plt, fig, out / "memory_vs_tokens.png")


def _memory_schemes(pts, frames, image_size) -> list:
    """The per-backend memory panels: the first registered scheme with points, and the one with the most
    attention pairs at the base size (the registry's ``Scheme.attention_pairs``), if another."""
    from ..schemes import SCHEMES

    names = [s for s in schemes_in([r for r in pts if r["status"] == "ok"]) if s in SCHEMES]
    if not names:
        return []

    def pairs(name):
        scheme = SCHEMES[name]
        grid = image_size // pts[0]["workload"]["patch_size"]
        if scheme.reasons(frames, grid):
            return -1
        return sum(n for _step, n in scheme.attention_pairs(frames, grid))

    costliest = max(names, key=pairs)
    return [names[0]] + ([costliest] if costliest != names[0] else [])


def plot_backend_bars(plt, recs, meta, out):
    f, s = _sweep_base(recs, meta)
    pts = [r for r in recs if r["workload"].get("group") == "sweep" and r["workload"]["frames"] == f
           and r["workload"]["image_size"] == s and not r["workload"].get("backend_options")]
    if not any(r["status"] == "ok" for r in pts):
        return None
    backends = _backends_in(pts, status=("ok", "oom", "skipped", "error"))
    schemes = schemes_in(pts)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / max(len(backends), 1)
    notes = {}
    for ax, mode in zip(axes, MODES):
        for j, be in enumerate(backends):
            xs, ys, errs = [], [], []
            for i, scheme in enumerate(schemes):
                r = next((r for r in pts if r["workload"].get("scheme") == scheme and r["workload"].get("backend") == be
                          and r["workload"].get("mode") == mode), None)
                if r is None:
                    continue
                if r["status"] == "ok":
                    xs.append(i + (j - (len(backends) - 1) / 2) * width)
                    ys.append(r["median_s"] * 1e3)
                    errs.append(r)
                elif r["status"] in ("skipped", "error", "oom"):
                    notes.setdefault(be, f"{r['status']}: {r['reason'].split(';')[0][:120]}")
                    ax.text(i + (j - (len(backends) - 1) / 2) * width, 0.02, r["status"][:4], rotation=90,
                            fontsize=6, ha="center", va="bottom", transform=ax.get_xaxis_transform(),
                            color=backend_colour(be))
            ax.bar(xs, ys, width=width, color=backend_colour(be), label=be if xs else None,
                   yerr=_yerr(errs) if errs else None, error_kw={"elinewidth": 0.8, "capsize": 1.5})
        ax.set_xticks(range(len(schemes)))
        ax.set_xticklabels([scheme_label(s_) for s_ in schemes])
        ax.set_ylim(bottom=0)  # a linear axis from 0: bar lengths compare (on a log axis they do not)
        ax.set_ylabel("median latency (ms)")
        ax.set_title(mode, fontsize=10)
        ax.grid(True, axis="y", which="both", alpha=0.3)
    axes[0].legend(fontsize=8, title="backend", title_fontsize=8)
    note = "\n".join(f"{be}: {t}" for be, t in notes.items())
    fig.suptitle(f"Backends at {f} frames x {s} px - {_device_title(meta)}", fontsize=11)
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, va="bottom", wrap=True)
        fig.tight_layout(rect=(0, 0.06 * (1 + note.count("\n")), 1, 1))
    else:
        fig.tight_layout()
    return _save(plt, fig, out / "backend_bars.png", layout=False)


def _baseline_twin(recs, w, baseline):
    """The ``baseline`` backend's point at the same workload as ``w``."""
    for r in recs:
        v = r["workload"]
        if r["status"] == "ok" and v["backend"] == baseline and v["impl"] == w["impl"] and all(
                v[k] == w[k] for k in ("scheme", "mode", "batch", "frames", "image_size", "dim", "depth", "heads",
                                       "dtype", "device")):
            return r
    return None


def plot_error_vs_speed(plt, recs, meta, out):
    pts = [r for r in recs if r["status"] == "ok" and r.get("rel_error") is not None]
    base = baseline_backend(recs)
    rows = []
    for r in pts:
        twin = _baseline_twin(recs, r["workload"], r.get("reference_backend") or base)
        if twin is not None:
            rows.append((r, twin["median_s"] / r["median_s"]))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8.5, 5.4))
    from matplotlib.lines import Line2D

    for r, speedup in rows:
        w = r["workload"]
        kind = kind_of(r)
        ax.scatter([speedup], [r["rel_error"]], marker=KIND_MARKERS.get(kind, "^"), color=scheme_colour(w["scheme"]),
                   edgecolors="k" if kind == "different_model" else "none", s=44 if w["group"] == "approx" else 22,
                   alpha=0.9 if w["group"] == "approx" else 0.6)
        if w["backend_options"]:  # an error_sweep option set: name its values
            ax.annotate(",".join(f"{v}" for v in w["backend_options"].values()), (speedup, r["rel_error"]),
                        fontsize=7, xytext=(4, 2), textcoords="offset points")
    kind_of_backend = {r["workload"].get("backend"): kind_of(r) for r, _ in rows}
    kinds = [Line2D([], [], ls="", marker=KIND_MARKERS.get(k, "^"), color="gray",
                    markeredgecolor="k" if k == "different_model" else "gray",
                    label=f"{b}: different model (deviation, not approximation)" if k == "different_model"
                    else f"{b}: approximation error") for b, k in
             ((b, kind_of_backend[b]) for b in _backends_in([r for r, _ in rows]))]
    schemes = [Line2D([], [], ls="", marker="o", color=scheme_colour(s_), label=scheme_label(s_))
               for s_ in schemes_in([r for r, _ in rows])]
    leg = ax.legend(handles=kinds, fontsize=7, loc="upper left")
    ax.add_artist(leg)
    ax.legend(handles=schemes, fontsize=7, loc="lower right", title="scheme", title_fontsize=7)
    ax.axvline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    readable_log_axis(ax, "x")
    readable_log_axis(ax, "y")
    ax.set_xlabel(f"speed-up over backend {base!r} at the same workload (x)")
    ax.set_ylabel(f"relative error of the output vs {base!r}, same weights")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"Approximation error vs speed (forward) - {_device_title(meta)}\n"
                 "large markers: feature sweep at the base workload; small: the frames/resolution sweep",
                 fontsize=9)
    return _save(plt, fig, out / "error_vs_speed.png")


def plot_flops(plt, recs, meta, out):
    f, s = _sweep_base(recs, meta)
    base = baseline_backend(recs)
    pts = [r for r in recs if r["workload"].get("group") == "sweep" and r["workload"].get("backend") == base
           and r["workload"].get("mode") == "fwd" and r["status"] in ("ok", "oom")]
    if not any(r["status"] == "ok" for r in pts):
        return None
    big = max((r.get("flops") or 0) for r in pts)
    unit, scale = ("TFLOPs", 1e-12) if big >= 1e12 else ("GFLOPs", 1e-9)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, (x_field, fixed_field, fixed, xlabel) in zip(axes, (("frames", "image_size", s, "frames"),
                                                                ("image_size", "frames", f, "resolution (px)"))):
        sel_all = [r for r in pts if r["workload"][fixed_field] == fixed]
        for scheme in schemes_in(sel_all):
            sel = sorted((r for r in sel_all if r["workload"].get("scheme") == scheme), key=lambda r: r["workload"][x_field])
            ok = [r for r in sel if r["status"] == "ok" and r.get("flops") is not None]
            if ok:
                ax.plot([r["workload"][x_field] for r in ok], [r["flops"] * scale for r in ok], "o-",
                        color=scheme_colour(scheme), label=scheme_label(scheme), ms=4)
            _mark_oom(ax, [r for r in sel if r["status"] == "oom"], x_field, scheme_colour(scheme))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{unit} per clip (forward)")
        ax.set_title(f"vs {xlabel} ({'at %d px' % s if x_field == 'frames' else 'at %d frames' % f})", fontsize=10)
        ax.grid(True, alpha=0.3)
        xs = sorted({r["workload"][x_field] for r in sel_all})
        ax.set_xticks(xs)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Compute cost per clip (torch.utils.flop_counter), like the paper's Figure 3 - "
                 f"{_device_title(meta)}", fontsize=10)
    return _save(plt, fig, out / "flops_vs_frames_resolution.png")


def plot_peers(plt, recs, meta, out):
    pts = [r for r in recs if r["workload"].get("group") == "target" and r["status"] == "ok"]
    if len(pts) < 2:
        return None
    labels = [("ours/" + r["workload"].get("backend")) if r["workload"].get("impl") == "ours" else
              {"hf": "Hugging Face", "lucidrains": "lucidrains"}.get(r["workload"].get("impl"), r["workload"].get("impl"))
              for r in pts]
    labels = [f"{lab}\n{r['workload']['mode']}" for lab, r in zip(labels, pts)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = [OURS if r["workload"].get("impl") == "ours" else PEER for r in pts]
    axes[0].bar(range(len(pts)), [r["median_s"] * 1e3 for r in pts], color=colors, yerr=_yerr(pts))
    for i, r in enumerate(pts):
        axes[0].annotate(_spread_label(r), (i, r["median_s"] * 1e3), fontsize=6, ha="center", xytext=(0, 3),
                         textcoords="offset points")
    axes[0].set_ylabel("median latency (ms)")
    axes[1].bar(range(len(pts)), [r["peak_mem_bytes"] / 2 ** 20 for r in pts], color=colors)
    axes[1].set_ylabel("peak memory above start (MiB)")
    for ax in axes:
        ax.set_xticks(range(len(pts)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    w = pts[0]["workload"]
    fig.suptitle(f"Target: B={w['batch']}, {w['frames']}x{w['image_size']}, depth {w['depth']}, "
                 f"{w['dtype']} - {_device_title(meta)}", fontsize=10)
    return _save(plt, fig, out / "peers.png")


def _size_pairs(recs):
    """{(frames, image_size): {"ours": rec, "hf": rec}} from the target and sizes groups (forward); ours =
    the baseline backend (:func:`~fast_timesformer.bench.runner.baseline_backend`)."""
    pairs = {}
    recs = [r for r in recs if r["status"] == "ok" and r["workload"].get("group") in ("target", "sizes")
            and r["workload"].get("mode") == "fwd"]
    base = baseline_backend(recs)
    for r in recs:
        w = r["workload"]
        if w["impl"] == "hf" or (w["impl"] == "ours" and w["backend"] == base):
            pairs.setdefault((w["frames"], w["image_size"]), {})[w["impl"]] = r
    return {k: v for k, v in sorted(pairs.items()) if "ours" in v and "hf" in v}


def plot_hf_sizes(plt, recs, meta, out):
    """Ours (the baseline backend) vs Hugging Face at every measured size: latency, and the speed and memory ratios
    along the resolution axis (one line, one sweep axis)."""
    pairs = _size_pairs(recs)
    if len(pairs) < 2:
        return None
    sizes = list(pairs)
    labels = [f"{f}x{s_}" for f, s_ in sizes]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    ax = axes[0]
    ours_name = f"ours ({pairs[sizes[0]]['ours']['workload']['backend']})"
    for j, (impl, color, name) in enumerate((("ours", OURS, ours_name), ("hf", PEER, "Hugging Face"))):
        rs = [pairs[k][impl] for k in sizes]
        xs = [i + (j - 0.5) * 0.38 for i in range(len(sizes))]
        ax.bar(xs, [r["median_s"] for r in rs], width=0.38, color=color, label=name, yerr=_yerr(rs, 1.0),
               error_kw={"elinewidth": 0.8, "capsize": 2})
        for x, r in zip(xs, rs):
            ax.annotate(_spread_label(r), (x, r["median_s"]), fontsize=6, ha="center", xytext=(0, 3),
                        textcoords="offset points")
    ax.set_xticks(range(len(sizes)))
    ax.set_xticklabels(labels)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("median forward latency (s)")
    ax.set_xlabel("frames x resolution (px)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    ax = axes[1]
    res = [s_ for _f, s_ in sizes]
    speed = [pairs[k]["hf"]["median_s"] / pairs[k]["ours"]["median_s"] for k in sizes]
    mem = [(pairs[k]["ours"].get("peak_mem_bytes") or 0) / pairs[k]["hf"]["peak_mem_bytes"]
           if pairs[k]["hf"].get("peak_mem_bytes") else float("nan") for k in sizes]
    ax.plot(res, speed, "o-", color=OURS, label="speed-up: HF time / ours")
    ax.plot(res, mem, "s--", color="#1f77b4", label="peak memory: ours / HF")
    for x, y in zip(res, speed):
        ax.annotate(f"{y:.2f}x", (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    for x, y in zip(res, mem):
        ax.annotate(f"{y:.2f}", (x, y), fontsize=7, xytext=(4, -10), textcoords="offset points")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xticks(res)
    ax.set_xticklabels([str(x) for x in res])
    ax.set_xlabel(f"resolution (px) at {sizes[0][0]} frames")
    ax.set_ylabel("ratio")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    w = pairs[sizes[0]]["ours"]["workload"]
    fig.suptitle(f"Ours vs Hugging Face by size: B={w['batch']}, dim {w['dim']}, depth {w['depth']}, {w['dtype']}, "
                 f"forward, same weights, timed alternately in one run - {_device_title(meta)}", fontsize=9)
    return _save(plt, fig, out / "hf_sizes.png")


def plot_kernels(plt, recs, meta, out):
    """The kernel suite: one panel per step and mode, a bar per contender that passed its float64 check (the
    roofline, in grey, first), and the whole layer; failed and skipped contenders are named under the panel."""
    pts = [r for r in recs if r["workload"].get("group") in ("kernel", "sdpa-only", "layer")]
    panels = sorted({(r["workload"].get("group") == "layer", r["workload"]["step"], r["workload"].get("mode")) for r in pts})
    if not any(r["status"] == "ok" for r in pts):
        return None
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 0.4 + 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (is_layer, step, mode) in zip(axes.flat, panels):
        sel = [r for r in pts if (r["workload"].get("group") == "layer") == is_layer and r["workload"]["step"] == step
               and r["workload"].get("mode") == mode]
        ok = sorted((r for r in sel if r["status"] == "ok"), key=lambda r: -r["median_s"])
        bars = [("roofline", ok[0]["roofline_s"], BOUND)] if ok and ok[0].get("roofline_s") else []
        bars = [(r["workload"]["contender"], r["median_s"], backend_colour(r["workload"]["contender"])) for r in ok] + bars
        ax.barh([b[0] for b in bars], [b[1] * 1e3 for b in bars], color=[b[2] for b in bars],
                xerr=[[0] * len(bars), [0] * len(bars)] if not ok else None)
        ax.set_title(f"{'layer ' if is_layer else ''}{step} {mode}", fontsize=9)
        ax.set_xlabel("median ms (lower is better)")
        ax.tick_params(labelsize=7)
        bad = [f"{r['workload']['contender']}: {r['status']}" for r in sel if r["status"] in ("failed", "error")]
        if bad:
            ax.text(0.99, 0.01, textwrap.fill("; ".join(bad), 50), transform=ax.transAxes, fontsize=6, ha="right",
                    va="bottom", color="tab:red")
    w = pts[0]["workload"]
    fig.suptitle(f"Attention steps - {_device_title(meta)} | B={w['batch']} T={w['frames']} N={w['patches']} "
                 f"H={w['heads']} d={w['dim_head']} {w['dtype']} | every bar passed its float64 check", fontsize=9)
    return _save(plt, fig, out / "kernels.png")


def plot_train(plt, recs, meta, out):
    """gpu-check's training step: time and peak memory per implementation."""
    pts = [r for r in recs if r["workload"].get("group") == "train" and r["status"] == "ok"]
    if not pts:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    labels = [r["label"].replace(" training step", "") for r in pts]
    colours = [backend_colour(r["workload"].get("backend")) if r["workload"].get("impl") == "ours" else PEER for r in pts]
    axes[0].bar(labels, [r["median_s"] * 1e3 for r in pts], color=colours, yerr=_yerr(pts))
    for i, r in enumerate(pts):
        axes[0].annotate(_spread_label(r), (i, r["median_s"] * 1e3), fontsize=6, ha="center", xytext=(0, 3),
                         textcoords="offset points")
    axes[0].set_ylabel("ms per training step (median)")
    axes[1].bar(labels, [r["peak_mem_bytes"] / 2 ** 20 for r in pts], color=colours)
    axes[1].set_ylabel("peak memory above start (MiB)")
    w = pts[0]["workload"]["workload"]
    fig.suptitle(f"Training step (forward, backward, AdamW; {pts[0]['workload']['amp']} autocast): B={w['batch']}, "
                 f"{w['frames']}x{w['image_size']}, dim {w['dim']} depth {w['depth']} - {_device_title(meta)}",
                 fontsize=9)
    return _save(plt, fig, out / "train.png")


PLOTS = {"latency_vs_frames.png": plot_latency_vs_frames, "latency_vs_resolution.png": plot_latency_vs_resolution,
         "memory_vs_tokens.png": plot_memory_vs_tokens, "backend_bars.png": plot_backend_bars,
         "error_vs_speed.png": plot_error_vs_speed, "flops_vs_frames_resolution.png": plot_flops,
         "peers.png": plot_peers, "hf_sizes.png": plot_hf_sizes, "kernels.png": plot_kernels, "train.png": plot_train}


def plot_all(results_dir, out_dir=None, only=None) -> list:
    """Draw every plot the saved results support (``only``: these file names); returns the written paths."""
    results_dir = Path(results_dir)
    if not (results_dir / "results.jsonl").exists():
        raise FileNotFoundError(f"no results.jsonl in {results_dir} (run `fast-timesformer bench --out "
                                f"{results_dir}` first)")
    out = Path(out_dir) if out_dir else results_dir
    out.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    recs, meta = _records(results_dir)
    paths = [fn(plt, recs, meta, out) for name, fn in PLOTS.items() if not only or name in only]
    return [Path(p) for p in paths if p is not None]
