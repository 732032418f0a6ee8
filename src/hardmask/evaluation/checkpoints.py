"""Rebuild a trained model from its run directory for evaluation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hardmask.checkpoint import load_checkpoint, training_key
from hardmask.config import Config, config_from_dict
from hardmask.layout import RunFiles
from hardmask.models import Variant, build_model, get_variant


class EvaluationError(RuntimeError):
    """A run cannot be evaluated (missing checkpoint, mismatched config); the message names the file."""


@dataclass(frozen=True)
class LoadedRun:
    model: nn.Module  # on its device, in eval mode
    variant: str
    seed: int
    checkpoint: str  # "best" | "last"
    train_cfg: Config  # the resolved config the run was trained with

    @property
    def spec(self) -> Variant:
        return get_variant(self.variant)

    @property
    def run_key(self) -> str:
        """What the run computed (the key of its MLflow training run)."""
        return training_key(self.train_cfg.dump(), self.variant, self.seed)


def checkpoint_weights(ckpt: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
    """The weights to evaluate: the EMA copy where ``last.pt`` carries one (``best.pt`` already stores it)."""
    ema = ckpt.get("ema")
    if ema:
        return {key.removeprefix("module."): value for key, value in ema.items()}
    return ckpt["model"]


def load_run(cfg: Config, run_dir: Path, which: str, num_classes: int, device: torch.device) -> LoadedRun:
    """The model of ``run_dir/checkpoints/<which>.pt``, built from the config stored in the checkpoint.

    ``model.stochastic_eval`` is an evaluation choice and comes from ``cfg``; everything else about the model
    comes from training. The data the model is evaluated on must match what it was trained on.
    """
    path = RunFiles(Path(run_dir)).checkpoint(which)
    if not path.is_file():
        raise EvaluationError(
            f"{path}: checkpoint not found (train the run first or set evaluate.checkpoint)"
        )
    ckpt = load_checkpoint(path, map_location="cpu")
    missing = [key for key in ("model", "variant", "seed", "config") if key not in ckpt]
    if missing:
        raise EvaluationError(f"{path}: not a hardmask training checkpoint (missing keys {missing})")
    train_cfg = config_from_dict(ckpt["config"], source=f"{path} (stored config)")
    trained_on = (train_cfg.data.dataset, train_cfg.data.image_size)
    if trained_on != (cfg.data.dataset, cfg.data.image_size):
        raise EvaluationError(
            f"{path}: trained on {trained_on[0]} at {trained_on[1]} px, but the evaluation config has "
            f"data.dataset={cfg.data.dataset}, data.image_size={cfg.data.image_size}"
        )
    model_cfg = train_cfg.model.model_copy(update={"stochastic_eval": cfg.model.stochastic_eval})
    model = build_model(ckpt["variant"], model_cfg, num_classes=num_classes, image_size=cfg.data.image_size)
    model.load_state_dict(checkpoint_weights(ckpt))
    model.to(device).eval()
    return LoadedRun(
        model=model,
        variant=str(ckpt["variant"]),
        seed=int(ckpt["seed"]),
        checkpoint=which,
        train_cfg=train_cfg,
    )
