"""The tidy evaluation table: its columns, naming conventions, and the seed summary ``reports/metrics.json``.

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
