"""Rebuild a trained model from its run directory (evaluation) or a checkpoint file alone (prediction)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hardmask.checkpoint import load_checkpoint, training_key
from hardmask.config import Config, ModelSection, config_from_dict
from hardmask.errors import HardmaskError
from hardmask.layout import RunFiles
from hardmask.models import Variant, build_model, get_variant


class EvaluationError(HardmaskError, RuntimeError):
    """A run cannot be evaluated (missing checkpoint, mismatched config); the message names the file."""


@dataclass(frozen=True)
class LoadedRun:
    model: nn.Module  # on its device, in eval mode
    variant: str
    seed: int
    checkpoint: str  # "best" | "last"
    train_cfg: Config  # the resolved config the run was trained with
    num_classes: int

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


@dataclass(frozen=True)
class TrainingCheckpoint:
    """A training checkpoint as read from disk, before any model is built."""

    path: Path
    state: Mapping[str, Any]  # what training saved (best.pt or last.pt)
    variant: str
    seed: int
    train_cfg: Config  # the resolved config the run was trained with

    @property
    def weights(self) -> Mapping[str, torch.Tensor]:
        return checkpoint_weights(self.state)

    def model_config(self, *, stochastic_eval: bool) -> ModelSection:
        """The trained model's config for rebuilding it around the stored weights.

        The backbone is built without its initial weights (no pretrained download, no local weights file):
        the strict load that follows replaces every one of them, and the checkpoint may be used offline or on
        a machine without that file.
        """
        model = self.train_cfg.model
        backbone = model.backbone.model_copy(update={"pretrained": False, "checkpoint_path": None})
        return model.model_copy(update={"stochastic_eval": stochastic_eval, "backbone": backbone})


def read_training_checkpoint(path: Path) -> TrainingCheckpoint:
    """``path`` read and checked to be a hardmask training checkpoint (weights, variant, seed, config)."""
    state = load_checkpoint(path, map_location="cpu")
    missing = [key for key in ("model", "variant", "seed", "config") if key not in state]
    if missing:
        raise EvaluationError(f"{path}: not a hardmask training checkpoint (missing keys {missing})")
    return TrainingCheckpoint(
        path=path,
        state=state,
        variant=str(state["variant"]),
        seed=int(state["seed"]),
        train_cfg=config_from_dict(state["config"], source=f"{path} (stored config)"),
    )


def trained_num_classes(ckpt: TrainingCheckpoint) -> int:
    """The number of classes ``ckpt`` was trained with, read from its weights (checkpoints do not store it).

    A one-class copy of the model is built on the meta device (no memory, no computation); the tensors whose
    shape differs from the checkpoint's are the class-dependent ones, and their first dimension is the count.
    """
    with torch.device("meta"):
        one_class = build_model(
            ckpt.variant,
            ckpt.model_config(stochastic_eval=False),
            num_classes=1,
            image_size=ckpt.train_cfg.data.image_size,
        ).state_dict()
    weights = ckpt.weights
    counts = {
        weights[key].shape[0]
        for key, tensor in one_class.items()
        if key in weights and weights[key].shape != tensor.shape
    }
    if len(counts) > 1:
        raise EvaluationError(
            f"{ckpt.path}: its weights do not fit the {ckpt.variant} model of its stored config "
            f"(class-dependent tensors disagree on the class count: {sorted(counts)})"
        )
    return counts.pop() if counts else 1


def build_trained_model(
    ckpt: TrainingCheckpoint, *, which: str, num_classes: int, device: torch.device, stochastic_eval: bool
) -> LoadedRun:
    """``ckpt``'s model with its weights, on ``device`` in eval mode."""
    model = build_model(
        ckpt.variant,
        ckpt.model_config(stochastic_eval=stochastic_eval),
        num_classes=num_classes,
        image_size=ckpt.train_cfg.data.image_size,
    )
    model.load_state_dict(ckpt.weights)
    model.to(device).eval()
    return LoadedRun(
        model=model,
        variant=ckpt.variant,
        seed=ckpt.seed,
        checkpoint=which,
        train_cfg=ckpt.train_cfg,
        num_classes=num_classes,
    )


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
    ckpt = read_training_checkpoint(path)
    train_cfg = ckpt.train_cfg
    trained_on = (train_cfg.data.dataset, train_cfg.data.image_size)
    if trained_on != (cfg.data.dataset, cfg.data.image_size):
        raise EvaluationError(
            f"{path}: trained on {trained_on[0]} at {trained_on[1]} px, but the evaluation config has "
            f"data.dataset={cfg.data.dataset}, data.image_size={cfg.data.image_size}"
        )
    return build_trained_model(
        ckpt, which=which, num_classes=num_classes, device=device, stochastic_eval=cfg.model.stochastic_eval
    )


def load_checkpoint_file(path: Path, *, which: str, device: torch.device) -> LoadedRun:
    """The model of the training checkpoint ``path`` on its own: no evaluation config, no dataset.

    The class count is read from the weights (:func:`trained_num_classes`); the mask and part maps are
    deterministic (``model.stochastic_eval`` off). ``which`` (``best`` | ``last``) names the checkpoint kind.
    """
    ckpt = read_training_checkpoint(Path(path))
    return build_trained_model(
        ckpt, which=which, num_classes=trained_num_classes(ckpt), device=device, stochastic_eval=False
    )
