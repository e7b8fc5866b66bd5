"""``GenerativeTimeSformer``: future-frame prediction (seed 000), divided space-time attention by default.

Input: ``f`` context frames ``(b, f, c, h, w)``. Output: ``num_target_frames`` predicted frames
``(b, f', out_channels, h, w)``.

Design (n = (h/p)(w/p) patches per frame, tokens frame-major ``t*n + p``)::

    context tokens  x[t, p] = patch_embed(patch(t, p)) + pos_embed[p] + time_embed[t]          t < f
    target queries  y[t',p] = target_query[t', p]      + pos_embed[p] + time_embed[f + t']      t' < f'

    for each of the `depth` layers:
        # context block (divided space-time, no CLS token)
        x = x + time_attn(norm(x))         within each patch position: the f tokens of p      (step "time")
        x = x + space_attn(norm(x))        within each frame: its n patches                   (step "space")
        x = x + mlp(norm(x))
        # target block: the targets read this layer's context
        y = y + cross_attn(norm(y), norm(x))  target (t', p) attends to the f context tokens at p (step "cross")
        y = y + space_attn(norm(y))        within each target frame: its n target patches     (step "space")
        y = y + mlp(norm(y))

    pixels = to_pixels(norm(y))            (b, f', n, p*p*out_channels)
    video  = rearrange(pixels, 'b t (h w) (p1 p2 c) -> b t c (h p1) (w p2)')

Cost of the targets per layer (attention scores): ``f' * n * f`` (cross) + ``f' * n * n`` (space), i.e.
linear in the number of target frames; the targets never attend to each other across frames, and the
context never attends to the targets, so the context's cost does not depend on ``f'`` at all. (The
generative fork this replaces made every query attend to every token, quadratic in all tokens; it also
ran only its first layer and ``.view``-ed the tokens into frames without un-patchifying them.)

Options. ``scheme=``: the context blocks run any registered scheme's steps instead of time + space (each
step ``<step>_norm``/``<step>_attn``, no CLS token; the scheme's size rule applies to the context clip).
``target_attention="all_context"`` (seed 000's idea): every target query attends to every context token
(one group of ``f' * n`` queries over ``f * n`` keys) instead of the ``f`` tokens at its own position:
``f' * n * f * n`` cross-attention scores per layer and head instead of ``f' * n * f``, n times more, still
linear in ``f'``. See docs/generative.md.

Every attention goes through the backend registry (:class:`~fast_timesformer.attention.DividedAttention`
layers, so :func:`~fast_timesformer.attention.set_backend` / ``use_backend`` with the steps "time",
"space" and "cross" switch them). Cross-attention needs a backend that takes more keys than queries
(``Backend.supports_cross``: regular, performer, ...). For a self-attention-only backend (fastformer,
whose output row i is built from token i's own value) the cross step instead runs that backend's
self-attention over the joined sequence ``[context tokens at p; target tokens at p]`` (f + f' tokens)
and keeps the target rows: context still reaches the targets through the backend's global query/key,
and the cost stays linear in ``f'`` because such backends are linear in sequence length. An *exact*
backend without cross-attention is refused (``BackendUnavailable`` with the reason): for softmax
attention the joined sequence would be a different model (targets attending to targets).
"""
from __future__ import annotations

from typing import Mapping, Optional, Union

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .. import activation_memory as memory
from .._names import unknown_name_error
from ..activation_memory import MemoryBlock, mlp_branch
from ..attention import DividedAttention, check_model_options, check_rate, set_backend
from ..backends import BackendUnavailable
from ..backends.spec import DEFAULT_BACKEND, parse_backend_spec
from ..groups import TokenGroups
from ..schemes import get_scheme
from .layers import init_linear_and_norm_
from .resample import to_hw

__all__ = ["GenerativeTimeSformer", "CrossAttention", "patchify", "unpatchify", "GENERATIVE_STEPS", "TARGET_ATTENTION",
           "generative_steps"]

GENERATIVE_STEPS = ("time", "space", "cross")


# ---- patches <-> pixels ------------------------------------------------------------------------------
def patchify(video: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(b, t, c, H, W) -> (b, t, n, p*p*c), patches row-major over the grid, pixels ``(p1 p2 c)``."""
    if video.dim() != 5:
        raise ValueError(f"video must be (batch, frames, channels, height, width), got shape {tuple(video.shape)}")
    h, w = video.shape[-2:]
    if h % patch_size or w % patch_size:
        raise ValueError(f"frame size {h}x{w} is not divisible by patch_size={patch_size}")
    return rearrange(video, "b t c (h p1) (w p2) -> b t (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)


def unpatchify(tokens: torch.Tensor, patch_size: int, grid_height: int) -> torch.Tensor:
    """(b, t, n, p*p*c) -> (b, t, c, H, W): the inverse of :func:`patchify`.

    ``grid_height`` is the number of patch rows (n = grid_height * grid_width).
    """
    if tokens.dim() != 4:
        raise ValueError(f"tokens must be (batch, frames, patches, patch_pixels), got shape {tuple(tokens.shape)}")
    n, pix = tokens.shape[-2:]
    if grid_height < 1 or n % grid_height:
        raise ValueError(f"{n} patches do not form a grid with {grid_height} rows")
    if pix % (patch_size * patch_size):
        raise ValueError(f"patch width {pix} is not a multiple of patch_size**2 = {patch_size ** 2}")
    return rearrange(tokens, "b t (h w) (p1 p2 c) -> b t c (h p1) (w p2)", h=grid_height, p1=patch_size,
                     p2=patch_size)


# ---- layers ----------------------------------------------------------------------------------------
class CrossAttention(DividedAttention):
    """Queries from one token set attend, group by group, to keys and values of another.

    It is a :class:`DividedAttention` (same ``qkv``/``proj`` weights, same backend switching); queries use
    the q rows of ``qkv`` on ``x``, keys and values the k and v rows on ``context``. ``groups`` splits ``x``
    and ``context_groups`` splits ``context`` into the same number of groups; group g of ``x`` attends to
    group g of ``context``. See the module docstring for self-attention-only backends.
    """

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, dropout: float = 0.0, *,
                 attn_dropout: float = 0.0, backend: str = DEFAULT_BACKEND, qkv_bias: bool = True,
                 scale: Optional[float] = None, step: str = "cross", **backend_options):
        super().__init__(dim, heads, dim_head, dropout, attn_dropout=attn_dropout, backend=backend, cls="none",
                         qkv_bias=qkv_bias, scale=scale, step=step, **backend_options)

    def _project(self, x, rows: slice):
        w = self.qkv.weight[rows]
        b = None if self.qkv.bias is None else self.qkv.bias[rows]
        return F.linear(x, w, b).unflatten(-1, (-1, self.heads, self.dim_head)).unbind(2)  # each (b, M, h, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor, *, groups: TokenGroups,
                context_groups: TokenGroups) -> torch.Tensor:
        for name, t in (("x", x), ("context", context)):
            if not isinstance(t, torch.Tensor) or t.dim() != 3 or t.shape[-1] != self.dim:
                raise ValueError(f"{name} must be (batch, tokens, {self.dim}), got "
                                 f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if x.shape[0] != context.shape[0]:
            raise ValueError(f"x and context differ in batch size: {x.shape[0]} vs {context.shape[0]}")
        if groups.num_groups != context_groups.num_groups:
            raise ValueError(f"x has {groups.num_groups} groups but context has {context_groups.num_groups}: "
                             "group g of x attends to group g of context, so the counts must agree")
        groups.check_tokens(x.shape[1])
        context_groups.check_tokens(context.shape[1])
        inner = self.heads * self.dim_head
        dropout_p = self.attn_dropout if self.training else 0.0
        (q,) = self._project(x, slice(0, inner))
        k, v = self._project(context, slice(inner, 3 * inner))
        qg, kg, vg = groups.split(q), context_groups.split(k), context_groups.split(v)
        core = self.core_for(qg, kg, vg)
        if core.backend.supports_cross:
            y = core(qg, kg, vg, scale=self.scale, dropout_p=dropout_p)
        elif core.backend.exact:
            # A softmax self-attention over [context; queries] would let the queries attend to each other:
            # a different model, and quadratic in the queries. Refuse rather than change the meaning.
            raise BackendUnavailable(core.backend.name, [
                "cross-attention needs a backend that takes more keys than queries (supports_cross); "
                "this exact backend does self-attention only"], f"step {self.step!r}")
        else:  # self-attention-only model (fastformer): one sequence [context group; query group]
            (qc,) = self._project(context, slice(0, inner))
            kx, vx = self._project(x, slice(inner, 3 * inner))
            s = kg.shape[2]
            y = core(torch.cat([context_groups.split(qc), qg], 2), torch.cat([kg, groups.split(kx)], 2),
                     torch.cat([vg, groups.split(vx)], 2), scale=self.scale, dropout_p=dropout_p)[:, :, s:]
        out = groups.merge(y, x.shape[0])  # (b, M, h, d)
        return self.proj_drop(self.proj(out.flatten(2)))


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                         nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, norm: Optional[nn.Module] = None, recompute: bool = False) -> torch.Tensor:
        """``self(norm(x))`` as the TimeSformer :class:`~fast_timesformer.models.timesformer.Mlp` runs it
        (``recompute``: backward keeps x and the first linear's output only)."""
        fc1, act, drop1, fc2, drop2 = self
        return mlp_branch(x, norm, fc1, act, drop1, fc2, drop2, recompute)


def _norm(dim):
    return nn.LayerNorm(dim, eps=1e-6)


class ContextBlock(MemoryBlock):
    """The context encoder's block on the context tokens (b, f*n, dim): the scheme's attention steps in
    order (``<step>_norm``, ``<step>_attn``; divided space-time: time, then space), then the MLP."""

    def __init__(self, scheme, dim, heads, dim_head, hidden, attn_dropout, ff_dropout, qkv_bias, backends):
        super().__init__()
        attn = dict(heads=heads, dim_head=dim_head, dropout=ff_dropout, attn_dropout=attn_dropout, qkv_bias=qkv_bias,
                    cls="none")
        self.step_names = scheme.step_names
        for step in self.step_names:
            name, opts = backends[step]
            self.add_module(f"{step}_norm", _norm(dim))
            self.add_module(f"{step}_attn", DividedAttention(dim, backend=name, step=step, **attn, **opts))
        self.mlp_norm = _norm(dim)
        self.mlp = FeedForward(dim, hidden, ff_dropout)

    def _forward(self, x, groups: tuple, recompute: bool):
        """``groups``: the scheme's TokenGroups per step for the context clip; ``recompute``: the selective
        pieces (``forward`` runs the block's activation_memory mode)."""
        for step, g in zip(self.step_names, groups):  # x + attn(norm(x))
            attn, norm = getattr(self, f"{step}_attn"), getattr(self, f"{step}_norm")
            x = x + attn(x, groups=g, norm=norm, recompute=recompute)
        return x + self.mlp(x, self.mlp_norm, recompute)


class TargetBlock(MemoryBlock):
    """Target queries (b, f'*n, dim): cross-attention to the context (at their own patch position, or all of
    it: ``target_attention``), then spatial self-attention within their own target frame, then MLP."""

    def __init__(self, dim, heads, dim_head, hidden, attn_dropout, ff_dropout, qkv_bias, backends):
        super().__init__()
        self.query_norm = _norm(dim)
        self.context_norm = _norm(dim)
        name, opts = backends["cross"]
        self.cross_attn = CrossAttention(dim, heads, dim_head, ff_dropout, attn_dropout=attn_dropout,
                                         qkv_bias=qkv_bias, backend=name, **opts)
        self.space_norm = _norm(dim)
        name, opts = backends["space"]
        self.space_attn = DividedAttention(dim, heads, dim_head, ff_dropout, attn_dropout=attn_dropout,
                                           qkv_bias=qkv_bias, cls="none", backend=name, step="space", **opts)
        self.mlp_norm = _norm(dim)
        self.mlp = FeedForward(dim, hidden, ff_dropout)

    def _forward(self, y, context, f: int, t: int, n: int, target_attention: str, recompute: bool):
        if target_attention == "all_context":  # one group: every target query, every context token
            groups, context_groups = TokenGroups.joint(t, n), TokenGroups.joint(f, n)
        else:  # per_position: group p = the targets at patch p and the context tokens at patch p
            groups, context_groups = TokenGroups.time(t, n), TokenGroups.time(f, n)
        y = y + self.cross_attn(self.query_norm(y), self.context_norm(context), groups=groups,
                                context_groups=context_groups)
        y = y + self.space_attn(y, groups=TokenGroups.space(t, n), norm=self.space_norm, recompute=recompute)
        return y + self.mlp(y, self.mlp_norm, recompute)


class GenerativeLayer(nn.Module):
    def __init__(self, scheme, *args):
        super().__init__()
        self.context = ContextBlock(scheme, *args)
        self.target = TargetBlock(*args)

    def forward(self, x, y, context_groups: tuple, f: int, t: int, n: int, target_attention: str = "per_position"):
        x = self.context(x, context_groups)
        return x, self.target(y, x, f, t, n, target_attention)


# ---- the model ---------------------------------------------------------------------------------------
#: how the target queries read the context: at their own patch position (linear in the targets), or all of it
TARGET_ATTENTION = ("per_position", "all_context")


def generative_steps(scheme) -> tuple:
    """The attention steps of a GenerativeTimeSformer whose context encoder runs ``scheme``: the scheme's
    steps, then "cross" and the targets' "space" (shared with the scheme's "space" step if it has one)."""
    return tuple(dict.fromkeys(get_scheme(scheme).step_names + ("space", "cross")))


class GenerativeTimeSformer(nn.Module):
    """Predicts ``num_target_frames`` future frames from ``num_frames`` context frames.

    Args (seed 000's names):
        dim: token width. image_size: int or (height, width). patch_size: square patch side.
        num_frames: context frames in the input. num_target_frames: frames to predict.
        channels: input channels. out_channels: output channels (default: ``channels``).
        depth: layers (each = one context block + one target block). heads, dim_head: attention heads.
        attn_dropout: dropout on attention probabilities (backends that support it, e.g. regular; others
            refuse it in training mode with the reason). ff_dropout: dropout in the MLPs and on the
            attention output projections (as in TimeSformer). mlp_ratio: MLP hidden width / dim.
        qkv_bias: bias in the q/k/v projections.
        scheme: the context encoder's space-time scheme, any registered one (default
            ``divided_space_time``, seed 000's); its size rule applies to the context clip.
        target_attention: ``"per_position"`` (default): target (t', p) attends to the f context tokens at
            patch p, ``f' * n * f`` scores per layer and head; ``"all_context"`` (seed 000's idea): every
            target query attends to every context token, ``f' * n * f * n`` scores (n times more).
        backend: a backend name, or a mapping step -> name or (name, options) over
            :attr:`attention_steps` (the scheme's steps, "space" and "cross"; missing steps: ``DEFAULT_BACKEND``), or
            "time=a,cross=b". ``**backend_options`` go to every attention layer's backend.
        activation_memory: what each context and target block keeps for backward in training:
            ``"selective"`` (default), ``"full"`` or ``"checkpoint"`` (:mod:`fast_timesformer.activation_memory`).

    ``forward(video)``: (b, num_frames, channels, H, W) -> (b, num_target_frames, out_channels, H, W).
    """

    def __init__(self, *, dim: int, image_size: Union[int, tuple], patch_size: int, num_frames: int,
                 num_target_frames: int, channels: int = 3, out_channels: Optional[int] = None, depth: int,
                 heads: int = 8, dim_head: int = 64, attn_dropout: float = 0.0, ff_dropout: float = 0.0,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, scheme: str = "divided_space_time",
                 target_attention: str = "per_position", backend: Union[str, Mapping[str, str]] = DEFAULT_BACKEND,
                 activation_memory: str = memory.DEFAULT, **backend_options):
        super().__init__()
        out_channels = channels if out_channels is None else out_channels
        ih, iw = to_hw(image_size, "image_size")
        for name, v in (("dim", dim), ("patch_size", patch_size), ("num_frames", num_frames),
                        ("num_target_frames", num_target_frames), ("channels", channels),
                        ("out_channels", out_channels), ("depth", depth), ("heads", heads),
                        ("dim_head", dim_head), ("image height", ih), ("image width", iw)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if ih % patch_size or iw % patch_size:
            raise ValueError(f"image_size {ih}x{iw} is not divisible by patch_size={patch_size}")
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}")
        check_rate("attn_dropout", attn_dropout)
        check_rate("ff_dropout", ff_dropout)
        if target_attention not in TARGET_ATTENTION:
            raise unknown_name_error("target_attention", target_attention, TARGET_ATTENTION)
        self.scheme = get_scheme(scheme)
        self.target_attention = target_attention
        self.attention_steps = generative_steps(self.scheme)
        backends = parse_backend_spec(backend, backend_options).table(self.attention_steps)
        check_model_options(type(self), backends, self.scheme, {}, shared=backend_options)
        self.config = dict(dim=dim, image_size=image_size, patch_size=patch_size, num_frames=num_frames,
                           num_target_frames=num_target_frames, channels=channels, out_channels=out_channels,
                           depth=depth, heads=heads, dim_head=dim_head, attn_dropout=attn_dropout,
                           ff_dropout=ff_dropout, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, scheme=self.scheme.name,
                           target_attention=target_attention, backend=backend,
                           activation_memory=activation_memory, **backend_options)
        self.image_size = (ih, iw)
        self.patch_size = patch_size
        self.grid = (ih // patch_size, iw // patch_size)
        self.num_patches = n = self.grid[0] * self.grid[1]
        self.scheme.check(num_frames, *self.grid, what="the context clip")
        self.num_frames, self.num_target_frames = num_frames, num_target_frames
        self.channels, self.out_channels = channels, out_channels

        self.patch_embed = nn.Linear(patch_size * patch_size * channels, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1, n, dim))  # shared by context and targets
        self.time_embed = nn.Parameter(torch.zeros(1, num_frames + num_target_frames, 1, dim))  # context, then targets
        self.target_query = nn.Parameter(torch.zeros(1, num_target_frames, n, dim))
        hidden = int(dim * mlp_ratio)
        self.layers = nn.ModuleList(
            GenerativeLayer(self.scheme, dim, heads, dim_head, hidden, attn_dropout, ff_dropout, qkv_bias, backends)
            for _ in range(depth))
        self.norm = _norm(dim)
        self.to_pixels = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.set_activation_memory(activation_memory)
        self.reset_parameters()

    def reset_parameters(self):
        for p in (self.pos_embed, self.time_embed, self.target_query):
            nn.init.trunc_normal_(p, std=0.02)
        init_linear_and_norm_(self.modules())

    @classmethod
    def from_pretrained(cls, path, **overrides) -> "GenerativeTimeSformer":
        """Rebuild a model from a checkpoint written by ``fast-timesformer train`` (future-frame prediction):
        its recorded constructor arguments, then ``overrides``; weights loaded and reported as for
        :meth:`TimeSformer.from_pretrained <fast_timesformer.models.timesformer.TimeSformer.from_pretrained>`
        (``strict=True``, ``device=``). Other checkpoints are TimeSformer's and raise, naming the loader."""
        from . import checkpoint

        return checkpoint.from_pretrained(cls, path, **overrides)

    def set_backend(self, backend: Union[str, Mapping[str, str]], **options) -> "GenerativeTimeSformer":
        """:func:`fast_timesformer.attention.set_backend` on this model: every attention layer (a name), or
        some steps (a mapping over :attr:`attention_steps`); steps left out keep their backend."""
        return set_backend(self, backend, **options)

    def set_activation_memory(self, mode: str) -> "GenerativeTimeSformer":
        """What every context and target block keeps for backward (:mod:`fast_timesformer.activation_memory`)."""
        memory.set_mode(self, mode)
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> "GenerativeTimeSformer":
        """timm's name: ``set_activation_memory("checkpoint")``, or back to the default mode."""
        return self.set_activation_memory("checkpoint" if enable else memory.DEFAULT)

    def activation_memory_record(self) -> dict:
        """{block name: the mode it runs} (:func:`fast_timesformer.activation_memory.record`)."""
        return memory.record(self)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if not isinstance(video, torch.Tensor) or video.dim() != 5:
            raise ValueError("video must be (batch, frames, channels, height, width), got "
                             f"{tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__}")
        b, f, c, h, w = video.shape
        if f != self.num_frames:
            raise ValueError(f"video has {f} frames, the model was built for num_frames={self.num_frames}")
        if c != self.channels:
            raise ValueError(f"video has {c} channels, the model was built for channels={self.channels}")
        if (h, w) != self.image_size:
            raise ValueError(f"frames are {h}x{w}, the model was built for image_size "
                             f"{self.image_size[0]}x{self.image_size[1]}")
        n, t = self.num_patches, self.num_target_frames
        x = self.patch_embed(patchify(video, self.patch_size)) + self.pos_embed + self.time_embed[:, :f]
        x = x.flatten(1, 2)  # (b, f*n, dim), frame-major
        y = self.target_query + self.pos_embed + self.time_embed[:, f:]
        y = y.expand(b, -1, -1, -1).flatten(1, 2)  # (b, t*n, dim)
        context_groups = self.scheme.token_groups(f, *self.grid)
        for layer in self.layers:
            x, y = layer(x, y, context_groups, f, t, n, self.target_attention)
        pixels = self.to_pixels(self.norm(y)).unflatten(1, (t, n))  # (b, t, n, p*p*out_channels)
        return unpatchify(pixels, self.patch_size, self.grid[0])

    def extra_repr(self) -> str:
        return (f"scheme={self.scheme.name!r}, target_attention={self.target_attention!r}, "
                f"frames={self.num_frames} -> {self.num_target_frames}, image_size={self.image_size}, "
                f"patch_size={self.patch_size}, channels={self.channels} -> {self.out_channels}")
