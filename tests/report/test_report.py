"""The report renders from a fake evaluation: every file present, tables right, HTML self-contained."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hardmask.report import figures, render, tables

from .fake_eval import GROUPS, MODELS, SEEDS, fake_eval_df, fake_histories, fake_overlays, fake_value


@pytest.fixture
def logged(monkeypatch) -> list[render.ReportPaths]:
    """Record MLflow logging instead of doing it (tracking is tested with the tracking module)."""
    calls: list[render.ReportPaths] = []
    monkeypatch.setattr(render, "log_report", lambda cfg, paths: calls.append(paths))
    return calls


def test_report_writes_markdown_html_figures_tables_and_plots(tiny_cfg, logged):
    overlays = {"two_stage_hard": fake_overlays(), "oracle_mask": fake_overlays()}
    selections = {("two_stage_hard", s): "drop_part_1" for s in SEEDS}
    paths = render.build_report(tiny_cfg, fake_eval_df(), fake_histories(), overlays, selections)
    root = Path(tiny_cfg.base.reports_dir)

    markdown = (root / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", markdown)
    expected = {
        "accuracy_by_model",
        "group_accuracy",
        "training_curves",
        "interventions",
        "bg_gap",
        "overlays_two_stage_hard",
        "overlays_oracle_mask",
    }
    assert {Path(p).stem for p in linked} == expected == set(paths.figures)
    for rel in linked:
        assert (root / rel).stat().st_size > 1000  # a real PNG, not an empty file
        assert (root / rel).read_bytes()[:4] == b"\x89PNG"

    page = (root / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(expected)
    assert not re.search(r'src="(?!data:)', page), "every image must be embedded (the HTML works offline)"
    for heading in ("Headline", "Per-group accuracy", "Training curves", "Test-time interventions"):
        assert heading in markdown and heading in page

    assert {
        "headline",
        "accuracy_by_split",
        "test_metrics",
        "group_accuracy",
        "interventions",
        "selected_interventions",
    } == set(paths.tables)
    assert {"accuracy", "bg_gap", "training_curves"} == set(paths.plots)  # what dvc.yaml plots
    for path in [*paths.tables.values(), *paths.plots.values()]:
        assert not pd.read_csv(path).empty
    # one row per plotted point: a (model, seed) for the bars and dots, a (run, epoch) for the curves
    accuracy = pd.read_csv(paths.plots["accuracy"])
    assert list(accuracy.columns) == ["model", "seed", "avg_acc", "worst_group_acc"]
    assert len(accuracy) == len(MODELS) * len(SEEDS) and not accuracy.duplicated(["model", "seed"]).any()
    assert list(accuracy["model"].unique()) == list(MODELS)  # the evaluation's (train.variants) order
    bg_gap = pd.read_csv(paths.plots["bg_gap"])
    assert list(bg_gap.columns) == ["model", "seed", "bg_gap"] and len(bg_gap) == len(MODELS) * len(SEEDS)
    curves = pd.read_csv(paths.plots["training_curves"])
    assert not curves.duplicated(["run", "epoch"]).any()
    assert curves.groupby("run")["model"].nunique().eq(1).all()
    assert logged == [paths]


def test_headline_table_has_mean_std_over_seeds_and_a_selected_row():
    headline = tables.headline_table(fake_eval_df())
    assert list(headline.index) == [
        "baseline_vit",
        "two_stage_hard",
        "two_stage_hard + selected intervention",
        "oracle_mask",
    ]
    values = [fake_value("two_stage_hard", s, "test", "worst_group_acc") for s in SEEDS]
    row = headline.loc["two_stage_hard"]
    assert row["worst-group acc mean"] == pytest.approx(np.mean(values))
    assert row["worst-group acc std"] == pytest.approx(np.std(values, ddof=1))
    assert row["worst-group acc n"] == 3
    assert np.isnan(headline.loc["baseline_vit", "fg IoU mean"])  # the baseline has no mask
    shown = tables.display(headline)
    assert list(shown.columns) == ["avg acc", "worst-group acc", "BG-gap", "fg IoU"]
    assert re.fullmatch(r"0\.\d{3} ± 0\.\d{3}", shown.loc["two_stage_hard", "avg acc"])
    assert shown.loc["baseline_vit", "fg IoU"] == "–"


def test_group_matrix_and_interventions_tables():
    df = fake_eval_df()
    matrix = tables.group_accuracy_matrix(df)
    assert list(matrix.index) == list(MODELS) and list(matrix.columns) == list(GROUPS)
    interventions = tables.intervention_table(df)
    assert set(interventions.index.get_level_values("model")) == {"two_stage_hard"}
    assert "drop_part_1" in interventions.index.get_level_values("intervention")


def test_part_overlay_grid_has_a_row_per_group_and_two_panels_per_image():
    s = fake_overlays(per_group=2)
    names = [s.group_names[g] for g in s.groups]
    fig = figures.part_overlay_grid(s.images, s.part_maps, s.hard_masks, s.labels, s.preds, names)
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == len(s.images) * 2
    ylabels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert ylabels == list(GROUPS)
    titles = [ax.title for ax in images]
    wrong = [t for t in titles if t.get_color() == figures.WRONG_COLOUR]
    assert len(wrong) == 2 * len(GROUPS)  # one failure per group, two panels each


def test_overlays_without_parts_show_only_the_mask():
    s = fake_overlays(per_group=1)
    fig = figures.part_overlay_grid(s.images, None, s.hard_masks, s.labels, s.preds, ["g"] * len(s.images))
    assert len([ax for ax in fig.axes if ax.images]) == len(s.images)


def test_part_and_mask_overlays_colour_the_right_pixels():
    image = np.full((4, 4, 3), 200, dtype=np.uint8)
    part_map = np.zeros((3, 2, 2), dtype=np.float32)  # K = 2, background = channel 2
    part_map[2] = 1.0  # all background...
    part_map[0, 0, 0] = 2.0  # ...except the top-left patch, part 0
    out = figures.part_overlay(image, part_map)
    assert not np.allclose(out[:2, :2], 200 / 255)  # the part's 2x2 pixels are coloured
    np.testing.assert_allclose(out[2:, :], 200 / 255)  # background pixels untouched
    mask = np.array([[True, False], [False, False]])
    dimmed = figures.mask_overlay(image, mask)
    np.testing.assert_allclose(dimmed[:2, :2], 200 / 255)
    np.testing.assert_allclose(dimmed[2:, 2:], 0.25 * 200 / 255)


def test_empty_evaluation_is_an_error(tiny_cfg, logged):
    empty = fake_eval_df().iloc[:0]
    with pytest.raises(ValueError, match="evaluation table is empty"):
        render.build_report(tiny_cfg, empty, {}, {})


def test_markdown_table_escapes_pipes_and_formats_floats():
    frame = pd.DataFrame({"a|b": [0.12345, float("nan")]}, index=pd.Index(["x", "y"], name="model"))
    assert tables.to_markdown(frame).splitlines() == [
        "| model | a\\|b |",
        "|---|---|",
        "| x | 0.123 |",
        "| y | – |",
    ]


def test_report_is_logged_to_mlflow(tiny_cfg, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    paths = render.build_report(tiny_cfg, fake_eval_df(), {}, {})
    client = MlflowClient(tracking_uri=tiny_cfg.tracking.uri)
    experiment = client.get_experiment_by_name(tiny_cfg.tracking.experiment)
    (run,) = client.search_runs([experiment.experiment_id], "tags.kind = 'report'")
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert logged == {f"figures/{p.name}" for p in paths.figures.values()}
    assert {"report.md", "report.html"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
