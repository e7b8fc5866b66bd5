"""TimeSformer (Bertasius et al., 2021) with the five space-time schemes and pluggable attention backends.

Semantics follow the official code (facebookresearch/TimeSformer, ``timesformer/models/vit.py``):
pre-norm residual blocks, LayerNorm eps 1e-6, stochastic depth rising linearly from 0 to ``drop_path``
over the blocks, ``pos_embed`` added per frame to ``[CLS] + patches``, ``time_embed`` added to the patches
only, the CLS output through the final ``norm`` into the ``head``. With ``cls_mode="official"`` (default):

- ``divided_space_time``: the CLS token is left out of temporal attention (neither key nor query; it is
  not changed by the temporal step); in spatial attention every frame gets a copy of it, and the copies'
  outputs are averaged. The temporal output goes through ``temporal_fc`` (zero-initialised), then is
  added to the patches.
- ``space_only``: each frame is its own sequence ``[CLS] + its n patches`` through ALL blocks (so there
  are f CLS copies that evolve separately); at the end all tokens are averaged over the frames, then the
  final norm, then the CLS goes to the head. The official model has no ``time_embed`` for this scheme.
- ``joint_space_time``: one attention over ``[CLS] + all f*n patches``.
- ``sparse_local_global`` and ``axial`` (no official code exists): the same rule, applied per step:
  attention along time leaves the CLS out; every other step gives each group a CLS copy and averages.

Other ``cls_mode`` values: ``"global"`` (lucidrains' convention: in every step the CLS attends to all
tokens and is a key of every group) and ``"per_group"`` (a CLS copy per group, averaged, in every step,
time included). For ``space_only``, ``"per_group"`` keeps one CLS per clip and averages its per-frame
copies in every block (cheaper; not the official definition).

Patch tokens are stored frame-major (``index = t * n + p``); the official code stores them patch-major,
which gives the same outputs. Sub-module names equal the official checkpoint's, so an official state dict
maps 1:1 after stripping ``model.``.
"""
from __future__ import annotations

from typing import Mapping, Optional, Union

import torch
from torch import nn

from .. import activation_memory as memory
from .._names import unknown_name_error
from ..activation_memory import MemoryBlock, mlp_branch
from ..attention import (
    MODEL_CLS_MODES,
    DividedAttention,
    check_model_options,
    check_rate,
    set_backend,
    step_cls_mode,
)
from ..backends.spec import DEFAULT_BACKEND, parse_backend_spec
from ..groups import TokenGroups
from ..schemes import Scheme, get_scheme
from . import checkpoint as checkpoint_io
from .layers import init_linear_and_norm_
from .resample import to_hw
from .timesformer_layouts import TIMESFORMER_LAYOUT

__all__ = ["TimeSformer", "Block", "Mlp", "PatchEmbed", "DropPath", "count_parameters"]

LN_EPS = 1e-6


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample (scaled by 1/keep in training)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = check_rate("drop_path", p)

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        return x * x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep).div_(keep)

    def extra_repr(self):
        return f"p={self.p:.3f}"


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout (the official names)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, norm: Optional[nn.Module] = None, recompute: bool = False) -> torch.Tensor:
        """``drop(fc2(drop(act(fc1(norm(x))))))``. ``recompute``: backward keeps x and fc1's output only;
        the norm's output, the GELU's and the dropout mask between are recomputed (a block's
        ``activation_memory="selective"``)."""
        return mlp_branch(x, norm, self.fc1, self.act, self.drop, self.fc2, self.drop, recompute)


class PatchEmbed(nn.Module):
    """Per-frame Conv2d(channels, dim, patch, stride=patch): (B, c, h, w) -> (B, gh*gw, dim)."""

    def __init__(self, patch_size: tuple, channels: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Block(MemoryBlock):
    """One TimeSformer block: the scheme's attention steps, then the MLP; pre-norm residuals.

    Each step adds the modules its scheme declares (:attr:`Step.modules <fast_timesformer.schemes.Step>`):
    steps before the last ``<prefix>_norm1``, ``<prefix>_attn`` and ``<prefix>_fc`` (zero-initialised), the
    last step ``norm1`` and ``attn``. Then ``norm2`` and ``mlp``.
    """

    def __init__(self, scheme: Scheme, dim: int, heads: int, dim_head: int, mlp_ratio: float, qkv_bias: bool,
                 attn_dropout: float, ff_dropout: float, drop_path: float, cls_mode: str,
                 backends: Mapping[str, tuple]):
        super().__init__()
        self.steps = scheme.steps
        self.cls_mode = cls_mode
        for step in self.steps:
            name, opts = backends[step.name]
            attn = DividedAttention(dim, heads, dim_head, ff_dropout, attn_dropout=attn_dropout, backend=name,
                                    cls=cls_mode, qkv_bias=qkv_bias, step=step.name, **opts)
            mods = step.modules  # the scheme says which modules the step adds (official names)
            self.add_module(mods.norm, nn.LayerNorm(dim, eps=LN_EPS))
            self.add_module(mods.attn, attn)
            if mods.fc is not None:
                self.add_module(mods.fc, nn.Linear(dim, dim))
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), ff_dropout)

    def attention_layers(self):
        """(step, norm, attn, fc or None) for every step, in order."""
        out = []
        for step in self.steps:
            mods = step.modules
            fc = None if mods.fc is None else getattr(self, mods.fc)
            out.append((step, getattr(self, mods.norm), getattr(self, mods.attn), fc))
        return out

    def _forward(self, x: torch.Tensor, groups: tuple, recompute: bool) -> torch.Tensor:
        """x: (b, 1 + f*n, dim) with the CLS first; ``groups``: one TokenGroups per step; ``recompute``: the
        ``selective`` pieces (:mod:`fast_timesformer.activation_memory`; ``forward`` runs the block's mode)."""
        for (step, norm, attn, fc), g in zip(self.attention_layers(), groups):
            # drop_path(attn(norm(x))), then fc; the CLS row of fc's output 0 where the CLS is no part of
            # this step (only the patches change)
            y = self.drop_path(attn(x, groups=g, norm=norm, recompute=recompute))
            if fc is not None:
                y = fc(y)
                if self._cls_left_out(g) and torch.compiler.is_exporting():  # no write into a slice: ONNX
                    y = torch.cat([torch.zeros_like(y[:, :1]), y[:, 1:]], 1)  # export mistranslates it
                elif self._cls_left_out(g):
                    y[:, :1] = 0  # in place on fc's fresh output (cheaper than re-concatenating x)
            x = x + y
        return x + self.drop_path(self.mlp(x, self.norm2, recompute))

    def _cls_left_out(self, groups: TokenGroups) -> bool:
        return step_cls_mode(self.cls_mode, groups) == "exclude"


class TimeSformer(nn.Module):
    """Video classification transformer: (b, f, c, h, w) -> logits (b, num_classes).

    Args:
        num_classes: classes of the ``head`` (0: no head, ``forward`` returns the pooled CLS feature).
        num_frames, image_size, patch_size, channels: the configured input (``image_size``/``patch_size``
            an int or (h, w)). Inputs with other frame counts or sizes are accepted: position and time
            embeddings are resampled on the fly (bicubic 2-D grid, linear in time).
        dim, depth, heads, dim_head (default ``dim // heads``), mlp_ratio, qkv_bias: the transformer.
        attn_dropout: dropout on attention probabilities; ff_dropout: dropout in the MLP and after each
            attention projection; drop_path: stochastic depth of the last block (linear from 0).
        scheme: ``divided_space_time``, ``space_only``, ``joint_space_time``, ``sparse_local_global``,
            ``axial``, ``neighborhood`` or any registered scheme (see :mod:`fast_timesformer.schemes`).
        scheme_options: the scheme's options, e.g. ``{"window": (1, 3, 3)}`` for ``neighborhood``
            (:meth:`Scheme.with_options <fast_timesformer.schemes.Scheme.with_options>`).
        backend: a backend name (``"regular"``, ``"performer"``, ``"auto"``, ...) for every attention step,
            or a mapping step -> name or (name, options), e.g. ``{"time": "regular", "space":
            ("performer", {"nb_features": 64})}``; steps left out use ``DEFAULT_BACKEND`` (``"regular"``). Step names per scheme
            are in :attr:`attention_steps`.
        cls_mode: ``"official"`` (default), ``"global"`` or ``"per_group"`` (see the module docstring).
        activation_memory: what each block keeps for backward in training: ``"selective"`` (default),
            ``"full"`` or ``"checkpoint"`` (:mod:`fast_timesformer.activation_memory`).
        **backend_options: passed to every attention layer's backend.
    """

    def __init__(self, *, num_classes: int = 400, num_frames: int = 8, image_size=224, patch_size=16,
                 channels: int = 3, dim: int = 768, depth: int = 12, heads: int = 12,
                 dim_head: Optional[int] = None, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 attn_dropout: float = 0.0, ff_dropout: float = 0.0, drop_path: float = 0.1,
                 scheme: str = "divided_space_time", backend: Union[str, Mapping] = DEFAULT_BACKEND,
                 cls_mode: str = "official", scheme_options: Optional[Mapping] = None,
                 activation_memory: str = memory.DEFAULT, **backend_options):
        super().__init__()
        self.config = dict(num_classes=num_classes, num_frames=num_frames, image_size=image_size,
                           patch_size=patch_size, channels=channels, dim=dim, depth=depth, heads=heads,
                           dim_head=dim_head, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, attn_dropout=attn_dropout,
                           ff_dropout=ff_dropout, drop_path=drop_path, scheme=scheme, backend=backend,
                           cls_mode=cls_mode, activation_memory=activation_memory, **backend_options)
        if scheme_options:  # kept out of the config when empty: configs saved before it load unchanged
            self.config["scheme_options"] = dict(scheme_options)
        for name, rate in (("attn_dropout", attn_dropout), ("ff_dropout", ff_dropout), ("drop_path", drop_path)):
            check_rate(name, rate)  # the last block's drop_path is the whole value: checked even at depth 1
        base_scheme = get_scheme(scheme)
        check_model_options(type(self), self._backend_table(backend, backend_options, base_scheme), base_scheme,
                            scheme_options or {}, shared=backend_options)
        self.scheme = base_scheme.with_options(**dict(scheme_options or {}))
        if cls_mode not in MODEL_CLS_MODES:
            raise unknown_name_error("cls_mode", cls_mode, MODEL_CLS_MODES)
        for name, v in (("num_frames", num_frames), ("channels", channels), ("dim", dim), ("depth", depth),
                        ("heads", heads)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        if dim_head is None:
            if dim % heads:
                raise ValueError(f"dim={dim} is not divisible by heads={heads}; give dim_head explicitly")
            dim_head = dim // heads
        self.image_size, self.patch_size = to_hw(image_size, "image_size"), to_hw(patch_size, "patch_size")
        for (i, p), axis in zip(zip(self.image_size, self.patch_size), ("height", "width")):
            if p < 1 or i < 1 or i % p:
                raise ValueError(f"image {axis} {i} is not divisible by patch {axis} {p}")
        self.grid = (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])
        self.scheme.check(num_frames, *self.grid, what="the configured input")
        self.num_frames, self.channels, self.dim, self.num_classes = num_frames, channels, dim, num_classes
        self.cls_mode = cls_mode
        self.attention_steps = self.scheme.step_names
        backends = self._backend_table(backend, backend_options)

        n = self.grid[0] * self.grid[1]
        self.patch_embed = PatchEmbed(self.patch_size, channels, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, dim))
        if self.scheme.time_embed:
            self.time_embed = nn.Parameter(torch.zeros(1, num_frames, dim))
        else:
            self.register_parameter("time_embed", None)
        rates = [r.item() for r in torch.linspace(0, drop_path, depth, device="cpu")]
        self.blocks = nn.ModuleList(
            Block(self.scheme, dim, heads, dim_head, mlp_ratio, qkv_bias, attn_dropout, ff_dropout, rate,
                  cls_mode, backends) for rate in rates)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self.set_activation_memory(activation_memory)
        self.reset_parameters()

    # ---- construction helpers -------------------------------------------------------------------
    def _backend_table(self, backend, options, scheme=None) -> dict:
        """step -> (backend name, options) for every step (steps a mapping leaves out: the default backend)."""
        return parse_backend_spec(backend, options).table((scheme or self.scheme).step_names)

    def reset_parameters(self) -> None:
        """The official initialisation: truncated normal (std .02) for embeddings and Linear weights, zero
        biases, LayerNorm (1, 0), ``time_embed`` zeros, and every ``<prefix>_fc`` (``temporal_fc``) zero."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.time_embed is not None:
            nn.init.zeros_(self.time_embed)
        init_linear_and_norm_(self._own_modules())
        for block in self.blocks:
            for _, _, _, fc in block.attention_layers():
                if fc is not None:
                    nn.init.zeros_(fc.weight)
                    nn.init.zeros_(fc.bias)

    def _own_modules(self):
        """Modules of the model, leaving out backend cores (they own their initialisation)."""
        from ..backends import AttentionCore

        stack = [self]
        while stack:
            m = stack.pop()
            if isinstance(m, AttentionCore):
                continue
            yield m
            stack.extend(m.children())

    #: how foreign checkpoints map onto this model (Hugging Face and official names; the generic loader
    #: is handed it and never imports the model)
    checkpoint_layout = TIMESFORMER_LAYOUT

    @classmethod
    def from_pretrained(cls, path, **overrides) -> "TimeSformer":
        """Build a model from a Hugging Face Timesformer folder or an official ``.pyth``/``.pth`` file.
        See :mod:`fast_timesformer.models.checkpoint`."""
        return checkpoint_io.from_pretrained(cls, path, **overrides)

    # ---- switches -------------------------------------------------------------------------------
    def set_backend(self, backend: Union[str, Mapping], **options) -> "TimeSformer":
        """:func:`fast_timesformer.attention.set_backend` on this model: every step (a name) or some steps (a
        mapping step -> name or (name, options)); weights are kept, steps left out keep their backend."""
        return set_backend(self, backend, **options)

    def no_weight_decay(self) -> set:
        """Parameter names the official recipe trains without weight decay (timm convention)."""
        return {"pos_embed", "cls_token"} | ({"time_embed"} if self.time_embed is not None else set())

    def attention_modules(self) -> list:
        return [m for m in self.modules() if isinstance(m, DividedAttention)]

    def set_activation_memory(self, mode: str) -> "TimeSformer":
        """What every block keeps for backward: ``"full"``, ``"selective"`` or ``"checkpoint"``
        (:mod:`fast_timesformer.activation_memory`)."""
        memory.set_mode(self, mode)
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> "TimeSformer":
        """timm's name: ``set_activation_memory("checkpoint")``, or back to the default mode."""
        return self.set_activation_memory("checkpoint" if enable else memory.DEFAULT)

    def activation_memory_record(self) -> dict:
        """{block name: the mode it runs} (:func:`fast_timesformer.activation_memory.record`)."""
        return memory.record(self)

    # ---- forward --------------------------------------------------------------------------------
    def _check_input(self, video) -> tuple:
        if not isinstance(video, torch.Tensor):
            raise TypeError(f"video must be a torch.Tensor, got {type(video).__name__}")
        if video.dim() != 5:
            raise ValueError(f"video must be (batch, frames, channels, height, width), got shape "
                             f"{tuple(video.shape)} ({video.dim()}-D)")
        b, f, c, h, w = video.shape
        if c != self.channels:
            raise ValueError(f"video has {c} channels (axis 2 of (b, f, c, h, w)), the model expects "
                             f"{self.channels}")
        if f < 1:  # b == 0 is fine: an empty batch gives empty logits
            raise ValueError(f"video has {f} frames (axis 1 of (b, f, c, h, w)); at least 1 is needed")
        ph, pw = self.patch_size
        if h % ph or w % pw:
            raise ValueError(f"frame size {h}x{w} is not divisible by the patch size {ph}x{pw}")
        if not video.is_floating_point():
            raise TypeError(f"video must be floating point, got {video.dtype}")
        gh, gw = h // ph, w // pw
        self.scheme.check(f, gh, gw)
        return b, f, gh, gw

    def _embeddings(self, f: int, grid: tuple):
        """pos_embed and time_embed for this input (resampled when it differs from the config)."""
        pos, time = self.pos_embed, self.time_embed
        if grid != self.grid:
            from .resample import resample_pos_embed

            pos = resample_pos_embed(pos, grid, old_hw=self.grid, num_prefix_tokens=1)
        if time is not None and f != time.shape[1]:
            from .resample import resample_time_embed

            time = resample_time_embed(time, f)
        return pos, time

    def _tokens(self, video) -> tuple:
        """Embed a clip; returns (tokens, b, f, grid). Tokens: (b, 1 + f*n, dim), or (b*f, 1 + n, dim)
        when the frames run independently (official space_only)."""
        b, f, gh, gw = self._check_input(video)
        n = gh * gw
        pos, time = self._embeddings(f, (gh, gw))
        x = self.patch_embed(video.flatten(0, 1)) + pos[:, 1:]  # (b f) n d
        cls = self.cls_token + pos[:, :1]  # 1 1 d
        if self._frame_independent:
            x = torch.cat([cls.expand(b * f, -1, -1), x], dim=1)  # (b f) 1+n d
        else:
            x = x.view(b, f, n, self.dim)
            if time is not None:
                x = x + time.unsqueeze(2)
            x = torch.cat([cls.expand(b, -1, -1), x.flatten(1, 2)], dim=1)  # b 1+f*n d
        return x, b, f, (gh, gw)

    @property
    def _frame_independent(self) -> bool:
        return self.scheme.frame_independent and self.cls_mode == "official"

    def forward_tokens(self, video) -> tuple:
        """Tokens after the last block, before the final norm, and the sizes (b, f, grid)."""
        x, b, f, (gh, gw) = self._tokens(video)
        groups = self.scheme.token_groups(1 if self._frame_independent else f, gh, gw)
        for block in self.blocks:
            x = block(x, groups)
        return x, b, f, (gh, gw)

    def features(self, video) -> dict:
        """{"cls": (b, dim), "patches": (b, f, n, dim)}, both after the final norm.

        For the official ``space_only`` the frames' CLS copies are averaged before the norm (as the
        official model does for all tokens before classifying) and the patches are each frame's own.
        """
        x, b, f, (gh, gw) = self.forward_tokens(video)
        n = gh * gw
        if self._frame_independent:
            x = x.view(b, f, 1 + n, self.dim)
            cls = self.norm(x[:, :, 0].mean(1))
            patches = self.norm(x[:, :, 1:])
        else:
            x = self.norm(x)
            cls, patches = x[:, 0], x[:, 1:].view(b, f, n, self.dim)
        return {"cls": cls, "patches": patches}

    def forward_features(self, video) -> torch.Tensor:
        """The pooled feature the head sees: (b, dim)."""
        x, b, f, (gh, gw) = self.forward_tokens(video)
        if self._frame_independent:  # official: mean over frames of all tokens, then norm, then CLS
            x = x[:, 0].view(b, f, self.dim).mean(1)
            return self.norm(x)
        return self.norm(x[:, 0])

    def forward(self, video) -> torch.Tensor:
        """video (b, f, c, h, w) -> logits (b, num_classes)."""
        return self.head(self.forward_features(video))

    def extra_repr(self) -> str:
        return (f"scheme={self.scheme.name!r}, frames={self.num_frames}, image={self.image_size}, "
                f"patch={self.patch_size}, cls_mode={self.cls_mode!r}")


checkpoint_io.set_default_model(TimeSformer)  # load_pretrained(path) without model_cls builds a TimeSformer


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
