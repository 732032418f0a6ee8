"""Joint training of one (variant, seed): resumable to the step, identical on resume, rank-0 writes.

``train`` is what a submitit job calls. It writes the run directory of :mod:`hardmask.layout`
(``config.yaml``, ``checkpoints/{last,best}.pt``, ``history.csv``, ``metrics.json``); the step itself is
:class:`~hardmask.training.trainer.Trainer`'s.

- ``checkpoints/last.pt``: full state (model, optimiser, scheduler, EMA, RNGs, data position), atomic, every
  ``train.checkpoint_every_steps`` updates and at every epoch end;
- ``checkpoints/best.pt``: the weights with the best validation worst-group accuracy (model selection on the
  validation split, never test: method spec §10.6);
- ``history.csv``: one row per epoch (losses, accuracies, learning rate); no timing, which goes to the epoch's
  log line and MLflow (throughput, waiting for data, validation).

Deviations from the reference, on purpose: the cosine schedule is stepped per optimiser update, validation
uses the validation split, and gradients are averaged across ranks explicitly after backward (exact, and
indifferent to the extra stage-1 pass of the equivariance loss).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from hardmask.checkpoint import (
    capture_rng_state,
    describe_config_diff,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    training_config_diff,
    training_key,
)
from hardmask.config import Config, save_config
from hardmask.console import duration
from hardmask.data import build_dataset, make_loader
from hardmask.io import atomic_write_json, atomic_write_text
from hardmask.layout import RunFiles
from hardmask.metrics import group_accuracy_table
from hardmask.models import Variant, build_model, get_variant
from hardmask.models.backbone import input_normalization
from hardmask.runtime import resolve_device, seed_everything
from hardmask.tracking import RunTracker, end_status
from hardmask.training.distributed import DistContext, barrier
from hardmask.training.result import TrainResult
from hardmask.training.sampler import ResumableSampler, SeededSamples
from hardmask.training.trainer import LoopState, Trainer, TrainingError

log = logging.getLogger("hardmask.train")

__all__ = ["TrainResult", "TrainingError", "train", "validate"]


# ----------------------------------------------------------------------------------------------- helpers
def check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-probe"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as exc:
        raise TrainingError(f"{run_dir}: output directory is not writable ({exc.strerror or exc})") from exc


def check_resumable(ckpt: dict[str, Any], cfg: Config, variant: str, seed: int, path: Path) -> None:
    """A checkpoint may be continued only by the run that wrote it, under the same training config."""
    if ckpt.get("variant") != variant or ckpt.get("seed") != seed:
        raise TrainingError(
            f"{path}: belongs to {ckpt.get('variant')}/seed{ckpt.get('seed')}, not {variant}/seed{seed}"
        )
    diff = training_config_diff(ckpt.get("config", {}), cfg.dump())
    if diff:
        raise TrainingError(
            f"{path}: was trained with a different configuration ({describe_config_diff(diff)}); resuming "
            "it would mix two experiments. Move the run directory away to train afresh (the train stage "
            "does this itself: hardmask.cluster.supersede_stale_runs)."
        )


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, device: torch.device, spec: Variant) -> dict[str, float]:
    """Average and worst-group accuracy on the validation split (groups as the dataset defines them)."""
    model.eval()
    preds, labels, groups = [], [], []
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        fg = batch["fg_mask"].to(device) if spec.takes_fg_mask else None
        out = model(images, fg_mask=fg)
        preds.append(out.logits.argmax(-1).cpu())
        labels.append(batch["label"])
        groups.append(batch["group"])
    pred, label, group = (torch.cat(t).numpy() for t in (preds, labels, groups))
    table = group_accuracy_table(pred, label, group)
    return {"val_avg_acc": float((pred == label).mean()), "val_worst_group_acc": float(table["acc"].min())}


@dataclass(frozen=True)
class EpochTime:
    """Where an epoch's wall-clock time went, as the epoch line and MLflow report it."""

    seconds: float  # the training batches: the loop over the loader, validation not included
    data_seconds: float  # of which it waited for the next batch (with loader workers: what they did not hide)
    validation_seconds: float = 0.0

    @property
    def data_share(self) -> float:
        return self.data_seconds / self.seconds if self.seconds > 0 else 0.0


class Progress:
    """What a run tells a person: a tqdm bar on a terminal, otherwise (a job's log file, SLURM, DVC) a line
    every ``every`` batches and one per epoch, each starting with the run's name (``two_stage_hard/seed0``),
    which is how the train stage finds a job's latest line (:mod:`hardmask.cluster.job`)."""

    def __init__(self, name: str, *, total: int, done: int, every: int, enabled: bool) -> None:
        self.name, self.total, self.every, self.enabled = name, total, every, enabled
        self.start, self.done_at_start = time.perf_counter(), done
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="batch", desc=name, dynamic_ncols=True)

    def eta(self, done: int) -> float:
        """Seconds left at the pace of this process so far (validation included)."""
        pace = (time.perf_counter() - self.start) / max(1, done - self.done_at_start)
        return (self.total - done) * pace

    def batch(self, done: int, epoch: int, epochs: int, loss: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({"epoch": f"{epoch + 1}/{epochs}", "loss": f"{loss:.3g}"}, refresh=False)
        elif done % self.every == 0:
            log.info(
                "%s batch %d/%d (epoch %d/%d) loss %.4g, ETA %s",
                self.name, done, self.total, epoch + 1, epochs, loss, duration(self.eta(done)),
            )  # fmt: skip

    def epoch(
        self, done: int, row: dict[str, Any], epochs: int, images_per_s: float, spent: EpochTime
    ) -> None:
        """The epoch's line: loss and its terms, train and validation accuracies, throughput, where the
        epoch's time went, ETA."""
        if not self.enabled:
            return
        terms = ", ".join(
            f"{k.removeprefix('train_')} {v:.3g}"
            for k, v in row.items()
            if k.startswith("train_") and k not in ("train_loss", "train_acc")
        )
        text = (
            f"{self.name} epoch {row['epoch']}/{epochs}: loss {row.get('train_loss', float('nan')):.4g}"
            f" ({terms}), train acc {row.get('train_acc', float('nan')):.3f},"
            f" val acc {row.get('val_avg_acc', float('nan')):.3f}"
            f" worst-group {row.get('val_worst_group_acc', float('nan')):.3f},"
            f" {images_per_s:.0f} img/s, waiting for data {spent.data_share:.0%},"
            f" validation {spent.validation_seconds:.1f} s, ETA {duration(self.eta(done))}"
        )
        if self.bar is not None:
            self.bar.write(text)
        else:
            log.info("%s", text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------------------- train
class _Run:
    """One run's data, trainer and files, set up for :func:`train`."""

    def __init__(self, cfg: Config, variant: str, seed: int, run_dir: Path, dist: DistContext) -> None:
        self.cfg, self.variant, self.seed, self.dist = cfg, variant, seed, dist
        self.files = RunFiles(Path(run_dir))
        self.spec = get_variant(variant)
        if dist.is_main:
            check_writable(self.files.checkpoints)
        last = self.files.last
        self.resume_from = load_checkpoint(last, map_location="cpu") if last.exists() else None
        if self.resume_from is not None:
            check_resumable(self.resume_from, cfg, variant, seed, last)
        if dist.is_main:
            save_config(cfg, self.files.config)
        self.device = (
            torch.device(dist.device) if dist.device else resolve_device(cfg.base.device, dist.local_rank)
        )
        if self.device.type == "cpu" and cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

        # Identical initial weights on every rank; training noise (Gumbel, dropout) differs per rank
        # afterwards.
        seed_everything(seed)
        probe = build_dataset(cfg, "train", train=False)
        model = build_model(variant, cfg.model, num_classes=probe.num_classes, image_size=cfg.data.image_size)
        model.to(self.device)
        mean, std = input_normalization(model)
        train_set = build_dataset(cfg, "train", train=True, mean=mean, std=std)
        val_set = build_dataset(cfg, "val", train=False, mean=mean, std=std)
        if not self.spec.takes_fg_mask:  # training reads ground truth only as the oracles' input
            train_set.drop_masks()
            val_set.drop_masks()
        elif not (train_set.has_masks and val_set.has_masks):
            raise TrainingError(
                f"{variant} takes the ground-truth foreground mask as input, but data.dataset="
                f"{cfg.data.dataset} has no masks here: set data.mask_dir (docs/datasets.md), or drop "
                f"{variant} from train.variants"
            )

        loader = cfg.data.loader
        self.sampler = ResumableSampler(len(train_set), loader.batch_size, seed, dist.rank, dist.world_size)
        pin = loader.pin_memory and self.device.type == "cuda"
        self.train_loader = make_loader(
            SeededSamples(train_set, seed),
            loader.batch_size,
            num_workers=loader.num_workers,
            pin_memory=pin,
            sampler=self.sampler,
        )
        self.val_loader = make_loader(
            val_set, loader.eval_batch_size, num_workers=loader.num_workers, pin_memory=pin
        )
        self.trainer = Trainer(
            cfg,
            variant,
            model,
            self.device,
            batches_per_epoch=self.sampler.batches_per_epoch,
            dist=dist,
            num_groups=train_set.group_spec.num_groups,
        )
        self.history: list[dict[str, Any]] = []
        if self.resume_from is not None:
            ckpt = self.resume_from
            self.trainer.load_state_dict(ckpt)
            self.history = list(ckpt["history"])
            restore_rng_state(ckpt["rng"][min(dist.rank, len(ckpt["rng"]) - 1)])
            state = self.trainer.state
            log.info(
                "resumed %s/seed%d from epoch %d, step %d (batch %d of the epoch; %s)",
                variant, seed, state.epoch, state.global_step, state.batch_in_epoch, last,
            )  # fmt: skip
        else:
            torch.manual_seed(seed * 1000 + dist.rank)
        self.tracker = RunTracker.for_training(
            cfg,
            variant=variant,
            seed=seed,
            run_key=training_key(cfg.dump(), variant, seed),
            resume=self.resume_from is not None,
            enabled=dist.is_main,
        )
        groups = self.trainer.param_groups
        self.tracker.log_params({"lr_scaling": groups.scaling_note, **groups.summary()})
        batches = self.sampler.batches_per_epoch
        self.progress = Progress(
            f"{variant}/seed{seed}",
            total=batches * cfg.optim.epochs,
            done=self.batches_done,
            every=cfg.train.log_every_steps,
            enabled=dist.is_main,
        )

    @property
    def state(self) -> LoopState:
        return self.trainer.state

    @property
    def batches_done(self) -> int:
        return self.state.epoch * self.sampler.batches_per_epoch + self.state.batch_in_epoch

    def save_last(self) -> None:
        """``last.pt``: the trainer's state, every rank's RNG (so that every rank can resume), the history."""
        rng = [capture_rng_state()]
        if self.dist.world_size > 1:
            gathered: list[Any] = [None] * self.dist.world_size
            torch.distributed.all_gather_object(gathered, rng[0])
            rng = gathered
        if self.dist.is_main:
            save_checkpoint(
                self.files.last,
                {
                    "variant": self.variant,
                    "seed": self.seed,
                    "config": self.cfg.dump(),
                    **self.trainer.state_dict(),
                    "history": self.history,
                    "rng": rng,
                },
            )

    def save_best(self, val: dict[str, float]) -> None:
        save_checkpoint(
            self.files.best,
            {
                "variant": self.variant,
                "seed": self.seed,
                "config": self.cfg.dump(),
                "epoch": self.state.epoch,
                "model": self.trainer.eval_model.state_dict(),
                "val": val,
            },
        )

    def run_epoch(self) -> EpochTime:
        """The remaining batches of the current epoch; returns their time."""
        cfg, state, trainer = self.cfg, self.state, self.trainer
        self.sampler.set_position(state.epoch, state.batch_in_epoch)
        trainer.model.train()
        start = asked = time.perf_counter()
        data_seconds = 0.0
        for batch in self.train_loader:
            data_seconds += time.perf_counter() - asked
            updates = state.global_step
            try:
                terms = trainer.step(batch)
            except TrainingError as exc:
                raise TrainingError(f"{exc}; the last good checkpoint {self.files.last} is kept") from None
            if state.global_step > updates:  # this batch completed an optimiser update
                if state.global_step % cfg.train.log_every_steps == 0:
                    metrics = {f"train/{k}": v for k, v in terms.items()} | {"train/lr": trainer.lr}
                    self.tracker.log_metrics(metrics, step=state.global_step)
                if state.global_step % cfg.train.checkpoint_every_steps == 0:
                    self.save_last()
            self.progress.batch(self.batches_done, state.epoch, cfg.optim.epochs, terms["loss"])
            asked = time.perf_counter()
        return EpochTime(seconds=time.perf_counter() - start, data_seconds=data_seconds)

    def end_epoch(self, epoch_time: EpochTime) -> int:
        """Validate, record the epoch, keep the best weights, checkpoint; returns the images trained on."""
        state, trainer, dist = self.state, self.trainer, self.dist
        stats = trainer.end_epoch()
        images = stats.pop("images") * dist.world_size
        started = time.perf_counter()
        val = validate(trainer.eval_model, self.val_loader, self.device, self.spec) if dist.is_main else {}
        epoch_time = replace(epoch_time, validation_seconds=time.perf_counter() - started)
        row = {"epoch": state.epoch, "step": state.global_step, **stats, "lr": trainer.lr, **val}
        self.history.append(row)  # a function of the run's inputs: no timing (that goes to MLflow only)
        if dist.is_main:
            images_per_s = images / max(epoch_time.seconds, 1e-9)
            logged = {f"epoch/{k}": float(v) for k, v in row.items() if k != "epoch"}
            timing = {
                "epoch/images_per_s": images_per_s,
                "epoch/train_s": epoch_time.seconds,
                "epoch/data_wait_s": epoch_time.data_seconds,
                "epoch/validation_s": epoch_time.validation_seconds,
            }
            self.tracker.log_metrics(logged | timing, step=state.global_step)
            if val["val_worst_group_acc"] > state.best_metric:
                state.best_metric, state.best_epoch = val["val_worst_group_acc"], state.epoch
                self.save_best(val)
            self.progress.epoch(self.batches_done, row, self.cfg.optim.epochs, images_per_s, epoch_time)
        if dist.world_size > 1:  # best-metric decisions are rank 0's; share them so every rank saves alike
            shared = [asdict(state)]
            torch.distributed.broadcast_object_list(shared, src=0)
            trainer.state = LoopState(**shared[0])
        self.save_last()
        barrier(dist)
        return images

    def result(self, images: int, seconds: float) -> TrainResult:
        final = self.history[-1] if self.history else {}
        state = self.state
        return TrainResult(
            variant=self.variant,
            seed=self.seed,
            run_dir=str(self.files.root),
            epochs=self.cfg.optim.epochs,
            steps=state.global_step,
            best_epoch=state.best_epoch,
            best_val_worst_group_acc=float(state.best_metric),
            last_val_avg_acc=float(final.get("val_avg_acc", float("nan"))),
            last_val_worst_group_acc=float(final.get("val_worst_group_acc", float("nan"))),
            train_images_per_s=images / max(seconds, 1e-9) if seconds else float("nan"),
            mlflow_run_id=self.tracker.run_id,
        )

    def finish(self, result: TrainResult) -> None:
        files = self.files
        atomic_write_text(files.history, pd.DataFrame(self.history).to_csv(index=False))
        atomic_write_json(files.metrics, result.record())
        self.tracker.log_metrics(
            {"train_images_per_s": result.train_images_per_s}, step=self.state.global_step
        )
        self.tracker.log_artifacts([files.config, files.metrics, files.history])
        if self.cfg.tracking.log_checkpoints and files.best.is_file():
            self.tracker.log_artifacts([files.best], artifact_path="checkpoints")
        self.tracker.end("FINISHED")


def train(
    cfg: Config, variant: str, seed: int, run_dir: str | Path, dist: DistContext | None = None
) -> TrainResult:
    """Train ``variant`` with training seed ``seed`` into ``run_dir``, continuing its ``last.pt`` if any."""
    run = _Run(cfg, variant, seed, Path(run_dir), dist or DistContext.single())
    images, seconds = 0, 0.0
    try:
        while run.state.epoch < cfg.optim.epochs:
            epoch_time = run.run_epoch()
            seconds += epoch_time.seconds
            images += run.end_epoch(epoch_time)
    except BaseException as exc:
        run.progress.close()
        run.tracker.end(end_status(type(exc)))
        raise
    run.progress.close()
    result = run.result(images, seconds)
    if run.dist.is_main:
        run.finish(result)
    return result
