"""The one check for non-finite numbers: NaN or infinity in weights, logits, a loss or gradients.

A NaN never passes silently: ``predict`` refuses a checkpoint or logits that are not finite, training
stops at the first non-finite loss or gradient, no checkpoint with non-finite weights is written, and a
resume from one is refused. All of them call :func:`check_finite`; a user can call it too::

    from fast_timesformer import check_finite
    check_finite(model, "my model")            # parameters and floating-point buffers
    check_finite(logits, "the logits")         # one tensor
    check_finite({"a": t1, "b": t2}, "batch")  # named tensors

It raises :class:`~fast_timesformer.errors.NonFiniteError` (a ``ValueError``) naming ``what`` and the
entries that hold a NaN or an infinity; integer and boolean tensors are always finite.
"""
from __future__ import annotations

from typing import Mapping, Union

import torch
from torch import nn

from .errors import NonFiniteError

__all__ = ["check_finite", "nonfinite_entries"]

_SHOWN = 3  # entries named in the message; the count says how many more


def _named(obj) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return {"": obj}
    if isinstance(obj, nn.Module):
        return obj.state_dict(keep_vars=False)
    if isinstance(obj, Mapping):
        return obj
    raise TypeError(f"check_finite takes a tensor, a module or a mapping name -> tensor, got {type(obj).__name__}")


def nonfinite_entries(obj) -> list[tuple[str, str]]:
    """(name, "NaN" or "inf") for every entry of ``obj`` (see :func:`check_finite`) that is not finite;
    ``None`` entries (a parameter without a gradient) are skipped."""
    bad = []
    for name, t in _named(obj).items():
        if t is None or not isinstance(t, torch.Tensor) or not (t.is_floating_point() or t.is_complex()):
            continue
        t = t.detach()
        if not bool(torch.isfinite(t).all()):
            bad.append((name, "NaN" if bool(torch.isnan(t).any()) else "inf"))
    return bad


def describe(bad: list[tuple[str, str]]) -> str:
    """``"NaN in head.weight, inf in norm.bias and 3 more"`` (a lone unnamed tensor: ``"NaN"``)."""
    parts = [kind if not name else f"{kind} in {name}" for name, kind in bad[:_SHOWN]]
    more = f" and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
    return ", ".join(parts) + more


def check_finite(obj: Union[torch.Tensor, nn.Module, Mapping[str, torch.Tensor]], what: str = "the value") -> None:
    """Raise :class:`~fast_timesformer.errors.NonFiniteError` if ``obj`` holds a NaN or an infinity.

    ``obj``: a tensor, a module (its parameters and buffers) or a mapping name -> tensor (``None`` values
    skipped). ``what`` names it in the message: ``"<what> is not finite: NaN in head.weight"``."""
    bad = nonfinite_entries(obj)
    if bad:
        raise NonFiniteError(what, [n for n, _ in bad], f"{what} is not finite: {describe(bad)}")
