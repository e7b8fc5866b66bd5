"""What gets measured: one :class:`Workload` per model point (plain data with a stable :attr:`Workload.key`, what
``--resume`` matches) and :func:`build`, which turns it into a one-step callable. ``impl``: ``attention`` (the
attention steps of one block of ``scheme``, ``depth`` times), ``ours`` (TimeSformer), ``hf`` (Hugging Face
Timesformer with our weights copied in where the layouts match) or ``lucidrains`` (its own weights); ``mode``:
``fwd`` (inference mode, eval) or ``fwd+bwd`` (train mode, forward, mean of the output, backward). Schemes and
backends are read from their registries (docs/bench.md, "Suites"); there is no list of names here."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from ..errors import MissingDependencyError, import_failure

IMPLS = ("attention", "ours", "hf", "lucidrains")
MODES = ("fwd", "fwd+bwd")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Skip(Exception):
    """A point that cannot run here (the reason is recorded, the sweep goes on)."""


# ---- what the registries say --------------------------------------------------------------------
def scheme_label(name: str) -> str:
    """The scheme's ``short`` label; the name itself for a scheme not registered in this process (results
    measured elsewhere)."""
    from ..schemes import SCHEMES as REGISTERED

    return REGISTERED[name].short if name in REGISTERED else name


def benchmarked_backends() -> list:
    """Registered backends that are measured (not ``Backend.diagnostic``), in
    registration order; those that cannot run here are recorded as skipped, with their reasons."""
    from ..backends import get_backend, list_backends

    return [n for n in list_backends() if not get_backend(n).diagnostic]


def auto_backend(device: str = "cpu", dtype: str = "float32") -> str:
    """The exact backend ``auto`` picks on ``device`` for a small ``dtype`` query (the registry's
    :func:`~fast_timesformer.backends.resolve_backend`): the baseline that speed-ups and errors are
    measured against. Where the device is absent, the first exact ``auto`` backend by declared priority
    that lists it."""
    from ..backends import get_backend, list_backends, resolve_backend

    try:
        q = torch.zeros(1, 1, 16, 64, device=device, dtype=DTYPES[dtype])
        return resolve_backend("auto", q).name
    except Exception:  # noqa: BLE001 - no such device here, or nothing takes it: fall back to the declarations
        dev = torch.device(device).type
        cands = [get_backend(n) for n in list_backends()]
        cands = [b for b in cands
                 if b.exact and not b.diagnostic and dev in b.devices and DTYPES[dtype] in b.dtypes]
        if not cands:
            raise ValueError(f"no exact backend declares {device} / {dtype}") from None
        return min(cands, key=lambda b: b.priority).name


def backend_kind(name: str) -> Optional[str]:
    """The registered backend's ``kind`` (exact, approximate, different_model); None if not registered."""
    from ..backends import get_backend, list_backends

    return get_backend(name).kind if name in list_backends() else None


def refusals(w: "Workload", *, here: bool = True) -> list:
    """Why ``w`` cannot run, from what the scheme and the backend declare: the scheme's ``why_not`` at this
    size; the backend's devices, dtypes, backward and masks; with ``here``, whether it is available on this
    machine. [] = nothing declared against it (it may still refuse its inputs at run time)."""
    from ..schemes import get_scheme

    scheme = get_scheme(w.scheme)
    reasons = scheme.reasons(w.frames, w.grid)
    if reasons:
        return [f"scheme {w.scheme!r} cannot split {w.frames} frames on a {w.grid}x{w.grid} patch grid: "
                + "; ".join(reasons)]
    if w.impl not in ("attention", "ours"):
        return []
    from ..backends import get_backend, list_backends

    if w.backend not in list_backends():
        get_backend(w.backend)  # raises ValueError naming the known ones
    be = get_backend(w.backend)
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
        from ..schemes import get_scheme

        if self.impl not in IMPLS:
            raise ValueError(f"unknown impl {self.impl!r}; choose from {', '.join(IMPLS)}")
        get_scheme(self.scheme)  # an unregistered name raises ValueError listing the registered ones
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
        return (f"{self.impl}/{scheme_label(self.scheme)}/{be}/{self.mode} b{self.batch} "
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


class AttentionStack(nn.Module):
    """``depth`` x the attention steps of one scheme block (the registry's ``Scheme.step_groups``), each a
    pre-norm residual."""

    def __init__(self, w: Workload):
        super().__init__()
        from ..attention import DividedAttention
        from ..schemes import get_scheme

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
    reference_backend: Optional[str] = None  # the exact backend reference_output runs (auto's choice here)


def _check(w: Workload):
    """Raise :class:`Skip` with the declared reasons why ``w`` cannot run here."""
    try:
        reasons = refusals(w)
    except ValueError as e:  # an unknown backend name
        raise Skip(str(e)) from None
    if reasons:
        raise Skip("; ".join(reasons))


def _ours(w: Workload) -> nn.Module:
    try:
        from ..models import TimeSformer
    except ImportError as e:
        raise Skip(f"fast_timesformer.models.TimeSformer is not available: {e}") from None
    backend = w.backend
    return TimeSformer(num_classes=w.num_classes, num_frames=w.frames, image_size=w.image_size,
                       patch_size=w.patch_size, dim=w.dim, depth=w.depth, heads=w.heads, drop_path=0.0,
                       scheme=w.scheme, backend=backend, **dict(w.backend_options))


def hf_attention_type(scheme: str) -> Optional[str]:
    """Hugging Face Timesformer's ``attention_type`` for our scheme (the checkpoint layout's table), or None."""
    from ..models.timesformer_layouts import HF_SCHEMES

    return next((hf for hf, ours in HF_SCHEMES.items() if ours == scheme), None)


def _peer_failure(distribution: str, error: ImportError) -> Exception:
    """A peer that is not installed is a :class:`Skip` (the point is not part of this machine's comparison);
    one that is installed but fails to import is an error quoting the real ImportError, never a skip."""
    err = import_failure(distribution, error, "bench")
    return Skip(str(err)) if isinstance(err, MissingDependencyError) else err


def _hf(w: Workload, ours: Optional[nn.Module]):
    try:
        from transformers import TimesformerConfig, TimesformerForVideoClassification
    except ImportError as e:
        raise _peer_failure("transformers", e) from e
    attention_type = hf_attention_type(w.scheme)
    if attention_type is None:
        raise Skip(f"Hugging Face Timesformer has no {w.scheme} scheme")
    cfg = TimesformerConfig(image_size=w.image_size, patch_size=w.patch_size, num_channels=3,
                            num_frames=w.frames, hidden_size=w.dim, num_hidden_layers=w.depth,
                            num_attention_heads=w.heads, intermediate_size=4 * w.dim,
                            attention_type=attention_type, num_labels=w.num_classes)  # dropouts default 0
    model = TimesformerForVideoClassification(cfg)
    notes = []
    if ours is not None:
        notes.append(copy_ours_into_hf(ours, model))
    else:
        notes.append("weights: Hugging Face's own random init")
    return model, notes


def copy_ours_into_hf(ours: nn.Module, hf: nn.Module) -> str:
    """Copy our weights into the HF model when every tensor maps 1:1; else say why not."""
    from ..models.timesformer_layouts import official_to_hf_key

    theirs = hf.state_dict()
    mapped = {}
    for k, v in ours.state_dict().items():
        hk = official_to_hf_key(k)
        if hk is None:
            if ".cores." in k:  # backend-owned state (none for a stateless exact backend)
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
        raise _peer_failure("timesformer-pytorch", e) from e
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
            if hf_attention_type(w.scheme) is not None:
                try:
                    torch.manual_seed(seed)
                    ours = _ours(w.replace(impl="ours", backend=auto_backend(w.device, w.dtype),
                                           backend_options={}))
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
    _check(w)
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

    ref, baseline = None, None
    if w.reference and w.impl in ("attention", "ours"):
        baseline = auto_backend(w.device, w.dtype)
    if baseline is not None and baseline != w.backend:
        from ..attention import use_backend

        def ref():
            with use_backend(model, baseline):
                return output()

    return Built(model=model, inputs=x, step=step, output=output, notes=notes, reference_output=ref,
                 reference_backend=baseline if ref is not None else None)
