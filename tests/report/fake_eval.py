"""A fake but complete evaluation table, histories and overlays for report and summary tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hardmask.evaluation.overlays import OverlaySamples
from hardmask.evaluation.tidy import BG_GAP_SPLIT, EVAL_COLUMNS

MODELS = ("baseline_vit", "two_stage_hard", "oracle_mask")
SEEDS = (0, 1, 2)
SPLITS = ("val", "test", "only_fg", "mixed_rand", "mixed_same", "only_bg")
GROUPS = ("round_on_land", "round_on_water", "long_on_land", "long_on_water")
INTERVENTIONS = ("none", "threshold_q0.05", "drop_part_0", "drop_part_1", "selected")


def fake_value(model: str, seed: int, split: str, metric: str, intervention: str = "none") -> float:
    """Deterministic values: test avg_acc of (model m, seed s) is 0.6 + 0.1 m + 0.01 s."""
    m = MODELS.index(model)
    base = 0.6 + 0.1 * m + 0.01 * seed - 0.02 * SPLITS.index(split) - 0.03 * INTERVENTIONS.index(intervention)
    return float(np.clip(base - (0.2 if metric == "worst_group_acc" else 0.0), 0, 1))


def fake_eval_df() -> pd.DataFrame:
    rows = []
    for model in MODELS:
        has_parts = model == "two_stage_hard"
        for seed in SEEDS:
            for split in SPLITS:
                sweep = INTERVENTIONS if has_parts and split in ("val", "test") else ("none",)
                sweep = sweep if not has_parts or split in ("val", "test") else ("none", "selected")
                for intervention in sweep:
                    metrics = ["avg_acc", "worst_group_acc", "adj_avg_acc"] + [
                        f"group_acc/{g}" for g in GROUPS
                    ]
                    if model != "baseline_vit":
                        metrics += ["fg_iou", "fg_fraction"]
                    if has_parts:
                        metrics += ["nmi", "ari"]
                    for metric in metrics:
                        value = fake_value(model, seed, split, metric, intervention)
                        rows.append((model, seed, "best", split, intervention, metric, value))
            same, rand = (fake_value(model, seed, s, "avg_acc") for s in ("mixed_same", "mixed_rand"))
            rows.append((model, seed, "best", BG_GAP_SPLIT, "none", "bg_gap", same - rand))
            for split in ("val", "test"):
                value = fake_value(model, seed, split, "avg_acc") - 0.05
                rows.append((model, seed, "last", split, "none", "avg_acc", value))
    return pd.DataFrame(rows, columns=list(EVAL_COLUMNS))


def fake_histories(epochs: int = 3) -> dict[tuple[str, int], pd.DataFrame]:
    out = {}
    for model in MODELS:
        for seed in SEEDS:
            epoch = np.arange(1, epochs + 1)
            out[(model, seed)] = pd.DataFrame(
                {
                    "epoch": epoch,
                    "step": epoch * 10,
                    "train_loss": 1.0 / epoch + 0.01 * seed,
                    "train_classification_stage2": 0.5 / epoch,
                    "train_acc": 0.5 + 0.1 * epoch,
                    "val_avg_acc": 0.5 + 0.1 * epoch,
                    "val_worst_group_acc": 0.3 + 0.1 * epoch,
                }
            )
    return out


def fake_overlays(per_group: int = 2, num_parts: int = 3, size: int = 32, grid: int = 4) -> OverlaySamples:
    rng = np.random.default_rng(0)
    n = per_group * len(GROUPS)
    groups = np.repeat(np.arange(len(GROUPS)), per_group)
    labels = groups // 2
    preds = labels.copy()
    preds[::per_group] = 1 - preds[::per_group]  # one failure per group
    return OverlaySamples(
        images=rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8),
        labels=labels,
        preds=preds,
        groups=groups,
        group_names=GROUPS,
        part_maps=rng.random((n, num_parts + 1, grid, grid)).astype(np.float16),
        hard_masks=rng.random((n, grid, grid)) > 0.5,
    )
