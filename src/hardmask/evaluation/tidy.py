"""The tidy evaluation table: its columns and naming conventions; the seed summary ``eval/summary.json``
and the headline per model (the DVC metrics).

One row per ``(model, seed, checkpoint, split, intervention, metric)`` with a float ``value``:

- ``model``: the variant name (``baseline_vit``, ``two_stage_hard``, ``two_stage_soft``, ``stage1_only``,
  ``oracle_mask``); ``checkpoint``: ``best`` (selected on validation) or ``last``;
- ``split``: a dataset split (``val``, ``test``, OOD variants) or the pseudo-split ``mixed_same-mixed_rand``
  that holds ``bg_gap``;
- ``intervention``: ``none``, ``selected`` (the setting chosen on validation; models with parts only) or a
  setting name (``threshold_q0.05``, ``drop_part_2``, ``remove_parts_0+3``);
- ``metric``: ``avg_acc``, ``worst_group_acc``, ``adj_avg_acc``, ``minority_class_acc``, ``auroc``,
  ``bg_gap``, ``fg_iou``, ``nmi``, ``ari``, ``fg_fraction``, ``group_acc/<group name>``; accuracies are
  fractions. ``fg_iou``/``fg_fraction`` describe the binary mask (for ``two_stage_soft``: the argmax mask,
  not the weights stage 2 uses); ``nmi``/``ari`` the argmax part assignment.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

EVAL_COLUMNS = ("model", "seed", "checkpoint", "split", "intervention", "metric", "value")
BG_GAP_SPLIT = "mixed_same-mixed_rand"
GROUP_ACC_PREFIX = "group_acc/"

Summary = dict[str, dict[str, dict[str, dict[str, float | int | None]]]]


def check_columns(df: pd.DataFrame) -> None:
    missing = [c for c in EVAL_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"evaluation table lacks columns {missing} (expected {list(EVAL_COLUMNS)})")


def primary_checkpoint(df: pd.DataFrame) -> str:
    """``best`` when the table has it (the model-selection checkpoint), else ``last``."""
    return "best" if (df["checkpoint"] == "best").any() else "last"


def summary_key(split: str, intervention: str, checkpoint: str, primary: str) -> str:
    """``split``, ``split/intervention``, and ``...@last`` for rows of the non-primary checkpoint."""
    key = split if intervention == "none" else f"{split}/{intervention}"
    return key if checkpoint == primary else f"{key}@{checkpoint}"


def summarize(df: pd.DataFrame) -> Summary:
    """``model -> split[/intervention][@checkpoint] -> metric -> {mean, std, n}`` over seeds.

    ``std`` is the sample standard deviation (ddof 1) and ``None`` (JSON ``null``) for a single seed;
    ``nan`` values are left out of every statistic.
    """
    check_columns(df)
    primary = primary_checkpoint(df)
    out: Summary = {}
    clean = df.dropna(subset=["value"])
    keys = ["model", "checkpoint", "split", "intervention", "metric"]
    for (model, checkpoint, split, intervention, metric), values in clean.groupby(keys, sort=True)["value"]:
        n = int(values.size)
        out.setdefault(model, {}).setdefault(summary_key(split, intervention, checkpoint, primary), {})[
            metric
        ] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if n > 1 else None,
            "n": n,
        }
    return out


# (key in the headline file, split, metric): what `dvc metrics show` lists per model
HEADLINE = (
    ("test.avg_acc", "test", "avg_acc"),
    ("test.worst_group_acc", "test", "worst_group_acc"),
    ("test.fg_iou", "test", "fg_iou"),
    ("bg_gap", BG_GAP_SPLIT, "bg_gap"),
    ("val.avg_acc", "val", "avg_acc"),
    ("val.worst_group_acc", "val", "worst_group_acc"),
)


def headline(df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per model, the headline numbers of the primary checkpoint without intervention: the mean over seeds of
    test average and worst-group accuracy, fg IoU, BG-gap and the validation accuracies, the sample sd of the
    test ones (``<metric>_sd``) and the number of seeds. Nested by split (``{"test": {"avg_acc": ...}}``)."""
    summary = summarize(df)
    out: dict[str, dict[str, Any]] = {}
    for model, by_split in summary.items():
        record: dict[str, Any] = {}
        seeds = 0
        for key, split, metric in HEADLINE:
            stats = by_split.get(split, {}).get(metric)
            if stats is None:
                continue
            node = record
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = stats["mean"]
            if split != "val":
                node[f"{leaf}_sd"] = stats["std"]
            seeds = max(seeds, stats["n"])
        out[model] = {**record, "seeds": seeds}
    return out
