"""The scheme x backend experiment on the synthetic motion task (``fast-timesformer experiment``).

1. Train one model per space-time scheme on :class:`~fast_timesformer.train.data.MovingShapes` (the label
   is only in the order of the frames) with the exact ``regular`` backend, same budget for each.
2. Evaluate each trained model again with other backends swapped in, weights unchanged: performer at a
   few feature counts (an approximation of softmax attention: the gap is its approximation error) and
   fastformer (a different attention with its *own*, here untrained, parameters: near chance is expected;
   it is listed to show that, not as an approximation).
3. Write ``results.json`` (raw numbers, settings, versions), ``results.md`` (the table) and
   ``accuracy.png`` (the plot) to the output folder.

An output folder that holds an earlier experiment (those files, or a scheme's run under ``runs/``) is
refused before anything is trained, unless ``overwrite``: then each scheme's earlier run is replaced when
its new run saves its first checkpoint (as ``fast-timesformer train --overwrite`` does), the three result
files at the end.

Presets: ``cpu`` finishes in minutes on 2 cores; ``gpu`` trains a larger model on more data for longer.
"""
from __future__ import annotations

import os
import time
from typing import Optional, Sequence

import torch

from ..environment import run_metadata
from ..outputs import check_output_dir, save_figure, write_json, write_text
from .config import TrainConfig
from .run_folder import EarlierRunError, describe_files, earlier_run_files
from .trainer import Trainer

__all__ = ["PRESETS", "SWAPS", "swaps", "run_experiment", "write_table", "plot_results"]

PRESETS: dict[str, dict] = {
    "cpu": dict(model='{"dim": 32, "depth": 2, "heads": 4, "dim_head": 8, "patch_size": 4, "mlp_ratio": 2.0}',
                num_frames=4, image_size=16, num_classes=2, train_samples=1024, eval_samples=512, batch=32,
                steps=1000, lr=2e-3, warmup=0.05, weight_decay=0.05, device="cpu"),
    "gpu": dict(model='{"dim": 192, "depth": 4, "heads": 6, "dim_head": 32, "patch_size": 8, "mlp_ratio": 4.0}',
                num_frames=8, image_size=64, num_classes=4, train_samples=16384, eval_samples=2048, batch=64,
                steps=3000, lr=1e-3, warmup=0.05, weight_decay=0.05, device="auto", workers=4),
}

def swaps() -> list[tuple[str, str, dict]]:
    """(label, backend, options) evaluated after training with "regular": every registered backend that is
    not exact (a user's too), at each option set of its ``Backend.error_sweep`` (or once, with its defaults).
    A ``different_model`` backend brings its own, here untrained, parameters: its label says so."""
    from ..backends import get_backend, list_backends

    out = []
    for name in list_backends():
        be = get_backend(name)
        if be.kind == "exact":
            continue
        for options in be.error_sweep or ({},):
            label = "-".join([name] + [str(v) for v in options.values()])
            if be.kind == "different_model":
                label += " (untrained)"
            out.append((label, name, dict(options)))
    return out


# the swaps with the built-in backends (performer-16/64/256, fastformer (untrained)); run_experiment asks
# swaps() again, so a backend registered later is included
SWAPS: list[tuple[str, str, dict]] = swaps()


def _schemes(names: Optional[Sequence[str]]) -> list[str]:
    """The registered schemes (every one by default, a scheme registered from your own code included);
    an unknown name raises with the close match."""
    from ..schemes import get_scheme, list_schemes

    if not names:
        return list_schemes()
    return [get_scheme(n).name for n in names]


def _swap_accuracy(trainer: Trainer, backend: str, options: dict, seeds: Sequence[int]) -> dict:
    """Accuracy with ``backend`` swapped in, once per seed (performer's random features and fastformer's
    parameters are drawn from it): mean, min and max over the draws."""
    model = trainer.module
    layers = model.attention_modules()
    accs = []
    try:
        for seed in seeds:
            _drop_cores(layers, backend)  # a layer keeps a backend's core for reuse: drop it for a fresh draw
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model.set_backend(backend, **options)
            accs.append(trainer.evaluate()["acc"])
        return {"acc": sum(accs) / len(accs), "min": min(accs), "max": max(accs), "draws": accs}
    except Exception as e:  # a backend that refuses these inputs: report why
        return {"acc": None, "error": f"{type(e).__name__}: {e}"}
    finally:
        model.set_backend("regular")
        if backend != "regular":
            _drop_cores(layers, backend)  # leave the model as trained (no extra cores in its state_dict)


def _drop_cores(layers, backend: str) -> None:
    for layer in layers:
        if backend in layer.cores:
            del layer.cores[backend]


def run_experiment(preset: str = "cpu", out_dir: str = "runs/experiment", schemes: Optional[Sequence[str]] = None,
                   steps: Optional[int] = None, seed: int = 0, device: Optional[str] = None,
                   progress: bool = True, draws: int = 3, overwrite: bool = False, **overrides) -> dict:
    """Train every scheme, evaluate the backend swaps (``draws`` random draws each), write results.json/.md
    and accuracy.png. ``overwrite``: replace an earlier experiment in ``out_dir`` (else it is refused)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"--draws must be a whole number >= 1, got {draws!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"--steps must be a whole number >= 1, got {steps!r}")
    settings = dict(PRESETS[preset], seed=seed, progress=progress, log_every=50, **overrides)
    if steps is not None:
        settings["steps"] = steps
    if device not in (None, "auto"):
        settings["device"] = device
    names = _schemes(schemes)
    check_output_dir(out_dir)
    _check_out_dir(out_dir, names, overwrite)
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    todo = swaps()
    for scheme in names:
        cfg = TrainConfig(**settings, scheme=scheme, out_dir=os.path.join(out_dir, "runs", scheme),
                          overwrite=overwrite)
        t0 = time.perf_counter()
        trainer = Trainer(cfg)
        final = trainer.fit()
        seconds = time.perf_counter() - t0
        row = {"scheme": scheme, "params": sum(p.numel() for p in trainer.module.parameters()),
               "train_seconds": round(seconds, 1), "steps": trainer.total_steps, "acc": final["acc"],
               "loss": final["loss"], "chance": final["chance"], "swaps": {}}
        for label, backend, options in todo:
            row["swaps"][label] = _swap_accuracy(trainer, backend, options, [seed + k for k in range(draws)])
        rows.append(row)
        print(f"{scheme}: acc {row['acc']:.3f} " + " ".join(
            f"{k} {v['acc']:.3f}" if v["acc"] is not None else f"{k} n/a" for k, v in row["swaps"].items()),
            flush=True)
    results = {
        "preset": preset, "settings": settings, "draws": draws, "swaps": [{"label": label, "backend": b, "options": o}
                                                          for label, b, o in todo],
        "rows": rows, "environment": dict(run_metadata(), training_device=str(trainer.device)),
    }
    write_json(os.path.join(out_dir, "results.json"), results, indent=2)
    write_text(os.path.join(out_dir, "results.md"), write_table(results) + "\n")
    plot_results(results, os.path.join(out_dir, "accuracy.png"))
    print(write_table(results))
    return results


RESULT_FILES = ("results.json", "results.md", "accuracy.png")


def _check_out_dir(out_dir: str, schemes: Sequence[str], overwrite: bool) -> None:
    """Refuse (:class:`~fast_timesformer.train.run_folder.EarlierRunError`, one line) an ``out_dir`` that holds
    an earlier experiment's results or a run of one of ``schemes``, unless ``overwrite``."""
    if overwrite:
        return
    found = [os.path.join(out_dir, n) for n in RESULT_FILES if os.path.exists(os.path.join(out_dir, n))]
    parts = [", ".join(os.path.basename(p) for p in found)] if found else []
    runs = {s: earlier_run_files(os.path.join(out_dir, "runs", s)) for s in schemes}
    runs = {s: files for s, files in runs.items() if files}
    if len(runs) == 1:
        (scheme, files), = runs.items()
        parts.append(f"runs/{scheme}: {describe_files(os.path.join(out_dir, 'runs', scheme), files)}")
    elif runs:
        parts.append(f"the runs of {', '.join(runs)} under runs/ (checkpoints, metrics)")
    found += [f for files in runs.values() for f in files]
    if found:
        raise EarlierRunError(out_dir, found, (
            f"{out_dir} already holds an earlier experiment ({'; '.join(parts)}): --overwrite replaces it (each "
            "scheme's run when its new run saves its first checkpoint, the results at the end); or give "
            "another --out"))


def write_table(results: dict) -> str:
    """Markdown table: one row per scheme; accuracy trained/evaluated with regular, then each swap."""
    labels = [s["label"] for s in results["swaps"]]
    head = ["scheme", "params", "train s", "regular (trained)"] + labels
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results["rows"]:
        cells = [f"`{r['scheme']}`", f"{r['params']:,}", f"{r['train_seconds']:.0f}", f"{r['acc']:.3f}"]
        for label in labels:
            s = r["swaps"][label]
            cells.append(f"{s['acc']:.3f} ({s['min']:.2f}-{s['max']:.2f})" if s["acc"] is not None else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    chance = results["rows"][0]["chance"] if results["rows"] else float("nan")
    lines.append("")
    lines.append(f"Accuracy on {results['settings']['eval_samples']} held-out clips; chance = {chance:.3f}. Swapped-in "
                 f"backends: mean (min-max) over {results.get('draws', 1)} draws of their random features / "
                 "parameters.")
    return "\n".join(lines)


def plot_results(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    labels = ["regular (trained)"] + [s["label"] for s in results["swaps"]]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows) + 2), 4))
    width = 0.8 / len(labels)
    for j, label in enumerate(labels):
        vals = [r["acc"] if j == 0 else (r["swaps"][label]["acc"] or 0.0) for r in rows]
        xs = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(rows))]
        err = None
        if j > 0:
            sw = [r["swaps"][label] for r in rows]
            err = [[v - s.get("min", v) for v, s in zip(vals, sw)], [s.get("max", v) - v for v, s in zip(vals, sw)]]
        ax.bar(xs, vals, width, label=label, yerr=err, capsize=2 if err else 0)
    if rows:
        ax.axhline(rows[0]["chance"], color="black", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["scheme"].replace("_", "\n") for r in rows], fontsize=8)
    ax.set_ylim(0, 1.3)
    ax.set_ylabel("held-out accuracy")
    s = results["settings"]
    ax.set_title(f"moving-shapes ({s['num_classes']} classes, {s['num_frames']}x{s['image_size']}px), "
                 f"{s['steps']} steps; backends swapped in after training", fontsize=9)
    ax.legend(fontsize=7, ncol=3, loc="upper center")
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)

