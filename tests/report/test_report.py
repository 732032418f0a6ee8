"""The report renders from a fake evaluation: every file present, tables right, HTML self-contained."""

from __future__ import annotations

import html
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hardmask.models import describe_variants
from hardmask.report import figures, render, tables
from hardmask.report.inputs import ReportInputs

from .fake_eval import (
    GROUPS,
    MODELS,
    SEEDS,
    fake_eval_df,
    fake_histories,
    fake_overlays,
    fake_test_predictions,
    fake_train_groups,
    fake_value,
)


@pytest.fixture
def logged(monkeypatch) -> list[render.ReportPaths]:
    """Record MLflow logging instead of doing it (tracking is tested with the tracking module)."""
    calls: list[render.ReportPaths] = []
    monkeypatch.setattr(render, "log_report", lambda cfg, paths: calls.append(paths))
    return calls


def test_report_writes_markdown_html_figures_tables_and_plots(tiny_cfg, logged):
    overlays = {"two_stage_hard": fake_overlays(), "oracle_mask": fake_overlays()}
    selections = {("two_stage_hard", s): "drop_part_1" for s in SEEDS}
    paths = render.build_report(
        tiny_cfg,
        ReportInputs(
            fake_eval_df(), fake_histories(), overlays, selections, variants=describe_variants(MODELS)
        ),
    )
    root = Path(tiny_cfg.base.reports_dir)

    markdown = (root / "report.md").read_text()
    # what each row is, and which rows saw more than image labels
    assert (
        "## Models" in markdown
        and "| oracle_mask | stage 2 given the ground-truth foreground mask" in markdown
    )
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
        "models",
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


def _panels(fig: Figure, side: int) -> list:
    """The image panels of the left (0: correct predictions) or right (1: failures) half of the grid."""
    return [ax for ax in fig.subfigs[side].axes if ax.images]


def test_overlay_grid_shows_correct_predictions_left_and_failures_right_per_group():
    s = fake_overlays(per_group=3, failures=(1, 2, 0, 3))
    names = [s.group_names[g] for g in s.groups]
    fig = figures.part_overlay_grid(
        s.images, s.part_maps, s.hard_masks, s.labels, s.preds, names, rare={"round_on_water"}
    )
    left, right = fig.subfigs
    assert left.get_suptitle() == "correct predictions" and right.get_suptitle() == "failures"
    correct, failures = _panels(fig, 0), _panels(fig, 1)
    assert len(correct) == 2 * (2 + 1 + 3 + 0) and len(failures) == 2 * (1 + 2 + 0 + 3)  # [parts | mask] each
    assert {ax.title.get_color() for ax in correct} == {figures.CORRECT_COLOUR}
    assert {ax.title.get_color() for ax in failures} == {figures.WRONG_COLOUR}
    for ax in correct + failures:  # the title's label and prediction agree with the side it is on
        match = re.fullmatch(r"parts, y=(\d) ŷ=(\d)", ax.title.get_text())
        if match:
            assert (match[1] == match[2]) == (ax in correct)
    ylabels = [ax.get_ylabel() for ax in left.axes if ax.get_ylabel()]
    assert ylabels == ["round_on_land", "round_on_water*", "long_on_land", "long_on_water"]
    empty = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert sorted(empty) == ["no correct predictions", "no failures"]  # long_on_water, long_on_land
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [
        "part 0",
        "part 1",
        "part 2",
        "background part (no tint)",
        "removed by the hard mask (dimmed)",
    ]


def test_overlays_without_parts_show_only_the_mask():
    s = fake_overlays(per_group=1)
    fig = figures.part_overlay_grid(s.images, None, s.hard_masks, s.labels, s.preds, ["g"] * len(s.images))
    assert len([ax for ax in fig.axes if ax.images]) == len(s.images)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["removed by the hard mask (dimmed)"]


def test_part_overlay_tints_parts_over_a_grey_image_and_mask_overlay_dims_removed_patches():
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    image[...] = (240, 120, 0)  # a coloured object: its colour must not mix with the part colours
    part_map = np.zeros((3, 2, 2), dtype=np.float32)  # K = 2, background = channel 2
    part_map[2] = 1.0  # all background...
    part_map[0, 0, 0] = 2.0  # ...except the top-left patch, part 0
    out = figures.part_overlay(image, part_map, alpha=0.5)
    grey = 120 / 255
    np.testing.assert_allclose(out[2:, :], grey)  # background part: the image in grey, untinted
    tinted = 0.5 * grey + 0.5 * figures.part_colours(2)[0]
    np.testing.assert_allclose(out[:2, :2], np.broadcast_to(tinted, (2, 2, 3)))
    mask = np.array([[True, False], [False, False]])
    dimmed = figures.mask_overlay(image, mask)
    np.testing.assert_allclose(dimmed[:2, :2], image[:2, :2] / 255)
    np.testing.assert_allclose(dimmed[2:, 2:], figures.REMOVED_DIM * image[2:, 2:] / 255)


def test_part_colours_are_distinct_and_never_grey():
    colours = figures.part_colours(9)
    assert len({tuple(c) for c in colours}) == 9
    assert (colours.max(1) - colours.min(1) > 0.3).all()  # saturated: stands out on the grey image


def _drawn_within_saved_area(fig: Figure) -> bool:
    """Whether everything drawn (titles, labels, legends: the tight bbox) lies inside the figure's size."""
    FigureCanvasAgg(fig).draw()
    drawn, saved = fig.get_tightbbox(fig.canvas.get_renderer()), fig.bbox_inches
    return (
        saved.x0 - 0.01 <= drawn.x0
        and drawn.x1 <= saved.x1 + 0.01
        and saved.y0 - 0.01 <= drawn.y0
        and (drawn.y1 <= saved.y1 + 0.01)
    )


def test_every_figure_keeps_its_text_inside_the_saved_area():
    df = fake_eval_df()
    s = fake_overlays(per_group=3, failures=(1, 2, 0, 3))
    groups = fake_train_groups()
    figs = {
        "accuracy_by_model": figures.accuracy_by_model(df),
        "group_accuracy": figures.group_accuracy_heatmap(
            tables.group_accuracy_matrix(df), train_counts=groups.counts, rare=groups.minority
        ),
        "training_curves": figures.training_curves(render.history_frame(fake_histories())),
        "interventions": figures.intervention_effects(df),
        "bg_gap": figures.bg_gap_bars(df),
        "overlays": figures.part_overlay_grid(
            s.images, s.part_maps, s.hard_masks, s.labels, s.preds, [GROUPS[g] for g in s.groups], "model"
        ),
    }
    for per_group in (1, 2):  # a model without failures: a narrow grid, its legend must wrap
        n = fake_overlays(per_group=per_group, num_parts=4, failures=(0, 0, 0, 0))
        figs[f"narrow_overlays_{per_group}"] = figures.part_overlay_grid(
            n.images, n.part_maps, n.hard_masks, n.labels, n.preds, [GROUPS[g] for g in n.groups]
        )
    assert [name for name, fig in figs.items() if not _drawn_within_saved_area(fig)] == []
    long_title = figures.bg_gap_bars(df)  # the check itself: an unwrapped long title is caught
    long_title.axes[0].set_title("BG-gap = acc(mixed_same) - acc(mixed_rand), a title too long for the axes")
    assert not _drawn_within_saved_area(long_title)


def test_figures_with_jittered_seed_dots_are_the_same_png_every_time():
    def png(fig: Figure) -> bytes:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return buffer.getvalue()

    df = fake_eval_df()
    for draw in (figures.accuracy_by_model, figures.bg_gap_bars):
        np.random.seed(1)  # whatever the global RNG's state
        first = png(draw(df))
        np.random.seed(2)
        assert png(draw(df)) == first, draw.__name__


def test_heatmap_marks_the_groups_rare_in_training():
    groups = fake_train_groups()
    fig = figures.group_accuracy_heatmap(
        tables.group_accuracy_matrix(fake_eval_df()), train_counts=groups.counts, rare=groups.minority
    )
    (ax,) = fig.axes[:1]
    labels = {t.get_text(): t.get_fontweight() for t in ax.get_xticklabels()}
    assert labels == {
        "round_on_land\ntrain n=940": "normal",
        "round_on_water*\ntrain n=20": "bold",
        "long_on_land*\ntrain n=20": "bold",
        "long_on_water\ntrain n=940": "normal",
    }
    plain = figures.group_accuracy_heatmap(tables.group_accuracy_matrix(fake_eval_df()))
    assert [t.get_text() for t in plain.axes[0].get_xticklabels()] == list(GROUPS)  # no counts: names only


def _captions(markdown: str) -> dict[str, str]:
    """figure name -> its caption in report.md."""
    return {
        Path(path).stem: caption
        for path, caption in re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)\n\n\*([^\n]+)\*", markdown)
    }


def test_report_states_the_result_first_and_captions_say_what_the_marks_are(tiny_cfg, logged):
    overlays = {"two_stage_hard": fake_overlays()}
    render.build_report(
        tiny_cfg,
        ReportInputs(
            fake_eval_df(),
            fake_histories(),
            overlays,
            {},
            test_predictions=fake_test_predictions(),
            train_groups=fake_train_groups(),
        ),
    )
    root = Path(tiny_cfg.base.reports_dir)
    markdown, page = (root / "report.md").read_text(), (root / "report.html").read_text()

    title, callout = markdown.split("\n\n")[:2]  # the result comes right under the title
    assert title == "# hardmask report" and callout.startswith(
        "> **Result.** two_stage_hard (the method) over"
    )
    sentence = callout.removeprefix("> **Result.** ")
    assert "95 % paired bootstrap interval over test images [+" in sentence
    assert (
        f'<p class="callout"><strong>Result.</strong> {html.escape(sentence)}</p>' in page
    )  # HTML says the same

    captions = _captions(markdown)
    assert figures.SEED_POINTS_MARKS in captions["accuracy_by_model"]
    assert figures.BAR_MARKS in captions["interventions"]
    assert figures.BAR_MARKS in captions["bg_gap"] and "dots = seeds" in captions["bg_gap"]
    assert figures.LINE_MARKS in captions["training_curves"]
    assert figures.HEATMAP_MARKS in captions["group_accuracy"]
    assert (
        render.RARE_NOTE in captions["group_accuracy"]
        and render.RARE_NOTE in captions["overlays_two_stage_hard"]
    )
    assert "correct predictions left, failures right" in captions["overlays_two_stage_hard"]
    for caption in captions.values():
        assert html.escape(caption) in page


def test_empty_evaluation_is_an_error(tiny_cfg, logged):
    empty = fake_eval_df().iloc[:0]
    with pytest.raises(ValueError, match="evaluation table is empty"):
        render.build_report(tiny_cfg, ReportInputs(empty, {}, {}, {}))


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
    paths = render.build_report(tiny_cfg, ReportInputs(fake_eval_df(), {}, {}, {}))
    client = MlflowClient(tracking_uri=tiny_cfg.tracking.uri)
    experiment = client.get_experiment_by_name(tiny_cfg.tracking.experiment)
    (run,) = client.search_runs([experiment.experiment_id], "tags.kind = 'report'")
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert logged == {f"figures/{p.name}" for p in paths.figures.values()}
    assert {"report.md", "report.html"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
