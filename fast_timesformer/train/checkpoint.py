"""Training checkpoints as one safetensors file: model, optimizer state, RNG state, metadata. No pickle.

Layout of the file's tensors::

    model.<name>                      every entry of model.state_dict()
    optim.<param index>.<key>         tensor entries of optimizer.state_dict()["state"] (AdamW: step,
                                      exp_avg, exp_avg_sq)
    rng.torch                         torch.get_rng_state() (uint8)
    rng.cuda.<device>                 torch.cuda.get_rng_state(device) for each visible device
    scaler.<key>                      tensor entries of a GradScaler's state (fp16 AMP only)

and the safetensors metadata holds one JSON string under ``"fast_timesformer"`` with everything else:
format version, the training config, step/epoch, the optimizer's ``param_groups`` and non-tensor state
values, scheduler description, class names, the scaler's scalars, free-form ``extra``.

Writes are atomic: the file is written to a temporary name in the same folder (with the permissions any
new file gets under the umask), flushed to disk, and moved over the destination with ``os.replace`` - a
crash or a full disk leaves the old checkpoint or the new one, never half of one; a failed write
(``OSError``, or safetensors' own ``SafetensorError``) raises
:class:`~fast_timesformer.errors.WriteFailedError` naming the file. Weights that are not finite are never
written, and a file holding them is never loaded (:class:`~fast_timesformer.errors.NonFiniteError`).
``previous=`` keeps the file being replaced under another name (the trainer keeps ``previous.safetensors``
next to ``last.safetensors``).

Reading a file that is not a whole checkpoint (truncated, garbage, empty) raises
:class:`~fast_timesformer.errors.CorruptCheckpointError` with one sentence; nothing is ever unpickled.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import CheckpointMismatchLineError, CorruptCheckpointError, NonFiniteError, WriteFailedError
from ..finite import describe, nonfinite_entries
from ..outputs import write_cause

FORMAT = "fast_timesformer.train/1"
META_KEY = "fast_timesformer"

__all__ = ["save_checkpoint", "load_checkpoint", "read_metadata", "flatten_optimizer_state",
           "unflatten_optimizer_state", "rng_state", "set_rng_state", "atomic_save_file", "check_checkpoint",
           "FORMAT"]


# ---- optimizer ------------------------------------------------------------------------------------
def flatten_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (``optim.<param>.<key>``) and JSON-able metadata."""
    tensors, scalars = {}, {}
    for pid, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value
            elif isinstance(value, (int, float, bool, str)) or value is None:
                scalars.setdefault(str(pid), {})[key] = value
            else:
                raise TypeError(f"optimizer state {pid}.{key} is a {type(value).__name__}, which the "
                                "checkpoint cannot store (tensors and plain scalars only)")
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Inverse of :func:`flatten_optimizer_state`."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, entry in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


# ---- RNG ------------------------------------------------------------------------------------------
def rng_state() -> dict[str, torch.Tensor]:
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i in range(torch.cuda.device_count()):
            out[f"rng.cuda.{i}"] = torch.cuda.get_rng_state(i)
    return out


def set_rng_state(tensors: dict[str, torch.Tensor]) -> None:
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"].cpu())
    for name, value in tensors.items():
        if name.startswith("rng.cuda.") and torch.cuda.is_available():
            dev = int(name.rsplit(".", 1)[1])
            if dev < torch.cuda.device_count():
                torch.cuda.set_rng_state(value.cpu(), dev)


# ---- file -----------------------------------------------------------------------------------------
def _storable(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors wants contiguous CPU tensors that share no memory: copy only where needed."""
    out, seen = {}, set()
    for name, t in tensors.items():
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        if not t.is_contiguous() or (ptr is not None and ptr in seen):
            t = t.contiguous().clone()
        elif ptr is not None and t.numel() != t.untyped_storage().nbytes() // t.element_size():
            t = t.clone()  # a view into a larger storage: safetensors refuses those
        if ptr is not None:
            seen.add(ptr)
        out[name] = t
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save_file(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str], *,
                     previous: Optional[str] = None) -> None:
    """``safetensors.torch.save_file`` to a temporary file next to ``path``, fsync, then ``os.replace``.

    ``previous``: if given and ``path`` exists, the file being replaced is moved there first (so the
    folder holds the new file and the one before it). An ``OSError`` while writing (disk full, ...)
    removes the temporary file, leaves ``path`` and ``previous`` as they were, and raises
    :class:`~fast_timesformer.errors.WriteFailedError` naming ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    except OSError as e:
        raise WriteFailedError(path, f"cannot write a checkpoint here ({write_cause(e)})") from None
    os.close(fd)
    try:
        save_file(_storable(tensors), tmp, metadata=metadata)
        # mkstemp makes 0600 (and save_file writes a new file): give it the permissions of any new file
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if previous is not None and os.path.exists(path):
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, (OSError, SafetensorError)):  # safetensors reports a full disk as SafetensorError
            kept = "the checkpoint there before is unchanged" if os.path.exists(path) else "nothing was written"
            raise WriteFailedError(path, f"could not write the checkpoint ({write_cause(e)}); {kept}") from None
        raise
    try:  # make the rename itself durable where the OS allows it
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def save_checkpoint(path: str, *, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                    scaler=None, step: int = 0, epoch: int = 0, config: Optional[dict] = None,
                    classes: Optional[list] = None, scheduler: Optional[dict] = None,
                    extra: Optional[dict] = None, save_rng: bool = True, previous: Optional[str] = None) -> None:
    """Write a checkpoint atomically (see the module docstring for the layout; ``previous``: see
    :func:`atomic_save_file`). Model weights with a NaN or an infinity raise
    :class:`~fast_timesformer.errors.NonFiniteError` and nothing is written: such a file is never saved."""
    state = model.state_dict()
    bad = nonfinite_entries(state)
    if bad:
        raise NonFiniteError(path, [n for n, _ in bad], f"{path}: not written: the model's weights are not finite "
                                                        f"({describe(bad)})")
    tensors = {f"model.{k}": v for k, v in state.items()}
    meta: dict[str, Any] = {"format": FORMAT, "step": step, "epoch": epoch, "config": config or {},
                            "classes": classes, "scheduler": scheduler, "extra": extra or {}}
    if optimizer is not None:
        opt_tensors, meta["optimizer"] = flatten_optimizer_state(optimizer.state_dict())
        tensors.update(opt_tensors)
    if scaler is not None and scaler.is_enabled():
        sc = scaler.state_dict()
        meta["scaler"] = {k: v for k, v in sc.items() if not isinstance(v, torch.Tensor)}
        tensors.update({f"scaler.{k}": v for k, v in sc.items() if isinstance(v, torch.Tensor)})
    if save_rng:
        tensors.update(rng_state())
    atomic_save_file(tensors, path, {META_KEY: json.dumps(meta)}, previous=previous)


def _unreadable(path: str, e: Exception) -> CorruptCheckpointError:
    """The safetensors library's complaint about a file, as one true sentence."""
    msg = str(e)
    size = os.path.getsize(path) if os.path.exists(path) else 0
    if size == 0:
        return CorruptCheckpointError(path, "the checkpoint file is empty (0 bytes)")
    if "not fully covered" in msg or "incomplete" in msg:
        return CorruptCheckpointError(path, f"the checkpoint is truncated: its header describes more data than "
                                            f"the file's {size} bytes")
    if "invalid header length" in msg:
        return CorruptCheckpointError(path, f"the checkpoint is truncated or damaged: its header is said to be "
                                            f"longer than the file's {size} bytes")
    return CorruptCheckpointError(path, f"not a readable safetensors checkpoint: damaged, or not a file written "
                                        f"by fast-timesformer train (safetensors: {msg})")


def read_metadata(path: str) -> dict:
    """The JSON metadata of a checkpoint, without loading its tensors.

    A file that is not a whole safetensors file raises :class:`CorruptCheckpointError`; a safetensors
    file without our metadata raises ``ValueError``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(path, framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except OSError:
        raise
    except Exception as e:  # safetensors_rust.SafetensorError: header too large / too small / truncated
        raise _unreadable(path, e) from None
    if raw is None:
        raise ValueError(f"{path} is a safetensors file but not a fast_timesformer training checkpoint "
                         f"(no {META_KEY!r} metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CorruptCheckpointError(path, f"the checkpoint's metadata is damaged (not JSON: {e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{path}: unsupported checkpoint format {found!r} (expected {FORMAT})")
    return meta


def check_checkpoint(path: str) -> Optional[str]:
    """``None`` if ``path`` reads as a whole training checkpoint (header, metadata, every tensor's extent
    inside the file), else the problem in words. Damage inside the tensor bytes is not detectable."""
    try:
        read_metadata(path)
    except (CorruptCheckpointError, ValueError, FileNotFoundError) as e:
        return str(getattr(e, "problem", None) or e)
    return None


def load_checkpoint(path: str, *, model: Optional[torch.nn.Module] = None,
                    optimizer: Optional[torch.optim.Optimizer] = None, scaler=None,
                    restore_rng: bool = False, map_location: str | torch.device = "cpu",
                    strict: bool = True) -> dict:
    """Load what is asked for from a checkpoint and return its metadata.

    The model is loaded strictly by default: a missing or unexpected key raises, naming the keys. Model
    weights with a NaN or an infinity raise :class:`~fast_timesformer.errors.NonFiniteError` naming the file
    (nothing is loaded): neither resume nor predict runs on them.
    """
    meta = read_metadata(path)
    groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "optim": {}, "rng": {}, "scaler": {}}
    try:
        with safe_open(path, framework="pt", device=str(map_location)) as f:
            for name in f.keys():
                head, rest = name.split(".", 1)
                if head == "model" and model is None or head == "optim" and optimizer is None:
                    continue
                groups.setdefault(head, {})[rest if head in ("model", "scaler") else name] = f.get_tensor(name)
    except OSError:
        raise
    except Exception as e:
        raise _unreadable(path, e) from None
    if model is not None:
        bad = nonfinite_entries(groups["model"])
        if bad:
            raise NonFiniteError(path, [n for n, _ in bad], f"{path}: the checkpoint's weights are not finite "
                                                            f"({describe(bad)}); it cannot be used")
        own = model.state_dict()
        shapes = [f"{k} is {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model"
                  for k, v in groups["model"].items() if k in own and own[k].shape != v.shape]
        if shapes:  # torch raises a multi-line RuntimeError for these even when strict=False
            raise CheckpointMismatchLineError(f"{path}: the checkpoint does not fit the model: "
                                              + "; ".join(shapes[:4]) + (" ..." if len(shapes) > 4 else ""))
        result = model.load_state_dict(groups["model"], strict=False)
        problems = []
        if result.missing_keys:
            problems.append(f"missing {result.missing_keys[:8]}")
        if result.unexpected_keys:
            problems.append(f"unexpected {result.unexpected_keys[:8]}")
        if problems and strict:
            raise CheckpointMismatchLineError(f"{path}: the checkpoint does not fit the model: "
                                              + "; ".join(problems))
    if optimizer is not None:
        if "optimizer" not in meta:
            raise ValueError(f"checkpoint {path} has no optimizer state")
        optimizer.load_state_dict(unflatten_optimizer_state(groups["optim"], meta["optimizer"]))
    if scaler is not None and "scaler" in meta:
        scaler.load_state_dict({**meta["scaler"], **groups["scaler"]})
    if restore_rng:
        set_rng_state({k: v for k, v in groups["rng"].items()})
    return meta
