"""What gets measured: one :class:`Workload` per model point (plain data; its :attr:`~Workload.key` is what
``--resume`` matches) and :func:`build`, which turns it into a one-step callable (impls and modes: docs/bench.md).
Schemes and backends are read from their registries; there is no list of names here."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from ..attention import DividedAttention
from ..backends import get_backend, list_backends, resolve_backend
from ..errors import MissingDependencyError, import_failure
from ..models import TimeSformer
from ..models.timesformer_layouts import HF_SCHEMES, official_to_hf_key
from ..schemes import SCHEMES, get_scheme

IMPLS = ("attention", "ours", "hf", "lucidrains")
MODES = ("fwd", "fwd+bwd")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Skip(Exception):
    """A point that cannot run here (the reason is recorded, the sweep goes on)."""


# ---- what the registries say --------------------------------------------------------------------
def scheme_label(name: str) -> str:
    """The scheme's ``short`` label; the name itself for a scheme not registered here (results from elsewhere)."""
    return SCHEMES[name].short if name in SCHEMES else name


def registered_backend(name: str):
    """The registered :class:`~fast_timesformer.backends.Backend` of that name, None if there is none here."""
    return get_backend(name) if name in list_backends() else None


def benchmarked_backends() -> list:
    """Registered backends that are measured (not ``Backend.diagnostic``), in registration order."""
    return [n for n in list_backends() if not get_backend(n).diagnostic]


def auto_backend(device: str = "cpu", dtype: str = "float32") -> str:
    """The exact backend ``auto`` picks on ``device`` for a small ``dtype`` query: the baseline that speed-ups
    and errors are measured against. Where the device is absent, the first exact backend by declared priority
    that lists it."""
    try:
        return resolve_backend("auto", torch.zeros(1, 1, 16, 64, device=device, dtype=DTYPES[dtype])).name
    except Exception:  # noqa: BLE001 - no such device here (a CPU build asserts), or nothing takes it
        dev = torch.device(device).type
        cands = [b for b in map(get_backend, list_backends())
                 if b.exact and not b.diagnostic and dev in b.devices and DTYPES[dtype] in b.dtypes]
        if not cands:
            raise ValueError(f"no exact backend declares {device} / {dtype}") from None
        return min(cands, key=lambda b: b.priority).name


def refusals(w: "Workload", *, here: bool = True) -> list:
    """Why ``w`` cannot run, from what the scheme and the backend declare: the scheme's ``why_not`` at this
    size; the backend's devices, dtypes, backward and masks; with ``here``, whether it is available on this
    machine. [] = nothing declared against it (it may still refuse its inputs at run time)."""
    scheme = get_scheme(w.scheme)
    reasons = scheme.reasons(w.frames, w.grid)
    if reasons:
        return [f"scheme {w.scheme!r} cannot split {w.frames} frames on a {w.grid}x{w.grid} patch grid: "
                + "; ".join(reasons)]
    if w.impl not in ("attention", "ours"):
        return []
    be = get_backend(w.backend)  # an unregistered name raises ValueError naming the known ones
    out = be.unavailable_reasons() if here else []
    if w.device.split(":")[0] not in be.devices:
        out.append(f"device {w.device!r} not supported (supports {', '.join(be.devices)})")
    if DTYPES[w.dtype] not in be.dtypes:
        out.append(f"dtype {w.dtype} not supported")
    if w.mode == "fwd+bwd" and not be.supports_backward:
        out.append("backward is not supported")
    if not be.supports_mask:
        masked = [name for name, g in scheme.step_groups(w.frames, w.grid) if g.mask is not None]
        if masked:
            out.append(f"scheme {w.scheme!r} step(s) {masked} are defined by a mask; this backend does not "
                       "take masks (supports_mask=False)")
    return [f"backend {w.backend!r}: {r}" for r in out]


@dataclass(frozen=True)
class Workload:
    impl: str = "ours"
    scheme: str = "divided_space_time"
    backend: str = "regular"  # the default point (keys of saved results keep it); suites set the backend
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
    reference: bool = False  # also measure the output's relative error against the exact backend auto picks

    def __post_init__(self):
        for name, allowed in (("impl", IMPLS), ("mode", MODES), ("dtype", DTYPES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose from {', '.join(allowed)}")
        get_scheme(self.scheme)  # an unregistered name raises ValueError listing the registered ones
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
    def tokens(self) -> int:
        """Patch tokens per clip (f * n), the x axis of the memory plots."""
        return self.frames * self.grid ** 2

    @property
    def key(self) -> str:
        """Stable identity of the point (what ``--resume`` matches)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.backend_options)
        be = self.backend + (f"[{opts}]" if opts else "")
        return (f"{self.impl}/{scheme_label(self.scheme)}/{be}/{self.mode} b{self.batch} "
                f"{self.frames}x{self.image_size} d{self.dim}x{self.depth}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["backend_options"] = {k: v for k, v in self.backend_options}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Workload":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown workload field(s) {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> "Workload":
        return dataclasses.replace(self, **changes)


class AttentionStack(nn.Module):
    """``depth`` x the attention steps of one scheme block (the registry's ``Scheme.step_groups``), each a
    pre-norm residual."""

    def __init__(self, w: Workload):
        super().__init__()
        self.steps = get_scheme(w.scheme).step_groups(w.frames, w.grid)
        opts = dict(w.backend_options)
        self.norms = nn.ModuleList()
        self.attns = nn.ModuleList()
        for _ in range(w.depth):
            for step, _groups in self.steps:
                self.norms.append(nn.LayerNorm(w.dim, eps=1e-6))
                self.attns.append(DividedAttention(w.dim, heads=w.heads, dim_head=w.dim // w.heads,
                                                   backend=w.backend, cls="official", step=step, **opts))

    def forward(self, x):
        for i, (norm, attn) in enumerate(zip(self.norms, self.attns)):
            x = x + attn(norm(x), groups=self.steps[i % len(self.steps)][1])
        return x


# ---- building a point -----------------------------------------------------------------------
@dataclass
class Built:
    """A workload ready to run: ``step()`` runs it once; ``output()`` gives the features error checks compare;
    ``reference_backend``: the exact backend ``auto`` picks, to compare with (None: no error measured)."""

    model: nn.Module
    inputs: torch.Tensor
    step: Callable[[], object]
    output: Callable[[], torch.Tensor]
    notes: list = field(default_factory=list)
    reference_backend: Optional[str] = None


def _ours(w: Workload) -> nn.Module:
    return TimeSformer(num_classes=w.num_classes, num_frames=w.frames, image_size=w.image_size,
                       patch_size=w.patch_size, dim=w.dim, depth=w.depth, heads=w.heads, drop_path=0.0,
                       scheme=w.scheme, backend=w.backend, **dict(w.backend_options))


def _peer_failure(distribution: str, error: ImportError) -> Exception:
    """A peer that is not installed is a :class:`Skip` (the point is not part of this machine's comparison);
    one that is installed but fails to import is an error quoting the real ImportError, never a skip."""
    err = import_failure(distribution, error, "bench")
    return Skip(str(err)) if isinstance(err, MissingDependencyError) else err


def _hf(w: Workload, seed: int):
    """Hugging Face's Timesformer with the weights of our model at ``w`` (``auto``'s backend; the same seed)."""
    try:
        from transformers import TimesformerConfig, TimesformerForVideoClassification
    except ImportError as e:
        raise _peer_failure("transformers", e) from e
    attention_type = next((hf for hf, ours in HF_SCHEMES.items() if ours == w.scheme), None)
    if attention_type is None:
        raise Skip(f"Hugging Face Timesformer has no {w.scheme} scheme")
    torch.manual_seed(seed)
    ours = _ours(w.replace(impl="ours", backend=auto_backend(w.device, w.dtype), backend_options={}))
    cfg = TimesformerConfig(image_size=w.image_size, patch_size=w.patch_size, num_channels=3,
                            num_frames=w.frames, hidden_size=w.dim, num_hidden_layers=w.depth,
                            num_attention_heads=w.heads, intermediate_size=4 * w.dim,
                            attention_type=attention_type, num_labels=w.num_classes)  # dropouts default 0
    torch.manual_seed(seed)
    model = TimesformerForVideoClassification(cfg)
    return model, [copy_ours_into_hf(ours, model)]


def copy_ours_into_hf(ours: nn.Module, hf: nn.Module) -> str:
    """Copy our weights into the HF model: every tensor maps 1:1 (backend-owned state aside), else
    ``load_state_dict`` raises naming the tensors that do not (never a peer silently left at random weights)."""
    hf.load_state_dict({official_to_hf_key(k) or k: v for k, v in ours.state_dict().items() if ".cores." not in k})
    return "weights: ours copied into HF (same logits expected)"


def _lucidrains(w: Workload):
    try:
        from timesformer_pytorch import TimeSformer as LucidTimeSformer
    except ImportError as e:
        raise _peer_failure("timesformer-pytorch", e) from e
    if w.scheme != "divided_space_time":
        raise Skip("timesformer-pytorch implements divided space-time attention only")
    model = LucidTimeSformer(dim=w.dim, image_size=w.image_size, patch_size=w.patch_size, num_frames=w.frames,
                             num_classes=w.num_classes, depth=w.depth, heads=w.heads, dim_head=w.dim // w.heads,
                             attn_dropout=0.0, ff_dropout=0.0)
    return model, ["weights: its own random init (GEGLU feed-forward, lucidrains CLS convention: "
                   "not weight-compatible)"]


def build(w: Workload, *, seed: int = 0) -> Built:
    """Build the model and inputs of ``w`` and the closures that run it. Raises :class:`Skip`."""
    try:
        reasons = refusals(w)
    except ValueError as e:  # an unknown backend name
        raise Skip(str(e)) from None
    if reasons:
        raise Skip("; ".join(reasons))
    device, dtype = torch.device(w.device), DTYPES[w.dtype]
    if device.type == "cuda" and not torch.cuda.is_available():
        raise Skip("CUDA is not available on this machine")
    torch.manual_seed(seed)
    notes: list = []
    with device:  # initialise the weights where they will run (seconds saved per ViT-Base on a GPU)
        if w.impl == "attention":
            model, x = AttentionStack(w), torch.randn(w.batch, 1 + w.tokens, w.dim)
        else:
            x = torch.randn(w.batch, w.frames, 3, w.image_size, w.image_size)
            if w.impl == "ours":
                torch.manual_seed(seed)  # the same weights as the copy handed to the HF peer
                model = _ours(w)
            else:
                model, notes = _hf(w, seed) if w.impl == "hf" else _lucidrains(w)
    model, x = model.to(device=device, dtype=dtype), x.to(device=device, dtype=dtype)
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

    baseline = auto_backend(w.device, w.dtype) if w.reference and w.impl in ("attention", "ours") else None
    return Built(model=model, inputs=x, step=step, output=output, notes=notes,
                 reference_backend=baseline if baseline != w.backend else None)
