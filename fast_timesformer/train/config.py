"""What a training run is: :class:`TrainConfig` (every option, checked in one place) and the model it
trains (:func:`model_spec`, recorded in its checkpoints)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from ..activation_memory import DEFAULT as DEFAULT_MEMORY
from ..activation_memory import MODES as MEMORY_MODES
from ..backends.spec import DEFAULT_BACKEND, parse_backend_spec
from ..models import GenerativeTimeSformer, TimeSformer

__all__ = ["TrainConfig", "task_of", "model_spec", "CLASSIFIER_ONLY"]


@dataclass
class TrainConfig:
    """One training run. ``None`` for a dropout field keeps the model preset's value."""
    # model
    model: str = "tiny"                    # preset, registry name, JSON object or path to a .json
    scheme: str = "divided_space_time"
    backend: Any = DEFAULT_BACKEND         # name, mapping step -> name, or "time=a,space=b"
    backend_options: dict = field(default_factory=dict)
    scheme_options: dict = field(default_factory=dict)  # e.g. {"window": (1, 3, 3)} for neighborhood
    attn_dropout: Optional[float] = None
    ff_dropout: Optional[float] = None
    drop_path: Optional[float] = None
    # data
    dataset: str = "moving-shapes"         # moving-shapes | bouncing | folder path | list file (PATH LABEL lines)
    data_root: Optional[str] = None        # list file: the folder its paths are relative to (default: its folder)
    classes_file: Optional[str] = None     # list file: class names, one a line (default: from the labels)
    val_dataset: Optional[str] = None      # list file: the evaluation list (default: a held-out split)
    num_frames: int = 8
    image_size: int = 32
    num_classes: int = 4                   # moving-shapes: 2 or 4
    num_target_frames: int = 2             # bouncing
    train_samples: int = 1024              # synthetic datasets
    eval_samples: int = 256
    val_fraction: Optional[float] = None   # folder without val/: held-out share (None: 0.1; 0: no evaluation)
    skip_bad_videos: bool = False          # leave unreadable video files out (listed) instead of refusing
    workers: int = 0
    # optimisation
    epochs: Optional[int] = None
    steps: Optional[int] = None            # optimizer steps; overrides epochs
    batch: int = 16                        # global batch per optimizer step
    accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: float = 0.1                    # < 1: fraction of the steps; >= 1: steps
    min_lr_ratio: float = 0.01
    clip_grad: Optional[float] = 1.0
    amp: str = "off"                       # off | bf16 | fp16 (fp16: CUDA only)
    activation_memory: str = DEFAULT_MEMORY  # what each block keeps for backward (activation_memory.MODES)
    device: str = "auto"
    seed: int = 0
    # bookkeeping
    out_dir: str = "runs/train"
    metrics: Optional[str] = None          # JSONL file; default <out_dir>/metrics.jsonl
    evaluate: bool = True                  # False (--no-eval): no evaluation at all, no best.safetensors
    eval_each_epoch: bool = True           # False: evaluate at the end of the run only
    eval_views: str = "1x1"                # TxS: temporal clips x spatial crops per video, softmax averaged
    init: Optional[str] = None             # a checkpoint whose weights start the run (fine-tuning; not --resume)
    save_every: int = 0                    # steps; 0: at epoch ends and at the end only
    log_every: int = 10
    progress: bool = True
    resume: Optional[str] = None           # checkpoint path or "auto" (<out_dir>/last.safetensors)
    overwrite: bool = False                # start afresh in an out_dir holding an earlier run (see the module doc)

    # fields that may differ between a run and its resumption
    RESUMABLE_CHANGES = ("resume", "workers", "progress", "out_dir", "metrics", "log_every", "save_every",
                         "device", "evaluate", "eval_each_epoch", "skip_bad_videos", "overwrite", "eval_views",
                         "init", "activation_memory")

    # the command-line option of each field (for messages that name what to change)
    OPTIONS = {"num_frames": "--frames", "num_target_frames": "--target-frames", "out_dir": "--out",
               "backend_options": "--backend-option", "scheme_options": "--scheme-option",
               "classes_file": "--classes"}

    @classmethod
    def option(cls, name: str) -> str:
        return cls.OPTIONS.get(name, "--" + name.replace("_", "-"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Every numeric option is checked here, with one sentence naming the option."""
        if self.amp not in ("off", "bf16", "fp16"):
            raise ValueError(f"--amp must be off, bf16 or fp16, got {self.amp!r}")
        if self.activation_memory not in MEMORY_MODES:
            raise ValueError(f"--activation-memory must be one of {', '.join(MEMORY_MODES)}, got "
                             f"{self.activation_memory!r}")

        def whole(name, low, value=None):
            v = getattr(self, name) if value is None else value
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{TrainConfig.option(name)} must be a whole number >= {low}, got {v!r}")

        def number(name, low, high=None, *, low_open=False, high_open=True):
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            ok = ok and (v > low if low_open else v >= low)
            ok = ok and (high is None or (v < high if high_open else v <= high))
            if not ok:
                lo = f"> {low:g}" if low_open else f">= {low:g}"
                hi = "" if high is None else (f" and < {high:g}" if high_open else f" and <= {high:g}")
                raise ValueError(f"{TrainConfig.option(name)} must be a number {lo}{hi}, got {v!r}")

        for name in ("batch", "accum", "num_frames", "image_size", "num_classes", "num_target_frames",
                     "train_samples", "eval_samples", "log_every"):
            whole(name, 1)
        for name in ("workers", "save_every"):
            whole(name, 0)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"--seed must be a whole number, got {self.seed!r}")
        for name in ("epochs", "steps"):
            if getattr(self, name) is not None:
                whole(name, 1)
        number("lr", 0, low_open=True)
        number("weight_decay", 0)
        number("warmup", 0)
        if self.warmup >= 1 and self.warmup != int(self.warmup):
            raise ValueError(f"--warmup of 1 or more is a number of steps and must be whole, got {self.warmup!r}")
        number("min_lr_ratio", 0, 1, high_open=False)
        if self.clip_grad is not None:
            number("clip_grad", 0, low_open=True)
        for name in ("attn_dropout", "ff_dropout", "drop_path"):
            if getattr(self, name) is not None:
                number(name, 0, 1)
        if self.val_fraction is not None:
            number("val_fraction", 0, 1)
        from .views import parse_views

        parse_views(self.eval_views, "--eval-views")
        if not self.is_list_file():
            given = [TrainConfig.option(k) for k in ("data_root", "classes_file", "val_dataset") if getattr(self, k)]
            if given:
                raise ValueError(f"{', '.join(given)} go{'es' if len(given) == 1 else ''} with a list file as "
                                 f"--dataset; {self.dataset!r} is not a file")
        if self.val_dataset is not None and self.val_fraction is not None:
            raise ValueError(f"--val-dataset {self.val_dataset} is the evaluation set; --val-fraction splits a "
                             "training list given without one")
        if self.overwrite and self.resume:
            raise ValueError(f"--overwrite starts a new run and --resume {self.resume} continues one: give one of them")

    def is_list_file(self) -> bool:
        """``dataset`` names a list file (a file, not a folder or a synthetic set)."""
        return os.path.isfile(self.dataset)

    def differences(self, saved: dict) -> list[str]:
        """The settings that differ from those of the run that wrote a checkpoint (``saved``: its config) and
        that a resumed run may not change."""
        mine = self.to_dict()
        # compared as JSON values: 1 and 1.0 are the same setting (the CLI gives floats, Python often ints)
        return sorted(k for k in mine if k not in TrainConfig.RESUMABLE_CHANGES and k in saved
                      and json.loads(json.dumps(saved[k])) != json.loads(json.dumps(mine[k])))


def task_of(dataset: str) -> str:
    return "predict" if dataset == "bouncing" else "classify"


def _model_base(name: str) -> tuple[Optional[str], dict]:
    """(registry name or None, keyword arguments) from --model: a registered name (the presets tiny, small,
    base among them), a JSON object of constructor arguments or a .json file."""
    from ..models.registry import is_model, list_models, model_config

    if is_model(name):
        return name, model_config(name)
    if name.lstrip().startswith("{"):
        try:
            return None, json.loads(name)
        except json.JSONDecodeError as e:
            raise ValueError(f"--model looks like JSON but does not parse: {e}") from None
    if name.endswith(".json"):
        if not os.path.isfile(name):
            raise FileNotFoundError(f"model config {name} does not exist")
        with open(name) as f:
            return None, json.load(f)
    raise ValueError(f"unknown model {name!r}: use a registered model ({', '.join(list_models())}), "
                     "a JSON object of constructor arguments, or a .json file")


#: what a classification preset (tiny, small, base) carries that the future-frame model does not take: such a
#: preset's sizes build GenerativeTimeSformer without them
CLASSIFIER_ONLY = ("drop_path", "num_classes", "cls_mode")


def model_spec(cfg: TrainConfig, *, num_classes: int, channels: int = 3) -> dict:
    """Everything needed to rebuild the model (stored in checkpoints): ``{"class", "registry", "kwargs"}``,
    the registered name :func:`~fast_timesformer.models.create_model` builds and every constructor argument
    (the registered configuration's included). A model given by arguments builds on ``timesformer`` (the
    class's defaults) or, for future-frame prediction, ``generative_timesformer``."""
    from ..models.registry import model_class, model_config

    registry, kwargs = _model_base(cfg.model)
    # "space.nb_features": an option for one attention step only; the others go to every step
    parsed = parse_backend_spec(cfg.backend, cfg.backend_options)
    backend, shared = parsed.to_json(), parsed.shared
    kwargs.update(num_frames=cfg.num_frames, image_size=cfg.image_size, channels=channels,
                  scheme=cfg.scheme, backend=backend, activation_memory=cfg.activation_memory, **shared)
    if cfg.scheme_options:
        kwargs["scheme_options"] = dict(cfg.scheme_options)
    for key in ("attn_dropout", "ff_dropout", "drop_path"):
        if getattr(cfg, key) is not None:
            kwargs[key] = getattr(cfg, key)
    if task_of(cfg.dataset) == "predict":
        # GenerativeTimeSformer: a registered one, or a classification preset's sizes; any registered scheme
        # for its context encoder, no stochastic depth
        if cfg.drop_path:
            raise ValueError("GenerativeTimeSformer has no drop_path (stochastic depth)")
        if cfg.scheme_options:
            raise ValueError("GenerativeTimeSformer takes no scheme options (--scheme-option)")
        if registry is None or model_class(registry) is not GenerativeTimeSformer:
            if registry is not None:
                for key in CLASSIFIER_ONLY:
                    kwargs.pop(key, None)
            registry = "generative_timesformer"
        kwargs.update(num_target_frames=cfg.num_target_frames, out_channels=channels)
    else:
        registry = registry or "timesformer"
        if model_class(registry) is not TimeSformer:
            raise ValueError(f"--model {cfg.model} is a {model_class(registry).__name__}, which predicts frames: "
                             "--dataset bouncing trains it; classification needs a TimeSformer")
        kwargs["num_classes"] = num_classes
    return {"class": model_class(registry).__name__, "registry": registry,
            "kwargs": {**model_config(registry), **kwargs}}
