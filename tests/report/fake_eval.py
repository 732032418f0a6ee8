"""A fake but complete evaluation table, histories and overlays for report and summary tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hardmask.evaluation.overlays import OverlaySamples
from hardmask.evaluation.tidy import BG_GAP_SPLIT, EVAL_COLUMNS
from hardmask.report.inputs import TrainGroups

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


def fake_overlays(
    per_group: int = 2,
    num_parts: int = 3,
    size: int = 32,
    grid: int = 4,
    failures: tuple[int, ...] = (1, 1, 1, 1),
) -> OverlaySamples:
    """``per_group`` images per group, the first ``failures[g]`` of group ``g`` wrong. Each image is a
    coloured disc on a grey-ish striped background; its part map splits the disc's patches into ``num_parts``
    sectors (what a trained stage 1 roughly gives), the other patches are background."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(len(GROUPS)), per_group)
    labels = groups // 2
    preds = labels.copy()
    for group, count in enumerate(failures):
        wrong = np.flatnonzero(groups == group)[:count]
        preds[wrong] = 1 - preds[wrong]
    pixel_y, pixel_x = (np.mgrid[0:size, 0:size] + 0.5) / size
    patch_y, patch_x = (np.mgrid[0:grid, 0:grid] + 0.5) / grid
    images, part_maps = [], []
    for i in range(len(groups)):
        (cy, cx), radius = rng.uniform(0.35, 0.65, 2), rng.uniform(0.2, 0.3)
        colour = np.roll([0.9, 0.5, 0.1], i % 3)
        stripes = 0.45 + 0.1 * np.sin(12 * pixel_y + 3 * i)[..., None] + 0.05 * rng.random(3)
        inside = (pixel_y - cy) ** 2 + (pixel_x - cx) ** 2 < radius**2
        images.append((255 * np.where(inside[..., None], colour, stripes)).astype(np.uint8))
        on_object = (patch_y - cy) ** 2 + (patch_x - cx) ** 2 < radius**2
        sector = ((np.arctan2(patch_y - cy, patch_x - cx) + np.pi) / (2 * np.pi) * num_parts).astype(int)
        part = np.where(
            on_object, np.minimum(sector, num_parts - 1), num_parts
        )  # [grid,grid], K = background
        scores = 0.5 * rng.random((num_parts + 1, grid, grid)) + (
            np.arange(num_parts + 1)[:, None, None] == part
        )
        part_maps.append(scores)
    part_maps = np.stack(part_maps).astype(np.float16)
    return OverlaySamples(
        images=np.stack(images),
        labels=labels,
        preds=preds,
        groups=groups,
        group_names=GROUPS,
        part_maps=part_maps,
        hard_masks=part_maps.argmax(1) < num_parts,
    )


def fake_test_predictions(n: int = 400) -> dict[tuple[str, int], pd.DataFrame]:
    """Test images of the method and the baseline per seed (``index, group, correct``): the baseline fails
    mostly on the groups where the background misleads, the method much less."""
    rng = np.random.default_rng(1)
    accuracy = {
        "baseline_vit": np.array([0.95, 0.6, 0.55, 0.95]),
        "two_stage_hard": np.array([0.97, 0.9, 0.88, 0.96]),
    }
    out = {}
    for seed in SEEDS:
        groups = rng.integers(0, len(GROUPS), n)
        for model, per_group in accuracy.items():
            correct = rng.random(n) < per_group[groups]
            out[(model, seed)] = pd.DataFrame({"index": np.arange(n), "group": groups, "correct": correct})
    return out


def fake_train_groups() -> TrainGroups:
    """Waterbirds-like: each class mostly on its own place; the two other (label, place) groups are rare."""
    counts = {"round_on_land": 940, "round_on_water": 20, "long_on_land": 20, "long_on_water": 940}
    return TrainGroups(counts, frozenset({"round_on_water", "long_on_land"}))
