"""Pictures of an :class:`~fast_timesformer.explain.api.Explanation` (matplotlib, no display needed)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..outputs import save_figure

__all__ = ["plot_rollout", "plot_step"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _overlay(ax, frame: np.ndarray, heat: Optional[np.ndarray], vmax: float, cmap: str = "inferno"):
    h, w = frame.shape[:2]
    ax.imshow(frame, interpolation="nearest")
    im = None
    if heat is not None:
        im = ax.imshow(heat, cmap=cmap, alpha=0.6, vmin=0.0, vmax=vmax, extent=(0, w, h, 0),
                       interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def plot_rollout(expl, path: str, *, title: Optional[str] = None) -> str:
    """Frames across; row 1 the input, row 2 the CLS's rollout over each frame's patches (one colour
    scale for the whole clip, in share of the patch mass)."""
    plt = _plt()
    frames = expl.frames.numpy()
    share = expl.rollout.double()
    share = (share / share.sum()).numpy() if float(share.sum()) > 0 else share.numpy()
    f = frames.shape[0]
    fig, axes = plt.subplots(2, f, figsize=(1.5 * f + 1.1, 3.5), squeeze=False,
                             gridspec_kw={"wspace": 0.05, "hspace": 0.12})
    vmax = float(share.max()) or 1.0
    im = None
    for t in range(f):
        _overlay(axes[0, t], frames[t], None, vmax)
        im = _overlay(axes[1, t], frames[t], share[t], vmax)
        axes[0, t].set_title(f"frame {t}", fontsize=8)
    axes[0, 0].set_ylabel("input", fontsize=8)
    axes[1, 0].set_ylabel("rollout", fontsize=8)
    cbar = fig.colorbar(im, ax=axes[1, :].tolist(), fraction=0.025, pad=0.01, shrink=0.9)
    cbar.ax.tick_params(labelsize=6)
    cbar.set_label("share of patch mass", fontsize=7)
    top = expl.top(1)[0]
    head = title or (f"{expl.scheme}: CLS attention rollout through {len(expl.records) // max(1, len(expl.steps))}"
                     f" blocks x ({', '.join(expl.steps)})")
    fig.subplots_adjust(top=0.80)
    fig.suptitle(f"{head}\npredicted {top['label']} (p={top['probability']:.2f}); "
                 f"rollout kept on the CLS itself: {expl.rollout_cls:.0%}", fontsize=8, y=0.99)
    try:
        save_figure(fig, path, dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_step(expl, path: str) -> str:
    """One row per chosen layer of ``expl.step``: a map per frame (the CLS's attention where the CLS is a
    query of the step, else the attention each patch receives), and the frame-to-frame matrix."""
    plt = _plt()
    m = expl.maps[expl.step]
    frames = expl.frames.numpy()
    f = frames.shape[0]
    rows = len(m.layers)
    fig, axes = plt.subplots(rows, f + 1, figsize=(1.4 * (f + 1) + 0.6, 1.45 * rows + 0.7), squeeze=False,
                             gridspec_kw={"wspace": 0.08, "hspace": 0.3})
    for r, layer in enumerate(m.layers):
        use_cls = m.cls_is_query[r]
        heat = (m.cls_attention[r] if use_cls else m.received[r]).double().numpy()
        vmax = float(np.nanmax(heat)) if np.isfinite(heat).any() else 1.0
        for t in range(f):
            _overlay(axes[r, t], frames[t], heat[t], vmax or 1.0, cmap="magma")
            if r == 0:
                axes[r, t].set_title(f"frame {t}", fontsize=8)
        axes[r, 0].set_ylabel(f"layer {layer}\n{'CLS attn.' if use_cls else 'received'}", fontsize=7)
        ax = axes[r, f]
        ff = m.frame_to_frame[r].double().numpy()
        ax.imshow(ff, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        if f <= 8:
            for i in range(f):
                for j in range(f):
                    ax.text(j, i, f"{ff[i, j]:.2f}", ha="center", va="center", fontsize=5,
                            color="white" if ff[i, j] < 0.6 else "black")
        ax.set_xticks(range(f))
        ax.set_yticks(range(f))
        ax.yaxis.tick_right()
        ax.yaxis.set_label_position("right")
        ax.tick_params(labelsize=5)
        if r == 0:
            ax.set_title("frame t draws\nfrom frame s", fontsize=7)
        if r == rows - 1:
            ax.set_xlabel("s", fontsize=7)
        ax.set_ylabel("t", fontsize=7)
    fig.subplots_adjust(top=1 - 0.75 / (1.45 * rows + 0.7))
    fig.suptitle(f"{expl.scheme}: step '{expl.step}' per layer (heads averaged, no residual)", fontsize=8, y=0.995)
    try:
        save_figure(fig, path, dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
