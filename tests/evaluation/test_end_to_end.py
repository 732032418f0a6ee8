"""The evaluate and report stages on real (tiny) trained runs of the built-in benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from hardmask.config import save_config

from ..conftest import REPO, make_tiny_config


@pytest.mark.slow(seconds=25)
def test_evaluate_and_report_stages_on_trained_runs(tmp_path):
    from hardmask.data import generate_synthetic
    from hardmask.training.loop import train

    cfg = make_tiny_config(
        tmp_path,
        train={"variants": ["baseline_vit", "two_stage_hard", "oracle_mask"], "seeds": [0]},
        optim={"epochs": 1},
        evaluate={"remove_parts": [1], "workers": 2},
    )
    generate_synthetic(cfg.data.synthetic, cfg.data_root, seed=cfg.base.seed)
    for variant in cfg.train.variants:
        train(cfg, variant, 0, Path(cfg.base.runs_dir) / variant / "seed0")
    params = tmp_path / "params.yaml"
    save_config(cfg, params)

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(REPO / "src")
    for stage in ("evaluate", "report"):
        subprocess.run(
            [sys.executable, str(REPO / "stages" / f"{stage}.py"), "--params", str(params)],
            cwd=tmp_path,
            env=env,
            check=True,
        )

    reports = Path(cfg.base.reports_dir)
    # the stage evaluated the runs in two processes: the same table as one process evaluating them in turn
    from hardmask.evaluation.pool import evaluate_all

    one_process = cfg.evaluate.model_copy(update={"workers": 1})
    in_turn = evaluate_all(cfg.model_copy(update={"evaluate": one_process}))
    assert in_turn.to_csv(index=False) == (reports / "eval" / "eval.csv").read_text()
    table = pd.read_csv(reports / "eval" / "eval.csv")
    assert set(table["model"]) == set(cfg.train.variants)
    assert {"val", "test", "only_fg", "mixed_rand", "mixed_same", "only_bg", "mixed_same-mixed_rand"} <= set(
        table["split"]
    )
    summary = json.loads((reports / "eval" / "summary.json").read_text())
    hard = summary["two_stage_hard"]
    assert {"test", "test/selected", "test/remove_parts_1", "test/drop_part_0", "test@last"} <= set(hard)
    assert summary["oracle_mask"]["test"]["fg_iou"]["mean"] == pytest.approx(1.0)  # same patch rule
    assert 0.0 <= hard["test"]["worst_group_acc"]["mean"] <= hard["test"]["avg_acc"]["mean"] <= 1.0
    # the DVC metrics: the headline, one file per model, the same numbers as the summary
    headline = {p.stem: json.loads(p.read_text()) for p in (reports / "metrics").glob("*.json")}
    assert set(headline) == set(cfg.train.variants)
    assert headline["two_stage_hard"]["test"]["worst_group_acc"] == hard["test"]["worst_group_acc"]["mean"]
    assert (
        headline["two_stage_hard"]["bg_gap"]
        == summary["two_stage_hard"]["mixed_same-mixed_rand"]["bg_gap"]["mean"]
    )
    assert headline["oracle_mask"]["seeds"] == 1 and headline["oracle_mask"]["test"]["avg_acc_sd"] is None
    assert set(headline["baseline_vit"]) == {
        "test",
        "bg_gap",
        "bg_gap_sd",
        "val",
        "seeds",
    }  # no masks: no IoU
    assert set(headline["baseline_vit"]["test"]) == {
        "avg_acc",
        "avg_acc_sd",
        "worst_group_acc",
        "worst_group_acc_sd",
    }
    for name in ("report.md", "report.html", "figures/overlays_two_stage_hard.png", "plots/accuracy.csv"):
        assert (reports / name).is_file(), name
    # dvc plots data: one row per plotted point (a seed of a model; an epoch of a run)
    accuracy = pd.read_csv(reports / "plots" / "accuracy.csv")
    assert list(accuracy.columns) == ["model", "seed", "avg_acc", "worst_group_acc"]
    assert len(accuracy) == len(cfg.train.variants) and not accuracy.duplicated(["model", "seed"]).any()
    curves = pd.read_csv(reports / "plots" / "training_curves.csv")
    assert len(curves) == len(cfg.train.variants) * cfg.optim.epochs and curves["run"].nunique() == 3
