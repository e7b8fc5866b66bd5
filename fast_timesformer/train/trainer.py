"""Training loop: classification (TimeSformer) and future-frame prediction (GenerativeTimeSformer).

One :class:`~fast_timesformer.train.config.TrainConfig` describes a run; :class:`Trainer` builds data, model
and optimizer from it and runs ``fit()``, which reads as the steps of an epoch. The same code runs as one
process or under ``torchrun`` (DDP). Around the loop: the run's folder (checkpoints, metrics, an earlier
run's files) is :mod:`~fast_timesformer.train.run_folder`; what stops a run cleanly (signals, unreadable
videos) is :mod:`~fast_timesformer.train.guards`; inference from a checkpoint is
:mod:`~fast_timesformer.train.inference`.

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

Learning rate: AdamW, linear warmup from 0 over ``warmup`` steps, then cosine decay to
``min_lr_ratio * lr`` at the last step. Weight decay applies to matrices only (not to biases, norms,
embeddings or the CLS token).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import time
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from .. import activation_memory as memory
from ..errors import BadVideoError, NonFiniteError, TrainingInterrupted
from ..finite import describe, nonfinite_entries
from ..models import create_model
from ..outputs import check_output_dir, check_output_file
from ..video import ClipTransform
from . import checkpoint as ckpt
from .config import TrainConfig, model_spec, task_of
from .data import BouncingShapes, build_train_eval
from .distributed import DistInfo, all_reduce_max, all_reduce_sum, barrier, init_distributed, wrap_ddp
from .finetune import init_from_checkpoint
from .formats import build_list_train_eval
from .guards import Failed, Guarded, PeerFailed, StopSignals, collate, peer_failed, start_workers, worker_init
from .run_folder import PENDING, RunFolder
from .views import MultiViewDataset, average_view_scores, format_views, parse_views

__all__ = ["Trainer", "GroupedSampler", "lr_at"]


def lr_at(step: int, total: int, base_lr: float, warmup: int, min_ratio: float) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine to min_ratio*lr."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


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


class _LossWindow:
    """The training loss and time since the last train record (this process's share)."""

    def __init__(self):
        self.loss, self.steps, self.t0 = 0.0, 0, time.perf_counter()

    def add(self, loss: float) -> None:
        self.loss, self.steps = self.loss + loss, self.steps + 1


# ---- the trainer ----------------------------------------------------------------------------------
class Trainer:
    """Builds everything from a :class:`TrainConfig`; ``fit()`` trains, evaluates and checkpoints."""

    def __init__(self, cfg: TrainConfig, dist_info: Optional[DistInfo] = None):
        self.cfg = cfg
        self.dist = dist_info or init_distributed(cfg.device)
        self.device = self.dist.device
        self.task = task_of(cfg.dataset)
        cfg.check()
        check_output_dir(cfg.out_dir)  # a file, a read-only place: one line before the data is scanned
        if cfg.metrics:
            check_output_file(cfg.metrics, option="--metrics")
        self.folder = RunFolder(cfg.out_dir, cfg.metrics)
        if not cfg.resume:  # refuses a used folder, or (overwrite) lists what this run will replace
            self.folder.replacing = self.folder.earlier_run(cfg, self._note)
        self._began = False  # fit() has been called

        if cfg.is_list_file():
            self.train_set, self.eval_set, info = build_list_train_eval(
                cfg.dataset, data_root=cfg.data_root, classes=cfg.classes_file, val_list=cfg.val_dataset,
                num_frames=cfg.num_frames, image_size=cfg.image_size, seed=cfg.seed, val_fraction=cfg.val_fraction,
                skip_bad=cfg.skip_bad_videos)
        else:
            self.train_set, self.eval_set, info = build_train_eval(
                cfg.dataset, train_samples=cfg.train_samples, eval_samples=cfg.eval_samples,
                num_frames=cfg.num_frames, image_size=cfg.image_size, seed=cfg.seed, num_classes=cfg.num_classes,
                num_target_frames=cfg.num_target_frames, val_fraction=cfg.val_fraction,
                skip_bad=cfg.skip_bad_videos)
        self.classes = list(getattr(self.train_set, "classes", []) or [])
        self.views = parse_views(cfg.eval_views, "--eval-views")
        if self.views != (1, 1) and self.eval_set is not None:
            if not hasattr(self.eval_set, "samples"):
                raise ValueError(f"--eval-views {cfg.eval_views} takes views of video files; {cfg.dataset} is a "
                                 "synthetic set (use 1x1)")
            self.eval_set = MultiViewDataset(self.eval_set, self.views)
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
        self.model = create_model(self.spec["registry"], **self.spec["kwargs"]).to(self.device)
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
        if self.dist.is_main:  # before anything is written (a resume rewrites the metrics file)
            stale = self.folder.lock()
            if stale:
                self._note(f"{cfg.out_dir}: took over the lock left by {stale}, which no longer runs")
        if cfg.resume:
            self._resume(cfg.resume)
        if cfg.init and self.resumed_from is None:  # a fresh start (a resumed run has its own weights)
            for line in init_from_checkpoint(self.module, cfg.init):
                self._note(line)

    # ---- set-up ---------------------------------------------------------------------------------
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
        lacks = "is given without --val-dataset" if self.cfg.is_list_file() else "has no val/ folder"
        if info.get("eval") == "held-out":
            n = info["train_files"] + info["eval_files"]
            self._note(f"{self.cfg.dataset} {lacks}: {info['eval_files']} of its {n} videos are held "
                       f"out for evaluation and never trained on (--val-fraction {info['val_fraction']:g} of each "
                       f"class, rounded, at least one of a class of two or more; seed {info['split_seed']}; "
                       "--val-fraction 0: no evaluation)")
        elif info.get("eval") == "none":
            self._note(f"{self.cfg.dataset} {lacks} and --val-fraction is 0: no evaluation")

    def _channels(self) -> int:
        x = self.train_set[0][0]
        return int(x.shape[1])

    def _resume(self, resume: str) -> None:
        path, self._last_good = self.folder.resume_path(resume, self._note)
        if path is None:
            return  # --resume auto found nothing to resume: start fresh
        meta = ckpt.read_metadata(path)
        saved = meta.get("config", {})
        mine = self.cfg.to_dict()
        diff = self.cfg.differences(saved)
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
        metrics = self.folder.metrics_path
        if self.dist.is_main and os.path.isfile(metrics) and os.path.getsize(metrics):
            self._note(f"{metrics} held records of an earlier run, but --resume {self.cfg.resume} found no "
                       f"checkpoint in {self.folder.out_dir} to continue: this run starts at step 0 and replaces them")
            self._truncate_metrics(-1)

    def _truncate_metrics(self, step: int) -> None:
        if self.dist.is_main:
            self.folder.truncate_metrics(step)

    # ---- data -----------------------------------------------------------------------------------
    def _loader(self, dataset, batches: list[list[int]], seed: int) -> DataLoader:
        """A DataLoader whose unreadable videos come back as :class:`~.guards.Failed` batches."""
        g = torch.Generator()
        g.manual_seed(seed)  # the loader's own generator: creating it leaves the global RNG alone
        workers = self.cfg.workers
        return DataLoader(Guarded(dataset), batch_sampler=batches, num_workers=workers, generator=g,
                          pin_memory=self.device.type == "cuda", collate_fn=collate,
                          worker_init_fn=worker_init if workers else None)

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

    def _step_batches(self, end: int):
        """The micro-batches of each optimizer step from ``self.step`` to ``end`` (the caller takes one step
        per item): yields ``(epoch, micro-batches, problems)``; ``problems`` (the videos of a batch that could
        not be read) cut the step's micro-batches short. One DataLoader per epoch, dropped at its end."""
        cfg = self.cfg
        it = loader = None
        try:
            while self.step < end:
                epoch, within = divmod(self.step, self.steps_per_epoch)
                _set_epoch(self.train_set, epoch)
                loader = self._loader(self.train_set, self.train_batches(epoch, within),
                                      seed=cfg.seed * 100003 + epoch)
                it = start_workers(loader)
                for _ in range(min(self.steps_per_epoch - within, end - self.step)):
                    micro, problems = [], []
                    for _ in range(cfg.accum):
                        batch = next(it)
                        if isinstance(batch, Failed):
                            problems = batch.problems
                            break
                        micro.append(batch)
                    yield epoch, micro, problems
                it = loader = None
        finally:
            # Drop the loader when the run stops (the caller closes this generator), not at exit: its workers
            # ignore SIGTERM (see guards.worker_init), so they must be told to stop through their queue (the
            # iterator's shutdown) while this process still runs. An exception's traceback keeps this frame,
            # and with it a live iterator, until interpreter exit, where multiprocessing would SIGTERM the
            # ignoring worker and wait for it forever.
            it = loader = None

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
        at its end). SIGINT/SIGTERM: checkpoint and :class:`TrainingInterrupted` (see guards)."""
        end = self._end_step(stop_at)
        if self.step >= end:
            return {}
        self._begin()
        last: dict = {}
        window = _LossWindow()
        self.model.train()
        with StopSignals() as signals, self._progress() as bar, \
                contextlib.closing(self._step_batches(end)) as steps:
            for epoch, micro, problems in steps:
                self._stop_if_asked(signals, problems)
                loss, lr = self._optimizer_step(micro)
                window.add(loss)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                if self.step % self.cfg.log_every == 0 or self.step == end:
                    last = self._log_train(epoch, lr, window)
                    window = _LossWindow()
                epoch_end = self.step % self.steps_per_epoch == 0
                if self._evaluation_due(epoch_end):
                    last = self._evaluate_and_keep_best(epoch)
                if epoch_end or self.step == end or (self.cfg.save_every and self.step % self.cfg.save_every == 0):
                    self._save_last()
        return last

    def _end_step(self, stop_at: Optional[int]) -> int:
        if stop_at is not None and (isinstance(stop_at, bool) or not isinstance(stop_at, int) or stop_at < 1):
            raise ValueError(f"--stop-at must be a whole number >= 1, got {stop_at!r}")
        return self.total_steps if stop_at is None else min(stop_at, self.total_steps)

    def _begin(self) -> None:
        """At step 0 of a new run: look for an earlier run in the folder again, start the metrics file and
        record the data and the evaluation plan as its first record."""
        cfg, folder = self.cfg, self.folder
        if self.step == 0 and self.resumed_from is None:
            if not self._began and not cfg.resume and not folder.replacing:
                # checked when this trainer was built; another run may have written there since (every process
                # looks before rank 0 writes anything)
                folder.replacing = folder.earlier_run(cfg, self._note)
                barrier(self.dist)
            if folder.replacing:  # pending twins left by an earlier attempt that saved nothing are not this run's
                for twin in (folder.metrics_path + PENDING, folder.best_path + PENDING):
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
            self._log({"split": "data", "step": 0, **self.data_info, "evaluation": evaluation,
                       "activation_memory_in_effect": memory.record(self.module)})
        self._began = True

    @contextlib.contextmanager
    def _progress(self):
        """A progress bar over the run's steps (rank 0, with ``progress``), or None."""
        if not (self.cfg.progress and self.dist.is_main):
            yield None
            return
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        try:
            yield bar
        finally:
            bar.close()

    def _stop_if_asked(self, signals: StopSignals, problems: list) -> None:
        """Every process learns whether any was signalled or could not read its videos, and all stop at this
        step, with a checkpoint, raising."""
        signum, failed = all_reduce_max([signals.signum, 1.0 if problems else 0.0], self.dist)
        if failed:
            raise self._stopped(BadVideoError(problems) if problems else peer_failed())
        if not signum:
            return
        path = self._stop_checkpoint()
        name = signal.Signals(int(signum)).name
        if path is None:
            raise TrainingInterrupted(
                int(signum), self.step, self.folder.out_dir,
                f"interrupted by {name} before the first step: nothing was saved, and the "
                f"earlier run's files in {self.folder.out_dir} are unchanged (--overwrite replaces "
                "them only when this run saves a checkpoint)")
        raise TrainingInterrupted(
            int(signum), self.step, path,
            f"interrupted by {name} at step {self.step} of {self.total_steps}: checkpoint "
            f"saved to {path} (--resume auto with the same --out continues the run)")

    def _optimizer_step(self, micro: list) -> tuple[float, float]:
        """One optimizer step over ``micro`` (its ``accum`` micro-batches); returns (loss, learning rate)."""
        cfg = self.cfg
        lr = self.lr(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        step_loss = 0.0
        for a, (x, y) in enumerate(micro):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            sync = a == cfg.accum - 1 or not self.dist.enabled
            with contextlib.nullcontext() if sync else self.model.no_sync():
                loss, _ = self._loss(self.model, x, y)
                self.scaler.scale(loss / cfg.accum).backward()
            step_loss += float(loss.detach()) / cfg.accum
        norm = None
        if cfg.clip_grad:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), cfg.clip_grad)
        self._stop_if_not_finite(step_loss, norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return step_loss, lr

    def _stop_if_not_finite(self, loss: float, norm: Optional[torch.Tensor]) -> None:
        """Stop before the optimizer step when the step's loss or a gradient is NaN or infinite: the weights
        stay those of the last finite step and no checkpoint is written, so the newest checkpoint is the last
        finite one. Under ``--amp fp16`` non-finite gradients are the grad scaler's business (it skips that
        step and lowers its scale, as it is meant to); a non-finite loss stops the run there too. Every
        process decides alike (the gradients are reduced; the loss flag is reduced here)."""
        grads = {} if self.scaler.is_enabled() else {
            n: p.grad for n, p in self.module.named_parameters() if p.grad is not None}
        if norm is None and grads:
            norm = torch.nn.utils.get_total_norm(list(grads.values()))
        bad_loss, bad_grad = all_reduce_max([0.0 if math.isfinite(loss) else 1.0,
                                             0.0 if not grads or bool(torch.isfinite(norm)) else 1.0], self.dist)
        if not (bad_loss or bad_grad):
            return
        step = self.step + 1
        what = (f"the loss is not finite ({'NaN' if loss != loss else loss})" if bad_loss else
                f"the gradients are not finite ({describe(nonfinite_entries(grads)) or 'on another process'})")
        if self._saved_step is not None:
            saved = f"the newest checkpoint, {self.folder.last_path} (step {self._saved_step}), is the last finite one"
        elif self.resumed_from:
            saved = f"the newest checkpoint is still the one it resumed from, {self.resumed_from}"
        else:
            saved = "this run saved no checkpoint"
        raise NonFiniteError(f"step {step}", [], f"training stopped at step {step}: {what}; no checkpoint was "
                                                 f"written for it and {saved} (a lower --lr, --clip-grad or "
                                                 "--warmup may help)")

    def _log_train(self, epoch: int, lr: float, window: _LossWindow) -> dict:
        """The train record of the steps since the last one: mean loss over every process, throughput."""
        total, n = all_reduce_sum([window.loss, window.steps], self.dist)
        dt = time.perf_counter() - window.t0
        record = {"split": "train", "step": self.step, "epoch": epoch, "loss": total / n, "lr": lr,
                  "samples_per_s": window.steps * self.cfg.batch / dt if dt > 0 else None}
        self._log(record)
        return record

    def _evaluation_due(self, epoch_end: bool) -> bool:
        cfg = self.cfg
        return self.eval_set is not None and cfg.evaluate and (
            (epoch_end and cfg.eval_each_epoch) or self.step == self.total_steps)

    def _evaluate_and_keep_best(self, epoch: int) -> dict:
        """Evaluate, log, and save best.safetensors if this is the best evaluation so far."""
        try:
            record = self.evaluate()
        except (BadVideoError, PeerFailed) as e:
            raise self._stopped(e) from None
        record.update(step=self.step, epoch=epoch)
        self._log(record)
        self.model.train()
        key = "acc" if self.task == "classify" else "mse"
        if self.best is None or (record[key] > self.best if key == "acc" else record[key] < self.best):
            self.best = record[key]
            self.save(self.folder.best_path)
        return record

    def _save_last(self) -> str:
        """last.safetensors at the current step (unless this process already wrote it), the one before kept
        as previous.safetensors; returns its path."""
        if self._saved_step != self.step or not os.path.exists(self.folder.last_path):
            self.save(self.folder.last_path, rotate=True)
        return self.folder.last_path

    def _stop_checkpoint(self) -> Optional[str]:
        """The checkpoint of a run that stops early (a signal, a data error): last.safetensors at this step,
        except before the first step of a run whose overwrite is pending (None: nothing is saved, and the
        earlier run stays whole)."""
        if self.folder.replacing and self.step == 0:
            return None
        return self._save_last()

    def _stopped(self, error: Exception) -> Exception:
        """A data error stops the run: checkpoint at the last completed step, and say where in the error's
        one line."""
        path = self._stop_checkpoint()
        if path is None:
            error.args = (f"{error}; the run stopped before its first step: nothing was saved, and the earlier "
                          f"run's files in {self.folder.out_dir} are unchanged",)
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
        num_classes = len(self.classes)
        class_hits, class_counts = torch.zeros(num_classes, dtype=torch.float64), torch.zeros(num_classes,
                                                                                            dtype=torch.float64)
        problems: list = []
        for batch in start_workers(self._loader(dataset, batches, seed=0)):
            if isinstance(batch, Failed):
                problems += batch.problems
                continue
            x, y = batch
            x, y = x.to(self.device), y.to(self.device)
            if x.ndim == 6:  # (b, views, f, c, h, w): softmax scores averaged over the views
                with self._autocast():
                    probs = average_view_scores(model, x)
                out = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
                loss = F.nll_loss(out, y)
            else:
                loss, out = self._loss(model, x, y)
            n = x.shape[0]
            loss_sum += float(loss) * n
            count += n
            if self.task == "classify":
                hit = (out.argmax(-1) == y).double().cpu()
                correct += float(hit.sum())
                class_hits.index_add_(0, y.cpu(), hit)
                class_counts.index_add_(0, y.cpu(), torch.ones_like(hit))
                k = min(5, out.shape[-1])
                top5 += float((out.topk(k, -1).indices == y[:, None]).any(-1).sum())
        sums = all_reduce_sum([loss_sum, correct, top5, count, float(len(problems)), *class_hits.tolist(),
                               *class_counts.tolist()], self.dist)
        loss_sum, correct, top5, count, failed = sums[:5]
        class_hits, class_counts = sums[5:5 + num_classes], sums[5 + num_classes:]
        model.train(was_training)
        if failed:
            raise BadVideoError(problems) if problems else peer_failed()
        out = {"split": "eval", "loss": loss_sum / count, "samples": int(count)}
        if self.task == "classify":
            out.update(acc=correct / count, chance=1 / max(num_classes, 1))
            if num_classes >= 5:
                out["top5"] = top5 / count
            seen = [h / c for h, c in zip(class_hits, class_counts) if c > 0]
            out["mean_class_acc"] = sum(seen) / len(seen)
            out["views"] = format_views(self.views)
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
        """Append one record to the metrics file (rank 0)."""
        if self.dist.is_main:
            self.folder.append(record)

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
        """What a checkpoint records about the run (for resume and predict), with the activation-memory mode
        each block ran (it differs from ``activation_memory`` where a condition stopped it)."""
        return {**self.cfg.to_dict(), "activation_memory_in_effect": memory.record(self.module)}

    def save(self, path: str, *, rotate: bool = False) -> None:
        """Checkpoint (rank 0 writes; every process waits for it). ``rotate``: this is last.safetensors,
        and the whole one it replaces is kept as previous.safetensors. While an overwrite is pending, the
        best checkpoint goes to its pending twin and the first last.safetensors replaces the earlier run."""
        if self.dist.is_main:
            cfg = self.cfg
            if self.folder.replacing and os.path.abspath(path) == os.path.abspath(self.folder.best_path):
                path = self.folder.best_path + PENDING
            ckpt.save_checkpoint(
                path, model=self.module, optimizer=self.optimizer, scaler=self.scaler, step=self.step,
                epoch=self.step // self.steps_per_epoch, config=self.checkpoint_config(), classes=self.classes,
                scheduler={"kind": "warmup_cosine", "lr": cfg.lr, "warmup_steps": self.warmup_steps,
                           "total_steps": self.total_steps, "min_lr_ratio": cfg.min_lr_ratio},
                extra={"model_spec": self.spec, "task": self.task, "best": self.best,
                       "transform": self.inference_transform(), "data": self.data_info},
                previous=self.folder.previous_path if rotate and self._last_good else None)
            if rotate and self.folder.replacing:
                self.folder.replace_earlier_run()
        barrier(self.dist)
        if rotate:
            self._saved_step, self._last_good = self.step, True
            self.folder.replacing = []
