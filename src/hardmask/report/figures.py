"""Report figures (seaborn on matplotlib ``Figure`` objects: no pyplot state, no GUI backend needed).

Every function returns a :class:`matplotlib.figure.Figure`; :mod:`hardmask.report.render` saves it as PNG
(``Figure.savefig`` renders with Agg). Seed spread is shown as individual seed points plus mean ± sd.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from hardmask.evaluation.tidy import BG_GAP_SPLIT
from hardmask.report.tables import model_order, primary_rows

METRIC_TITLES = {"avg_acc": "average accuracy", "worst_group_acc": "worst-group accuracy", "bg_gap": "BG-gap"}
CORRECT_COLOUR, WRONG_COLOUR = "#1a7f37", "#cf222e"


def _figure(ncols: int, nrows: int = 1, width: float = 4.2, height: float = 3.4) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    return fig, axes


def _seed_points_and_mean(
    data: pd.DataFrame, ax, x: str, order: Sequence[str], hue: str | None = None
) -> None:
    sns.stripplot(
        data=data,
        x=x,
        y="value",
        hue=hue,
        order=order,
        dodge=hue is not None,
        ax=ax,
        alpha=0.6,
        size=5,
        legend=False,
    )
    sns.pointplot(
        data=data,
        x=x,
        y="value",
        hue=hue,
        order=order,
        dodge=0.4 if hue else False,
        ax=ax,
        errorbar="sd",
        linestyle="none",
        marker="D",
        markersize=5,
        capsize=0.15,
        color=None if hue else "black",
    )


def accuracy_by_model(df: pd.DataFrame, split: str = "test") -> Figure:
    """Average and worst-group accuracy per model on ``split``: seeds as points, mean ± sd as a diamond."""
    rows = primary_rows(df)
    rows = rows[(rows["split"] == split) & (rows["intervention"] == "none")]
    order = model_order(rows["model"].unique())
    fig, axes = _figure(2, width=max(4.2, 1.1 * len(order)))
    for ax, metric in zip(axes, ("avg_acc", "worst_group_acc")):
        _seed_points_and_mean(rows[rows["metric"] == metric], ax, "model", order)
        ax.set(title=f"{METRIC_TITLES[metric]} ({split})", xlabel="", ylabel="accuracy", ylim=(0, 1.02))
        ax.tick_params(axis="x", rotation=20)
    return fig


def group_accuracy_heatmap(matrix: pd.DataFrame, split: str = "test") -> Figure:
    """Models x groups heatmap of mean accuracy (:func:`hardmask.report.tables.group_accuracy_matrix`)."""
    fig, (ax,) = _figure(1, width=max(5.0, 1.3 * matrix.shape[1] + 2), height=0.6 * len(matrix) + 1.8)
    sns.heatmap(
        matrix, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="viridis", ax=ax, cbar_kws={"label": "acc"}
    )
    ax.set(title=f"per-group accuracy ({split}, mean over seeds)", xlabel="group", ylabel="")
    ax.tick_params(axis="x", rotation=30)
    return fig


def training_curves(history: pd.DataFrame, columns: Sequence[str] | None = None) -> Figure:
    """One panel per history column (losses, accuracies) against epoch, one line per model (mean ± sd over
    seeds). ``history`` has columns ``model``, ``seed``, ``epoch`` and the values of ``history.csv``."""
    if columns is None:
        columns = [c for c in history.columns if c.startswith(("train_", "val_"))]
    ncols = min(4, len(columns))
    nrows = -(-len(columns) // ncols)
    fig, axes = _figure(ncols, nrows, width=3.6, height=2.8)
    order = model_order(history["model"].unique())
    for ax, column in zip(axes, columns):
        sns.lineplot(
            data=history,
            x="epoch",
            y=column,
            hue="model",
            hue_order=order,
            errorbar="sd",
            ax=ax,
            legend=column == columns[0],
        )
        ax.set(title=column, ylabel="")
    for ax in axes[len(columns) :]:
        ax.set_visible(False)
    return fig


def intervention_effects(df: pd.DataFrame, split: str = "test") -> Figure:
    """Average and worst-group accuracy under each intervention setting (bars: mean; whiskers: sd)."""
    rows = primary_rows(df)
    rows = rows[(rows["split"] == split) & (rows["intervention"] != "selected")]
    swept = rows.groupby("model")["intervention"].nunique()
    rows = rows[rows["model"].isin(swept[swept > 1].index)]
    settings = ["none"] + sorted(set(rows["intervention"]) - {"none"})
    fig, axes = _figure(2, width=max(4.5, 0.55 * len(settings) + 2))
    for ax, metric in zip(axes, ("avg_acc", "worst_group_acc")):
        sns.barplot(
            data=rows[rows["metric"] == metric],
            x="intervention",
            y="value",
            hue="model",
            order=settings,
            errorbar="sd",
            ax=ax,
            legend=metric == "avg_acc",
        )
        ax.set(title=f"{METRIC_TITLES[metric]} ({split})", xlabel="", ylabel="accuracy", ylim=(0, 1.02))
        ax.tick_params(axis="x", rotation=45)
    return fig


def bg_gap_bars(df: pd.DataFrame) -> Figure:
    """BG-gap = acc(mixed_same) - acc(mixed_rand) per model; smaller = less reliance on the background."""
    rows = primary_rows(df)
    rows = rows[
        (rows["split"] == BG_GAP_SPLIT) & (rows["metric"] == "bg_gap") & (rows["intervention"] == "none")
    ]
    order = model_order(rows["model"].unique())
    fig, (ax,) = _figure(1, width=max(4.2, 1.1 * len(order)))
    sns.barplot(data=rows, x="model", y="value", order=order, errorbar="sd", ax=ax, color="#8da0cb")
    sns.stripplot(data=rows, x="model", y="value", order=order, ax=ax, color="black", size=4)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set(title="BG-gap: acc(mixed_same) - acc(mixed_rand)", xlabel="", ylabel="accuracy gap")
    ax.tick_params(axis="x", rotation=20)
    return fig


# ----------------------------------------------------------------------------------------- overlays
def _nearest_upsample(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """[h,w] -> [H,W] by nearest neighbour (every pixel takes the value of the patch it lies in)."""
    h, w = grid.shape
    return grid[(np.arange(height) * h) // height][:, (np.arange(width) * w) // width]


def _part_colours(num_parts: int) -> np.ndarray:
    return np.asarray(sns.color_palette("tab10" if num_parts <= 10 else "husl", num_parts))  # [K,3]


def part_overlay(image: np.ndarray, part_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Colour each pixel by its argmax foreground part; background-part pixels stay as they are.

    image [H,W,3] uint8; part_map [K+1,h,w] (background last). Returns float [H,W,3] in [0,1].
    """
    height, width = image.shape[:2]
    num_fg = part_map.shape[0] - 1
    assignment = _nearest_upsample(part_map.argmax(0), height, width)  # [H,W]
    base = image.astype(np.float32) / 255
    colours = _part_colours(max(num_fg, 1))[np.minimum(assignment, max(num_fg - 1, 0))]  # [H,W,3]
    fg = (assignment < num_fg)[..., None]
    return np.where(fg, (1 - alpha) * base + alpha * colours, base)


def mask_overlay(image: np.ndarray, hard_mask: np.ndarray, dim: float = 0.25) -> np.ndarray:
    """Darken the patches stage 2 does not see. image [H,W,3] uint8; hard_mask [h,w] bool (True = kept)."""
    height, width = image.shape[:2]
    keep = _nearest_upsample(hard_mask.astype(bool), height, width)[..., None]
    base = image.astype(np.float32) / 255
    return np.where(keep, base, dim * base)


def part_overlay_grid(
    images: np.ndarray,
    part_maps: np.ndarray | None,
    hard_masks: np.ndarray | None,
    labels: Sequence[int],
    preds: Sequence[int],
    group_names: Sequence[str],
    title: str = "",
) -> Figure:
    """One row per group, in order of first appearance; each image as [part map | hard mask] panels.

    images [N,H,W,3] uint8; part_maps [N,K+1,h,w] or None; hard_masks [N,h,w] bool or None; labels/preds [N];
    group_names [N] (the group of each image). Titles give label and prediction, red for failures.
    """
    n = len(images)
    if not all(len(x) == n for x in (labels, preds, group_names)):
        raise ValueError("images, labels, preds and group_names must have one entry per image")
    panels = [name for name, data in (("parts", part_maps), ("mask", hard_masks)) if data is not None] or [
        "image"
    ]
    groups = list(dict.fromkeys(group_names))
    members = {g: [i for i in range(n) if group_names[i] == g] for g in groups}
    ncols = max(len(m) for m in members.values()) * len(panels)
    fig, axes = _figure(ncols, len(groups), width=1.7, height=1.9)
    axes = axes.reshape(len(groups), ncols)
    for row, group in enumerate(groups):
        for slot in range(ncols):
            axes[row, slot].set_axis_off()
        for k, i in enumerate(members[group]):
            for p, panel in enumerate(panels):
                ax = axes[row, k * len(panels) + p]
                if panel == "parts":
                    ax.imshow(part_overlay(images[i], part_maps[i].astype(np.float32)))
                elif panel == "mask":
                    ax.imshow(mask_overlay(images[i], hard_masks[i]))
                else:
                    ax.imshow(images[i])
                correct = labels[i] == preds[i]
                ax.set_title(
                    f"{panel}: y={labels[i]} ŷ={preds[i]}",
                    fontsize=7,
                    color=CORRECT_COLOUR if correct else WRONG_COLOUR,
                )
        axes[row, 0].set_axis_on()
        axes[row, 0].set(xticks=[], yticks=[])
        axes[row, 0].set_ylabel(group, fontsize=8)
    if title:
        fig.suptitle(title)
    return fig
