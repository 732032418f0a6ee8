"""summarize() and headline(): the shape of eval/summary.json and of the DVC metrics, and their statistics."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from hardmask.config import flatten
from hardmask.evaluation.tidy import BG_GAP_SPLIT, EVAL_COLUMNS, headline, summarize

from ..report.fake_eval import MODELS, SEEDS, fake_eval_df, fake_value


def test_summary_is_keyed_model_split_metric_with_seed_statistics():
    summary = summarize(fake_eval_df())
    assert set(summary) == set(MODELS)
    hard = summary["two_stage_hard"]
    # interventions live under split/intervention, the last checkpoint under split@last
    assert {"val", "test", "test/selected", "test/drop_part_0", "test/threshold_q0.05", "test@last"} <= set(
        hard
    )
    assert BG_GAP_SPLIT in hard and set(hard[BG_GAP_SPLIT]) == {"bg_gap"}
    assert "test/selected" not in summary["baseline_vit"]
    cell = hard["test"]["avg_acc"]
    values = [fake_value("two_stage_hard", s, "test", "avg_acc") for s in SEEDS]
    assert cell == {
        "mean": pytest.approx(np.mean(values)),
        "std": pytest.approx(np.std(values, ddof=1)),
        "n": 3,
    }
    assert {"avg_acc", "worst_group_acc", "adj_avg_acc", "fg_iou", "nmi", "ari"} <= set(hard["test"])
    json.dumps(summary, allow_nan=False)  # valid strict JSON: no NaN anywhere


def test_single_seed_has_null_std_and_nan_values_are_skipped():
    df = pd.DataFrame(
        [
            ("two_stage_hard", 0, "best", "test", "none", "avg_acc", 0.75),
            ("two_stage_hard", 0, "best", "test", "none", "fg_iou", float("nan")),
        ],
        columns=list(EVAL_COLUMNS),
    )
    summary = summarize(df)
    assert summary == {"two_stage_hard": {"test": {"avg_acc": {"mean": 0.75, "std": None, "n": 1}}}}


def test_last_is_primary_when_best_was_not_evaluated():
    df = pd.DataFrame(
        [("baseline_vit", 0, "last", "test", "none", "avg_acc", 0.5)], columns=list(EVAL_COLUMNS)
    )
    assert list(summarize(df)["baseline_vit"]) == ["test"]


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match=r"lacks columns \['checkpoint'\]"):
        summarize(pd.DataFrame(columns=[c for c in EVAL_COLUMNS if c != "checkpoint"]))


def test_headline_is_the_primary_checkpoint_without_intervention_with_test_spreads():
    df = fake_eval_df()
    summary, lines = summarize(df), headline(df)
    assert set(lines) == set(MODELS)
    hard = lines["two_stage_hard"]
    assert hard["seeds"] == 3
    assert hard["test"]["worst_group_acc"] == summary["two_stage_hard"]["test"]["worst_group_acc"]["mean"]
    assert hard["test"]["worst_group_acc_sd"] == summary["two_stage_hard"]["test"]["worst_group_acc"]["std"]
    assert hard["val"] == {
        "avg_acc": summary["two_stage_hard"]["val"]["avg_acc"]["mean"],
        "worst_group_acc": summary["two_stage_hard"]["val"]["worst_group_acc"]["mean"],
    }  # validation: means only
    assert hard["bg_gap"] == summary["two_stage_hard"][BG_GAP_SPLIT]["bg_gap"]["mean"]
    # a handful of columns per model: what `dvc metrics show` prints one row of
    assert len(flatten(hard)) <= 12
    json.dumps(lines, allow_nan=False)
