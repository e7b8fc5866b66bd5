"""Training loop: classification (TimeSformer) and future-frame prediction (GenerativeTimeSformer).

One :class:`TrainConfig` describes a run; :class:`Trainer` builds data, model and optimizer from it and
runs ``fit()``. The same code runs as one process or under ``torchrun`` (DDP).

Batches. ``batch`` is the *global* batch of one optimizer step: it is split over the processes and then
over ``accum`` gradient-accumulation micro-steps, so ``batch`` must be divisible by
``world_size * accum`` and the same command trains the same model on 1 or N processes. Each epoch's
order is a permutation drawn from ``(seed, epoch)`` (``DistributedSampler``); optimizer step ``s`` of an
epoch uses global positions ``[s*batch, (s+1)*batch)`` of it, whatever the number of processes.

Exact resume. Everything that decides the next step is either a pure function of the step (learning
rate, data order, synthetic samples, augmentation) or saved in the checkpoint (weights, AdamW moments,
the grad scaler, torch's global RNG state - which drives dropout and drop-path). The DataLoader gets its
own generator so that creating one does not consume the global RNG. ``tests/test_train.py`` checks that
2 steps + resume + 2 steps equal 4 steps bit for bit.

Faults. SIGINT and SIGTERM during ``fit()`` set a flag that is looked at before each optimizer step (so
after a completed one, never mid-accumulation; under DDP the flag is all-reduced so every process stops at
the same step): the run saves ``last.safetensors`` at that step and raises
:class:`~fast_timesformer.errors.TrainingInterrupted` (the CLI exits 130 / 143). A video that cannot be
decoded during training (in a DataLoader worker or not) stops the run the same way with one
:class:`~fast_timesformer.errors.BadVideoError` line, after a checkpoint. Each save of ``last`` keeps the
one before as ``previous.safetensors``; ``--resume auto`` falls back to it, saying so, when ``last`` is
damaged. A resumed run drops the metrics records past its checkpoint's step, so each step is logged once.

A used folder. A run started afresh (no ``resume``) in an ``out_dir`` that holds an earlier run's checkpoints
(last, previous, best) or a metrics file with records is refused with :class:`EarlierRunError` (one line
naming the folder, its files and the ways out: ``--resume auto``, ``--overwrite``), and nothing is touched.
With ``overwrite`` the earlier files stay as they are until the new run writes its first
``last.safetensors`` (meanwhile its metrics go to ``<metrics>.new`` and a best checkpoint of that same step to
``best.safetensors.new``); that write replaces ``last``, then ``best`` and the metrics are moved into place and
the earlier ``previous`` is removed. A crash or failure before it leaves the earlier run whole and resumable;
an interrupt before the first optimizer step saves nothing (an interrupt later saves, and so replaces).

Learning rate: AdamW, linear warmup from 0 over ``warmup`` steps, then cosine decay to
``min_lr_ratio * lr`` at the last step. Weight decay applies to matrices only (not to biases, norms,
embeddings or the CLS token).
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import inspect
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from ..backends.spec import parse_backend_spec
from ..errors import BadVideoError, CorruptCheckpointError, FastTimesformerError, TrainingInterrupted, WriteFailedError
from . import checkpoint as ckpt
from .data import BouncingShapes, ClipTransform, build_train_eval
from .distributed import DistInfo, all_reduce_max, all_reduce_sum, barrier, init_distributed, wrap_ddp

__all__ = ["TrainConfig", "Trainer", "MODEL_PRESETS", "parse_backend", "build_model", "model_spec",
           "lr_at", "task_of", "load_trained_model", "predict_video", "EarlierRunError", "earlier_run_files",
           "describe_files"]

# The small CPU configurations are registered model names (fast_timesformer.models.registry): "tiny",
# "small", "base"; any registered name works the same way.
from ..models.registry import PRESETS as MODEL_PRESETS  # noqa: E402  (names; kept for imports of this one)


@dataclass
class TrainConfig:
    """One training run. ``None`` for a dropout field keeps the model preset's value."""
    # model
    model: str = "tiny"                    # preset, registry name, JSON object or path to a .json
    scheme: str = "divided_space_time"
    backend: Any = "regular"               # name, mapping step -> name, or "time=a,space=b"
    backend_options: dict = field(default_factory=dict)
    scheme_options: dict = field(default_factory=dict)  # e.g. {"window": (1, 3, 3)} for neighborhood
    attn_dropout: Optional[float] = None
    ff_dropout: Optional[float] = None
    drop_path: Optional[float] = None
    # data
    dataset: str = "moving-shapes"         # moving-shapes | bouncing | folder path
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
    device: str = "auto"
    seed: int = 0
    # bookkeeping
    out_dir: str = "runs/train"
    metrics: Optional[str] = None          # JSONL file; default <out_dir>/metrics.jsonl
    evaluate: bool = True                  # False (--no-eval): no evaluation at all, no best.safetensors
    eval_each_epoch: bool = True           # False: evaluate at the end of the run only
    save_every: int = 0                    # steps; 0: at epoch ends and at the end only
    log_every: int = 10
    progress: bool = True
    resume: Optional[str] = None           # checkpoint path or "auto" (<out_dir>/last.safetensors)
    overwrite: bool = False                # start afresh in an out_dir holding an earlier run (see the module doc)

    # fields that may differ between a run and its resumption
    RESUMABLE_CHANGES = ("resume", "workers", "progress", "out_dir", "metrics", "log_every", "save_every",
                         "device", "evaluate", "eval_each_epoch", "skip_bad_videos", "overwrite")

    # the command-line option of each field (for messages that name what to change)
    OPTIONS = {"num_frames": "--frames", "num_target_frames": "--target-frames", "out_dir": "--out",
               "backend_options": "--backend-option", "scheme_options": "--scheme-option"}

    @classmethod
    def option(cls, name: str) -> str:
        return cls.OPTIONS.get(name, "--" + name.replace("_", "-"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---- helpers --------------------------------------------------------------------------------------
def parse_backend(spec):
    """"regular" -> "regular"; "time=triton,space=performer" -> {"time": "triton", "space": "performer"}
    (:func:`~fast_timesformer.backends.spec.parse_backend_spec` does the parsing and checks the names)."""
    if not isinstance(spec, str) or "=" not in spec:
        return spec
    return {step: name for step, (name, _) in parse_backend_spec(spec).steps.items()}


def task_of(dataset: str) -> str:
    return "predict" if dataset == "bouncing" else "classify"


def lr_at(step: int, total: int, base_lr: float, warmup: int, min_ratio: float) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine to min_ratio*lr."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


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


def model_spec(cfg: TrainConfig, *, num_classes: int, channels: int = 3) -> dict:
    """Everything needed to rebuild the model (stored in checkpoints)."""
    registry, kwargs = _model_base(cfg.model)
    # "space.nb_features": an option for one attention step only; the others go to every step
    parsed = parse_backend_spec(cfg.backend, cfg.backend_options)
    backend, shared = parsed.to_json(), parsed.shared
    kwargs.update(num_frames=cfg.num_frames, image_size=cfg.image_size, channels=channels,
                  scheme=cfg.scheme, backend=backend, **shared)
    if cfg.scheme_options:
        kwargs["scheme_options"] = dict(cfg.scheme_options)
    for key in ("attn_dropout", "ff_dropout", "drop_path"):
        if getattr(cfg, key) is not None:
            kwargs[key] = getattr(cfg, key)
    if task_of(cfg.dataset) == "predict":
        # GenerativeTimeSformer: the registered configuration's sizes (what it does not take is left out by
        # build_model), any registered scheme for its context encoder, no stochastic depth
        if cfg.drop_path:
            raise ValueError("GenerativeTimeSformer has no drop_path (stochastic depth)")
        if cfg.scheme_options:
            raise ValueError("GenerativeTimeSformer takes no scheme options (--scheme-option)")
        for key in ("drop_path", "num_classes", "cls_mode"):
            kwargs.pop(key, None)
        kwargs.update(num_target_frames=cfg.num_target_frames, out_channels=channels)
        return {"class": "GenerativeTimeSformer", "registry": None, "kwargs": kwargs}
    kwargs["num_classes"] = num_classes
    return {"class": "TimeSformer", "registry": registry, "kwargs": kwargs}


def build_model(spec: dict) -> nn.Module:
    """Instantiate a model from :func:`model_spec`'s output."""
    from .. import models

    kwargs = dict(spec["kwargs"])
    if spec.get("registry"):
        return models.create_model(spec["registry"], **kwargs)
    cls = getattr(models, spec["class"], None)
    if cls is None:
        raise ImportError(f"fast_timesformer.models has no {spec['class']}")
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        dropped = sorted(k for k in kwargs if k not in params)
        # a preset field the class does not take (e.g. drop_path for the generative model) is left out
        kwargs = {k: v for k, v in kwargs.items() if k in params}
        if dropped:
            spec.setdefault("dropped", dropped)
    return cls(**kwargs)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or any(k in name for k in ("pos_embed", "time_embed", "cls_token", "norm"))
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class GroupedSampler(DistributedSampler):
    """``DistributedSampler`` that shuffles groups of ``group_size`` consecutive indices instead of single
    ones (a group stays together in the global order). ``group_size=1`` is ``DistributedSampler``.

    As there, the global order for an epoch comes from ``seed + epoch``, is cut to a multiple of the
    number of processes, and process ``r`` takes positions ``r, r + N, r + 2N, ...`` of it - so the
    ``k``-th global batch is the same on 1 or N processes.
    """

    def __init__(self, dataset, *, group_size: int = 1, **kwargs):
        super().__init__(dataset, **kwargs)
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.group_size = group_size

    def __iter__(self):
        if self.group_size == 1 or not self.shuffle:
            return super().__iter__()
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        n = len(self.dataset)
        groups = torch.randperm(n // self.group_size, generator=g).tolist()
        order = [k * self.group_size + j for k in groups for j in range(self.group_size)]
        order += list(range(len(order), n))  # a last incomplete group, unshuffled
        if not self.drop_last and len(order) < self.total_size:
            order += order[: self.total_size - len(order)]
        order = order[: self.total_size]
        return iter(order[self.rank: self.total_size: self.num_replicas])


def _set_epoch(dataset, epoch: int) -> None:
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


LAST, PREVIOUS, BEST, METRICS = "last.safetensors", "previous.safetensors", "best.safetensors", "metrics.jsonl"
PENDING = ".new"  # suffix of the files an overwriting run writes before its first checkpoint


class EarlierRunError(FastTimesformerError, FileExistsError):
    """A run started afresh (no ``resume``) in a folder that holds an earlier run's checkpoints or metrics,
    without ``overwrite``; nothing was changed. ``.folder`` and ``.files`` (paths); the one-line message
    names them and the ways out."""

    def __init__(self, folder, files, message: str):
        self.folder, self.files, self.message = str(folder), [str(f) for f in files], message
        FastTimesformerError.__init__(self, message)

    def __str__(self) -> str:  # OSError would format (errno, strerror); ours is the one sentence
        return self.message


def earlier_run_files(out_dir: str, metrics: Optional[str] = None) -> list[str]:
    """What an earlier run left that a new run in ``out_dir`` would replace: its checkpoints (last, previous,
    best) and a metrics file with records (``metrics``: its path; default ``<out_dir>/metrics.jsonl``)."""
    found = [p for p in (os.path.join(out_dir, n) for n in (LAST, PREVIOUS, BEST)) if os.path.exists(p)]
    metrics = metrics or os.path.join(out_dir, METRICS)
    if os.path.isfile(metrics) and os.path.getsize(metrics):
        found.append(metrics)
    return found


def describe_files(out_dir: str, files: list[str]) -> str:
    """"last.safetensors at step 40, best.safetensors at step 30, metrics.jsonl": names inside ``out_dir``
    (a path for one outside it), a checkpoint's step, or "unreadable"."""
    folder = os.path.abspath(out_dir)
    parts = []
    for path in files:
        name = os.path.basename(path) if os.path.dirname(os.path.abspath(path)) == folder else str(path)
        if path.endswith(".safetensors"):
            readable = ckpt.check_checkpoint(path) is None
            name += f" at step {ckpt.read_metadata(path).get('step')}" if readable else " (unreadable)"
        parts.append(name)
    return ", ".join(parts)


class _Failed:
    """What a batch becomes when one of its videos cannot be read: the (path, problem) pairs. Returned
    instead of raised, so that it crosses from a DataLoader worker intact (a worker's exception comes back
    re-wrapped with its traceback as text) and every process can agree to stop at the same step."""

    def __init__(self, problems):
        self.problems = list(problems)


class _Guarded(Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            return self.dataset[index]
        except BadVideoError as e:
            return _Failed(e.problems)


def _collate(items):
    problems = [p for item in items if isinstance(item, _Failed) for p in item.problems]
    return _Failed(problems) if problems else default_collate(items)


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _worker_init(_worker_id: int) -> None:
    """DataLoader workers leave SIGINT and SIGTERM to the main process, which stops after the step and then
    shuts them down (Ctrl-C, or a scheduler's SIGTERM, reaches the whole process group; a worker killed by
    it would make the main process fail with a DataLoader error instead of saving). A worker whose main
    process is gone exits by itself (PyTorch's watchdog). The worker was started with these signals
    blocked (:func:`_start_workers`), so one that arrived while it started is dropped here, not fatal."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def _start_workers(loader):
    """``iter(loader)`` with SIGINT/SIGTERM blocked while the workers are forked: a signal sent to the
    process group in that window would otherwise kill a worker before :func:`_worker_init` runs. This
    process receives such a signal when the block is lifted (it is pending, not lost)."""
    if not loader.num_workers or not hasattr(signal, "pthread_sigmask") \
            or threading.current_thread() is not threading.main_thread():
        return iter(loader)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class _PeerFailed(FastTimesformerError):
    pass


def _peer_failed() -> _PeerFailed:
    return _PeerFailed("another process could not read its videos (its own error line names them)")


class _StopSignals:
    """While active, SIGINT and SIGTERM set ``signum`` instead of interrupting; a second signal, a second or
    more after the first, acts at once (the previous handler's action: a KeyboardInterrupt or termination).
    Copies that arrive together are one signal: Ctrl-C under torchrun reaches a process both from the
    terminal and from the torchrun agent, which forwards it. Only in the main thread (elsewhere Python
    cannot install handlers, and the flag stays 0)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    AGAIN_AFTER_S = 1.0

    def __init__(self):
        self.signum = 0
        self._first = 0.0
        self._old: dict = {}

    def _handler(self, signum, frame):
        if self.signum:
            if time.monotonic() - self._first < self.AGAIN_AFTER_S:
                return
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.signum, self._first = signum, time.monotonic()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


# ---- the trainer ----------------------------------------------------------------------------------
class Trainer:
    """Builds everything from a :class:`TrainConfig`; ``fit()`` trains, evaluates and checkpoints."""

    def __init__(self, cfg: TrainConfig, dist_info: Optional[DistInfo] = None):
        self.cfg = cfg
        self.dist = dist_info or init_distributed(cfg.device)
        self.device = self.dist.device
        self.task = task_of(cfg.dataset)
        self._check_config()
        self.out_dir = cfg.out_dir
        self.metrics_path = cfg.metrics or os.path.join(cfg.out_dir, METRICS)
        # the earlier run's files an overwriting run replaces at its first checkpoint (empty: nothing pending)
        self._replacing: list[str] = [] if cfg.resume else self._earlier_run()
        self._began = False  # fit() has been called

        self.train_set, self.eval_set, info = build_train_eval(
            cfg.dataset, train_samples=cfg.train_samples, eval_samples=cfg.eval_samples,
            num_frames=cfg.num_frames, image_size=cfg.image_size, seed=cfg.seed, num_classes=cfg.num_classes,
            num_target_frames=cfg.num_target_frames, val_fraction=cfg.val_fraction,
            skip_bad=cfg.skip_bad_videos)
        self.classes = list(getattr(self.train_set, "classes", []) or [])
        digest = getattr(self.train_set, "digest", None)
        self.data_info = {**info, "train_digest": digest() if digest else None}
        self._announce_data()

        world, accum = self.dist.world_size, cfg.accum
        if cfg.batch % (world * accum):
            raise ValueError(f"--batch {cfg.batch} (the global batch) must be divisible by processes x accum "
                             f"= {world} x {accum}")
        self.micro_batch = cfg.batch // (world * accum)
        self.steps_per_epoch = len(self.train_set) // cfg.batch
        if self.steps_per_epoch < 1:
            raise ValueError(f"the training set has {len(self.train_set)} samples, fewer than one batch of "
                             f"{cfg.batch}")
        if cfg.steps is not None:
            self.total_steps = cfg.steps
        elif cfg.epochs is not None:
            self.total_steps = cfg.epochs * self.steps_per_epoch
        else:
            raise ValueError("give the length of the run: epochs or steps")
        self.warmup_steps = int(cfg.warmup * self.total_steps) if cfg.warmup < 1 else int(cfg.warmup)
        if self.warmup_steps > self.total_steps:
            raise ValueError(f"--warmup {cfg.warmup:g} steps is longer than the run ({self.total_steps} steps)")

        torch.manual_seed(cfg.seed)  # same on every process: identical init, identical performer features
        self.spec = model_spec(cfg, num_classes=len(self.classes), channels=self._channels())
        self.model = build_model(self.spec).to(self.device)
        self.module = self.model  # the bare model, also under DDP
        if self.dist.enabled:
            # find_unused_parameters (a traversal of the autograd graph after every forward) only where a
            # forward really leaves a trainable parameter out, e.g. a backend's state kept for a later
            # switch; decided once from one training clip, the same on every process
            sample = self.train_set[0][0][None].to(self.device)
            self.model = wrap_ddp(self.model, self.device, sample)
        self.optimizer = torch.optim.AdamW(_param_groups(self.module, cfg.weight_decay), lr=cfg.lr,
                                           betas=(0.9, 0.999))
        amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]
        if amp_dtype is torch.float16 and self.device.type != "cuda":
            raise ValueError("--amp fp16 needs a CUDA device; use --amp bf16 on the CPU")
        self.amp_dtype = amp_dtype
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp_dtype is torch.float16)
        self.step = 0
        self.best: Optional[float] = None
        self._baseline: Optional[float] = None
        self.resumed_from: Optional[str] = None
        self._saved_step: Optional[int] = None  # the step of the last.safetensors this process wrote
        self._last_good = False                 # last.safetensors is ours and whole: rotate it on save
        if cfg.resume:
            self._resume(cfg.resume)

    # ---- set-up ---------------------------------------------------------------------------------
    def _check_config(self) -> None:
        """Every numeric option is checked here, with one sentence naming the option."""
        cfg = self.cfg
        if cfg.amp not in ("off", "bf16", "fp16"):
            raise ValueError(f"--amp must be off, bf16 or fp16, got {cfg.amp!r}")

        def whole(name, low, value=None):
            v = getattr(cfg, name) if value is None else value
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{TrainConfig.option(name)} must be a whole number >= {low}, got {v!r}")

        def number(name, low, high=None, *, low_open=False, high_open=True):
            v = getattr(cfg, name)
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
        if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
            raise ValueError(f"--seed must be a whole number, got {cfg.seed!r}")
        for name in ("epochs", "steps"):
            if getattr(cfg, name) is not None:
                whole(name, 1)
        number("lr", 0, low_open=True)
        number("weight_decay", 0)
        number("warmup", 0)
        if cfg.warmup >= 1 and cfg.warmup != int(cfg.warmup):
            raise ValueError(f"--warmup of 1 or more is a number of steps and must be whole, got {cfg.warmup!r}")
        number("min_lr_ratio", 0, 1, high_open=False)
        if cfg.clip_grad is not None:
            number("clip_grad", 0, low_open=True)
        for name in ("attn_dropout", "ff_dropout", "drop_path"):
            if getattr(cfg, name) is not None:
                number(name, 0, 1)
        if cfg.val_fraction is not None:
            number("val_fraction", 0, 1)
        if cfg.overwrite and cfg.resume:
            raise ValueError(f"--overwrite starts a new run and --resume {cfg.resume} continues one: give one of them")

    def _earlier_run(self) -> list[str]:
        """A fresh start: the earlier run's files in the folder. Without ``overwrite`` they make the run
        refuse (:class:`EarlierRunError`, naming them and the ways out); with it they are returned, to be
        replaced when this run saves its first checkpoint."""
        files = earlier_run_files(self.out_dir, self.metrics_path)
        if not files:
            return []
        what = describe_files(self.out_dir, files)
        if self.cfg.overwrite:
            self._note(f"--overwrite: {self.out_dir} holds an earlier run ({what}); they stay as they are until this "
                       f"run saves its first checkpoint, which replaces them (until then its metrics go to "
                       f"{self.metrics_path}{PENDING})")
            return files
        resumable = next((p for p in (self.last_path, self.previous_path)
                          if os.path.exists(p) and ckpt.check_checkpoint(p) is None), None)
        if resumable is None:
            resume = "it has no checkpoint --resume auto could continue"
        else:
            meta = ckpt.read_metadata(resumable)
            diff = self._settings_differ(meta.get("config", {}))
            step, total = meta.get("step"), (meta.get("scheduler") or {}).get("total_steps")
            if not diff and total is not None and step >= total:
                resume = f"it is complete (step {step} of {total})"
            elif diff:
                resume = (f"--resume auto would continue it only with its own settings (these differ: "
                          f"{', '.join(TrainConfig.option(k) for k in diff)})")
            else:
                resume = f"--resume auto continues it from step {step}"
                if resumable == self.previous_path:
                    resume += f" ({PREVIOUS}: {LAST} is not whole)"
        where, other = self.out_dir, "--out"
        if os.path.dirname(os.path.abspath(self.metrics_path)) != os.path.abspath(self.out_dir):
            where += f" (with --metrics {self.metrics_path})"
            inside = [f for f in files if f != self.metrics_path]
            other = "--out and --metrics" if inside else "--metrics"
        raise EarlierRunError(self.out_dir, files, (
            f"{where} already holds an earlier run ({what}): {resume}; --overwrite starts this run afresh "
            f"and replaces those files when it saves its first checkpoint (they stay as they are until then); "
            f"or give another {other}"))

    def _settings_differ(self, saved: dict) -> list[str]:
        """The settings that differ from those of the run that wrote a checkpoint (``saved``: its config) and
        that a resumed run may not change."""
        mine = self.cfg.to_dict()
        # compared as JSON values: 1 and 1.0 are the same setting (the CLI gives floats, Python often ints)
        return sorted(k for k in mine if k not in TrainConfig.RESUMABLE_CHANGES and k in saved
                      and json.loads(json.dumps(saved[k])) != json.loads(json.dumps(mine[k])))

    def _note(self, text: str) -> None:
        """One line for the user (stderr; rank 0 only)."""
        if self.dist.is_main:
            print(f"fast-timesformer: {text}", file=sys.stderr, flush=True)

    def _announce_data(self) -> None:
        info = self.data_info
        if info.get("skipped"):
            bad = info["skipped"]
            self._note(f"skipped {len(bad)} unreadable video file{'s' if len(bad) > 1 else ''} "
                       "(--skip-bad-videos): " + "; ".join(f"{p}: {r}" for p, r in bad))
        if info.get("eval") == "held-out":
            n = info["train_files"] + info["eval_files"]
            self._note(f"{self.cfg.dataset} has no val/ folder: {info['eval_files']} of its {n} videos are held "
                       f"out for evaluation and never trained on (--val-fraction {info['val_fraction']:g} of each "
                       f"class, rounded, at least one of a class of two or more; seed {info['split_seed']}; "
                       "--val-fraction 0: no evaluation)")
        elif info.get("eval") == "none":
            self._note(f"{self.cfg.dataset} has no val/ folder and --val-fraction is 0: no evaluation")

    def _channels(self) -> int:
        x = self.train_set[0][0]
        return int(x.shape[1])

    @property
    def last_path(self) -> str:
        return os.path.join(self.out_dir, LAST)

    @property
    def previous_path(self) -> str:
        return os.path.join(self.out_dir, PREVIOUS)

    @property
    def best_path(self) -> str:
        return os.path.join(self.out_dir, BEST)

    @property
    def _metrics_file(self) -> str:
        """Where records go now: the metrics file, or its pending twin while an overwrite is pending."""
        return self.metrics_path + PENDING if self._replacing else self.metrics_path

    def _auto_checkpoint(self) -> Optional[str]:
        """``--resume auto``: last.safetensors if whole; else previous.safetensors (saying so); None if
        neither exists (a fresh start)."""
        last, prev = self.last_path, self.previous_path
        if not os.path.exists(last) and not os.path.exists(prev):
            return None
        problem = ckpt.check_checkpoint(last) if os.path.exists(last) else "is missing (a save was interrupted)"
        if problem is None:
            self._last_good = True
            return last
        if os.path.exists(prev) and ckpt.check_checkpoint(prev) is None:
            step = ckpt.read_metadata(prev).get("step")
            self._note(f"{last}: {problem}; resuming from the checkpoint before it, {prev} (step {step})")
            return prev
        why = (f"the checkpoint before it, {prev}, is damaged too" if os.path.exists(prev)
               else "there is no earlier checkpoint")
        raise CorruptCheckpointError(last, f"{problem}; {why} (--overwrite instead of --resume starts the run "
                                           "afresh)")

    def _resume(self, path: str) -> None:
        if path == "auto":
            path = self._auto_checkpoint()
            if path is None:
                return  # nothing to resume: start fresh
        else:
            try:
                ckpt.read_metadata(path)
            except CorruptCheckpointError as e:
                prev = os.path.join(os.path.dirname(path), PREVIOUS)
                if os.path.basename(path) == LAST and os.path.exists(prev) and ckpt.check_checkpoint(prev) is None:
                    step = ckpt.read_metadata(prev).get("step")
                    raise CorruptCheckpointError(path, f"{e.problem}; the checkpoint before it, {prev} (step {step}), "
                                                       f"is whole: --resume {prev} continues from there") from None
                raise
            if os.path.abspath(path) == os.path.abspath(self.last_path):
                self._last_good = True
        meta = ckpt.read_metadata(path)
        saved = meta.get("config", {})
        mine = self.cfg.to_dict()
        diff = self._settings_differ(saved)
        if diff:
            raise ValueError(f"cannot resume from {path}: the run's settings differ in {diff} "
                             f"(checkpoint: {[saved[k] for k in diff]}, now: {[mine[k] for k in diff]})")
        meta = ckpt.load_checkpoint(path, model=self.module, optimizer=self.optimizer, scaler=self.scaler,
                                    restore_rng=True, map_location=self.device)
        self.step = int(meta["step"])
        self.best = meta.get("extra", {}).get("best")
        self.resumed_from = path
        self._saved_step = self.step if self._last_good else None
        then = (meta.get("extra", {}).get("data") or {}).get("train_digest")
        now = self.data_info.get("train_digest")
        if then and now and then != now:
            self._note(f"the training files differ from those of {path} (files added, removed or skipped): the "
                       "resumed run continues with the new list, not as an exact continuation")
        self._truncate_metrics(self.step)

    def _fresh_metrics(self) -> None:
        """A run that starts at step 0 starts its metrics file afresh (saying so if it held records), so that
        each step is in it once. (A fresh start without --resume never finds records: it refuses a used
        folder, or replaces it with --overwrite; this is --resume auto finding no checkpoint.)"""
        if self.dist.is_main and os.path.isfile(self.metrics_path) and os.path.getsize(self.metrics_path):
            self._note(f"{self.metrics_path} held records of an earlier run, but --resume {self.cfg.resume} found no "
                       f"checkpoint in {self.out_dir} to continue: this run starts at step 0 and replaces them")
            self._truncate_metrics(-1)

    def _truncate_metrics(self, step: int) -> None:
        """Drop metrics records past ``step`` (logged after the checkpoint being resumed was written) and any
        partial last line, so that the continued run logs each step once."""
        if not self.dist.is_main or not os.path.isfile(self.metrics_path):
            return
        with open(self.metrics_path) as f:
            lines = f.read().splitlines(keepends=True)
        keep = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if not isinstance(record, dict) or record.get("step", 0) <= step:
                keep.append(line if line.endswith("\n") else line + "\n")
        if keep == lines:
            return
        folder = os.path.dirname(os.path.abspath(self.metrics_path))
        tmp = os.path.join(folder, f".{os.path.basename(self.metrics_path)}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w") as f:
                f.writelines(keep)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.metrics_path)
        except OSError as e:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise WriteFailedError(self.metrics_path, f"could not rewrite the metrics up to step {step} "
                                                      f"({e.strerror or e}); the file is unchanged") from None

    # ---- data -----------------------------------------------------------------------------------
    def _loader(self, dataset, batches: list[list[int]], seed: int) -> DataLoader:
        g = torch.Generator()
        g.manual_seed(seed)  # the loader's own generator: creating it leaves the global RNG alone
        workers = self.cfg.workers
        return DataLoader(_Guarded(dataset), batch_sampler=batches, num_workers=workers, generator=g,
                          pin_memory=self.device.type == "cuda", collate_fn=_collate,
                          worker_init_fn=_worker_init if workers else None)

    def train_batches(self, epoch: int, first_step: int = 0) -> list[list[int]]:
        """This process's micro-batches (indices) for optimizer steps ``first_step..`` of ``epoch``."""
        sampler = GroupedSampler(self.train_set, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                 shuffle=True, seed=self.cfg.seed, drop_last=True,
                                 group_size=getattr(self.train_set, "group_size", 1))
        sampler.set_epoch(epoch)
        mine = list(iter(sampler))
        per_step = self.cfg.batch // self.dist.world_size
        out = []
        for s in range(first_step, self.steps_per_epoch):
            chunk = mine[s * per_step:(s + 1) * per_step]
            out += [chunk[a * self.micro_batch:(a + 1) * self.micro_batch] for a in range(self.cfg.accum)]
        return out

    # ---- steps ----------------------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _loss(self, model, x, y):
        with self._autocast():
            out = model(x)
        out = out.float()
        if self.task == "classify":
            return F.cross_entropy(out, y), out
        return F.mse_loss(out, y.float()), out

    def lr(self, step: int) -> float:
        return lr_at(step, self.total_steps, self.cfg.lr, self.warmup_steps, self.cfg.min_lr_ratio)

    def fit(self, stop_at: Optional[int] = None) -> dict:
        """Train to the configured length (or to step ``stop_at``, checkpointing there); returns the last
        evaluation metrics (or the last train metrics if no evaluation ran; ``{}`` if the run was already
        at its end). SIGINT/SIGTERM: checkpoint and :class:`TrainingInterrupted` (see the module doc)."""
        cfg = self.cfg
        if stop_at is not None and (isinstance(stop_at, bool) or not isinstance(stop_at, int) or stop_at < 1):
            raise ValueError(f"--stop-at must be a whole number >= 1, got {stop_at!r}")
        end = self.total_steps if stop_at is None else min(stop_at, self.total_steps)
        if self.step >= end:
            return {}
        if self.step == 0 and self.resumed_from is None:
            if not self._began and not cfg.resume and not self._replacing:
                # checked when this trainer was built; another run may have written there since (every process
                # looks before rank 0 writes anything)
                self._replacing = self._earlier_run()
                barrier(self.dist)
            if self._replacing:  # pending twins left by an earlier attempt that saved nothing are not this run's
                for twin in (self.metrics_path + PENDING, self.best_path + PENDING):
                    if self.dist.is_main and os.path.exists(twin):
                        os.remove(twin)
            else:
                self._fresh_metrics()
            if self.eval_set is None:
                evaluation = "none (no evaluation set)"
            elif not cfg.evaluate:
                evaluation = "none (--no-eval)"
            else:
                evaluation = "each epoch and at the end" if cfg.eval_each_epoch else "at the end"
            self._log({"split": "data", "step": 0, **self.data_info, "evaluation": evaluation})
        self._began = True
        bar = None
        if cfg.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        last: dict = {}
        window_loss, window_n, t0 = 0.0, 0, time.perf_counter()
        self.model.train()
        it = loader = None
        try:
            with _StopSignals() as signals:
                while self.step < end:
                    epoch, within = divmod(self.step, self.steps_per_epoch)
                    _set_epoch(self.train_set, epoch)
                    loader = self._loader(self.train_set, self.train_batches(epoch, within),
                                          seed=cfg.seed * 100003 + epoch)
                    it = _start_workers(loader)
                    while within < self.steps_per_epoch and self.step < end:
                        micro, problems = [], []
                        for _ in range(cfg.accum):
                            batch = next(it)
                            if isinstance(batch, _Failed):
                                problems = batch.problems
                                break
                            micro.append(batch)
                        # every process learns whether any was signalled or failed, and stops at this step
                        signum, failed = all_reduce_max([signals.signum, 1.0 if problems else 0.0], self.dist)
                        if failed:
                            raise self._stopped(BadVideoError(problems) if problems else _peer_failed())
                        if signum:
                            path = self._stop_checkpoint()
                            name = signal.Signals(int(signum)).name
                            if path is None:
                                raise TrainingInterrupted(
                                    int(signum), self.step, self.out_dir,
                                    f"interrupted by {name} before the first step: nothing was saved, and the "
                                    f"earlier run's files in {self.out_dir} are unchanged (--overwrite replaces "
                                    "them only when this run saves a checkpoint)")
                            raise TrainingInterrupted(
                                int(signum), self.step, path,
                                f"interrupted by {name} at step {self.step} of {self.total_steps}: checkpoint "
                                f"saved to {path} (--resume auto with the same --out continues the run)")
                        lr = self.lr(self.step)
                        for group in self.optimizer.param_groups:
                            group["lr"] = lr
                        step_loss = 0.0
                        for a, (x, y) in enumerate(micro):
                            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                            sync = a == cfg.accum - 1 or not self.dist.enabled
                            ctx = contextlib.nullcontext() if sync else self.model.no_sync()
                            with ctx:
                                loss, _ = self._loss(self.model, x, y)
                                self.scaler.scale(loss / cfg.accum).backward()
                            step_loss += float(loss.detach()) / cfg.accum
                        if cfg.clip_grad:
                            self.scaler.unscale_(self.optimizer)
                            torch.nn.utils.clip_grad_norm_(self.module.parameters(), cfg.clip_grad)
                        self.scaler.step(self.optimizer)
                        self.scaler.update()
                        self.optimizer.zero_grad(set_to_none=True)
                        self.step += 1
                        within += 1
                        window_loss, window_n = window_loss + step_loss, window_n + 1
                        if bar is not None:
                            bar.update(1)
                            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
                        if self.step % cfg.log_every == 0 or self.step == end:
                            total, n = all_reduce_sum([window_loss, window_n], self.dist)
                            dt = time.perf_counter() - t0
                            last = {"split": "train", "step": self.step, "epoch": epoch, "loss": total / n,
                                    "lr": lr, "samples_per_s": window_n * cfg.batch / dt if dt > 0 else None}
                            self._log(last)
                            window_loss, window_n, t0 = 0.0, 0, time.perf_counter()
                        epoch_end = within == self.steps_per_epoch
                        if self.eval_set is not None and cfg.evaluate and (
                                (epoch_end and cfg.eval_each_epoch) or self.step == self.total_steps):
                            try:
                                last = self.evaluate()
                            except (BadVideoError, _PeerFailed) as e:
                                raise self._stopped(e) from None
                            last.update(step=self.step, epoch=epoch)
                            self._log(last)
                            self.model.train()
                            key = "acc" if self.task == "classify" else "mse"
                            better = self.best is None or (last[key] > self.best if key == "acc"
                                                           else last[key] < self.best)
                            if better:
                                self.best = last[key]
                                self.save(self.best_path)
                        if epoch_end or self.step == end or (cfg.save_every and self.step % cfg.save_every == 0):
                            self._save_last()
                    del it, loader
                    it = loader = None
        finally:
            # Drop the loader here, not at exit: its workers ignore SIGTERM (see _worker_init), so they must
            # be told to stop through their queue (the iterator's shutdown) while this process still runs.
            # An exception's traceback keeps this frame, and with it a live iterator, until interpreter
            # exit, where multiprocessing would SIGTERM the ignoring worker and wait for it forever.
            it = loader = None
            if bar is not None:
                bar.close()
        return last

    def _save_last(self) -> str:
        """last.safetensors at the current step (unless this process already wrote it), the one before kept
        as previous.safetensors; returns its path."""
        if self._saved_step != self.step or not os.path.exists(self.last_path):
            self.save(self.last_path, rotate=True)
        return self.last_path

    def _stop_checkpoint(self) -> Optional[str]:
        """The checkpoint of a run that stops early (a signal, a data error): last.safetensors at this step,
        except before the first step of a run whose overwrite is pending (None: nothing is saved, and the
        earlier run stays whole)."""
        if self._replacing and self.step == 0:
            return None
        return self._save_last()

    def _stopped(self, error: Exception) -> Exception:
        """A data error stops the run: checkpoint at the last completed step, and say where in the error's
        one line."""
        path = self._stop_checkpoint()
        if path is None:
            error.args = (f"{error}; the run stopped before its first step: nothing was saved, and the earlier "
                          f"run's files in {self.out_dir} are unchanged",)
        else:
            error.args = (f"{error}; the run stopped at step {self.step} with a checkpoint in {path}",)
        return error

    # ---- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: Optional[nn.Module] = None, dataset=None) -> dict:
        """Metrics over the whole evaluation set (split over processes, summed)."""
        model = self.module if model is None else model
        dataset = self.eval_set if dataset is None else dataset
        was_training = model.training
        model.eval()
        if dataset is None:
            raise ValueError("this run has no evaluation set (--val-fraction 0)")
        idx = list(range(self.dist.rank, len(dataset), self.dist.world_size))
        per = max(self.micro_batch * self.cfg.accum, 1)
        batches = [idx[i:i + per] for i in range(0, len(idx), per)]
        loss_sum = correct = top5 = count = 0.0
        problems: list = []
        for batch in _start_workers(self._loader(dataset, batches, seed=0)):
            if isinstance(batch, _Failed):
                problems += batch.problems
                continue
            x, y = batch
            x, y = x.to(self.device), y.to(self.device)
            loss, out = self._loss(model, x, y)
            n = x.shape[0]
            loss_sum += float(loss) * n
            count += n
            if self.task == "classify":
                correct += float((out.argmax(-1) == y).sum())
                k = min(5, out.shape[-1])
                top5 += float((out.topk(k, -1).indices == y[:, None]).any(-1).sum())
        loss_sum, correct, top5, count, failed = all_reduce_sum(
            [loss_sum, correct, top5, count, float(len(problems))], self.dist)
        model.train(was_training)
        if failed:
            raise BadVideoError(problems) if problems else _peer_failed()
        out = {"split": "eval", "loss": loss_sum / count, "samples": int(count)}
        if self.task == "classify":
            out.update(acc=correct / count, chance=1 / max(len(self.classes), 1))
            if len(self.classes) > 5:
                out["top5"] = top5 / count
        else:
            out["mse"] = out["loss"]
            out["copy_last_mse"] = self.copy_last_baseline()
        return out

    def copy_last_baseline(self) -> float:
        if self._baseline is None:
            ds = self.eval_set
            self._baseline = ds.copy_last_mse() if isinstance(ds, BouncingShapes) else float("nan")
        return self._baseline

    # ---- bookkeeping ----------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        """Append one JSON line to the metrics file; a failed write (disk full) leaves the file as it was
        and raises :class:`WriteFailedError`."""
        if not self.dist.is_main:
            return
        data = (json.dumps({**record, "time": time.time()}) + "\n").encode()
        path = self._metrics_file
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as e:
            raise WriteFailedError(path, f"cannot open the metrics file ({e.strerror or e})") from None
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            except OSError as e:
                try:
                    os.ftruncate(fd, start)  # no half line: the records before stay readable
                except OSError:
                    pass
                why = "no space left on the device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
                raise WriteFailedError(path, f"could not append to the metrics ({why}); the "
                                                          "records before are unchanged") from None
        finally:
            os.close(fd)

    def inference_transform(self) -> dict:
        """How ``predict`` turns a video file into model input, as a :class:`ClipTransform` dict."""
        t = getattr(self.train_set, "transform", None)
        if isinstance(t, ClipTransform):
            t = dataclasses.replace(t, sampling="uniform", crop="center")
        else:  # synthetic data lives in [0, 1]: scale pixels the same way, no mean/std
            c = self._channels()
            t = ClipTransform(num_frames=self.cfg.num_frames, image_size=self.cfg.image_size,
                              resize=self.cfg.image_size, mean=(0.0,) * c, std=(1.0,) * c)
        return dataclasses.asdict(t)

    def checkpoint_config(self) -> dict:
        """What a checkpoint records about the run (for resume and predict)."""
        return self.cfg.to_dict()

    def save(self, path: str, *, rotate: bool = False) -> None:
        """Checkpoint (rank 0 writes; every process waits for it). ``rotate``: this is last.safetensors,
        and the whole one it replaces is kept as previous.safetensors. While an overwrite is pending, the
        best checkpoint goes to its pending twin and the first last.safetensors replaces the earlier run."""
        if self.dist.is_main:
            cfg = self.cfg
            if self._replacing and os.path.abspath(path) == os.path.abspath(self.best_path):
                path = self.best_path + PENDING
            ckpt.save_checkpoint(
                path, model=self.module, optimizer=self.optimizer, scaler=self.scaler, step=self.step,
                epoch=self.step // self.steps_per_epoch, config=self.checkpoint_config(), classes=self.classes,
                scheduler={"kind": "warmup_cosine", "lr": cfg.lr, "warmup_steps": self.warmup_steps,
                           "total_steps": self.total_steps, "min_lr_ratio": cfg.min_lr_ratio},
                extra={"model_spec": self.spec, "task": self.task, "best": self.best,
                       "transform": self.inference_transform(), "data": self.data_info},
                previous=self.previous_path if rotate and self._last_good else None)
            if rotate and self._replacing:
                self._replace_earlier_run()
        barrier(self.dist)
        if rotate:
            self._saved_step, self._last_good = self.step, True
            self._replacing = []

    def _replace_earlier_run(self) -> None:
        """This overwriting run's first last.safetensors has just replaced the earlier run's: move its pending
        best checkpoint and metrics into place and remove the rest of the earlier run (its previous.safetensors,
        a best or metrics file this run has not written yet)."""
        for final in (self.best_path, self.metrics_path):
            try:
                if os.path.exists(final + PENDING):
                    os.replace(final + PENDING, final)
                elif final in self._replacing and os.path.exists(final):
                    os.remove(final)
            except OSError as e:
                raise WriteFailedError(final, f"could not replace the earlier run's file ({e.strerror or e}); "
                                              f"this run's checkpoint is {self.last_path}") from None
        if self.previous_path in self._replacing and os.path.exists(self.previous_path):
            try:
                os.remove(self.previous_path)
            except OSError as e:
                raise WriteFailedError(self.previous_path, f"could not remove the earlier run's checkpoint "
                                                           f"({e.strerror or e})") from None


# ---- inference ------------------------------------------------------------------------------------
def load_trained_model(path: str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a model from a training checkpoint; returns (model in eval mode, metadata)."""
    from .distributed import resolve_device

    device = resolve_device(device)
    meta = ckpt.read_metadata(path)
    spec = meta.get("extra", {}).get("model_spec")
    if spec is None:
        raise ValueError(f"{path} records no model_spec: it was not written by fast-timesformer train")
    model = build_model(spec)
    ckpt.load_checkpoint(path, model=model)
    return model.to(device).eval(), meta


@torch.no_grad()
def predict_video(video_path: str, checkpoint_path: str, top_k: int = 5,
                  device: str | torch.device = "cpu") -> list[tuple[str, float]]:
    """Top-k (class name, probability) for one video file, with the checkpoint's preprocessing."""
    from .data import preprocess_clip, read_video
    from .distributed import resolve_device

    device = resolve_device(device)
    model, meta = load_trained_model(checkpoint_path, device)
    if meta.get("extra", {}).get("task") != "classify":
        raise ValueError(f"{checkpoint_path} is a {meta.get('extra', {}).get('task')!r} model; predict needs "
                         "a classification checkpoint")
    classes = meta.get("classes") or []
    t = ClipTransform(**{k: tuple(v) if isinstance(v, list) else v
                         for k, v in meta["extra"]["transform"].items()})
    clip = preprocess_clip(read_video(video_path, t.num_frames, "uniform"), t)
    probs = model(clip.unsqueeze(0).to(device)).float().softmax(-1)[0]
    k = min(top_k, probs.numel())
    top = probs.topk(k)
    names = [classes[i] if i < len(classes) else str(i) for i in top.indices.tolist()]
    return list(zip(names, top.values.tolist()))
