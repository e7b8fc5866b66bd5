"""``recording``: exact softmax attention in plain torch that keeps its attention probabilities.

For looking inside a model (:mod:`fast_timesformer.explain`): swap it in with
``use_backend(model, "recording", recorder=rec)``, run the model, and ``rec.records`` holds one
:class:`StepRecord` per attention call, in the order the calls ran. A record keeps what is needed to
write the step as a token-to-token mixing matrix over ``[CLS; patches]``: the groups of the step
(:class:`~fast_timesformer.groups.TokenGroups`), the probabilities of the patch queries over
``[prefix; group]`` and, when the CLS is a query, its probabilities (per group or global).

Equivalent PyTorch code (what :meth:`RecordingCore.attend` computes)::

    k = torch.cat([prefix_k.repeat_interleave(g, 0), k], 2)       # g = groups per batch item
    v = torch.cat([prefix_v.repeat_interleave(g, 0), v], 2)
    probs = torch.softmax(q @ k.transpose(-1, -2) * scale, -1)   # (B, heads, Sq, P + Sk): recorded
    out = probs @ v

It materialises the probabilities (memory grows with Sq x Sk), so it is never a speed choice: its
priority puts it after every other exact backend for ``auto``. fp16/bf16 inputs are computed in float32
and the output cast back; probabilities are stored detached (gradients flow through the output as
usual, so the backend passes the registry's forward and gradient tests).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..kernels.naive import per_group, with_prefix
from .registry import AttentionCore, Backend

__all__ = ["RecordingCore", "AttentionRecorder", "StepRecord", "BACKEND"]


@dataclass
class StepRecord:
    """One attention call of a layer, as the layer issued it.

    ``probs``: (batch, groups, heads, S, P + S) probabilities of each group's S patch queries over
    ``[prefix; group]`` (P = 0 when the CLS is left out). ``cls``: how the CLS took part, ``"exclude"``
    (no prefix: the CLS, if any, is neither key nor query; its output row is 0), ``"per_group"``
    (``cls_probs`` (batch, groups, heads, P, P + S): the prefix query within each ``[prefix; group]``,
    outputs averaged over groups) or ``"global"`` (``cls_probs`` (batch, heads, P, P + M): the prefix
    query over ``[prefix; all M patches]`` in token order). Heads are averaged (axis kept, size 1) when the
    recorder was made with ``keep_heads=False``. ``layer`` is whatever label the core carried.
    """

    groups: Any  # TokenGroups
    batch: int
    num_prefix: int
    probs: torch.Tensor
    cls: str = "exclude"
    cls_probs: Optional[torch.Tensor] = None
    layer: Any = None

    @property
    def num_tokens(self) -> int:
        """Patch tokens M of one batch item (the CLS not counted)."""
        return self.groups.num_tokens


@dataclass
class AttentionRecorder:
    """Collects :class:`StepRecord` objects from every core that shares it, in call order."""

    keep_heads: bool = True
    records: list = field(default_factory=list)

    def add(self, record: StepRecord) -> None:
        self.records.append(record)

    def clear(self) -> None:
        self.records.clear()


class RecordingCore(AttentionCore):
    """Plain-torch softmax attention that records its probabilities.

    Options: ``recorder`` (an :class:`AttentionRecorder` shared by the layers of a model; without one the
    core keeps only its last record, in :attr:`last`), ``label`` (stored in each record's ``layer``).
    """

    def __init__(self, backend, dim_head, heads, recorder: Optional[AttentionRecorder] = None, label=None):
        super().__init__(backend, dim_head, heads)
        self.recorder = recorder
        self.label = label
        self.last: Optional[StepRecord] = None
        self.last_probs: Optional[torch.Tensor] = None  # of the last plain call (B, heads, Sq, P + Sk)

    #: every call adds a record: a call recomputed in backward would record the step twice
    recomputable = False

    def attend(self, q, k, v, prefix_k, prefix_v, *, scale, dropout_p):
        k, v = with_prefix(k, v, prefix_k, prefix_v)
        low = q.dtype in (torch.float16, torch.bfloat16)  # softmax in float32 for half types
        qc, kc, vc = (t.float() for t in (q, k, v)) if low else (q, k, v)
        probs = torch.softmax(torch.matmul(qc, kc.transpose(-1, -2)) * scale, dim=-1)
        self.last_probs = probs.detach()
        return torch.matmul(probs, vc).to(q.dtype)

    # ---- token-layout entry points: the same computation, recorded with the step's structure ----
    def _keep(self, p: torch.Tensor) -> torch.Tensor:
        keep_heads = self.recorder.keep_heads if self.recorder is not None else True
        return p if keep_heads else p.mean(-3, keepdim=True)

    def _store(self, record: StepRecord) -> None:
        self.last = record
        if self.recorder is not None:
            self.recorder.add(record)

    def attend_groups(self, q, k, v, groups, *, prefix_k=None, prefix_v=None, prefix_q=None,
                      want_prefix_out=False, scale, dropout_p, out=None):
        b, m, h, d = q.shape
        ng = groups.num_groups
        qg, kg, vg = groups.split(q), groups.split(k), groups.split(v)
        n_p = 0 if prefix_k is None else prefix_k.shape[1]
        prefix_out = None
        if n_p:
            pk, pv = prefix_k.transpose(1, 2), prefix_v.transpose(1, 2)
            kg, vg = with_prefix(kg, vg, pk, pv)  # [prefix; group] once, for both calls
        y = self(qg, kg, vg, scale=scale, dropout_p=dropout_p)
        record = StepRecord(groups=groups, batch=b, num_prefix=n_p, layer=self.label,
                            probs=self._keep(self.last_probs).unflatten(0, (b, ng)),
                            cls="exclude" if not n_p else ("per_group" if want_prefix_out else "global"))
        if want_prefix_out:
            if prefix_q is None:
                raise ValueError("want_prefix_out needs prefix_q (the CLS query)")
            yp = self(per_group(prefix_q.transpose(1, 2), ng), kg, vg, scale=scale, dropout_p=dropout_p)
            record.cls_probs = self._keep(self.last_probs).unflatten(0, (b, ng))
            prefix_out = yp.reshape(b, ng, h, n_p, d).mean(1).transpose(1, 2)
        self._store(record)
        if out is None:
            out = q.new_empty(b, m, h, d)
        groups.merge_into(y, out)
        return prefix_out

    def attend_global_prefix(self, prefix_q, prefix_k, prefix_v, q, k, v, *, scale, dropout_p):
        t = lambda x: x.transpose(1, 2)  # noqa: E731  (token layout -> (b, h, S, d) view)
        y = self(t(prefix_q), t(k), t(v), t(prefix_k), t(prefix_v), scale=scale, dropout_p=dropout_p)
        if self.last is not None and self.last.cls == "global" and self.last.cls_probs is None:
            self.last.cls_probs = self._keep(self.last_probs)  # the CLS row of the step just recorded
        return t(y)


BACKEND = Backend(
    name="recording",
    factory=RecordingCore,
    kind="exact",  # plain softmax (fp16/bf16 computed in float32): the default exact tolerances hold
    supports_dropout=False,  # it records the probabilities the model used; dropout would hide them
    priority=1_000_000,  # never a speed choice: auto tries every other exact backend first
    diagnostic=True,  # for looking inside a model: auto never picks it, the benchmarks never time it
    description="exact softmax in plain torch that keeps the attention probabilities (for explain)",
)
