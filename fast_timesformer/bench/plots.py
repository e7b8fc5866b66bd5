"""Plots drawn from saved records (``results.jsonl`` + ``meta.json``), never from a live run: :func:`plot_all`
draws every figure of :data:`PLOTS` the records support (one without points is skipped, not faked). Colours come
from the registries (:func:`scheme_colour`, :func:`backend_colour`); the baseline is the exact backend ``auto`` picked
(:func:`~fast_timesformer.bench.runner.baseline_backend`). What each figure shows: docs/bench.md, "Plots"."""
from __future__ import annotations

import math
import textwrap
from collections import Counter
from pathlib import Path

from ..backends import list_backends
from ..outputs import save_figure
from ..schemes import PALETTE, SCHEMES, list_schemes, scheme_color
from .measure import spread_text
from .runner import baseline_backend, kind_of, latest_by_key, load_meta, load_results
from .workloads import scheme_label

MODES = ("fwd", "fwd+bwd")
#: the error plot's marker per declared backend kind
KIND_MARKERS = {"approximate": "o", "different_model": "s", "exact": "^"}
MIB = 2 ** 20
MEMORY_LABEL = "peak memory above start (MiB)"
#: backend colours, by registration index (cycling); a name not registered here: after them, by its characters
BACKENDS = ("#333333", "#e377c2", "#bcbd22", "#8c564b", "#9467bd", "#17becf", "#ff7f0e", "#1f77b4")
OURS, PEER, BOUND = "#2ca02c", "#7f7f7f", "#bbbbbb"  # ours vs a peer implementation; a bound (the roofline)


def scheme_colour(name: str) -> str:
    """The registry's colour (:func:`~fast_timesformer.scheme_color`); an unregistered name: by its characters."""
    return scheme_color(name) if name in SCHEMES else PALETTE[sum(map(ord, name)) % len(PALETTE)]


def backend_colour(name: str) -> str:
    """A backend's colour; a contender label such as ``regular[flash]`` takes its backend's, shaded per variant."""
    import matplotlib.colors as mc

    base, _, variant = name.partition("[")
    names = list_backends()
    colour = BACKENDS[(names.index(base) if base in names else len(names) + sum(map(ord, base))) % len(BACKENDS)]
    k = 0.25 + 0.5 * (sum(map(ord, variant)) % 7) / 6 if variant else 0  # toward white by a stable fraction
    return mc.to_hex([c + (1 - c) * k for c in mc.to_rgb(colour)])


def _registry_order(names, registered: list) -> list:
    """``names`` in registration order; names this process does not register after them, alphabetically."""
    return sorted(names, key=lambda n: (registered.index(n) if n in registered else len(registered), n))


def schemes_in(recs) -> list:
    return _registry_order({r["workload"].get("scheme") for r in recs}, list_schemes())


def _backends_in(recs, status=("ok",)) -> list:
    return _registry_order({r["workload"].get("backend") for r in recs if r["status"] in status}, list_backends())


def _where(recs, **fields) -> list:
    """The records whose workload has every one of ``fields``."""
    return [r for r in recs if all(r["workload"].get(k) == v for k, v in fields.items())]


def readable_log_axis(ax, which: str = "y", min_ticks: int = 3) -> None:
    """Label a log axis with at least ``min_ticks`` plain numbers inside its limits (matplotlib's default
    labels only powers of ten, which leaves one label, or none, on an axis spanning less than a decade)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    axis = ax.yaxis if which == "y" else ax.xaxis
    lo, hi = sorted(ax.get_ylim() if which == "y" else ax.get_xlim())
    if lo <= 0 or hi <= lo:
        return
    e0, e1 = math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1
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


def _log_axes(ax) -> None:
    ax.set(xscale="log", yscale="log")
    for which in "xy":
        readable_log_axis(ax, which)


def _yerr(recs, scale=1e3):
    """Asymmetric error bars from the first to the third quartile; none (0) for a point timed once."""
    lo = [max(r["median_s"] - r["q1_s"], 0) * scale if r.get("q1_s") is not None else 0 for r in recs]
    hi = [max(r["q3_s"] - r["median_s"], 0) * scale if r.get("q3_s") is not None else 0 for r in recs]
    return [lo, hi]


def _annotate_spread(ax, xs, recs, scale=1e3) -> None:
    """'IQR 9.1 ms\n(n=3)' above each bar, or '1 run' where a point was timed once."""
    for x, r in zip(xs, recs):
        text = spread_text(r)
        ax.annotate(text if text == "1 run" else "IQR " + text.replace(" (", " ms\n("), (x, r["median_s"] * scale),
                    fontsize=6, ha="center", xytext=(0, 3), textcoords="offset points")


def _sweep_base(recs, meta):
    """(frames, image size) the sweeps hold fixed: the run's setting, else the most common sweep point."""
    for run in reversed(meta.get("runs", [])):
        base = run.get("settings", {}).get("sweep_base")
        if base:
            return base["frames"], base["image_size"]
    sweep = [r["workload"] for r in _where(recs, group="sweep")]
    if not sweep:
        return None, None
    return tuple(Counter(w[k] for w in sweep).most_common(1)[0][0] for k in ("frames", "image_size"))


def _device(meta) -> str:
    return (meta.get("runs") or [{}])[-1].get("device", "")


def _line(ax, sel, x, y, colour, label=None, err=False, **style) -> None:
    """A line through the ok points of ``sel`` (``x``, ``y``: of a record), an x marked OOM at each OOM point."""
    sel = sorted(sel, key=x)
    ok = [r for r in sel if r["status"] == "ok" and y(r) is not None]
    if ok:
        ax.plot([x(r) for r in ok], [y(r) for r in ok], color=colour, label=label, **style)
    if ok and err:
        ax.errorbar([x(r) for r in ok], [y(r) for r in ok], yerr=_yerr(ok), fmt="none", ecolor=colour, alpha=0.5)
    ooms = [x(r) for r in sel if r["status"] == "oom"]
    if ooms:
        ax.scatter(ooms, [0.97] * len(ooms), marker="x", s=60, color=colour, transform=ax.get_xaxis_transform(),
                   zorder=5)
    for v in ooms:
        ax.annotate("OOM", (v, 0.97), xycoords=("data", "axes fraction"), textcoords="offset points",
                    xytext=(0, -12), ha="center", fontsize=7, color=colour)


def _sweep_axes(recs, meta):
    """The two sweep axes: (x field, fixed field, fixed value, x label, the fixed value as words)."""
    f, s = _sweep_base(recs, meta)
    return (("frames", "image_size", s, "frames", f"at {s} px"),
            ("image_size", "frames", f, "resolution (px)", f"at {f} frames"))


def plot_latency(plt, recs, meta, along: int):
    """Latency vs frames (``along`` 0) or vs resolution (1): a panel per backend and mode, a line per scheme."""
    from matplotlib.ticker import NullLocator

    x_field, fixed_field, fixed, xlabel, at = _sweep_axes(recs, meta)[along]
    if fixed is None:
        return None
    pts = [r for r in _where(recs, group="sweep", **{fixed_field: fixed}) if r["status"] in ("ok", "oom")]
    backends = _backends_in(pts)
    if not backends:
        return None
    fig, axes = plt.subplots(2, len(backends), figsize=(3.6 * len(backends) + 1, 6.4), squeeze=False, sharex=True,
                             sharey="row", layout="tight")
    for (i, mode), (j, be) in ((im, jb) for im in enumerate(MODES) for jb in enumerate(backends)):
        ax = axes[i][j]
        if not _where(pts, backend=be, mode=mode):  # an empty panel says why (the points' recorded reason)
            why = sorted({r.get("reason", "") for r in _where(recs, backend=be, mode=mode)
                          if r["status"] == "skipped"} - {""})
            ax.text(0.5, 0.5, "not measured:\n" + textwrap.fill(why[0], 38) if why else "no points", ha="center",
                    va="center", fontsize=7, transform=ax.transAxes, wrap=True)
        for scheme in schemes_in(pts):
            sel = [r for r in _where(pts, scheme=scheme, backend=be, mode=mode)
                   if not r["workload"].get("backend_options")]
            _line(ax, sel, lambda r: r["workload"][x_field], lambda r: r["median_s"] * 1e3, scheme_colour(scheme),
                  scheme_label(scheme), err=True, marker="o", ms=4)
        ax.set_xscale("log", base=2)
        xs = sorted({r["workload"][x_field] for r in pts})
        ax.set(yscale="log", xticks=xs, xticklabels=xs, ylabel="median latency (ms)" if j == 0 else None,
               xlabel=xlabel if i == 1 else None)
        ax.set_title(f"{be} - {mode}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.xaxis.set_minor_locator(NullLocator())
    for ax in axes.flat:
        readable_log_axis(ax, "y")
    axes[0][0].legend(fontsize=8, title="scheme", title_fontsize=8)
    fig.suptitle(f"Latency vs {xlabel.split(' ')[0]} {at} - {_device(meta)}\n(error bars: first to third quartile "
                 "of the repeated timings; none where a point was timed once)", fontsize=10)
    return fig


def plot_memory_vs_tokens(plt, recs, meta):
    """Peak memory vs patch tokens. Each line joins the points of one sweep axis: solid = more frames at the base
    resolution, dashed = higher resolution at the base frame count (two workloads with the same token count are
    never joined)."""
    from matplotlib.lines import Line2D

    f0, s0 = _sweep_base(recs, meta)
    pts = [r for r in _where(recs, group="sweep") if r["status"] in ("ok", "oom")
           and not r["workload"].get("backend_options")]
    mode = "fwd+bwd" if _where(pts, mode="fwd+bwd") else "fwd"
    pts = _where(pts, mode=mode)
    if not any(r["status"] == "ok" for r in pts) or f0 is None:
        return None
    base = baseline_backend(pts)
    per_backend = _memory_schemes(pts, f0, s0)
    fig, axes = plt.subplots(1, 1 + len(per_backend), figsize=(5 * (1 + len(per_backend)), 4.8), squeeze=False,
                             layout="tight")
    axes = list(axes[0])
    styles = list(zip(_sweep_axes(recs, meta), ("-", "--"), ("o", "s")))  # solid: frames; dashed: resolution

    def lines(ax, sel, colour, label):
        for (x_field, fixed_field, fixed, _, _), style, marker in styles:
            _line(ax, _where(sel, **{fixed_field: fixed}), lambda r: r["tokens"],
                  lambda r: r["peak_mem_bytes"] / MIB, colour, label if x_field == "frames" else None,
                  marker=marker, ms=3, linestyle=style)

    for scheme in schemes_in(pts):
        lines(axes[0], _where(pts, scheme=scheme, backend=base), scheme_colour(scheme), scheme_label(scheme))
    axes[0].set_title(f"per scheme (backend {base}, {mode})", fontsize=10)
    for ax, scheme in zip(axes[1:], per_backend):
        for be in _backends_in(pts):
            lines(ax, _where(pts, scheme=scheme, backend=be), backend_colour(be), be)
        ax.set_title(f"per backend ({scheme_label(scheme)}, {mode})", fontsize=10)
    keys = [Line2D([], [], color="gray", linestyle=st, marker=mk, ms=3, label=f"{a[3].split(' ')[0]} sweep {a[4]}")
            for a, st, mk in styles]
    for ax in axes:
        _log_axes(ax)
        ax.set(xlabel="patch tokens per clip (frames x patches)", ylabel=MEMORY_LABEL if ax is axes[0] else None)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(handles=ax.get_legend_handles_labels()[0] + keys, fontsize=7)
    method = next((r.get("mem_method") for r in pts if r.get("mem_method")), "")
    fig.suptitle(f"Peak memory vs tokens - {_device(meta)}\n({method})", fontsize=10)
    return fig


def _memory_schemes(pts, frames, image_size) -> list:
    """The per-backend memory panels: the first registered scheme with points, and the one with the most
    attention pairs at the base size (the registry's ``Scheme.attention_pairs``), if another."""
    names = [s for s in schemes_in([r for r in pts if r["status"] == "ok"]) if s in SCHEMES]
    if not names:
        return []
    grid, schemes = image_size // pts[0]["workload"]["patch_size"], [SCHEMES[n] for n in names]
    costliest = max(schemes, key=lambda s: -1 if s.reasons(frames, grid) else
                    sum(n for _step, n in s.attention_pairs(frames, grid))).name
    return [names[0]] + ([costliest] if costliest != names[0] else [])


def plot_backend_bars(plt, recs, meta):
    f, s = _sweep_base(recs, meta)
    pts = [r for r in _where(recs, group="sweep", frames=f, image_size=s) if not r["workload"].get("backend_options")]
    if not any(r["status"] == "ok" for r in pts):
        return None
    backends = _backends_in(pts, status=("ok", "oom", "skipped", "error"))
    schemes = schemes_in(pts)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), layout="tight")
    width = 0.8 / max(len(backends), 1)
    notes = {}
    for ax, mode in zip(axes, MODES):
        for j, be in enumerate(backends):
            xs, ok = [], []
            for i, scheme in enumerate(schemes):
                x = i + (j - (len(backends) - 1) / 2) * width
                for r in _where(pts, scheme=scheme, backend=be, mode=mode)[:1]:
                    if r["status"] == "ok":
                        xs.append(x)
                        ok.append(r)
                    elif r["status"] in ("skipped", "error", "oom"):
                        notes.setdefault(be, f"{r['status']}: {r['reason'].split(';')[0][:120]}")
                        ax.text(x, 0.02, r["status"][:4], rotation=90, fontsize=6, ha="center", va="bottom",
                                transform=ax.get_xaxis_transform(), color=backend_colour(be))
            ax.bar(xs, [r["median_s"] * 1e3 for r in ok], width=width, color=backend_colour(be),
                   label=be if xs else None, yerr=_yerr(ok) if ok else None,
                   error_kw={"elinewidth": 0.8, "capsize": 1.5})
        # a linear axis from 0: bar lengths compare (on a log axis they do not)
        ax.set(xticks=range(len(schemes)), xticklabels=map(scheme_label, schemes), ylim=(0, None),
               ylabel="median latency (ms)")
        ax.set_title(mode, fontsize=10)
        ax.grid(True, axis="y", which="both", alpha=0.3)
    axes[0].legend(fontsize=8, title="backend", title_fontsize=8)
    fig.suptitle(f"Backends at {f} frames x {s} px - {_device(meta)}", fontsize=11)
    note = "\n".join(f"{be}: {t}" for be, t in notes.items())
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, va="bottom", wrap=True)
        fig.get_layout_engine().set(rect=(0, 0.06 * (1 + note.count("\n")), 1, 1))
    return fig


def plot_error_vs_speed(plt, recs, meta):
    from matplotlib.lines import Line2D

    base, ok, rows = baseline_backend(recs), [r for r in recs if r["status"] == "ok"], []
    same = ("impl", "scheme", "mode", "batch", "frames", "image_size", "dim", "depth", "heads", "dtype", "device")
    for r in (r for r in ok if r.get("rel_error") is not None):  # vs the baseline's point at the same workload
        twin = _where(ok, backend=r.get("reference_backend") or base, **{k: r["workload"].get(k) for k in same})
        if twin:
            rows.append((r, twin[0]["median_s"] / r["median_s"]))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8.5, 5.4), layout="tight")
    for r, speedup in rows:
        w, kind = r["workload"], kind_of(r)
        approx = w["group"] == "approx"
        ax.scatter([speedup], [r["rel_error"]], marker=KIND_MARKERS.get(kind, "^"), color=scheme_colour(w["scheme"]),
                   edgecolors="k" if kind == "different_model" else "none", s=44 if approx else 22,
                   alpha=0.9 if approx else 0.6)
        if w["backend_options"]:  # an error_sweep option set: name its values
            ax.annotate(",".join(f"{v}" for v in w["backend_options"].values()), (speedup, r["rel_error"]),
                        fontsize=7, xytext=(4, 2), textcoords="offset points")
    kinds = {r["workload"].get("backend"): kind_of(r) for r, _ in rows}
    ax.add_artist(ax.legend(handles=[
        Line2D([], [], ls="", marker=KIND_MARKERS.get(kinds[b], "^"), color="gray",
               markeredgecolor="k" if kinds[b] == "different_model" else "gray",
               label=f"{b}: different model (deviation, not approximation)" if kinds[b] == "different_model"
               else f"{b}: approximation error") for b in _backends_in([r for r, _ in rows])],
        fontsize=7, loc="upper left"))
    ax.legend(handles=[Line2D([], [], ls="", marker="o", color=scheme_colour(s_), label=scheme_label(s_))
                       for s_ in schemes_in([r for r, _ in rows])],
              fontsize=7, loc="lower right", title="scheme", title_fontsize=7)
    ax.axvline(1.0, color="gray", lw=0.8, ls="--")
    _log_axes(ax)
    ax.set(xlabel=f"speed-up over backend {base!r} at the same workload (x)",
           ylabel=f"relative error of the output vs {base!r}, same weights")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"Approximation error vs speed (forward) - {_device(meta)}\n"
                 "large markers: feature sweep at the base workload; small: the frames/resolution sweep", fontsize=9)
    return fig


def plot_flops(plt, recs, meta):
    pts = [r for r in _where(recs, group="sweep", backend=baseline_backend(recs), mode="fwd")
           if r["status"] in ("ok", "oom")]
    if not any(r["status"] == "ok" for r in pts):
        return None
    unit, scale = ("TFLOPs", 1e-12) if max(r.get("flops") or 0 for r in pts) >= 1e12 else ("GFLOPs", 1e-9)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), layout="tight")
    for ax, (x_field, fixed_field, fixed, xlabel, at) in zip(axes, _sweep_axes(recs, meta)):
        sel = _where(pts, **{fixed_field: fixed})
        for scheme in schemes_in(sel):
            _line(ax, _where(sel, scheme=scheme), lambda r: r["workload"][x_field],
                  lambda r: None if r.get("flops") is None else r["flops"] * scale, scheme_colour(scheme),
                  scheme_label(scheme), marker="o", ms=4)
        ax.set(xlabel=xlabel, ylabel=f"{unit} per clip (forward)", xticks=sorted({r["workload"][x_field] for r in sel}))
        ax.set_title(f"vs {xlabel} ({at})", fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Compute cost per clip (torch.utils.flop_counter), like the paper's Figure 3 - {_device(meta)}",
                 fontsize=10)
    return fig


def _time_and_memory(plt, pts, labels, colours, ylabel, title):
    """Two bar panels, a bar per record: median latency (quartile error bars, spread named) and peak memory."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="tight")
    xs = range(len(pts))
    axes[0].bar(xs, [r["median_s"] * 1e3 for r in pts], color=colours, yerr=_yerr(pts))
    _annotate_spread(axes[0], xs, pts)
    axes[1].bar(xs, [(r.get("peak_mem_bytes") or 0) / MIB for r in pts], color=colours)
    for ax, label in zip(axes, (ylabel, MEMORY_LABEL)):
        ax.set(ylabel=label)
        ax.set_xticks(xs, labels, fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=9)
    return fig


def plot_peers(plt, recs, meta):
    pts = [r for r in _where(recs, group="target") if r["status"] == "ok"]
    if len(pts) < 2:
        return None
    peer = {"hf": "Hugging Face", "lucidrains": "lucidrains"}
    labels = [(f"ours/{w['backend']}" if w["impl"] == "ours" else peer.get(w["impl"], w["impl"])) + f"\n{w['mode']}"
              for w in (r["workload"] for r in pts)]
    w = pts[0]["workload"]
    return _time_and_memory(plt, pts, labels, [OURS if r["workload"]["impl"] == "ours" else PEER for r in pts],
                            "median latency (ms)", f"Target: B={w['batch']}, {w['frames']}x{w['image_size']}, depth "
                            f"{w['depth']}, {w['dtype']} - {_device(meta)}")


def plot_train(plt, recs, meta):
    """gpu-check's training step: time and peak memory per implementation."""
    pts = [r for r in _where(recs, group="train") if r["status"] == "ok"]
    if not pts:
        return None
    w = pts[0]["workload"]["workload"]
    return _time_and_memory(
        plt, pts, [r["label"].replace(" training step", "") for r in pts],
        [backend_colour(r["workload"]["backend"]) if r["workload"]["impl"] == "ours" else PEER for r in pts],
        "ms per training step (median)", f"Training step (forward, backward, AdamW; {pts[0]['workload']['amp']} "
        f"autocast): B={w['batch']}, {w['frames']}x{w['image_size']}, dim {w['dim']} depth {w['depth']} - "
        f"{_device(meta)}")


def _size_pairs(recs):
    """{(frames, image_size): {"ours": rec, "hf": rec}} from the target and sizes groups (forward); ours = the
    baseline backend (:func:`~fast_timesformer.bench.runner.baseline_backend`)."""
    recs = [r for r in _where(recs, mode="fwd") if r["status"] == "ok" and r["workload"].get("group")
            in ("target", "sizes")]
    base, pairs = baseline_backend(recs), {}
    for w, r in ((r["workload"], r) for r in recs):
        if w["impl"] == "hf" or (w["impl"] == "ours" and w["backend"] == base):
            pairs.setdefault((w["frames"], w["image_size"]), {})[w["impl"]] = r
    return {k: v for k, v in sorted(pairs.items()) if "ours" in v and "hf" in v}


def plot_hf_sizes(plt, recs, meta):
    """Ours (the baseline backend) vs Hugging Face at every measured size: latency, and the speed and memory ratios
    along the resolution axis (one line, one sweep axis)."""
    pairs = _size_pairs(recs)
    if len(pairs) < 2:
        return None
    sizes = list(pairs)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.3), layout="tight")
    ours_name = f"ours ({pairs[sizes[0]]['ours']['workload']['backend']})"
    for j, (impl, colour, name) in enumerate((("ours", OURS, ours_name), ("hf", PEER, "Hugging Face"))):
        rs = [pairs[k][impl] for k in sizes]
        xs = [i + (j - 0.5) * 0.38 for i in range(len(sizes))]
        ax.bar(xs, [r["median_s"] for r in rs], width=0.38, color=colour, label=name, yerr=_yerr(rs, 1.0),
               error_kw={"elinewidth": 0.8, "capsize": 2})
        _annotate_spread(ax, xs, rs, 1.0)
    ax.set(xticks=range(len(sizes)), xticklabels=[f"{f}x{s_}" for f, s_ in sizes],
           ylabel="median forward latency (s)", xlabel="frames x resolution (px)")
    res = [s_ for _f, s_ in sizes]
    speed = [p["hf"]["median_s"] / p["ours"]["median_s"] for p in pairs.values()]
    mem = [(p["ours"].get("peak_mem_bytes") or 0) / p["hf"]["peak_mem_bytes"] if p["hf"].get("peak_mem_bytes")
           else float("nan") for p in pairs.values()]
    for ys, fmt, colour, label, text, dy in ((speed, "o-", OURS, "speed-up: HF time / ours", "{:.2f}x", 4),
                                             (mem, "s--", "#1f77b4", "peak memory: ours / HF", "{:.2f}", -10)):
        ax2.plot(res, ys, fmt, color=colour, label=label)
        for x, y in zip(res, ys):
            ax2.annotate(text.format(y), (x, y), fontsize=7, xytext=(4, dy), textcoords="offset points")
    ax2.axhline(1.0, color="gray", lw=0.8)
    ax2.set(xticks=res, xticklabels=res, xlabel=f"resolution (px) at {sizes[0][0]} frames", ylabel="ratio")
    for a in (ax, ax2):
        a.set(ylim=(0, None))
        a.legend(fontsize=8)
        a.grid(True, axis="y" if a is ax else "both", alpha=0.3)
    w = pairs[sizes[0]]["ours"]["workload"]
    fig.suptitle(f"Ours vs Hugging Face by size: B={w['batch']}, dim {w['dim']}, depth {w['depth']}, {w['dtype']}, "
                 f"forward, same weights, timed alternately in one run - {_device(meta)}", fontsize=9)
    return fig


def plot_kernels(plt, recs, meta):
    """The kernel suite: one panel per step and mode, a bar per contender that passed its float64 check (the
    roofline, in grey, first), and the whole layer; failed and skipped contenders are named under the panel."""
    pts = [r for r in recs if r["workload"].get("group") in ("kernel", "sdpa-only", "layer")]
    if not any(r["status"] == "ok" for r in pts):
        return None
    panels = sorted({(r["workload"]["group"] == "layer", r["workload"]["step"], r["workload"]["mode"]) for r in pts})
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 0.4 + 3.6 * rows), squeeze=False, layout="tight")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (is_layer, step, mode) in zip(axes.flat, panels):
        sel = [r for r in _where(pts, step=step, mode=mode) if (r["workload"]["group"] == "layer") == is_layer]
        ok = sorted((r for r in sel if r["status"] == "ok"), key=lambda r: -r["median_s"])
        bars = [(r["workload"]["contender"], r["median_s"], backend_colour(r["workload"]["contender"])) for r in ok]
        bars += [("roofline", ok[0]["roofline_s"], BOUND)] if ok and ok[0].get("roofline_s") else []
        ax.barh([b[0] for b in bars], [b[1] * 1e3 for b in bars], color=[b[2] for b in bars])
        ax.set_title(f"{'layer ' if is_layer else ''}{step} {mode}", fontsize=9)
        ax.set_xlabel("median ms (lower is better)")
        ax.tick_params(labelsize=7)
        bad = [f"{r['workload']['contender']}: {r['status']}" for r in sel if r["status"] in ("failed", "error")]
        if bad:
            ax.text(0.99, 0.01, textwrap.fill("; ".join(bad), 50), transform=ax.transAxes, fontsize=6, ha="right",
                    va="bottom", color="tab:red")
    w = pts[0]["workload"]
    fig.suptitle(f"Attention steps - {_device(meta)} | B={w['batch']} T={w['frames']} N={w['patches']} "
                 f"H={w['heads']} d={w['dim_head']} {w['dtype']} | every bar passed its float64 check", fontsize=9)
    return fig


#: file name -> (title in summary.md, fn(plt, records, meta) -> a figure, or None where the records have no points)
PLOTS = {
    "peers.png": ("Target workload: ours vs the peers (same run)", plot_peers),
    "hf_sizes.png": ("Ours vs Hugging Face by size (same run)", plot_hf_sizes),
    "latency_vs_frames.png": ("Latency vs frames", lambda plt, recs, meta: plot_latency(plt, recs, meta, 0)),
    "latency_vs_resolution.png": ("Latency vs resolution", lambda plt, recs, meta: plot_latency(plt, recs, meta, 1)),
    "memory_vs_tokens.png": ("Peak memory vs tokens", plot_memory_vs_tokens),
    "backend_bars.png": ("Backends at the base workload", plot_backend_bars),
    "error_vs_speed.png": ("Approximation error vs speed", plot_error_vs_speed),
    "flops_vs_frames_resolution.png": ("FLOPs vs frames and resolution (paper Figure 3 style)", plot_flops),
    "kernels.png": ("Attention steps on every exact backend (checked against float64 first)", plot_kernels),
    "train.png": ("Training step: time and peak memory", plot_train),
}


def plot_all(results_dir, out_dir=None, only=None) -> list:
    """Draw every plot the saved results support (``only``: these file names); returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results_dir = Path(results_dir)
    if not (results_dir / "results.jsonl").exists():
        raise FileNotFoundError(f"no results.jsonl in {results_dir} (run `fast-timesformer bench --out "
                                f"{results_dir}` first)")
    out = Path(out_dir) if out_dir else results_dir
    out.mkdir(parents=True, exist_ok=True)
    recs, meta = list(latest_by_key(load_results(results_dir)).values()), load_meta(results_dir)
    paths = []
    for name, (_title, fn) in PLOTS.items():
        fig = None if only and name not in only else fn(plt, recs, meta)
        if fig is not None:
            try:
                save_figure(fig, out / name, dpi=110)  # atomic; a failed write is one line naming the path
            finally:
                plt.close(fig)
            paths.append(out / name)
    return paths
