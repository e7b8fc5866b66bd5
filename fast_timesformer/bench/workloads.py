"""What gets measured: one :class:`Workload` per benchmark point, and how to build it.

A workload is plain data (it round-trips through JSON and has a stable :attr:`Workload.key`, which
is what ``--resume`` matches on). :func:`build` turns it into a callable that runs one step:

========== ==================================================================================
impl       what is built
========== ==================================================================================
attention  the attention part of one block of ``scheme``, ``depth`` times: pre-norm residual
           :class:`~fast_timesformer.DividedAttention` steps over tokens (b, 1 + f*n, dim). Runs
           without the models package (the harness is tested on it).
ours       :class:`fast_timesformer.models.TimeSformer` (video in, logits out)
hf         Hugging Face ``TimesformerForVideoClassification`` at the same config (divided or
           space-only); our weights are copied in when the layouts match
lucidrains ``timesformer_pytorch.TimeSformer`` at the same config (its own random weights: its
           blocks differ - GEGLU feed-forward, CLS attends to everything - so weights cannot match)
========== ==================================================================================

``mode`` is ``"fwd"`` (inference mode, eval) or ``"fwd+bwd"`` (train mode, forward, mean of the
output, backward into the parameters; no optimizer step).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

SCHEMES = ("space_only", "joint_space_time", "divided_space_time", "sparse_local_global", "axial")
SCHEME_SHORT = {"space_only": "S", "joint_space_time": "ST", "divided_space_time": "T+S",
                "sparse_local_global": "L+G", "axial": "T+W+H"}
IMPLS = ("attention", "ours", "hf", "lucidrains")
MODES = ("fwd", "fwd+bwd")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Skip(Exception):
    """A point that cannot run here (the reason is recorded, the sweep goes on)."""


@dataclass(frozen=True)
class Workload:
    impl: str = "ours"
    scheme: str = "divided_space_time"
    backend: str = "regular"
    mode: str = "fwd"
    batch: int = 1
    frames: int = 8
    image_size: int = 224
    patch_size: int = 16
    dim: int = 768
    depth: int = 12
    heads: int = 12
    num_classes: int = 400
    dtype: str = "float32"
    device: str = "cpu"
    backend_options: tuple = ()  # sorted (name, value) pairs, e.g. (("nb_features", 256),)
    group: str = "default"  # which sweep/plot the point belongs to ("frames", "resolution", ...)
    min_run_time: float = 0.25  # seconds of timed runs (CPU: torch.utils.benchmark blocked_autorange)
    interleave: int = 0  # CPU: time this point round-robin with the other interleaved points of its group
    reference: bool = False  # also measure the output's relative error against backend "regular"

    def __post_init__(self):
        if self.impl not in IMPLS:
            raise ValueError(f"unknown impl {self.impl!r}; choose from {', '.join(IMPLS)}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {self.scheme!r}; choose from {', '.join(SCHEMES)}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose from {', '.join(MODES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose from {', '.join(DTYPES)}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        object.__setattr__(self, "backend_options",
                           tuple(sorted((str(k), v) for k, v in dict(self.backend_options).items())))

    # ---- derived sizes ------------------------------------------------------------------------
    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def patches(self) -> int:
        return self.grid ** 2

    @property
    def tokens(self) -> int:
        """Patch tokens per clip (f * n), the x axis of the memory plots."""
        return self.frames * self.patches

    @property
    def key(self) -> str:
        """Stable identity of the point (what ``--resume`` matches)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.backend_options)
        be = self.backend + (f"[{opts}]" if opts else "")
        return (f"{self.impl}/{SCHEME_SHORT[self.scheme]}/{be}/{self.mode} b{self.batch} "
                f"{self.frames}x{self.image_size} d{self.dim}x{self.depth}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["backend_options"] = {k: v for k, v in self.backend_options}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Workload":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown workload field(s) {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> "Workload":
        d = self.to_dict()
        d.update(changes)
        return Workload.from_dict(d)


# ---- the schemes' attention steps as token groups (impl="attention") ----------------------------
def scheme_steps(scheme: str, frames: int, grid: int):
    """[(step name, TokenGroups)] for one block of ``scheme`` on an f x grid x grid clip."""
    from ..groups import TokenGroups

    f, h, w = frames, grid, grid
    n = h * w
    if scheme == "space_only":
        return [("space", TokenGroups.space(f, n))]
    if scheme == "joint_space_time":
        return [("joint", TokenGroups.joint(f, n))]
    if scheme == "divided_space_time":
        return [("time", TokenGroups.time(f, n)), ("space", TokenGroups.space(f, n))]
    if scheme == "axial":
        return [("time", TokenGroups.time(f, n)),
                ("width", TokenGroups(group=((f, n), (h, w)), seq=((w, 1),), kind="width")),
                ("height", TokenGroups(group=((f, n), (w, 1)), seq=((h, w),), kind="height"))]
    if scheme == "sparse_local_global":
        if h % 2 or w % 2 or f % 2:
            raise Skip(f"sparse_local_global needs even frames and patch grid, got {f} x {h} x {w}")
        local = TokenGroups(group=((2, (h // 2) * w), (2, w // 2)), seq=((f, n), (h // 2, w), (w // 2, 1)),
                            kind="local")
        sparse = TokenGroups(group=((2, n), (2, w), (2, 1)), seq=((f // 2, 2 * n), (h // 2, 2 * w), (w // 2, 2)),
                             kind="global")
        return [("local", local), ("global", sparse)]
    raise ValueError(f"unknown scheme {scheme!r}")


class AttentionStack(nn.Module):
    """``depth`` x the attention steps of one scheme block, each a pre-norm residual."""

    def __init__(self, w: Workload):
        super().__init__()
        from ..attention import DividedAttention

        self.steps = scheme_steps(w.scheme, w.frames, w.grid)
        opts = dict(w.backend_options)
        self.norms = nn.ModuleList()
        self.attns = nn.ModuleList()
        for _ in range(w.depth):
            for step, _groups in self.steps:
                self.norms.append(nn.LayerNorm(w.dim, eps=1e-6))
                self.attns.append(DividedAttention(w.dim, heads=w.heads, dim_head=w.dim // w.heads,
                                                   backend=w.backend, cls="official", step=step, **opts))

    def forward(self, x):
        i = 0
        while i < len(self.attns):
            for _step, groups in self.steps:
                x = x + self.attns[i](self.norms[i](x), groups=groups)
                i += 1
        return x


# ---- building a point -----------------------------------------------------------------------
@dataclass
class Built:
    """A workload ready to run: ``step()`` runs it once; ``output()`` gives a tensor for error checks."""

    model: nn.Module
    inputs: torch.Tensor
    step: Callable[[], object]
    output: Callable[[], torch.Tensor]
    notes: list = field(default_factory=list)
    reference_output: Optional[Callable[[], torch.Tensor]] = None


def _check_backend(w: Workload):
    if w.impl not in ("attention", "ours"):
        return
    from ..backends import get_backend

    try:
        be = get_backend(w.backend)
    except ValueError as e:
        raise Skip(str(e)) from None
    reasons = be.unavailable_reasons()
    if w.device.split(":")[0] not in be.devices:
        reasons.append(f"device {w.device!r} not supported (supports {', '.join(be.devices)})")
    if DTYPES[w.dtype] not in be.dtypes:
        reasons.append(f"dtype {w.dtype} not supported")
    if w.mode == "fwd+bwd" and not be.supports_backward:
        reasons.append("backward is not supported")
    if reasons:
        raise Skip(f"backend {w.backend!r}: " + "; ".join(reasons))


def _ours(w: Workload) -> nn.Module:
    try:
        from ..models import TimeSformer
    except ImportError as e:
        raise Skip(f"fast_timesformer.models.TimeSformer is not available: {e}") from None
    backend = w.backend
    return TimeSformer(num_classes=w.num_classes, num_frames=w.frames, image_size=w.image_size,
                       patch_size=w.patch_size, dim=w.dim, depth=w.depth, heads=w.heads, drop_path=0.0,
                       scheme=w.scheme, backend=backend, **dict(w.backend_options))


HF_SCHEMES = {"divided_space_time": "divided_space_time", "space_only": "space_only",
              "joint_space_time": "joint_space_time"}


def _hf(w: Workload, ours: Optional[nn.Module]):
    try:
        from transformers import TimesformerConfig, TimesformerForVideoClassification
    except ImportError as e:
        raise Skip(f"transformers is not installed: {e}") from None
    if w.scheme not in HF_SCHEMES:
        raise Skip(f"Hugging Face Timesformer has no {w.scheme} scheme")
    cfg = TimesformerConfig(image_size=w.image_size, patch_size=w.patch_size, num_channels=3,
                            num_frames=w.frames, hidden_size=w.dim, num_hidden_layers=w.depth,
                            num_attention_heads=w.heads, intermediate_size=4 * w.dim,
                            attention_type=HF_SCHEMES[w.scheme], num_labels=w.num_classes)  # dropouts default 0
    model = TimesformerForVideoClassification(cfg)
    notes = []
    if ours is not None:
        notes.append(copy_ours_into_hf(ours, model))
    else:
        notes.append("weights: Hugging Face's own random init")
    return model, notes


def hf_key(key: str) -> str:
    """Our (official) parameter name -> Hugging Face Timesformer's (REFERENCE.md section 2)."""
    block = {"norm1": "layernorm_before", "attn.qkv": "attention.attention.qkv",
             "attn.proj": "attention.output.dense", "temporal_norm1": "temporal_layernorm",
             "temporal_attn.qkv": "temporal_attention.attention.qkv",
             "temporal_attn.proj": "temporal_attention.output.dense", "temporal_fc": "temporal_dense",
             "norm2": "layernorm_after", "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    top = {"cls_token": "timesformer.embeddings.cls_token",
           "pos_embed": "timesformer.embeddings.position_embeddings",
           "time_embed": "timesformer.embeddings.time_embeddings",
           "patch_embed.proj.weight": "timesformer.embeddings.patch_embeddings.projection.weight",
           "patch_embed.proj.bias": "timesformer.embeddings.patch_embeddings.projection.bias",
           "norm.weight": "timesformer.layernorm.weight", "norm.bias": "timesformer.layernorm.bias",
           "head.weight": "classifier.weight", "head.bias": "classifier.bias"}
    if key in top:
        return top[key]
    if key.startswith("blocks."):
        _, i, rest = key.split(".", 2)
        name, leaf = rest.rsplit(".", 1)
        if name in block:
            return f"timesformer.encoder.layer.{i}.{block[name]}.{leaf}"
    raise KeyError(key)


def copy_ours_into_hf(ours: nn.Module, hf: nn.Module) -> str:
    """Copy our weights into the HF model when every tensor maps 1:1; else say why not."""
    theirs = hf.state_dict()
    mapped = {}
    for k, v in ours.state_dict().items():
        try:
            hk = hf_key(k)
        except KeyError:
            if ".cores." in k:  # backend-owned state (none for "regular")
                continue
            return f"weights: HF random init (our tensor {k} has no HF counterpart)"
        if hk not in theirs or theirs[hk].shape != v.shape:
            return f"weights: HF random init ({k} -> {hk} does not match)"
        mapped[hk] = v
    missing = set(theirs) - set(mapped)
    if missing:
        return f"weights: HF random init (HF tensors without ours: {sorted(missing)[:3]})"
    hf.load_state_dict(mapped)
    return "weights: ours copied into HF (same logits expected)"


def _lucidrains(w: Workload):
    try:
        from timesformer_pytorch import TimeSformer as LucidTimeSformer
    except ImportError as e:
        raise Skip(f"timesformer-pytorch is not installed: {e}") from None
    if w.scheme != "divided_space_time":
        raise Skip("timesformer-pytorch implements divided space-time attention only")
    model = LucidTimeSformer(dim=w.dim, image_size=w.image_size, patch_size=w.patch_size, num_frames=w.frames,
                             num_classes=w.num_classes, depth=w.depth, heads=w.heads, dim_head=w.dim // w.heads,
                             attn_dropout=0.0, ff_dropout=0.0)
    return model, ["weights: its own random init (GEGLU feed-forward, lucidrains CLS convention: "
                   "not weight-compatible)"]


def _construct(w: Workload, seed: int):
    notes: list = []
    if w.impl == "attention":
        model = AttentionStack(w)
        x = torch.randn(w.batch, 1 + w.tokens, w.dim)
    else:
        x = torch.randn(w.batch, w.frames, 3, w.image_size, w.image_size)
        if w.impl == "ours":
            torch.manual_seed(seed)  # the same weights as the copy handed to the HF peer
            model = _ours(w)
        elif w.impl == "hf":
            ours = None
            if w.scheme in HF_SCHEMES:
                try:
                    torch.manual_seed(seed)
                    ours = _ours(w.replace(impl="ours", backend="regular", backend_options={}))
                except Skip:
                    ours = None
            torch.manual_seed(seed)
            model, notes = _hf(w, ours)
            del ours
        else:
            model, notes = _lucidrains(w)
    return model, x, notes


def build(w: Workload, *, seed: int = 0) -> Built:
    """Build the model and inputs of ``w`` and the closures that run it. Raises :class:`Skip`."""
    _check_backend(w)
    device, dtype = torch.device(w.device), DTYPES[w.dtype]
    if device.type == "cuda" and not torch.cuda.is_available():
        raise Skip("CUDA is not available on this machine")
    torch.manual_seed(seed)
    with device:  # initialise the weights where they will run (seconds saved per ViT-Base on a GPU)
        model, x, notes = _construct(w, seed)
    model = model.to(device=device, dtype=dtype)
    x = x.to(device=device, dtype=dtype)
    train = w.mode == "fwd+bwd"
    model.train(train)

    def run_model():
        out = model(x)
        return out.logits if hasattr(out, "logits") else out

    if train:
        params = [p for p in model.parameters() if p.requires_grad]

        def step():
            for p in params:
                p.grad = None
            run_model().float().mean().backward()
    else:
        def step():
            with torch.inference_mode():
                return run_model()

    def output():
        was = model.training
        model.eval()
        try:
            with torch.inference_mode():
                if hasattr(model, "features"):
                    feats = model.features(x)
                    return (feats["patches"] if isinstance(feats, dict) else feats).float()
                return run_model().float()
        finally:
            model.train(was)

    ref = None
    if w.reference and w.impl in ("attention", "ours") and w.backend != "regular":
        from ..attention import use_backend

        def ref():
            with use_backend(model, "regular"):
                return output()

    return Built(model=model, inputs=x, step=step, output=output, notes=notes, reference_output=ref)
