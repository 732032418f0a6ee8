"""Joint training of one (variant, seed): resumable to the step, identical on resume, rank-0 writes.

``train`` is what a submitit job calls. Everything it writes lives in its run directory::

    runs/<variant>/seed<seed>/
        config.yaml            resolved config of this run
        checkpoints/last.pt    full state (model, optimiser, scheduler, EMA, RNGs, data position); atomic
        checkpoints/best.pt    weights with the best validation worst-group accuracy (model selection, §10.6)
        history.csv            one row per epoch (losses, accuracies, learning rate, throughput)
        metrics.json           final summary tracked by DVC

Deviations from the reference, on purpose: the cosine schedule is stepped per optimiser update (the reference
steps per epoch), validation uses the validation split (never test), and gradients are averaged across ranks
explicitly after backward (exact, and indifferent to the extra stage-1 pass of the equivariance loss).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from hardmask.config import Config, save_config
from hardmask.io import atomic_write_json, atomic_write_text
from hardmask.training.checkpoint import (
    capture_rng_state,
    describe_config_diff,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    training_config_diff,
)
from hardmask.training.distributed import DistContext, all_reduce_grads, barrier
from hardmask.training.sampler import ResumableSampler, SeededSamples

log = logging.getLogger("hardmask.train")


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, unusable output directory, ...)."""


@dataclass(frozen=True)
class TrainResult:
    variant: str
    seed: int
    run_dir: str
    epochs: int
    steps: int
    best_epoch: int
    best_val_worst_group_acc: float
    last_val_avg_acc: float
    last_val_worst_group_acc: float
    train_images_per_s: float
    mlflow_run_id: str | None


@dataclass
class LoopState:
    """The position of a run; saved in every checkpoint."""

    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0
    best_metric: float = -math.inf
    best_epoch: int = -1
    # running sums of the current epoch, so that a resumed epoch reports what an uninterrupted one would
    epoch_sums: dict[str, float] = field(default_factory=dict)
    epoch_batches: int = 0
    epoch_correct: int = 0
    epoch_seen: int = 0


# ----------------------------------------------------------------------------------------------- helpers
def resolve_device(cfg: Config, dist: DistContext) -> torch.device:
    if dist.device is not None:
        return torch.device(dist.device)
    if cfg.base.device == "cuda" or (cfg.base.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_context(cfg: Config, device: torch.device) -> contextlib.AbstractContextManager:
    amp = cfg.optim.amp
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext()  # fp32 on CPU: exact and reproducible
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast("cuda", dtype=dtype)


def cosine_with_warmup(total_updates: int, warmup_updates: int, min_ratio: float):
    def factor(update: int) -> float:
        if warmup_updates > 0 and update < warmup_updates:
            return (update + 1) / warmup_updates
        progress = (update - warmup_updates) / max(1, total_updates - warmup_updates)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


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


def make_loader(dataset: Any, batch_size: int, num_workers: int, pin: bool, sampler=None) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin,
        drop_last=sampler is not None,
        persistent_workers=False,
        # its own generator: creating an iterator must not draw from the global RNG, or a resumed epoch would
        # see different Gumbel noise than an uninterrupted one
        generator=torch.Generator(),
    )


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, device: torch.device, variant: str) -> dict[str, float]:
    """Average and worst-group accuracy on the validation split (groups as the dataset defines them)."""
    from hardmask.evaluation.metrics import group_accuracy_table

    model.eval()
    preds, labels, groups = [], [], []
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        fg = batch["fg_mask"].to(device) if variant == "oracle_mask" else None
        out = model(images, fg_mask=fg)
        preds.append(out.logits.argmax(-1).cpu())
        labels.append(batch["label"])
        groups.append(batch["group"])
    pred, label, group = (torch.cat(t).numpy() for t in (preds, labels, groups))
    table = group_accuracy_table(pred, label, group)
    return {"val_avg_acc": float((pred == label).mean()), "val_worst_group_acc": float(table["acc"].min())}


class _Progress:
    """tqdm on a terminal, plain periodic log lines otherwise (SLURM logs, DVC)."""

    def __init__(self, total: int, initial: int, every: int, enabled: bool) -> None:
        self.every, self.enabled, self.t0, self.n0 = every, enabled, time.perf_counter(), initial
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="batch", dynamic_ncols=True)

    def update(self, step: int, total: int, info: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in info.items()}, refresh=False)
        elif step % self.every == 0 or step == total:
            rate = (step - self.n0) / max(1e-9, time.perf_counter() - self.t0)
            eta = (total - step) / max(rate, 1e-9)
            text = " ".join(f"{k}={v:.4g}" for k, v in info.items())
            log.info("batch %d/%d %s %.2f batch/s eta %.0fs", step, total, text, rate, eta)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------------------- train
def train(
    cfg: Config, variant: str, seed: int, run_dir: str | Path, dist: DistContext | None = None
) -> TrainResult:
    from hardmask.data import build_dataset
    from hardmask.losses import Criterion
    from hardmask.models import build_model
    from hardmask.models.backbone import input_normalization
    from hardmask.tracking import RunTracker
    from hardmask.training.optim import build_optimizer, build_param_groups

    dist = dist or DistContext.single()
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    last_path = ckpt_dir / "last.pt"
    if dist.is_main:
        check_writable(ckpt_dir)
    ckpt = load_checkpoint(last_path, map_location="cpu") if last_path.exists() else None
    if ckpt is not None:
        check_resumable(ckpt, cfg, variant, seed, last_path)
    if dist.is_main:
        save_config(cfg, run_dir / "config.yaml")
    device = resolve_device(cfg, dist)
    if device.type == "cpu" and cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    # Identical initial weights on every rank; training noise (Gumbel, dropout) differs per rank afterwards.
    seed_everything(seed)
    probe = build_dataset(cfg, "train", train=False)
    model = build_model(variant, cfg.model, num_classes=probe.num_classes, image_size=cfg.data.image_size)
    model.to(device)
    mean, std = input_normalization(model)
    train_set = build_dataset(cfg, "train", train=True, mean=mean, std=std)
    val_set = build_dataset(cfg, "val", train=False, mean=mean, std=std)

    loader_cfg = cfg.data.loader
    sampler = ResumableSampler(len(train_set), loader_cfg.batch_size, seed, dist.rank, dist.world_size)
    pin = loader_cfg.pin_memory and device.type == "cuda"
    train_loader = make_loader(
        SeededSamples(train_set, seed), loader_cfg.batch_size, loader_cfg.num_workers, pin, sampler
    )
    val_loader = make_loader(val_set, loader_cfg.eval_batch_size, loader_cfg.num_workers, pin)

    accum = cfg.optim.grad_accumulation
    updates_per_epoch = max(1, sampler.batches_per_epoch // accum)
    total_updates = updates_per_epoch * cfg.optim.epochs
    groups = build_param_groups(
        model, variant, cfg, steps_per_epoch=updates_per_epoch, world_size=dist.world_size
    )
    optimizer = build_optimizer(groups, cfg)
    warmup = round(cfg.optim.warmup_epochs * updates_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(total_updates, warmup, cfg.optim.min_lr_ratio)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.optim.amp == "fp16")
    ema = None
    if cfg.optim.ema_decay:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.optim.ema_decay)
    criterion = Criterion(cfg.loss, variant)
    trainable = [p for p in model.parameters() if p.requires_grad]

    state, history, mlflow_run_id = LoopState(), [], None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        state = LoopState(**ckpt["loop"])
        history = list(ckpt["history"])
        mlflow_run_id = ckpt.get("mlflow_run_id")
        restore_rng_state(ckpt["rng"][min(dist.rank, len(ckpt["rng"]) - 1)])
        log.info(
            "resumed %s from epoch %d batch %d (step %d)",
            last_path,
            state.epoch,
            state.batch_in_epoch,
            state.global_step,
        )
    else:
        torch.manual_seed(seed * 1000 + dist.rank)

    tracker = RunTracker.for_training(
        cfg, variant=variant, seed=seed, run_dir=run_dir, run_id=mlflow_run_id, enabled=dist.is_main
    )
    tracker.log_params({"lr_scaling": groups.scaling_note, **groups.summary()})

    def checkpoint(path: Path) -> None:
        rng = [capture_rng_state()]
        if dist.world_size > 1:  # every rank's RNG, so that every rank can resume
            gathered: list[Any] = [None] * dist.world_size
            torch.distributed.all_gather_object(gathered, rng[0])
            rng = gathered
        if dist.is_main:
            save_checkpoint(
                path,
                {
                    "variant": variant,
                    "seed": seed,
                    "config": cfg.dump(),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "loop": asdict(state),
                    "history": history,
                    "rng": rng,
                    "mlflow_run_id": tracker.run_id,
                },
            )

    total_batches = sampler.batches_per_epoch * cfg.optim.epochs
    progress = _Progress(
        total_batches,
        state.epoch * sampler.batches_per_epoch + state.batch_in_epoch,
        cfg.train.log_every_steps,
        dist.is_main,
    )
    images_seen, train_seconds = 0, 0.0
    try:
        while state.epoch < cfg.optim.epochs:
            sampler.set_position(state.epoch, state.batch_in_epoch)
            model.train()
            t_epoch = time.perf_counter()
            for batch in train_loader:
                images = batch["image"].to(device, non_blocking=True)
                labels = batch["label"].to(device, non_blocking=True)
                fg = batch["fg_mask"].to(device, non_blocking=True) if variant == "oracle_mask" else None
                with autocast_context(cfg, device):
                    out = model(images, fg_mask=fg)
                    losses = criterion(model, images, labels, out)
                if not torch.isfinite(losses.total):
                    terms = {k: float(v) for k, v in losses.terms.items()}
                    raise TrainingError(
                        f"non-finite loss at epoch {state.epoch} batch {state.batch_in_epoch} "
                        f"(terms {terms}); the last good checkpoint {last_path} is kept"
                    )
                scaler.scale(losses.total / accum).backward()
                state.batch_in_epoch += 1
                if state.batch_in_epoch % accum == 0:
                    if dist.world_size > 1:
                        all_reduce_grads(trainable)
                    scaler.unscale_(optimizer)
                    if cfg.optim.grad_clip > 0:
                        nn.utils.clip_grad_norm_(trainable, cfg.optim.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                    if ema is not None:
                        ema.update(model, step=state.global_step)
                    state.global_step += 1
                    updated = True
                else:
                    updated = False
                terms = {
                    "loss": float(losses.total.detach()),
                    **{k: float(v.detach()) for k, v in losses.terms.items()},
                }
                state.epoch_batches += 1
                state.epoch_seen += labels.numel()
                state.epoch_correct += int((out.logits.argmax(-1) == labels).sum())
                for name, value in terms.items():
                    state.epoch_sums[name] = state.epoch_sums.get(name, 0.0) + value
                if updated and state.global_step % cfg.train.log_every_steps == 0:
                    lr = optimizer.param_groups[0]["lr"]
                    tracker.log_metrics(
                        {f"train/{k}": v for k, v in terms.items()} | {"train/lr": lr}, step=state.global_step
                    )
                if updated and state.global_step % cfg.train.checkpoint_every_steps == 0:
                    checkpoint(last_path)
                progress.update(
                    state.epoch * sampler.batches_per_epoch + state.batch_in_epoch,
                    total_batches,
                    {"loss": terms["loss"]},
                )
            epoch_seconds = time.perf_counter() - t_epoch
            seen = state.epoch_seen
            images_seen += seen * dist.world_size
            train_seconds += epoch_seconds

            eval_model = ema.module if ema is not None else model
            val = validate(eval_model, val_loader, device, variant) if dist.is_main else {}
            row = {
                "epoch": state.epoch + 1,
                "step": state.global_step,
                **{f"train_{k}": v / max(1, state.epoch_batches) for k, v in state.epoch_sums.items()},
                "train_acc": state.epoch_correct / max(1, seen),
                "lr": optimizer.param_groups[0]["lr"],
                "images_per_s": seen * dist.world_size / max(epoch_seconds, 1e-9),
                **val,
            }
            history.append(row)
            state.epoch += 1
            state.batch_in_epoch = 0
            state.epoch_sums, state.epoch_batches, state.epoch_correct, state.epoch_seen = {}, 0, 0, 0
            if dist.is_main:
                tracker.log_metrics(
                    {f"epoch/{k}": float(v) for k, v in row.items() if k != "epoch"}, step=state.global_step
                )
                if val["val_worst_group_acc"] > state.best_metric:
                    state.best_metric, state.best_epoch = val["val_worst_group_acc"], state.epoch
                    save_checkpoint(
                        ckpt_dir / "best.pt",
                        {
                            "variant": variant,
                            "seed": seed,
                            "config": cfg.dump(),
                            "epoch": state.epoch,
                            "model": eval_model.state_dict(),
                            "val": val,
                            "mlflow_run_id": tracker.run_id,
                        },
                    )
                log.info(
                    "epoch %d/%d %s",
                    state.epoch,
                    cfg.optim.epochs,
                    " ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)),
                )
            if (
                dist.world_size > 1
            ):  # best-metric decisions are rank 0's; share them so every rank saves alike
                obj = [asdict(state)]
                torch.distributed.broadcast_object_list(obj, src=0)
                state = LoopState(**obj[0])
            checkpoint(last_path)
            barrier(dist)
    except BaseException:
        progress.close()
        tracker.end("FAILED")
        raise
    progress.close()

    final = history[-1] if history else {}
    result = TrainResult(
        variant=variant,
        seed=seed,
        run_dir=str(run_dir),
        epochs=cfg.optim.epochs,
        steps=state.global_step,
        best_epoch=state.best_epoch,
        best_val_worst_group_acc=float(state.best_metric),
        last_val_avg_acc=float(final.get("val_avg_acc", float("nan"))),
        last_val_worst_group_acc=float(final.get("val_worst_group_acc", float("nan"))),
        train_images_per_s=images_seen / max(train_seconds, 1e-9) if train_seconds else float("nan"),
        mlflow_run_id=tracker.run_id,
    )
    if dist.is_main:
        atomic_write_text(run_dir / "history.csv", pd.DataFrame(history).to_csv(index=False))
        atomic_write_json(run_dir / "metrics.json", asdict(result))
        tracker.log_artifacts([run_dir / "config.yaml", run_dir / "metrics.json", run_dir / "history.csv"])
        tracker.set_tags({"best_checkpoint": str((ckpt_dir / "best.pt").resolve())})
        tracker.end("FINISHED")
    if os.environ.get("HARDMASK_DEBUG_TRAIN"):
        log.info("result %s", result)
    return result
