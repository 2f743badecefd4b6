"""The training loop shared by ``tools/train_det.py`` and ``tools/train_seg.py``.

:func:`train` runs a config end to end: data (generating the embedded shapes dataset when
configured), model, optimiser and schedule, the epoch loop with AMP, clipping and logging,
evaluation every ``train.eval_every`` epochs, ``best.pth`` / ``last.pth`` written atomically,
``--resume`` from ``last.pth`` (mid-epoch included), and a PNG of predictions at the end.
Under ``torchrun`` it runs DDP; rank 0 logs and writes.
"""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from backbones_tools import distributed as D
from backbones_tools.config.loader import ConfigError, config_to_yaml
from backbones_tools.config.schema import TrainConfig
from backbones_tools.data.errors import CocoFormatError, DatasetError, ImageLoadError
from backbones_tools.engine.checkpoint import (
    CheckpointError,
    atomic_write_text,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from backbones_tools.engine.data import SeededAugmentation, build_eval_loader, build_train_loader, prepare_data_root
from backbones_tools.engine.init_weights import init_model, init_trunk, report_record
from backbones_tools.engine.metrics import (
    JsonlWriter,
    SmoothedValues,
    TensorBoardMirror,
    format_metrics,
    summary_writer_class,
)
from backbones_tools.engine.optim import build_optimizer
from backbones_tools.engine.precision import Precision, choose_precision
from backbones_tools.engine.preemption import Preempted, StopSignals
from backbones_tools.engine.preflight import run_preflight_once
from backbones_tools.engine.schedule import build_scheduler
from backbones_tools.engine.tasks import Task, _check_num_classes, make_task
from heads import optimize_for_inference, use_gather_roi_align

logger = logging.getLogger(__name__)

LAST = "last.pth"
BEST = "best.pth"
CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.jsonl"
PNG_NAME = "predictions.png"
#: TensorBoard event folder in the run folder (``train.tensorboard``)
TENSORBOARD_DIR = "tensorboard"


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message names the iteration and the terms."""


@dataclass
class RunResult:
    """What a finished run produced."""

    output_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)
    iterations: int = 0
    train_seconds: float = 0.0
    png: Path | None = None
    table: str = ""


def cpu_seconds() -> float:
    """CPU time of this process plus its finished children (data-loader workers end each epoch):
    the core-seconds training used, a load-independent measure of cost on a shared machine."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def stage_of(name: str, trunk_prefixes: tuple[str, ...]) -> str:
    """Stage label of a parameter for gradient-norm logging (``trunk.stem``, ``trunk.layer2``,
    or the top-level module, e.g. ``backbone.fpn``, ``rpn``, ``roi_heads``, ``classifier``)."""
    for prefix in trunk_prefixes:
        if name.startswith(prefix):
            head = name[len(prefix):].split(".", 1)[0]
            return f"trunk.{head if head.startswith('layer') else 'stem'}"
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "backbone" and len(parts) > 2 else parts[0]


def grad_norms_per_stage(model: nn.Module, trunk_prefixes: tuple[str, ...]) -> dict[str, float]:
    """L2 norm of the gradients of each stage (see :func:`stage_of`)."""
    sums: dict[str, float] = {}
    for name, p in unwrap(model).named_parameters():
        if p.grad is not None:
            key = f"grad_norm/{stage_of(name, trunk_prefixes)}"
            sums[key] = sums.get(key, 0.0) + float(p.grad.detach().float().pow(2).sum())
    return {k: math.sqrt(v) for k, v in sums.items()}


def _autocast(amp: str, device: torch.device):
    """The autocast context of a resolved precision (:func:`choose_precision`)."""
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16)


class Trainer:
    """One training run (see the module docstring); use :func:`train`."""

    def __init__(self, cfg: TrainConfig, output_dir: str | Path, *, resume: bool | str = False,
                 ctx: D.DistContext | None = None) -> None:
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.resume = resume
        self.ctx = ctx or D.init_distributed(cfg.train.device)
        self._set_up_runtime()
        train_ds = self._build_datasets()
        self._build_model()
        self._build_loaders_and_optimizer(train_ds)
        self.epoch = 0
        self.iter_in_epoch = 0
        self.global_iter = 0
        self.best: dict[str, Any] = {"metric": cfg.best_metric, "value": None, "epoch": None}
        self.last_metrics: dict[str, float] = {}
        self._open_run_folder()
        if resume:
            self._resume(Path(resume) if isinstance(resume, str) else self.output_dir / LAST)

    def _set_up_runtime(self) -> None:
        """Threads, determinism, precision and seed; a missing tensorboard stops here, before any work."""
        t = self.cfg.train
        if t.tensorboard:
            summary_writer_class()
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        self.precision: Precision = choose_precision(t.amp, t.channels_last, self.ctx.device)
        if self.ctx.is_main:
            logger.info(self.precision.describe())
        seed_everything(t.seed)

    def _build_datasets(self) -> Any:
        """The task, the preflight check of both splits, and the datasets; returns the raw train set."""
        cfg = self.cfg
        root = prepare_data_root(cfg.data, self.ctx, (cfg.data.train_split, cfg.data.val_split))
        self.task: Task = make_task(cfg, root)
        splits = {"train": cfg.data.train_split, "val": cfg.data.val_split}
        self.preflight = run_preflight_once(root, splits, self.task.check_iou_type, cfg.data.skip_invalid)
        self.task.exclusions = self.preflight.exclusions
        train_ds, self.val_ds = self.task.build_datasets()
        self.num_classes = _check_num_classes(cfg, self.task.category_map)
        self.train_ds = SeededAugmentation(train_ds, cfg.train.seed)
        return train_ds

    def _build_model(self) -> None:
        """The model with its initial weights, on its device and layout, wrapped in DDP if distributed."""
        cfg, t = self.cfg, self.cfg.train
        bb = cfg.model.backbone
        if bb.norm == "FrozenBN" and not bb.weights and not cfg.model.weights and self.ctx.is_main:
            logger.warning("model.backbone.norm is FrozenBN but no weights are given: the trunk's "
                           "norms stay at identity; fill model.backbone.weights or use BN/GN")
        seed_everything(t.seed)  # identical initial weights on every rank and every run
        model = self.task.build_model(self.num_classes)
        self.init_records: dict[str, Any] = {}
        if bb.weights:
            report = init_trunk(self.task.trunk(model), bb.weights, bb.name)
            self.init_records["backbone_weights"] = report_record(report)
        if cfg.model.weights:
            self.init_records["model_weights"] = report_record(init_model(model, cfg.model.weights))
        if t.fast_roi_align:
            use_gather_roi_align(model)  # CPU only; CUDA keeps torchvision's kernel
        if t.sync_bn and self.ctx.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.ctx.device)
        if self.precision.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model_without_ddp = model
        if self.ctx.distributed:
            ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        self.model = model

    def _build_loaders_and_optimizer(self, train_ds: Any) -> None:
        """Loaders, the iteration budget, optimizer, schedule and (fp16 on CUDA) the grad scaler."""
        cfg, t = self.cfg, self.cfg.train
        self.train_loader, self.batch_sampler = build_train_loader(
            self.train_ds, cfg.data, self.ctx, self.task.collate, t.seed,
            self.task.aspect_ratios(train_ds) if cfg.data.aspect_ratio_grouping else None,
        )
        self.val_loader = build_eval_loader(self.val_ds, cfg.data, self.ctx, self.task.collate)
        self.iters_per_epoch = self.batch_sampler.num_full_batches()
        self.total_iters = t.epochs * self.iters_per_epoch
        if t.max_iters is not None:
            self.total_iters = min(self.total_iters, t.max_iters)
        self.train_seconds = 0.0  # before the scheduler: a time-horizon schedule reads it
        self._signals: StopSignals | None = None
        self.optimizer = build_optimizer(self.model_without_ddp, cfg.optim, cfg.data.batch_size,
                                         self.task.trunk_prefixes)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, self.iters_per_epoch, self.total_iters,
                                         self._time_progress if t.time_limit_s else None)
        use_scaler = self.precision.amp == "fp16" and self.ctx.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    def _open_run_folder(self) -> None:
        """The metrics writer (rank 0 writes), the resolved config and the category map."""
        t = self.cfg.train
        mirror = TensorBoardMirror(self.output_dir / TENSORBOARD_DIR) if t.tensorboard and self.ctx.is_main else None
        self.metrics = JsonlWriter(self.output_dir / METRICS_NAME if self.ctx.is_main else None, mirror)
        if self.ctx.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.output_dir / CONFIG_NAME, config_to_yaml(self.cfg))
            atomic_write_text(self.output_dir / "category_map.json",
                              json.dumps(self.task.category_map.to_dict(), indent=1))

    def _time_progress(self) -> float:
        """Spent fraction of ``train.time_limit_s`` (the same on every rank: rank 0's clock)."""
        return min(self.train_seconds / self.cfg.train.time_limit_s, 1.0)

    # ------------------------------------------------------------------ checkpoints

    def _state(self) -> dict[str, Any]:
        rng = D.all_gather_object(capture_rng_state())
        return {
            "model": self.model_without_ddp.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "iter_in_epoch": self.iter_in_epoch,
            "global_iter": self.global_iter,
            "train_seconds": self.train_seconds,
            "best": dict(self.best),
            "metrics": dict(self.last_metrics),
            "rng": rng,
            "world_size": self.ctx.world_size,
            "task": self.cfg.task,
            "config": self.cfg.model_dump(mode="json"),
            "category_map": self.task.category_map.to_dict(),
        }

    def save(self, *names: str) -> None:
        """Write the training state to each of ``names`` in the run folder (rank 0, atomic)."""
        state = self._state()  # collective: every rank takes part
        if self.ctx.is_main:
            for name in names:
                save_checkpoint(self.output_dir / name, state)
                atomic_write_text(self.output_dir / CONFIG_NAME, config_to_yaml(self.cfg))
        D.barrier()

    def _resume(self, path: Path) -> None:
        if not path.is_file():
            raise CheckpointError(f"--resume: no checkpoint at {path} (run without --resume to start)")
        state = load_checkpoint(path, map_location=self.ctx.device)
        if state.get("task") != self.cfg.task:
            raise CheckpointError(f"{path} is a {state.get('task')!r} checkpoint, not {self.cfg.task!r}")
        self.model_without_ddp.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.iter_in_epoch = int(state["iter_in_epoch"])
        self.global_iter = int(state["global_iter"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.best = dict(state.get("best") or self.best)
        self.last_metrics = dict(state.get("metrics") or {})
        rng = state.get("rng") or []
        if len(rng) == self.ctx.world_size:
            restore_rng_state(rng[self.ctx.rank])
        else:
            logger.warning("checkpoint has RNG states of %d processes, this run has %d; reseeding",
                           len(rng), self.ctx.world_size)
            seed_everything(self.cfg.train.seed + self.global_iter + self.ctx.rank)
        if self.ctx.is_main:
            logger.info("resumed from %s at epoch %d, batch %d (iteration %d)", path, self.epoch,
                        self.iter_in_epoch, self.global_iter)
            self.metrics.write({"type": "resume", "epoch": self.epoch, "iter_in_epoch": self.iter_in_epoch,
                                "global_iter": self.global_iter, "checkpoint": str(path)})

    # ------------------------------------------------------------------ loop

    def _check_finite(self, losses: dict[str, torch.Tensor], total: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(total.detach()).all())
        if D.any_rank_true(bad, self.ctx.device):
            terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
            raise NonFiniteLossError(
                f"non-finite loss at iteration {self.global_iter + 1} (epoch {self.epoch + 1}, "
                f"batch {self.iter_in_epoch + 1}) on rank {self.ctx.rank if bad else 'other'}: {terms}; "
                f"stopping. The last good checkpoint is {self.output_dir / LAST}"
            )

    def _step(self, batch: Any) -> dict[str, float]:
        t = self.cfg.train
        self.model.train()
        with _autocast(self.precision.amp, self.ctx.device):
            total, losses = self.task.loss_terms(self.model, batch, self.ctx.device)
        self._check_finite(losses, total)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        log: dict[str, float] = {}
        want_norms = t.grad_norm_per_stage and (self.global_iter + 1) % t.log_every == 0
        if self.cfg.optim.clip_grad_norm or want_norms:
            self.scaler.unscale_(self.optimizer)
        if want_norms:
            log.update(grad_norms_per_stage(self.model, self.task.trunk_prefixes))
        if self.cfg.optim.clip_grad_norm:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.clip_grad_norm)
            log["grad_norm"] = float(norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        log["loss"] = float(total.detach())
        log.update({k: float(v.detach()) for k, v in losses.items()})
        return log

    def _stop_requested(self) -> bool:
        """Whether to stop now (``max_iters``, ``time_limit_s``); raises :class:`Preempted` after
        writing ``last.pth`` when any rank got SIGTERM/SIGINT. Also makes rank 0's training clock
        every rank's, so the time limit and a time-horizon schedule act identically on all ranks."""
        t = self.cfg.train
        received = self._signals.received if self._signals is not None else None
        clocks = D.all_gather_object((self.train_seconds, received))  # one collective for both
        self.train_seconds = float(clocks[0][0])
        signum = next((sig for _, sig in clocks if sig is not None), None)
        if signum is not None:
            self._stop_for_signal(signum)
        stop = t.max_iters is not None and self.global_iter >= t.max_iters
        if t.time_limit_s is not None and self.train_seconds >= t.time_limit_s:
            stop = True
        return stop

    def _stop_for_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        self.save(LAST)
        checkpoint = str(self.output_dir / LAST)
        if self.ctx.is_main:
            self.metrics.write({"type": "stop", "signal": name, "epoch": self.epoch,
                                "iter_in_epoch": self.iter_in_epoch, "global_iter": self.global_iter,
                                "train_seconds": round(self.train_seconds, 2), "checkpoint": checkpoint})
        raise Preempted(name, self.global_iter, checkpoint)

    def _eta_seconds(self, sec_per_iter: float) -> float:
        """Training seconds left: the remaining iterations, capped by the time limit."""
        eta = sec_per_iter * (self.total_iters - self.global_iter)
        if self.cfg.train.time_limit_s is not None:
            eta = min(eta, max(self.cfg.train.time_limit_s - self.train_seconds, 0.0))
        return eta

    def evaluate(self) -> tuple[dict[str, float], str]:
        """Evaluate on the validation split (all ranks take part); logs on rank 0."""
        start = time.time()
        # The fast inference path (folded norms, fused convs) on a copy; training weights stay as they are.
        fast_model = optimize_for_inference(self.model_without_ddp, inplace=False)
        metrics, table = self.task.evaluate(fast_model, self.val_loader, self.ctx)
        self.last_metrics = metrics
        if self.ctx.is_main:
            record = {"type": "eval", "epoch": self.epoch, "global_iter": self.global_iter,
                      "eval_seconds": round(time.time() - start, 2), **metrics}
            self.metrics.write(record)
            # the headline only: per-class numbers are in metrics.jsonl, and the tools print the
            # last evaluation's whole table when the run ends
            headline = table.partition("\n")[0]
            tqdm.write(f"evaluation after epoch {self.epoch} (iteration {self.global_iter}): {headline}")
        return metrics, table

    def _update_best(self, metrics: dict[str, float]) -> bool:
        name = self.best["metric"]
        if name not in metrics:
            raise ConfigError(f"eval.best_metric {name!r} is not among the metrics: {sorted(metrics)}")
        value = metrics[name]
        if value is None or not math.isfinite(value):
            return False
        if self.best["value"] is None or value > self.best["value"]:
            self.best = {"metric": name, "value": value, "epoch": self.epoch}
            return True
        return False

    def fit(self) -> RunResult:
        """Train to the end (or ``max_iters`` / ``time_limit_s``), evaluate, draw; returns results.

        SIGTERM / SIGINT stop it after the current iteration with a resumable ``last.pth``
        (:class:`Preempted`); a second signal ends the process at once. The TensorBoard writer
        (``train.tensorboard``) is closed however it ends.
        """
        try:
            return self._fit()
        finally:
            self.metrics.close()

    def _fit(self) -> RunResult:
        self._log_start()
        self._smooth = SmoothedValues(self.cfg.train.log_every)
        self._cpu0 = cpu_seconds()
        self._table = ""
        self._evaluated_at = -1
        self._progress = tqdm(total=self.total_iters, initial=self.global_iter, disable=not self.ctx.is_main,
                              desc="train", dynamic_ncols=True, unit="it")
        with StopSignals() as self._signals:
            try:
                stopped = self._stop_requested() if self.global_iter else False
                while self.epoch < self.cfg.train.epochs and not stopped:
                    stopped = self._train_epoch()
                    if not stopped:
                        self._end_of_epoch()
            finally:
                self._progress.close()
                self._signals = None
        if self._evaluated_at != self.global_iter:
            self._evaluate_and_save()
        png = self._draw_and_log_final()
        D.barrier()
        return RunResult(self.output_dir, dict(self.last_metrics), dict(self.best), self.global_iter,
                         self.train_seconds, png, self._table)

    def _log_start(self) -> None:
        if self.ctx.is_main:
            self.metrics.write({"type": "preflight", **self.preflight.record()})
            n_params = sum(p.numel() for p in self.model_without_ddp.parameters())
            self.metrics.write({"type": "start", "world_size": self.ctx.world_size,
                                "device": str(self.ctx.device), "iters_per_epoch": self.iters_per_epoch,
                                "total_iters": self.total_iters, "params": n_params,
                                "train_images": len(self.train_ds), "val_images": len(self.val_ds),
                                **self.precision.record(), **self.init_records})

    def _train_epoch(self) -> bool:
        """Train from the current position to the end of the epoch or a stop; True if stopped."""
        t = self.cfg.train
        self.train_ds.epoch = self.epoch
        self.batch_sampler.set_epoch(self.epoch)
        self.batch_sampler.set_start_batch(self.iter_in_epoch)
        tic = time.time()
        for batch in self._batches():
            log = self._step(batch)
            self.iter_in_epoch += 1
            self.global_iter += 1
            now = time.time()
            self.train_seconds += now - tic
            tic = now
            self._smooth.update({k: v for k, v in log.items() if not k.startswith("grad_norm")})
            self._progress.update(1)
            if self.global_iter % t.log_every == 0 or self.global_iter == 1:
                self._log_train(log)
            if self.iter_in_epoch >= self.iters_per_epoch:
                self.epoch += 1
                self.iter_in_epoch = 0
            if t.checkpoint_every_iters and self.global_iter % t.checkpoint_every_iters == 0:
                self.save(LAST)
            if self._stop_requested():
                return True
            if self.iter_in_epoch == 0:
                return False
        if self.iter_in_epoch != 0:  # loader ran short (should not happen)
            self.epoch += 1
            self.iter_in_epoch = 0
        return False

    def _batches(self) -> Iterator[Any]:
        """The loader's batches. A file that became unreadable after the preflight (without
        ``data.skip_invalid``) stops the run, with ``last.pth`` written at the last finished
        iteration first (single process; under DDP the last periodic checkpoint stands)."""
        batches = iter(self.train_loader)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (ImageLoadError, FileNotFoundError, CocoFormatError) as exc:
                self._stop_for_data_fault(exc)
            yield batch

    def _stop_for_data_fault(self, exc: Exception) -> None:
        detail = str(exc).strip().splitlines()[-1]  # a worker's error carries its traceback as text
        saved = "the last periodic checkpoint stands"
        if not self.ctx.distributed:
            self.save(LAST)
            saved = f"{self.output_dir / LAST} was written"
        raise DatasetError(
            f"{detail}\ntraining stopped after iteration {self.global_iter}; {saved}. Fix or remove the "
            "file (or set data.skip_invalid=true to skip such files), then rerun with --resume") from None

    def _log_train(self, log: dict[str, float]) -> None:
        """A ``train`` line (losses averaged over ranks) and the progress bar's postfix."""
        vals = D.reduce_mean(log, self.ctx.device)
        if not self.ctx.is_main:
            return
        lr = self.optimizer.param_groups[0]["lr"]
        rate = self.train_seconds / max(self.global_iter, 1)
        self.metrics.write({
            "type": "train", "epoch": self.epoch + 1, "iter": self.iter_in_epoch,
            "global_iter": self.global_iter, "lr": lr, "sec_per_iter": round(rate, 4),
            "cpu_seconds": round(cpu_seconds() - self._cpu0, 1),
            "eta_s": round(self._eta_seconds(rate), 1), **vals})
        if self.cfg.train.time_limit_s is not None and rate > 0:  # the bar ends where the time limit will
            self._progress.total = min(self.total_iters, self.global_iter + round(self._eta_seconds(rate) / rate))
        loss = {k: v for k, v in self._smooth.medians().items() if k == "loss"}
        self._progress.set_postfix_str(format_metrics({"ep": self.epoch, "lr": lr, **loss}, 3))

    def _end_of_epoch(self) -> None:
        """Evaluate every ``eval_every`` epochs (and after the last), then checkpoint."""
        t = self.cfg.train
        if self.epoch % t.eval_every == 0 or self.epoch == t.epochs:
            self._evaluate_and_save()
        else:
            self.save(LAST)

    def _evaluate_and_save(self) -> None:
        metrics, self._table = self.evaluate()
        self._evaluated_at = self.global_iter
        self.save(*((BEST, LAST) if self._update_best(metrics) else (LAST,)))

    def _draw_and_log_final(self) -> Path | None:
        if not self.ctx.is_main:
            return None
        fast_model = optimize_for_inference(self.model_without_ddp, inplace=False)
        png = self.task.draw(fast_model, self.val_ds, self.output_dir / PNG_NAME, self.ctx.device)
        self.metrics.write({"type": "final", "epoch": self.epoch, "global_iter": self.global_iter,
                            "train_seconds": round(self.train_seconds, 2),
                            "cpu_seconds": round(cpu_seconds() - self._cpu0, 1),
                            "best": self.best, **self.last_metrics})
        return png


def train(cfg: TrainConfig, output_dir: str | Path, *, resume: bool | str = False) -> RunResult:
    """Run ``cfg`` end to end in this process (joining the torchrun group if there is one)."""
    return Trainer(cfg, output_dir, resume=resume).fit()
