"""The training step: the one place where a batch becomes an optimiser update.

:class:`Trainer` owns what a step changes (the model's weights, the optimiser, the learning-rate schedule, the
gradient scaler, the EMA copy) and where the run stands (:class:`LoopState`). The training loop
(:func:`hardmask.training.loop.train`), the benchmark (``python -m hardmask.bench``) and the experiment
scripts all call :meth:`Trainer.step`, so what is timed is what trains.

One step: forward under autocast, the variant's loss groups (``Variant.losses``), a stop on a non-finite
loss, backward (scaled by 1 / ``optim.grad_accumulation``); every ``grad_accumulation`` batches the update:
gradients averaged over ranks, unscaled, clipped to ``optim.grad_clip``, optimiser and schedule stepped (the
cosine schedule per update, not per epoch as in the reference), EMA updated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hardmask.config import Config
from hardmask.errors import HardmaskError
from hardmask.losses import Criterion
from hardmask.models import get_variant
from hardmask.runtime import autocast
from hardmask.training.distributed import DistContext, all_reduce_grads
from hardmask.training.optim import ParamGroups, build_optimizer, build_param_groups


class TrainingError(HardmaskError, RuntimeError):
    """Training cannot go on (non-finite loss, unusable output directory, ...)."""


@dataclass
class LoopState:
    """The position of a run; saved in every checkpoint."""

    epoch: int = 0  # epochs finished
    batch_in_epoch: int = 0  # batches of the current epoch done
    global_step: int = 0  # optimiser updates done
    best_metric: float = -math.inf  # model selection: best validation worst-group accuracy so far
    best_epoch: int = -1
    # running sums of the current epoch, so that a resumed epoch reports what an uninterrupted one would
    epoch_sums: dict[str, float] = field(default_factory=dict)
    epoch_batches: int = 0
    epoch_correct: int = 0
    epoch_seen: int = 0


def cosine_with_warmup(total_updates: int, warmup_updates: int, min_ratio: float):
    """lr factor of update ``u``: linear warm-up over ``warmup_updates``, then cosine down to
    ``min_ratio``."""

    def factor(update: int) -> float:
        if warmup_updates > 0 and update < warmup_updates:
            return (update + 1) / warmup_updates
        progress = (update - warmup_updates) / max(1, total_updates - warmup_updates)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class Trainer:
    """The step of ``variant``'s ``model`` (already on ``device``) under ``cfg``, ``batches_per_epoch``
    batches per epoch on each of ``dist.world_size`` ranks; ``num_groups``: the training split's groups (a
    variant that trains on group labels needs it)."""

    def __init__(
        self,
        cfg: Config,
        variant: str,
        model: nn.Module,
        device: torch.device,
        *,
        batches_per_epoch: int,
        dist: DistContext | None = None,
        num_groups: int | None = None,
    ) -> None:
        self.cfg, self.model, self.device = cfg, model, device
        self.spec = get_variant(variant)
        self.dist = dist or DistContext.single()
        optim = cfg.optim
        self.accumulation = optim.grad_accumulation
        self.updates_per_epoch = max(1, batches_per_epoch // self.accumulation)
        self.param_groups: ParamGroups = build_param_groups(
            model, variant, cfg, steps_per_epoch=self.updates_per_epoch, world_size=self.dist.world_size
        )
        self.optimizer = build_optimizer(self.param_groups, cfg)
        total = self.updates_per_epoch * optim.epochs
        warmup = round(optim.warmup_epochs * self.updates_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_with_warmup(total, warmup, optim.min_lr_ratio)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and optim.amp == "fp16")
        self.ema = None
        if optim.ema_decay:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(model, decay=optim.ema_decay)
        self.criterion = Criterion(cfg.loss, self.spec.losses, variant, num_groups=num_groups)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.state = LoopState()

    # ------------------------------------------------------------------------------------------- the step
    def forward(self, batch: Mapping[str, Tensor]):
        """Model output and losses of ``batch`` (keys ``image``, ``label``; ``fg_mask`` and ``group`` for a
        variant that reads them; ``patch_mask`` to force stage 2's mask, for benchmarks)."""
        images = batch["image"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True)
        kwargs = {}
        if self.spec.takes_fg_mask:
            kwargs["fg_mask"] = batch["fg_mask"].to(self.device, non_blocking=True)
        if "patch_mask" in batch:
            kwargs["patch_mask"] = batch["patch_mask"].to(self.device, non_blocking=True)
        groups = batch["group"].to(self.device) if self.spec.uses_group_labels else None
        with autocast(self.cfg.optim.amp, self.device):
            out = self.model(images, **kwargs)
            losses = self.criterion(self.model, images, labels, out, groups)
        return labels, out, losses

    def step(self, batch: Mapping[str, Tensor]) -> dict[str, float]:
        """One batch: backward, and the optimiser update every ``grad_accumulation`` batches. Returns the loss
        and its unweighted terms (``{"loss": ..., "<term>": ...}``)."""
        state = self.state
        labels, out, losses = self.forward(batch)
        if not torch.isfinite(losses.total):
            terms = {k: float(v) for k, v in losses.terms.items()}
            raise TrainingError(
                f"non-finite loss at epoch {state.epoch} batch {state.batch_in_epoch} (terms {terms})"
            )
        self.scaler.scale(losses.total / self.accumulation).backward()
        state.batch_in_epoch += 1
        if state.batch_in_epoch % self.accumulation == 0:
            self._update()
        terms = {"loss": float(losses.total.detach()), **{k: float(v) for k, v in losses.terms.items()}}
        state.epoch_batches += 1
        state.epoch_seen += labels.numel()
        state.epoch_correct += int((out.logits.argmax(-1) == labels).sum())
        for name, value in terms.items():
            state.epoch_sums[name] = state.epoch_sums.get(name, 0.0) + value
        return terms

    def _update(self) -> None:
        if self.dist.world_size > 1:
            all_reduce_grads(self.trainable)
        self.scaler.unscale_(self.optimizer)
        if self.cfg.optim.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.trainable, self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model, step=self.state.global_step)
        self.state.global_step += 1

    def end_epoch(self) -> dict[str, float]:
        """Close the epoch: the means of its loss terms (``train_<term>``), ``train_acc`` and the images this
        rank saw; the position moves to the next epoch."""
        state = self.state
        stats = {f"train_{k}": v / max(1, state.epoch_batches) for k, v in state.epoch_sums.items()}
        stats["train_acc"] = state.epoch_correct / max(1, state.epoch_seen)
        stats["images"] = state.epoch_seen
        state.epoch += 1
        state.batch_in_epoch = 0
        state.epoch_sums, state.epoch_batches, state.epoch_correct, state.epoch_seen = {}, 0, 0, 0
        return stats

    # ------------------------------------------------------------------------------------------- state
    @property
    def lr(self) -> float:
        """The learning rate of the first parameter group (the factor-1 groups' rate)."""
        return self.optimizer.param_groups[0]["lr"]

    @property
    def eval_model(self) -> nn.Module:
        """The weights to validate and select: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "criterion": self.criterion.state_dict(),
            "loop": asdict(self.state),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.criterion.load_state_dict(state.get("criterion", {}))
        self.state = LoopState(**state["loop"])
