"""``neighborhood``: 3-D neighbourhood attention (NATTEN's definition), a scheme defined by a mask.

Each patch at (t, y, x) attends to a window of ``window = (wt, wh, ww)`` patches around it: per axis of
size ``L`` with window ``w`` the keys ``start .. start + w - 1`` where ``start = clamp(i - w // 2, 0, L - w)``,
so at a border the window is *shifted* inward, not shrunk, and every query sees exactly ``wt * wh * ww``
patches (the query itself among them). A window at least as large as its axis covers the whole axis (for
``w == L`` this is NATTEN's own limiting case, full attention along the axis); window sizes must be odd
(NATTEN's centred windows, no dilation). The CLS token follows the model's CLS convention: with the
official one (``per_group``, one group here) it attends to every patch and every patch attends to it;
``exclude`` leaves it out.

One attention step per block (``norm1``/``attn``: the parameters of ``joint_space_time``, whatever the
window). The step is joint groups with a :class:`~fast_timesformer.groups.TokenMask`, so it runs on the
backends that take masks (``regular``: SDPA with a boolean mask; ``flex``: a block mask that skips the
blocks outside the windows) and the others refuse with a reason. Its attention costs
``f*n * wt*wh*ww`` query-key pairs per block (:meth:`Scheme.attention_pairs
<fast_timesformer.schemes.Scheme.attention_pairs>`), against ``(f*n)**2`` for joint attention.

This module is the whole scheme: a predicate, a groups builder, the size rules and one registration::

    TimeSformer(..., scheme="neighborhood", scheme_options={"window": (1, 3, 3)})
    fast-timesformer train --scheme neighborhood --scheme-option window=1,3,3
"""
from __future__ import annotations

from .groups import TokenGroups, TokenMask
from .schemes import Scheme, Step, register_scheme

__all__ = ["DEFAULT_WINDOW", "SCHEME", "neighborhood_groups", "in_window", "window_start"]

#: a 3 x 3 x 3 neighbourhood: the smallest centred 3-D window
DEFAULT_WINDOW = (3, 3, 3)
AXES = ("frames", "patch rows", "patch columns")


def window_start(i, size: int, w: int):
    """First position of the window of ``w`` around ``i`` on an axis of ``size`` (shifted at the borders;
    a window of at least the axis covers all of it). Works on ints and tensors."""
    w = min(w, size)
    start = i - w // 2
    if hasattr(start, "clamp"):
        return start.clamp(0, size - w)
    return max(0, min(start, size - w))


def in_window(i, j, size: int, w: int):
    """Whether position ``j`` lies in the window around ``i`` (tensors)."""
    start = window_start(i, size, w)
    return (j >= start) & (j < start + min(w, size))


def neighborhood_predicate(qt, qy, qx, kt, ky, kx, *, frames, rows, cols, window):
    """The :class:`TokenMask` predicate: the key lies in the query's window along t, y and x."""
    wt, wh, ww = window
    return in_window(qt, kt, frames, wt) & in_window(qy, ky, rows, wh) & in_window(qx, kx, cols, ww)


def _window(window) -> tuple:
    if isinstance(window, int) and not isinstance(window, bool):
        return (window,) * 3
    return tuple(window)


def neighborhood_why_not(f, gh, gw, *, window=DEFAULT_WINDOW) -> list:
    """The window must be three positive odd ints (a single int means the same along t, h and w)."""
    try:
        w = _window(window)
    except TypeError:
        w = ()
    if len(w) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in w):
        return [f"window={window!r}: give three ints (frames, patch rows, patch columns), e.g. (1, 3, 3)"]
    return [f"window {name} = {v}: a window size must be a positive odd int (centred on its query, as NATTEN)"
            for name, v in zip(AXES, w) if v < 1 or v % 2 == 0]


def neighborhood_groups(f: int, gh: int, gw: int, *, window=DEFAULT_WINDOW) -> TokenGroups:
    """All f*gh*gw patches as one group, masked to each query's window."""
    mask = TokenMask(neighborhood_predicate, f, gh, gw, (("window", _window(window)),), name="neighborhood window")
    return TokenGroups(group=(), seq=((f * gh * gw, 1),), kind="neighborhood", mask=mask)


SCHEME = register_scheme(Scheme(
    "neighborhood", "NA", (Step("neighborhood", "", neighborhood_groups),),
    why_not=neighborhood_why_not, options=(("window", DEFAULT_WINDOW),),
    description="each patch attends to a (wt, wh, ww) window around it, shifted at the borders (NATTEN); "
                "CLS per the model's convention"))
