"""What a training job returns. Apart from the loop, so that the train stage, which unpickles every job's
result, reads it without loading torch, timm and the data stack (3.3 s before its first result was known)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


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
    # Not written into the run directory, which is a function of the run's inputs: a timing and an MLflow id.
    train_images_per_s: float
    mlflow_run_id: str | None

    def record(self) -> dict[str, Any]:
        """What ``metrics.json`` of the run keeps: everything but the timing and the MLflow id."""
        return {k: v for k, v in asdict(self).items() if k not in ("train_images_per_s", "mlflow_run_id")}
