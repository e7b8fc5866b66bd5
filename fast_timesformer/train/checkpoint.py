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

Writes are atomic: the file is written to a temporary name in the same folder, flushed to disk, and
moved over the destination with ``os.replace`` - a crash leaves the old checkpoint or the new one,
never half of one.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "fast_timesformer.train/1"
META_KEY = "fast_timesformer"

__all__ = ["save_checkpoint", "load_checkpoint", "read_metadata", "flatten_optimizer_state",
           "unflatten_optimizer_state", "rng_state", "set_rng_state", "atomic_save_file", "FORMAT"]


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


def atomic_save_file(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file`` to a temporary file next to ``path``, fsync, then ``os.replace``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        save_file(_storable(tensors), tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
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
                    extra: Optional[dict] = None, save_rng: bool = True) -> None:
    """Write a checkpoint atomically (see the module docstring for the layout)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
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
    atomic_save_file(tensors, path, {META_KEY: json.dumps(meta)})


def read_metadata(path: str) -> dict:
    """The JSON metadata of a checkpoint, without loading its tensors."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    with safe_open(path, framework="pt") as f:
        raw = (f.metadata() or {}).get(META_KEY)
    if raw is None:
        raise ValueError(f"{path} is a safetensors file but not a fast_timesformer training checkpoint "
                         f"(no {META_KEY!r} metadata)")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported checkpoint format {meta.get('format')!r} (expected {FORMAT})")
    return meta


def load_checkpoint(path: str, *, model: Optional[torch.nn.Module] = None,
                    optimizer: Optional[torch.optim.Optimizer] = None, scaler=None,
                    restore_rng: bool = False, map_location: str | torch.device = "cpu",
                    strict: bool = True) -> dict:
    """Load what is asked for from a checkpoint and return its metadata.

    The model is loaded strictly by default: a missing or unexpected key raises, naming the keys.
    """
    meta = read_metadata(path)
    groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "optim": {}, "rng": {}, "scaler": {}}
    with safe_open(path, framework="pt", device=str(map_location)) as f:
        for name in f.keys():
            head, rest = name.split(".", 1)
            if head == "model" and model is None or head == "optim" and optimizer is None:
                continue
            groups.setdefault(head, {})[rest if head in ("model", "scaler") else name] = f.get_tensor(name)
    if model is not None:
        result = model.load_state_dict(groups["model"], strict=False)
        problems = []
        if result.missing_keys:
            problems.append(f"missing {result.missing_keys[:8]}")
        if result.unexpected_keys:
            problems.append(f"unexpected {result.unexpected_keys[:8]}")
        if problems and strict:
            raise RuntimeError(f"checkpoint {path} does not fit the model: " + "; ".join(problems))
    if optimizer is not None:
        if "optimizer" not in meta:
            raise ValueError(f"checkpoint {path} has no optimizer state")
        optimizer.load_state_dict(unflatten_optimizer_state(groups["optim"], meta["optimizer"]))
    if scaler is not None and "scaler" in meta:
        scaler.load_state_dict({**meta["scaler"], **groups["scaler"]})
    if restore_rng:
        set_rng_state({k: v for k, v in groups["rng"].items()})
    return meta
