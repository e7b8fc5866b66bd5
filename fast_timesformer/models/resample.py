"""Resampling of learned position and time embeddings to another patch grid or frame count.

A TimeSformer learns one position embedding per patch of a ``h x w`` grid (plus one for the CLS token)
and one time embedding per frame. To run a model at another resolution or frame count, those tables
are resampled:

* ``resample_pos_embed``: the patch rows are put back on their 2-D grid and resized with bicubic
  interpolation; prefix tokens (CLS) are set aside and kept as they are. The official code instead
  resizes the *flattened* grid with 1-D nearest interpolation, which mixes rows of the grid (a patch
  at the end of one row inherits the embedding of the start of the next row).
* ``resample_time_embed``: linear interpolation along time.

Both compute in float32 and cast back to the input dtype, return the input unchanged when the size
already matches, and are differentiable (the model calls them in ``forward`` on its parameters).

Equivalent PyTorch code, for a CLS token and a square ``s x s`` grid resized to ``h x w``::

    cls, grid = pos_embed[:, :1], pos_embed[:, 1:]
    grid = grid.reshape(1, s, s, D).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
    pos_embed = torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, h * w, D).to(cls.dtype)], dim=1)
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = ["resample_pos_embed", "resample_time_embed", "to_hw", "grid_size"]

HW = Union[int, Sequence[int]]


def to_hw(size: HW, name: str = "size") -> Tuple[int, int]:
    """``7`` -> ``(7, 7)``; ``(7, 9)`` -> ``(7, 9)``; anything else raises naming ``name``."""
    if isinstance(size, bool):
        raise TypeError(f"{name} must be an int or a pair (h, w), got {size!r}")
    if isinstance(size, int):
        hw = (size, size)
    else:
        try:
            hw = tuple(int(s) for s in size)
        except TypeError:
            raise TypeError(f"{name} must be an int or a pair (h, w), got {size!r}") from None
        if len(hw) != 2 or any(h != s for h, s in zip(hw, size)):
            raise ValueError(f"{name} must be an int or a pair of ints (h, w), got {size!r}")
    if hw[0] < 1 or hw[1] < 1:
        raise ValueError(f"{name} must be positive, got {hw}")
    return hw


def grid_size(num_patches: int, old_hw: Optional[HW] = None) -> Tuple[int, int]:
    """The (h, w) grid of ``num_patches`` rows: ``old_hw`` if given (checked), else the square root."""
    if old_hw is not None:
        hw = to_hw(old_hw, "old_hw")
        if hw[0] * hw[1] != num_patches:
            raise ValueError(f"old_hw={hw} holds {hw[0] * hw[1]} patches, but the embedding has "
                             f"{num_patches} patch rows")
        return hw
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"the embedding has {num_patches} patch rows, which is not a square grid: pass "
                         "old_hw=(h, w) to say how the patches are laid out")
    return side, side


def resample_pos_embed(pos_embed: torch.Tensor, new_hw: HW, old_hw: Optional[HW] = None,
                       num_prefix_tokens: int = 1, *, mode: str = "bicubic",
                       antialias: bool = False) -> torch.Tensor:
    """Resize a position embedding ``(1, prefix + h*w, D)`` to ``(1, prefix + H*W, D)``.

    ``new_hw``/``old_hw``: an int (square) or ``(h, w)``; ``old_hw`` defaults to the square root of the
    number of patch rows. Patch rows are row-major over the grid (index ``r * w + c``). The first
    ``num_prefix_tokens`` rows (CLS) are copied unchanged. Interpolation (``mode``, bicubic by
    default; ``align_corners=False``) runs in float32; the result has the input's dtype. When the
    grid already has the requested size the input itself is returned.
    """
    if not isinstance(pos_embed, torch.Tensor) or pos_embed.ndim != 3:
        shape = tuple(pos_embed.shape) if isinstance(pos_embed, torch.Tensor) else type(pos_embed).__name__
        raise ValueError(f"pos_embed must be a tensor (batch, prefix + patches, dim), got {shape}")
    if not 0 <= num_prefix_tokens <= pos_embed.shape[1]:
        raise ValueError(f"num_prefix_tokens={num_prefix_tokens} does not fit a pos_embed with "
                         f"{pos_embed.shape[1]} rows")
    new_hw = to_hw(new_hw, "new_hw")
    old_hw = grid_size(pos_embed.shape[1] - num_prefix_tokens, old_hw)
    if new_hw == old_hw:
        return pos_embed
    if not pos_embed.is_floating_point():
        raise TypeError(f"pos_embed must be a floating-point tensor, got {pos_embed.dtype}")
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    b, _, d = grid.shape
    grid = grid.reshape(b, old_hw[0], old_hw[1], d).permute(0, 3, 1, 2).float()  # (b, d, h, w)
    align = False if mode in ("linear", "bilinear", "bicubic", "trilinear") else None
    grid = F.interpolate(grid, size=new_hw, mode=mode, align_corners=align, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(b, new_hw[0] * new_hw[1], d).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def resample_time_embed(time_embed: torch.Tensor, new_t: int) -> torch.Tensor:
    """Resize a time embedding ``(1, T, D)`` to ``(1, new_t, D)`` by linear interpolation along time.

    Frames are taken as cells of equal length over the clip (``align_corners=False``): frame ``j`` of
    the new table sits at time ``(j + 0.5) * T / new_t - 0.5`` of the old one, clamped to the ends, so
    a clip sampled at twice the rate reads the embedding where its frames lie. Computed in float32,
    cast back; the input itself is returned when ``new_t == T``.
    """
    if not isinstance(time_embed, torch.Tensor) or time_embed.ndim != 3:
        shape = tuple(time_embed.shape) if isinstance(time_embed, torch.Tensor) else type(time_embed).__name__
        raise ValueError(f"time_embed must be a tensor (batch, frames, dim), got {shape}")
    if isinstance(new_t, bool) or not isinstance(new_t, int) or new_t < 1:
        raise ValueError(f"new_t must be a positive int, got {new_t!r}")
    if new_t == time_embed.shape[1]:
        return time_embed
    if not time_embed.is_floating_point():
        raise TypeError(f"time_embed must be a floating-point tensor, got {time_embed.dtype}")
    x = time_embed.transpose(1, 2).float()  # (b, d, T)
    x = F.interpolate(x, size=new_t, mode="linear", align_corners=False)
    return x.transpose(1, 2).to(time_embed.dtype)
