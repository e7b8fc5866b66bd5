"""Activation memory in training: what a block keeps for backward, a declared model option.

``TimeSformer(activation_memory=...)`` and ``GenerativeTimeSformer(activation_memory=...)`` set it for every
block; ``model.set_activation_memory(mode)`` switches it on a built model (``set_grad_checkpointing``, timm's
name, maps onto ``"checkpoint"``). Rows of width ``dim`` kept per token by a ViT-B divided space-time block
(official CLS), measured in ``tests/test_activation_memory.py``:

============== ====================================================================================== =====
mode           kept for backward / recomputed in backward                                             rows
============== ====================================================================================== =====
``full``       everything autograd saves (the norms' and GELU's outputs, both layouts of the           24
               attention output, ...); nothing recomputed
``selective``  each step's input, q/k/v, the space step's attention output, temporal_fc's input,      15
(default)      the MLP's input and fc1's output; recomputed: the norms, the
               GELU, the dropout masks between, the layout copies, and the time step's attention
               (8-frame sequences: about 1% of a block's FLOPs)
``checkpoint`` the block's input; the whole block runs again in backward                                1
============== ====================================================================================== =====

``selective`` is :func:`torch.utils.checkpoint.checkpoint` (non-reentrant) around small pieces that each end
with a matrix product: ``qkv(norm(x))``, ``proj(attention(q, k, v))`` along time, ``fc1(norm(x))`` and
``fc2(drop(gelu(h)))``. A piece keeps only its inputs; in backward torch runs it again and stops as soon as
the tensors backward needs are back, i.e. before the piece's final matrix product: no GEMM runs twice. The
recomputed ops are the same ATen kernels, so gradients equal the plain path's (tested in float64); dropout
inside a piece gets the same mask again (torch restores the RNG state).

Where a mode cannot apply to a block, the block runs the mode :data:`CONDITIONS` names instead, warns once
(naming the block and the reason), and :func:`record` shows the mode in effect. Every condition is listed in
:data:`CONDITIONS` and nowhere else.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ._names import unknown_name_error

__all__ = ["MODES", "DEFAULT", "CONDITIONS", "Condition", "MemoryBlock", "recomputed", "set_mode", "record",
           "check_mode"]

#: mode -> what a block keeps for backward (the module docstring has the table)
MODES = {
    "full": "everything autograd saves; nothing recomputed",
    "selective": "step inputs, q/k/v, the space attention output, fc1's output; norms, GELU, dropout masks, "
                 "layout copies and the time attention recomputed",
    "checkpoint": "the block's input; the whole block recomputed in backward",
}
DEFAULT = "selective"


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise unknown_name_error("activation_memory mode", mode, tuple(MODES))
    return mode


@dataclass(frozen=True)
class Condition:
    """A reason a mode cannot apply to a block: ``reason(block)`` says why in words (None: it can apply);
    then the modes in ``stops`` run as ``instead``."""

    name: str
    stops: tuple
    instead: str
    reason: Callable[["MemoryBlock"], Optional[str]]
    description: str


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")


def _hooks(block: nn.Module) -> Optional[str]:
    g = nn.modules.module
    if any(getattr(g, name, None) for name in _GLOBAL_HOOKS):
        return "a global module hook is registered (it would be called again when backward recomputes)"
    hooked = [name or type(block).__name__ for name, m in block.named_modules()
              if any(getattr(m, d, None) for d in _HOOK_DICTS)]
    if hooked:
        return f"module(s) {', '.join(hooked[:3])} carry hooks (they would be called again when backward recomputes)"
    return None


def _stateful_attention(block: nn.Module) -> Optional[str]:
    # the core each attention layer runs now (a layer keeps the cores of backends it ran before, unused)
    names = [f"{name}.cores.{m.backend_name}" for name, m in block.named_modules()
             if isinstance(getattr(m, "cores", None), nn.ModuleDict) and m.backend_name in m.cores
             and not m.cores[m.backend_name].recomputable]
    if names:
        return (f"attention core(s) {', '.join(names[:3])} change their state per call (performer's "
                "feature_redraw_interval, recording's records): a recomputed call would change it again")
    return None


#: Every condition under which a mode does not apply, checked in this order at each training forward.
CONDITIONS = (
    Condition("hooks", ("selective", "checkpoint"), "full", _hooks,
              "a forward/backward hook on a module of the block, or a global module hook: recomputing a "
              "piece would call the hook again in backward"),
    Condition("stateful attention", ("selective", "checkpoint"), "full", _stateful_attention,
              "an attention core that changes its state per call (AttentionCore.recomputable False: performer "
              "with feature_redraw_interval, recording): recomputing the attention would change it again"),
)


def recomputed(fn: Callable, *args):
    """``fn(*args)``, keeping ``args`` for backward instead of what fn's ops would save: backward runs fn's ops
    again (:func:`torch.utils.checkpoint.checkpoint`, non-reentrant, which stops as soon as backward has
    what it needs: a matrix product ending fn does not run again)."""
    return checkpoint(fn, *args, use_reentrant=False)


def linear_of_norm(linear: nn.Module, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return linear(norm(x))


def linear_of_rows(linear: nn.Module, attend: Callable, q, k, v) -> torch.Tensor:
    return linear(attend(q, k, v).flatten(2))


def _fc1_of_norm(fc1, norm, x):
    return fc1(x if norm is None else norm(x))


def _fc2_of_act(act, drop, fc2, h):
    return fc2(drop(act(h)))


def mlp_branch(x: torch.Tensor, norm: Optional[nn.Module], fc1: nn.Module, act: nn.Module, drop1: nn.Module,
               fc2: nn.Module, drop2: nn.Module, recompute: bool) -> torch.Tensor:
    """``drop2(fc2(drop1(act(fc1(norm(x))))))``; ``recompute``: two pieces, keeping x and fc1's output."""
    if recompute and torch.is_grad_enabled():
        h = recomputed(_fc1_of_norm, fc1, norm, x)
        return drop2(recomputed(_fc2_of_act, act, drop1, fc2, h))
    return drop2(_fc2_of_act(act, drop1, fc2, _fc1_of_norm(fc1, norm, x)))


class MemoryBlock(nn.Module):
    """A block whose ``forward`` runs its :attr:`activation_memory` mode: subclasses implement
    ``_forward(*args, recompute)`` (``recompute``: the selective pieces)."""

    activation_memory: str = DEFAULT
    #: the block's name in its model (for warnings and the record), set by :func:`set_mode`
    block_name: str = ""

    def in_effect(self) -> tuple:
        """(the mode this block runs now, the reason where that is not the mode asked for)."""
        mode, why = self.activation_memory, None
        for c in CONDITIONS:
            if mode in c.stops:
                reason = c.reason(self)
                if reason:
                    mode, why = c.instead, reason
        return mode, why

    def forward(self, *args):
        if not torch.is_grad_enabled():  # nothing is kept for backward in any mode
            return self._forward(*args, False)
        mode, why = self.in_effect()
        if why is not None:
            key = (self.activation_memory, why)
            warned = self.__dict__.setdefault("_memory_warned", set())
            if key not in warned:
                warned.add(key)
                warnings.warn(f"{self.block_name or type(self).__name__}: activation_memory="
                              f"{self.activation_memory!r} cannot apply: {why}; it runs {mode!r}", stacklevel=2)
        if mode == "checkpoint":
            return recomputed(self._forward, *args, False)
        return self._forward(*args, mode == "selective")


def set_mode(model: nn.Module, mode: str) -> nn.Module:
    """Set every block of ``model`` to ``mode`` (and tell each block its name)."""
    check_mode(mode)
    for name, m in model.named_modules():
        if isinstance(m, MemoryBlock):
            m.activation_memory, m.block_name = mode, name
    return model


def record(model: nn.Module) -> dict:
    """{block name: mode in effect} (a differing mode with its reason: ``"full (hooks: ...)"``), for run
    metadata and checkpoint configs."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, MemoryBlock):
            mode, why = m.in_effect()
            out[name] = mode if why is None else f"{mode} ({why})"
    return out
