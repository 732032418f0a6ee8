"""The report stage's inputs: eval.csv plus what each run directory holds."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from hardmask.report.inputs import TrainGroups, load_report_inputs

from ..conftest import make_tiny_config
from .fake_eval import fake_eval_df, fake_histories, fake_overlays


def test_inputs_collect_histories_overlays_and_selections(tmp_path):
    cfg = make_tiny_config(tmp_path, train={"variants": ["baseline_vit", "two_stage_hard"], "seeds": [0, 1]})
    reports = Path(cfg.base.reports_dir)
    (reports / "eval").mkdir(parents=True)
    fake_eval_df().to_csv(reports / "eval" / "eval.csv", index=False)
    histories = fake_histories()
    for variant in cfg.train.variants:
        for seed in cfg.train.seeds:
            run_dir = Path(cfg.base.runs_dir) / variant / f"seed{seed}"
            eval_dir = Path(cfg.base.reports_dir) / "eval" / variant / f"seed{seed}"
            run_dir.mkdir(parents=True)
            eval_dir.mkdir(parents=True)
            if (variant, seed) != ("baseline_vit", 1):  # one run without history: it is skipped
                histories[(variant, seed)].to_csv(run_dir / "history.csv", index=False)
            settings = ["none", "drop_part_0"] if variant == "two_stage_hard" else ["none"]
            selection = {"settings": settings, "selected": settings[-1]}
            if variant == "two_stage_hard":  # baseline_vit's were written before the counts were recorded
                selection |= {"train_group_counts": {"a": 90, "b": 10}, "minority_groups": ["b"]}
            (eval_dir / "selection.json").write_text(json.dumps(selection))
            if variant == "two_stage_hard":
                fake_overlays().save(eval_dir / "overlays.npz")
            if (variant, seed) != ("two_stage_hard", 1):  # one run without predictions: left out
                predictions(seed).to_csv(eval_dir / "predictions.csv", index=False)

    inputs = load_report_inputs(cfg)
    assert len(inputs.eval_df) == len(fake_eval_df())
    assert set(inputs.histories) == {("baseline_vit", 0), ("two_stage_hard", 0), ("two_stage_hard", 1)}
    assert set(inputs.overlays) == {"two_stage_hard"}
    assert inputs.overlays["two_stage_hard"].images.shape == fake_overlays().images.shape
    # runs without interventions have nothing selected
    assert inputs.selections == {("two_stage_hard", 0): "drop_part_0", ("two_stage_hard", 1): "drop_part_0"}
    assert inputs.train_groups == TrainGroups({"a": 90, "b": 10}, frozenset({"b"}))
    assert set(inputs.test_predictions) == {("baseline_vit", 0), ("baseline_vit", 1), ("two_stage_hard", 0)}
    test = inputs.test_predictions[("baseline_vit", 1)]
    assert list(test.columns) == ["index", "group", "correct"] and test["correct"].dtype == bool
    assert test.to_dict("list") == {"index": [5, 6], "group": [0, 1], "correct": [True, False]}


def predictions(seed: int) -> pd.DataFrame:
    """A predictions.csv: only the test rows without intervention are the report's."""
    rows = [
        ("val", "none", 0, 0, 0, 0, "a", True),
        ("test", "selected", 5, 1, 0, 0, "a", False),
        ("test", "none", 5, 0, 0, 0, "a", True),
        ("test", "none", 6, 1, 0, 1, "b", False),
    ]
    columns = ["split", "intervention", "index", "label", "pred", "group", "group_name", "correct"]
    return pd.DataFrame(rows, columns=columns).assign(confidence=0.9, fg_fraction=float("nan"), seed=seed)


def test_inputs_without_training_group_counts_or_predictions(tmp_path):
    cfg = make_tiny_config(tmp_path, train={"variants": ["two_stage_hard"], "seeds": [0]})
    eval_dir = Path(cfg.base.reports_dir) / "eval" / "two_stage_hard" / "seed0"
    eval_dir.mkdir(parents=True)
    fake_eval_df().to_csv(eval_dir.parent.parent / "eval.csv", index=False)
    (eval_dir / "selection.json").write_text(json.dumps({"settings": ["none"], "selected": "none"}))
    inputs = load_report_inputs(cfg)
    assert inputs.train_groups is None and inputs.test_predictions == {}


def test_missing_eval_table_says_which_stage_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="eval.csv: evaluation table not found.*evaluate stage"):
        load_report_inputs(make_tiny_config(tmp_path))
