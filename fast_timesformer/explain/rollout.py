"""Attention maps and attention rollout (Abnar & Zuidema, 2020) for every space-time scheme.

How the maps are obtained: the model runs once with the exact ``recording`` backend swapped into every
attention layer through the registry (``use_backend(model, "recording", recorder=...)``; the layers'
own backends and options are restored afterwards). Each attention call leaves a
:class:`~fast_timesformer.backends.recording.StepRecord`: the step's :class:`TokenGroups` and the
softmax probabilities of its patch queries (and of the CLS query, when the CLS is one).

From a record to a token-to-token matrix (:func:`step_matrix`), over the tokens ``[CLS; patches]`` of
one sequence (frame-major patches)::

    A[1 + i, 1 + j] = p(query i -> key j)      i, j in the same group of the step
    A[1 + i, 0]     = p(query i -> CLS)         when the CLS is a key of the step
    A[0, :]         = the CLS query's row       per_group: the mean over groups of its rows over
                                                [CLS; group]; global: its row over [CLS; all patches];
                                                exclude (CLS left out, e.g. official time steps): 0

That is exactly how the layer mixes the values of the tokens, whatever the groups are, so a scheme
registered later is covered by the same code. Rollout: per step, heads averaged, the residual added
as ``A' = (1 - r) A + r I`` (r = 0.5 as in the paper), rows renormalised (a zero CLS row becomes the
identity row: the CLS passes through the residual unchanged), then the steps of all blocks multiplied
in forward order, ``R = A'_K ... A'_1``; the rollout is the CLS row of R.

Approximations (as in the paper's rollout): the MLP, the LayerNorms, the value/output projections and
the ``<prefix>_fc`` after earlier steps (``temporal_fc``) are not modelled; an attention step counts
fully even where its ``_fc`` scales its output down (``temporal_fc`` is zero-initialised).

Frame-independent schemes (the official ``space_only``: each frame its own sequence ``[CLS_t;
patches of t]`` through all blocks, the CLS copies averaged at the end) are recognised from the
recorded shapes (batch ``b * f`` sequences of ``n`` patches): each frame's rollout is computed on its own
and the clip's CLS row is their mean (weight 1/f each), which is what the model's final average does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import nn

from ..backends.recording import AttentionRecorder, StepRecord

__all__ = ["record_attention", "step_matrix", "attention_rollout", "clip_layout", "clip_rollout",
           "step_maps", "Layout", "RESIDUAL"]

RESIDUAL = 0.5  # weight of the identity in A' = (1 - r) A + r I (REFERENCE §11, Abnar & Zuidema)


@dataclass(frozen=True)
class Layout:
    """How the recorded sequences map onto the clip: ``frame_independent`` when every frame ran as its
    own sequence (batch * frames sequences of ``n`` patches), else one sequence of ``frames * n``."""

    batch: int
    frames: int
    grid: tuple
    frame_independent: bool

    @property
    def patches_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]


def _attention_layers(model: nn.Module):
    from ..attention import DividedAttention

    return [(name, m) for name, m in model.named_modules() if isinstance(m, DividedAttention)]


@torch.no_grad()
def record_attention(model: nn.Module, video: torch.Tensor, *, keep_heads: bool = True):
    """Run ``model(video)`` with the ``recording`` backend in every attention layer.

    Returns ``(output, records)``: the model's output and one :class:`StepRecord` per attention call,
    in call order, each labelled ``layer = (module name, step name)``. The model's backends (and their
    options) and its train/eval mode are restored on exit; the run itself is in eval mode.
    """
    from ..attention import use_backend

    layers = _attention_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no DividedAttention layer to record")
    recorder = AttentionRecorder(keep_heads=keep_heads)
    was_training = model.training
    model.eval()
    try:
        with use_backend(model, "recording", recorder=recorder):
            for name, layer in layers:
                layer.cores["recording"].label = (name, layer.step)
            out = model(video)
    finally:
        model.train(was_training)
    return out, list(recorder.records)


def step_matrix(record: StepRecord) -> torch.Tensor:
    """The step as a token-mixing matrix: (batch, heads, 1 + M, 1 + M) over ``[CLS; patches]``
    (index 0 the CLS, ``1 + j`` patch j, frame-major). See the module docstring for the rows."""
    p = record.probs  # (b, G, h, S, P + S)
    b, ng, h, s, width = p.shape
    n_p = record.num_prefix
    if n_p > 1:
        raise ValueError(f"a mixing matrix needs at most one prefix (CLS) token, the record has {n_p}")
    m = record.num_tokens
    idx = record.groups.index().to(p.device)  # (G, S) patch indices
    cols = 1 + idx
    if n_p:
        cols = torch.cat([torch.zeros(ng, 1, dtype=idx.dtype, device=p.device), cols], 1)  # (G, 1 + S)
    a = p.new_zeros(b, h, 1 + m, 1 + m)
    a[:, :, (1 + idx)[:, :, None], cols[:, None, :]] = p.permute(0, 2, 1, 3, 4)
    if record.cls == "per_group":
        cp = record.cls_probs[:, :, :, 0]  # (b, G, h, 1 + S): the CLS query in each [CLS; group]
        row = p.new_zeros(b, h, 1 + m)
        row.index_add_(2, cols.flatten(), cp.permute(0, 2, 1, 3).reshape(b, h, -1))
        a[:, :, 0] = row / ng
    elif record.cls == "global":
        a[:, :, 0] = record.cls_probs[:, :, 0]  # (b, h, 1 + M), token order
    return a


def _residual(a: torch.Tensor, residual: float) -> torch.Tensor:
    """Heads averaged, ``(1 - r) A + r I``, rows renormalised: (batch, T, T)."""
    a = a.mean(1)
    a = (1 - residual) * a + residual * torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    return a / a.sum(-1, keepdim=True)


def attention_rollout(records: Sequence[StepRecord], *, residual: float = RESIDUAL,
                      dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The CLS row of ``A'_K ... A'_1`` over the recorded sequences: (batch, 1 + M), rows sum to 1.

    Computed as a row vector (``e_0 A'_K``, then ``A'_{K-1}``, ...), never as the full product.
    """
    if not records:
        raise ValueError("no attention records to roll out")
    first = records[0]
    t = 1 + first.num_tokens
    for r in records:
        if (r.batch, r.num_tokens) != (first.batch, first.num_tokens):
            raise ValueError("records of one rollout must share batch and token count, got "
                             f"{(first.batch, first.num_tokens)} and {(r.batch, r.num_tokens)}")
    v = torch.zeros(first.batch, t, dtype=dtype, device=first.probs.device)
    v[:, 0] = 1
    for r in reversed(records):
        a = _residual(step_matrix(r).to(dtype), residual)
        v = torch.einsum("bi,bij->bj", v, a)
    return v


def clip_layout(records: Sequence[StepRecord], batch: int, frames: int, grid: tuple) -> Layout:
    """Whether the records are whole clips or one sequence per frame (official ``space_only``)."""
    n = grid[0] * grid[1]
    r = records[0]
    if (r.batch, r.num_tokens) == (batch, frames * n):
        return Layout(batch, frames, tuple(grid), False)
    if (r.batch, r.num_tokens) == (batch * frames, n):
        return Layout(batch, frames, tuple(grid), True)
    raise ValueError(f"recorded sequences ({r.batch} of {r.num_tokens} patches) match neither {batch} clips of "
                     f"{frames} x {n} patches nor {batch * frames} frames of {n}")


def clip_rollout(records: Sequence[StepRecord], layout: Layout, *, residual: float = RESIDUAL):
    """``(cls_mass (b,), patches (b, f, gh, gw))``: the clip CLS's rollout, summing to 1 per clip."""
    r = attention_rollout(records, residual=residual)
    b, f, (gh, gw) = layout.batch, layout.frames, layout.grid
    if layout.frame_independent:  # mean of the frames' CLS copies
        r = r.view(b, f, -1) / f
        return r[..., 0].sum(1), r[..., 1:].reshape(b, f, gh, gw)
    return r[:, 0], r[:, 1:].reshape(b, f, gh, gw)


@dataclass
class StepMaps:
    """Per-layer maps of one attention step (heads averaged, no residual), for ``L`` layers.

    ``cls_attention`` (L, b, f, gh, gw): the CLS query's row over the patches (NaN in layers where the
    CLS is no query of the step, e.g. official time steps); ``received`` (L, b, f, gh, gw): the
    attention each patch receives, averaged over all patch queries of the clip; ``frame_to_frame``
    (L, b, f, f): row t = how much the patches of frame t draw from the patches of each frame s (mean
    over the queries of frame t; rows sum to 1 minus what goes to the CLS).
    """

    step: str
    layers: list
    cls_attention: torch.Tensor
    received: torch.Tensor
    frame_to_frame: torch.Tensor
    cls_is_query: list = field(default_factory=list)


def step_records(records: Sequence[StepRecord], step: str) -> list:
    """The records of one step name, in layer order."""
    return [r for r in records if r.layer is not None and r.layer[1] == step]


def step_maps(records: Sequence[StepRecord], step: str, layout: Layout,
              layers: Optional[Sequence[int]] = None) -> StepMaps:
    """Maps of ``step`` at each layer (its k-th occurrence is layer k); ``layers`` picks some."""
    recs = step_records(records, step)
    if not recs:
        raise ValueError(f"no attention step {step!r} was recorded")
    chosen = list(range(len(recs))) if layers is None else list(layers)
    for i in chosen:
        if not 0 <= i < len(recs):
            raise ValueError(f"layer {i} does not exist: step {step!r} has layers 0..{len(recs) - 1}")
    b, f, (gh, gw) = layout.batch, layout.frames, layout.grid
    n = gh * gw
    cls_maps, received, f2f, is_query = [], [], [], []
    for i in chosen:
        rec = recs[i]
        a = step_matrix(rec).double().mean(1)  # (B, 1 + M, 1 + M)
        is_query.append(rec.cls != "exclude")
        if layout.frame_independent:
            a = a.view(b, f, 1 + n, 1 + n)
            cls_row = a[:, :, 0, 1:] / f
            rec_map = a[:, :, 1:, 1:].mean(2) / f
            ff = torch.diag_embed(a[:, :, 1:, 1:].sum(-1).mean(-1))
        else:
            cls_row = a[:, 0, 1:]
            rec_map = a[:, 1:, 1:].mean(1)
            ff = a[:, 1:, 1:].reshape(b, f, n, f, n).sum(-1).mean(2)
        if not is_query[-1]:
            cls_row = torch.full_like(cls_row, float("nan"))
        cls_maps.append(cls_row.reshape(b, f, gh, gw))
        received.append(rec_map.reshape(b, f, gh, gw))
        f2f.append(ff)
    return StepMaps(step, chosen, torch.stack(cls_maps), torch.stack(received), torch.stack(f2f), is_query)
