"""The one check that a device exists on this machine, for the Python API (``device=...``) and the CLI
(``--device ...``), which differ only in how they name the device in the message."""
from __future__ import annotations

from typing import Optional

import torch

from .errors import DeviceUnavailableError
from .errors import first_line as _first_line

__all__ = ["check_device"]


def check_device(device, label: Optional[str] = None, hint: str = "") -> torch.device:
    """``torch.device(device)`` if this machine has it, else :class:`~fast_timesformer.errors.DeviceUnavailableError`
    naming it (an unknown name, CUDA without a CUDA device, ``cuda:3`` on a 1-GPU machine, ...).

    ``label``: how the message names the device (default ``device='cuda'``; the CLI says ``--device cuda``);
    ``hint``: appended to the no-CUDA message (the CLI's way out)."""
    label = f"device={device!r}" if label is None else label
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise DeviceUnavailableError(f"{label} is not a device name torch knows ({_first_line(e)})") from None
    if dev.type in ("cpu", "meta"):
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else "torch.cuda.is_available() is False: no GPU or driver found")
            raise DeviceUnavailableError(f"{label}: no CUDA device on this machine ({why}){hint}")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceUnavailableError(f"{label}: this machine has {count} CUDA device(s), "
                                         f"cuda:0 to cuda:{count - 1}")
        return dev
    try:
        torch.empty(0, device=dev)
    except Exception as e:  # noqa: BLE001 - mps, xpu, ...: whatever torch says about it
        raise DeviceUnavailableError(f"{label} is not available on this machine ({_first_line(e)})") from None
    return dev
