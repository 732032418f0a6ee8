"""Assemble the report: figures, tables and DVC plot data, rendered to Markdown and self-contained HTML.

Outputs under ``base.reports_dir``::

    report.md            links figures by relative path (figures/*.png): works when opened from disk
    report.html          one file, figures embedded as base64 PNG (works offline, can be mailed)
    figures/*.png        every figure of the report
    tables/*.csv         numeric tables (mean / std / n over seeds)
    plots/*.csv          long-format data for ``dvc plots`` (declared in dvc.yaml)

Each of the three directories is replaced as a whole, and each file atomically, so a failed build leaves the
previous report intact. The report is written from one list of blocks, so Markdown and HTML say the same.
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from hardmask.config import Config
from hardmask.evaluation.tidy import BG_GAP_SPLIT, check_columns
from hardmask.io import atomic_dir, atomic_write_text
from hardmask.report import figures, tables
from hardmask.report.inputs import ReportInputs
from hardmask.report.result import result_sentences

log = logging.getLogger("hardmask.report")

RARE_NOTE = (
    f"{figures.RARE_MARK} = rare in training (a minority group: not the most frequent group of its class)"
)


# ----------------------------------------------------------------------------------------- blocks
@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Callout:
    """A highlighted paragraph opening with a bold ``lead`` (the result at the top of the report)."""

    lead: str
    text: str


@dataclass(frozen=True)
class TableBlock:
    frame: pd.DataFrame
    caption: str = ""


@dataclass(frozen=True)
class FigureBlock:
    path: str  # relative to the reports directory
    caption: str


Block = Heading | Paragraph | Callout | TableBlock | FigureBlock


def render_markdown(blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            out.append(block.text)
        elif isinstance(block, Callout):
            out.append(f"> **{block.lead}** {block.text}")
        elif isinstance(block, TableBlock):
            out.append((f"*{block.caption}*\n\n" if block.caption else "") + tables.to_markdown(block.frame))
        else:
            out.append(f"![{block.caption}]({block.path})\n\n*{block.caption}*")
    return "\n\n".join(out) + "\n"


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #d0d7de; padding: 0.25em 0.6em; text-align: right; }
th { background: #f6f8fa; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; }
figcaption, .caption { color: #59636e; font-style: italic; }
.callout { border-left: 4px solid #0969da; background: #f6f8fa; padding: 0.6em 1em; font-size: 1.05em; }
"""


def render_html(blocks: list[Block], root: Path, title: str) -> str:
    """Self-contained HTML: figures are read from ``root / block.path`` and embedded as base64."""
    body = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Callout):
            body.append(
                f'<p class="callout"><strong>{html.escape(block.lead)}</strong> {html.escape(block.text)}</p>'
            )
        elif isinstance(block, TableBlock):
            caption = f'<p class="caption">{html.escape(block.caption)}</p>' if block.caption else ""
            body.append(
                caption + block.frame.to_html(border=0, na_rep="–", float_format=lambda v: f"{v:.3f}")
            )
        else:
            data = base64.b64encode((root / block.path).read_bytes()).decode()
            body.append(
                f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(block.caption)}</figcaption></figure>"
            )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


# ----------------------------------------------------------------------------------------- report
@dataclass
class ReportPaths:
    markdown: Path
    html: Path | None
    figures: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, Path] = field(default_factory=dict)
    plots: dict[str, Path] = field(default_factory=dict)


def history_frame(history_dfs: Mapping[tuple[str, int], pd.DataFrame]) -> pd.DataFrame:
    """``{(model, seed): history.csv frame}`` -> one long frame with ``model`` and ``seed`` columns."""
    frames = [h.assign(model=model, seed=seed) for (model, seed), h in history_dfs.items() if not h.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _plots_data(eval_df: pd.DataFrame, history: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The data of the ``dvc plots`` of dvc.yaml, one row per plotted point (a seed, or an epoch of a run):

    - ``accuracy``: model, seed, test ``avg_acc`` and ``worst_group_acc`` (template ``mean_and_seeds``: a bar
      for the mean over seeds, a dot per seed);
    - ``bg_gap``: model, seed, ``bg_gap`` (same template);
    - ``training_curves``: model, seed, run, epoch and the per-epoch values (``curve_per_run``: a line a run).
    """
    rows = tables.primary_rows(eval_df)
    plain = rows[rows["intervention"] == "none"]

    def per_seed(split: str, metrics: list[str]) -> pd.DataFrame:
        picked = plain[(plain["split"] == split) & plain["metric"].isin(metrics)]
        wide = picked.pivot_table(index=["model", "seed"], columns="metric", values="value", sort=False)
        return wide.reindex(columns=[m for m in metrics if m in wide.columns]).reset_index()

    data = {
        "accuracy": per_seed("test", ["avg_acc", "worst_group_acc"]),
        "bg_gap": per_seed(BG_GAP_SPLIT, ["bg_gap"]),
    }
    if not history.empty:
        curves = history.assign(run=history["model"] + "/seed" + history["seed"].astype(str))
        first = ["model", "seed", "run", "epoch"]
        data["training_curves"] = curves[first + [c for c in curves.columns if c not in first]]
    return {name: frame for name, frame in data.items() if not frame.empty}


def _overview(
    cfg: Config, eval_df: pd.DataFrame, test_predictions: Mapping[tuple[str, int], pd.DataFrame]
) -> list[Block]:
    models = tables.model_order(eval_df["model"].unique())
    seeds = sorted(eval_df["seed"].unique())
    checkpoint = tables.primary_rows(eval_df)["checkpoint"].iloc[0]
    selection = (
        "selected on validation worst-group accuracy, never on test"
        if checkpoint == "best"
        else "the end of training"
    )
    return [
        Heading("hardmask report", 1),
        Callout("Result.", " ".join(result_sentences(eval_df, test_predictions))),
        Paragraph(
            f"Dataset {cfg.data.dataset} at {cfg.data.image_size} px; models {', '.join(models)}; "
            f"seeds {', '.join(map(str, seeds))}. Numbers are mean ± sample standard deviation over seeds "
            f"(accuracies as fractions), from the '{checkpoint}' checkpoint ({selection}). Evaluation is "
            "deterministic: no Gumbel noise, one argmax assignment drives part maps and masks."
        ),
        Paragraph(
            "Worst-group accuracy is the minimum over all (label, place) groups present in the split. "
            "BG-gap = acc(mixed_same) - acc(mixed_rand). Foreground IoU compares the hard mask with the "
            "ground truth at the patch grid (a patch is foreground when at least "
            f"{cfg.model.oracle_patch_threshold:g} of its pixels are), pooled over the split. "
            "'+ selected intervention' rows apply the test-time intervention chosen on validation."
        ),
    ]


def build_report(cfg: Config, inputs: ReportInputs) -> ReportPaths:
    """Write ``report.md``, ``report.html`` (if ``report.html``), figures, tables and plot data from
    ``inputs`` (:func:`hardmask.report.inputs.load_report_inputs`). Only the evaluation table is required:
    without the other inputs the report says less."""
    eval_df, overlays, selections = inputs.eval_df, inputs.overlays, inputs.selections
    check_columns(eval_df)
    if eval_df.empty:
        raise ValueError("the evaluation table is empty: nothing to report (run the evaluate stage first)")
    root = Path(cfg.base.reports_dir)
    history = history_frame(inputs.histories)
    blocks: list[Block] = _overview(cfg, eval_df, inputs.test_predictions)
    train_groups = inputs.train_groups
    rare = train_groups.minority if train_groups else frozenset()
    figs: dict[str, tuple[Figure, str]] = {}
    csvs: dict[str, pd.DataFrame] = {}

    def figure(name: str, fig: Figure, caption: str) -> None:
        figs[name] = (fig, caption)
        blocks.append(FigureBlock(f"figures/{name}.png", caption))

    def table(name: str, numeric: pd.DataFrame, caption: str, show: pd.DataFrame | None = None) -> None:
        csvs[name] = numeric
        blocks.append(TableBlock(numeric if show is None else show, caption))

    if inputs.variants:
        blocks.append(Heading("Models"))
        table("models", tables.models_table(inputs.variants), "what each row is, and what it trains with")

    headline = tables.headline_table(eval_df)
    blocks.append(Heading("Headline"))
    table("headline", headline, "test split; BG-gap from the OOD variants", show=tables.display(headline))

    blocks.append(Heading("Accuracy per model and split"))
    figure(
        "accuracy_by_model",
        figures.accuracy_by_model(eval_df),
        f"Test accuracy per model, average (left) and worst-group (right): {figures.SEED_POINTS_MARKS}.",
    )
    by_split = tables.split_table(eval_df)
    table(
        "accuracy_by_split", by_split, "all evaluated splits, no intervention", show=tables.display(by_split)
    )

    test_metrics = tables.full_metrics_table(eval_df, "test")
    table("test_metrics", test_metrics, "every metric of the test split", show=tables.display(test_metrics))

    group_matrix = tables.group_accuracy_matrix(eval_df)
    if not group_matrix.empty:
        blocks.append(Heading("Per-group accuracy"))
        counts = train_groups.counts if train_groups else None
        figure(
            "group_accuracy",
            figures.group_accuracy_heatmap(group_matrix, train_counts=counts, rare=rare),
            f"Test accuracy per group: {figures.HEATMAP_MARKS}."
            + (f" {RARE_NOTE}; train n = training images of the group." if train_groups else ""),
        )
        csvs["group_accuracy"] = group_matrix

    if not history.empty:
        blocks.append(Heading("Training curves"))
        figure(
            "training_curves",
            figures.training_curves(history),
            f"Training history per epoch, a colour per model: {figures.LINE_MARKS}.",
        )

    interventions = tables.intervention_table(eval_df)
    if not interventions.empty:
        blocks.append(Heading("Test-time interventions"))
        figure(
            "interventions",
            figures.intervention_effects(eval_df),
            f"Test accuracy per intervention setting: {figures.BAR_MARKS}.",
        )
        table("interventions", interventions, "test split", show=tables.display(interventions))
        if selections:
            table("selected_interventions", tables.selection_table(dict(selections)), "chosen on validation")

    if ((eval_df["split"] == BG_GAP_SPLIT) & (eval_df["metric"] == "bg_gap")).any():
        blocks.append(Heading("Background reliance"))
        figure(
            "bg_gap",
            figures.bg_gap_bars(eval_df),
            f"BG-gap per model, near 0 = little background reliance: {figures.BAR_MARKS}, dots = seeds.",
        )

    if overlays:
        blocks.append(Heading("Part maps and hard masks"))
        blocks.append(
            Paragraph(
                "Test images of one seed, a row per group: correct predictions on the left, failures on the "
                "right (y = label, ŷ = prediction). 'parts': the image in grey, each patch tinted and "
                "outlined in the colour of its argmax part (the background part untinted); 'mask': the "
                "patches the hard mask removes are dimmed. These are samples, not statistics: no error bars."
            )
        )
        for model in tables.model_order(list(overlays)):
            s = overlays[model]
            names = [s.group_names[g] for g in s.groups]
            fig = figures.part_overlay_grid(
                s.images, s.part_maps, s.hard_masks, s.labels, s.preds, names, model, rare=rare
            )
            figure(
                f"overlays_{model}",
                fig,
                f"{model}: argmax parts and hard mask; correct predictions left, failures right."
                + (f" {RARE_NOTE}." if rare else ""),
            )

    paths = _write(root, figs, csvs, _plots_data(eval_df, history))
    atomic_write_text(paths.markdown, render_markdown(blocks))
    if cfg.report.html:
        paths.html = root / "report.html"
        atomic_write_text(paths.html, render_html(blocks, root, "hardmask report"))
    log_report(cfg, paths)
    return paths


def _write(
    root: Path,
    figs: dict[str, tuple[Figure, str]],
    csvs: dict[str, pd.DataFrame],
    plots: dict[str, pd.DataFrame],
) -> ReportPaths:
    paths = ReportPaths(markdown=root / "report.md", html=None)
    with atomic_dir(root / "figures") as tmp:
        for name, (fig, _) in figs.items():
            fig.savefig(tmp / f"{name}.png", dpi=110)
            paths.figures[name] = root / "figures" / f"{name}.png"
    with atomic_dir(root / "tables") as tmp:
        for name, frame in csvs.items():
            frame.to_csv(tmp / f"{name}.csv")
            paths.tables[name] = root / "tables" / f"{name}.csv"
    with atomic_dir(root / "plots") as tmp:
        for name, frame in plots.items():
            frame.to_csv(tmp / f"{name}.csv", index=False)
            paths.plots[name] = root / "plots" / f"{name}.csv"
    return paths


def log_report(cfg: Config, paths: ReportPaths) -> None:
    """Log the report, its figures and tables as artifacts of one top-level MLflow run named ``report``."""
    from hardmask.tracking import RunTracker

    with RunTracker.for_report(cfg) as tracker:
        tracker.log_artifacts([paths.markdown, *([paths.html] if paths.html else [])])
        tracker.log_artifacts(paths.figures.values(), artifact_path="figures")
        tracker.log_artifacts(paths.tables.values(), artifact_path="tables")
