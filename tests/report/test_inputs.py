"""The report stage's inputs: eval.csv plus what each run directory holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hardmask.report.inputs import load_report_inputs

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
            (eval_dir / "selection.json").write_text(json.dumps(selection))
            if variant == "two_stage_hard":
                fake_overlays().save(eval_dir / "overlays.npz")

    inputs = load_report_inputs(cfg)
    assert len(inputs.eval_df) == len(fake_eval_df())
    assert set(inputs.histories) == {("baseline_vit", 0), ("two_stage_hard", 0), ("two_stage_hard", 1)}
    assert set(inputs.overlays) == {"two_stage_hard"}
    assert inputs.overlays["two_stage_hard"].images.shape == fake_overlays().images.shape
    # runs without interventions have nothing selected
    assert inputs.selections == {("two_stage_hard", 0): "drop_part_0", ("two_stage_hard", 1): "drop_part_0"}


def test_missing_eval_table_says_which_stage_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="eval.csv: evaluation table not found.*evaluate stage"):
        load_report_inputs(make_tiny_config(tmp_path))
