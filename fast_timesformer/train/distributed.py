"""Multi-process training under ``torchrun``: process-group set-up and the few collectives we use.

``torchrun --nproc_per_node=N -m fast_timesformer.cli train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and ``MASTER_ADDR/PORT``; :func:`init_distributed` reads them and starts a process group
with NCCL on the GPU and gloo on the CPU. Without those variables everything is a no-op and the run
is an ordinary single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..devices import check_device

__all__ = ["DistInfo", "init_distributed", "cleanup_distributed", "all_reduce_sum", "all_reduce_max", "barrier",
           "resolve_device", "unused_parameters", "wrap_ddp"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Start the process group if launched by torchrun (``WORLD_SIZE`` > 1) and pick the device.

    ``device``: "auto" (this process's GPU if any, else CPU), "cpu" or "cuda".
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {device!r}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        resolve_device("cuda")  # raises DeviceUnavailableError, in words, where there is no CUDA device
        torch.cuda.set_device(local % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    if world <= 1:
        return DistInfo(device=dev)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                **({"device_id": dev} if use_cuda else {}))
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev, backend=backend)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` (CUDA if present, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as a ``torch.device``;
    a CUDA device this machine does not have raises :class:`~fast_timesformer.errors.DeviceUnavailableError`
    and anything else that is not a device name a ``ValueError``."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return check_device(dev, label=f"--device {device}", hint="; use --device cpu")


def cleanup_distributed(sync: bool = True) -> None:
    """Tear the process group down. With ``sync`` (the normal end of a run) every process first waits
    for the others: a process that destroys its group while a peer is still in a collective makes the
    peer's gloo threads abort the interpreter. After an error, no wait (the peers may never arrive)."""
    if dist.is_available() and dist.is_initialized():
        if sync:
            dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a list of numbers over processes (float64 on the process's device)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()



def all_reduce_max(values: list[float], info: DistInfo) -> list[float]:
    """Elementwise maximum of a list of numbers over processes (so that every process agrees)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def unused_parameters(model: torch.nn.Module, *inputs) -> list[str]:
    """Names of the trainable parameters that a forward pass of ``model(*inputs)`` leaves out of the
    autograd graph (they would get no gradient in a step): e.g. the state of a backend a layer is not
    using now, or a scheme's modules its forward never calls. One forward, in eval mode (no dropout, no
    stochastic depth, no random draws), no backward; the model's mode is restored."""
    params = {p: n for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        return []
    was = model.training
    model.eval()
    try:
        with torch.enable_grad():
            out = model(*inputs)
        outs = [t for t in (out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple))
                            else [out]) if isinstance(t, torch.Tensor) and t.grad_fn is not None]
        seen, used, stack = set(), set(), [t.grad_fn for t in outs]
        while stack:  # the traversal DDP's find_unused_parameters would repeat every step
            fn = stack.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            var = getattr(fn, "variable", None)
            if var is not None:
                used.add(var)
            stack.extend(nxt for nxt, _ in fn.next_functions)
    finally:
        model.train(was)
    return [n for p, n in params.items() if p not in used]


def wrap_ddp(model: torch.nn.Module, device: torch.device, *sample) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` with ``find_unused_parameters`` only where a forward on
    ``sample`` (a small batch of real inputs, e.g. one clip) leaves a trainable parameter unused: the
    option makes DDP traverse the autograd graph after every forward. Without a sample it stays on
    (always correct, slower)."""
    find_unused = bool(unused_parameters(model, *sample)) if sample else True
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device] if device.type == "cuda" else None, find_unused_parameters=find_unused)
