"""Look inside a TimeSformer: attention rollout and per-step attention maps, for every scheme.

``explain_clip(model, clip)`` runs the model once with the exact ``recording`` backend swapped in through the
registry (the model's own backends are restored afterwards) and returns an :class:`Explanation`;
``save_explanation`` writes its pictures, arrays and summary. ``fast-timesformer explain`` does both for
a video file. See ``docs/explain.md`` and :mod:`.rollout` for the definitions.
"""
from .api import Explanation, check_step, explain_clip, save_explanation
from .rollout import (
                      Layout,
                      StepMaps,
                      attention_rollout,
                      clip_layout,
                      clip_rollout,
                      record_attention,
                      step_maps,
                      step_matrix,
                      step_records,
)

__all__ = ["Explanation", "explain_clip", "save_explanation", "check_step", "record_attention", "step_matrix",
           "attention_rollout", "clip_layout", "clip_rollout", "step_maps", "step_records", "Layout", "StepMaps"]
