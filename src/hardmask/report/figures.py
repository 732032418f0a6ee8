"""Report figures (seaborn on matplotlib ``Figure`` objects: no pyplot state, no GUI backend needed).

Every function returns a :class:`matplotlib.figure.Figure`; :mod:`hardmask.report.render` saves it as PNG
(``Figure.savefig`` renders with Agg). What the marks of each figure mean is spelled out once, in the
``*_MARKS`` strings below, which the captions quote.
"""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Collection, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from hardmask.evaluation.tidy import BG_GAP_SPLIT
from hardmask.report.tables import model_order, primary_rows

METRIC_TITLES = {"avg_acc": "average accuracy", "worst_group_acc": "worst-group accuracy", "bg_gap": "BG-gap"}
CORRECT_COLOUR, WRONG_COLOUR = "#1a7f37", "#cf222e"
CORRECT_BACKGROUND, WRONG_BACKGROUND = "#eef7f0", "#fbeeee"  # faint tints that tell the overlay halves apart
RARE_MARK = "*"

# What the marks mean (seaborn's errorbar="sd" is ± 1 sample sd, as in the tables)
SEED_POINTS_MARKS = "dots = seeds, black diamond = mean over seeds, black bar = ± 1 sd over seeds"
BAR_MARKS = "bar = mean over seeds, black whisker = ± 1 sd over seeds"
LINE_MARKS = "line = mean over seeds, shaded band = ± 1 sd over seeds"
HEATMAP_MARKS = "cell = mean over seeds (no spread shown)"


def _figure(ncols: int, nrows: int = 1, width: float = 4.2, height: float = 3.4) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    return fig, axes


def _set_title(ax, text: str) -> None:
    """A title wrapped to the width of its axes, so that it is not cut at the figure's saved size."""
    ax.set_title(text)
    points = ax.get_position().width * ax.get_figure(root=True).get_figwidth() * 72
    chars = max(12, int(points / (0.6 * ax.title.get_fontsize())))  # ~0.6 em per character
    ax.set_title(textwrap.fill(text, chars, break_long_words=False))


@contextlib.contextmanager
def _fixed_jitter(seed: int = 0) -> Iterator[None]:
    """seaborn's stripplot jitters its dots with numpy's global RNG: seed it here (and restore it after), so
    that a figure is the same PNG on every run."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _seed_points_and_mean(
    data: pd.DataFrame, ax, x: str, order: Sequence[str], hue: str | None = None
) -> None:
    with _fixed_jitter():
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
    """Average and worst-group accuracy per model on ``split`` (:data:`SEED_POINTS_MARKS`)."""
    rows = primary_rows(df)
    rows = rows[(rows["split"] == split) & (rows["intervention"] == "none")]
    order = model_order(rows["model"].unique())
    fig, axes = _figure(2, width=max(4.2, 1.1 * len(order)))
    for ax, metric in zip(axes, ("avg_acc", "worst_group_acc")):
        _seed_points_and_mean(rows[rows["metric"] == metric], ax, "model", order)
        _set_title(ax, f"{METRIC_TITLES[metric]} ({split})")
        ax.set(xlabel="", ylabel="accuracy", ylim=(0, 1.02))
        ax.tick_params(axis="x", rotation=20)
    return fig


def group_label(group: str, train_counts: Mapping[str, int] | None, rare: Collection[str]) -> str:
    """``round_on_water*`` + a second line ``train n=56`` (the mark for a rare group, n when known)."""
    label = group + (RARE_MARK if group in rare else "")
    count = (train_counts or {}).get(group)
    return label if count is None else f"{label}\ntrain n={count}"


def group_accuracy_heatmap(
    matrix: pd.DataFrame,
    split: str = "test",
    train_counts: Mapping[str, int] | None = None,
    rare: Collection[str] = (),
) -> Figure:
    """Models x groups heatmap of mean accuracy (:func:`hardmask.report.tables.group_accuracy_matrix`;
    :data:`HEATMAP_MARKS`). Groups rare in training are marked (:func:`group_label`) and their labels bold."""
    fig, (ax,) = _figure(1, width=max(5.0, 1.4 * matrix.shape[1] + 2.2), height=0.6 * len(matrix) + 2.0)
    sns.heatmap(
        matrix, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="viridis", ax=ax, cbar_kws={"label": "accuracy"}
    )
    ax.set_xticks(ax.get_xticks(), [group_label(g, train_counts, rare) for g in matrix.columns])
    for tick, group in zip(ax.get_xticklabels(), matrix.columns):
        tick.set_fontweight("bold" if group in rare else "normal")
    longest = max((len(str(g)) for g in matrix.columns), default=0)
    ax.tick_params(axis="x", rotation=0 if longest <= 16 else 30)
    _set_title(ax, f"per-group accuracy ({split}, mean over seeds)")
    ax.set(xlabel="group" + (f"  ({RARE_MARK} = rare in training)" if rare else ""), ylabel="")
    return fig


def training_curves(history: pd.DataFrame, columns: Sequence[str] | None = None) -> Figure:
    """One panel per history column (losses, accuracies) against epoch, one line per model
    (:data:`LINE_MARKS`). ``history``: columns ``model``, ``seed``, ``epoch`` and those of ``history.csv``."""
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
        _set_title(ax, column)
        ax.set(ylabel="")
    for ax in axes[len(columns) :]:
        ax.set_visible(False)
    return fig


def intervention_effects(df: pd.DataFrame, split: str = "test") -> Figure:
    """Average and worst-group accuracy under each intervention setting (:data:`BAR_MARKS`)."""
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
            err_kws={"color": "black"},
            ax=ax,
            legend=metric == "avg_acc",
        )
        _set_title(ax, f"{METRIC_TITLES[metric]} ({split})")
        ax.set(xlabel="", ylabel="accuracy", ylim=(0, 1.02))
        ax.tick_params(axis="x", rotation=45)
    return fig


def bg_gap_bars(df: pd.DataFrame) -> Figure:
    """BG-gap = acc(mixed_same) - acc(mixed_rand) per model; smaller = less reliance on the background
    (:data:`BAR_MARKS`, plus the seeds as dots)."""
    rows = primary_rows(df)
    rows = rows[
        (rows["split"] == BG_GAP_SPLIT) & (rows["metric"] == "bg_gap") & (rows["intervention"] == "none")
    ]
    order = model_order(rows["model"].unique())
    fig, (ax,) = _figure(1, width=max(4.2, 1.1 * len(order)))
    sns.barplot(
        data=rows,
        x="model",
        y="value",
        order=order,
        errorbar="sd",
        err_kws={"color": "black"},
        capsize=0.15,
        ax=ax,
        color="#8da0cb",
    )
    with _fixed_jitter():
        sns.stripplot(data=rows, x="model", y="value", order=order, ax=ax, color="#d95f02", size=5, zorder=3)
    ax.axhline(0, color="grey", linewidth=0.8)
    _set_title(ax, "BG-gap per model")
    ax.set(xlabel="", ylabel="acc(mixed_same) - acc(mixed_rand)")
    ax.tick_params(axis="x", rotation=20)
    return fig


# ----------------------------------------------------------------------------------------- overlays
# A vivid qualitative palette without its grey: parts are drawn over a grey copy of the image.
PART_PALETTE = [colour for i, colour in enumerate(sns.color_palette("bright")) if i != 7]
REMOVED_DIM = 0.25  # brightness of the patches the hard mask removes


def _nearest_upsample(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """[h,w] -> [H,W] by nearest neighbour (every pixel takes the value of the patch it lies in)."""
    h, w = grid.shape
    return grid[(np.arange(height) * h) // height][:, (np.arange(width) * w) // width]


def part_colours(num_parts: int) -> np.ndarray:
    """[K,3] RGB in [0,1]: :data:`PART_PALETTE`, or evenly spaced hues beyond its length."""
    palette = PART_PALETTE if num_parts <= len(PART_PALETTE) else sns.color_palette("husl", num_parts)
    return np.asarray(palette[:num_parts])


def part_assignment(part_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """[K+1,h,w] part map -> [H,W] argmax part per pixel (K = background)."""
    return _nearest_upsample(part_map.argmax(0), height, width)


def part_overlay(image: np.ndarray, part_map: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """The image in grey, each foreground part tinted in its :func:`part_colours` colour; background-part
    pixels stay grey. The grey base keeps the part colours from mixing with the object's own colour.

    image [H,W,3] uint8; part_map [K+1,h,w] (background last). Returns float [H,W,3] in [0,1].
    """
    height, width = image.shape[:2]
    num_fg = part_map.shape[0] - 1
    assignment = part_assignment(part_map, height, width)  # [H,W]
    grey = np.repeat((image.astype(np.float32) / 255).mean(-1, keepdims=True), 3, axis=-1)
    colours = part_colours(max(num_fg, 1))[np.minimum(assignment, max(num_fg - 1, 0))]  # [H,W,3]
    fg = (assignment < num_fg)[..., None]
    return np.where(fg, (1 - alpha) * grey + alpha * colours, grey)


def mask_overlay(image: np.ndarray, hard_mask: np.ndarray, dim: float = REMOVED_DIM) -> np.ndarray:
    """Darken the patches stage 2 does not see. image [H,W,3] uint8; hard_mask [h,w] bool (True = kept)."""
    height, width = image.shape[:2]
    keep = _nearest_upsample(hard_mask.astype(bool), height, width)[..., None]
    base = image.astype(np.float32) / 255
    return np.where(keep, base, dim * base)


def _draw_parts(ax, image: np.ndarray, part_map: np.ndarray) -> None:
    """:func:`part_overlay` with each part's region outlined in its colour (tints alone can look alike)."""
    ax.imshow(part_overlay(image, part_map))
    assignment = part_assignment(part_map, *image.shape[:2])
    for k, colour in enumerate(part_colours(part_map.shape[0] - 1)):
        region = assignment == k
        if region.any() and not region.all():
            ax.contour(region.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.2)


def _overlay_legend(num_parts: int | None, has_mask: bool) -> list[Patch]:
    handles = []
    if num_parts is not None:
        handles += [Patch(color=c, label=f"part {k}") for k, c in enumerate(part_colours(num_parts))]
        handles.append(Patch(facecolor="none", edgecolor="grey", label="background part (no tint)"))
    if has_mask:
        handles.append(Patch(color=(REMOVED_DIM,) * 3, label="removed by the hard mask (dimmed)"))
    return handles


def _legend_that_fits(fig: Figure, handles: list[Patch], fontsize: float = 9) -> None:
    """A legend under the figure in as few rows as fit its width (a narrow grid wraps it)."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    for ncols in range(len(handles), 0, -1):
        legend = fig.legend(
            handles=handles, loc="outside lower center", ncols=ncols, fontsize=fontsize, frameon=False
        )
        if ncols == 1 or legend.get_window_extent(renderer).width <= 0.95 * fig.bbox.width:
            return
        legend.remove()


def part_overlay_grid(
    images: np.ndarray,
    part_maps: np.ndarray | None,
    hard_masks: np.ndarray | None,
    labels: Sequence[int],
    preds: Sequence[int],
    group_names: Sequence[str],
    title: str = "",
    rare: Collection[str] = (),
) -> Figure:
    """One row per group (in order of first appearance): correct predictions on the left, failures on the
    right, each image as [parts | mask] panels, and a legend of the part colours.

    images [N,H,W,3] uint8; part_maps [N,K+1,h,w] or None; hard_masks [N,h,w] bool or None; labels/preds [N];
    group_names [N] (the group of each image); ``rare`` groups get a '*' after their name.
    """
    n = len(images)
    if not all(len(x) == n for x in (labels, preds, group_names)):
        raise ValueError("images, labels, preds and group_names must have one entry per image")
    panels = [name for name, data in (("parts", part_maps), ("mask", hard_masks)) if data is not None] or [
        "image"
    ]
    groups = list(dict.fromkeys(group_names))
    correct = [labels[i] == preds[i] for i in range(n)]

    def members(want: bool) -> dict[str, list[int]]:
        return {g: [i for i in range(n) if group_names[i] == g and correct[i] == want] for g in groups}

    sides = [  # (heading, colour, background, {group: image indices})
        ("correct predictions", CORRECT_COLOUR, CORRECT_BACKGROUND, members(True)),
        ("failures", WRONG_COLOUR, WRONG_BACKGROUND, members(False)),
    ]
    ncols = [max(1, *(len(m) for m in side.values())) * len(panels) for *_, side in sides]
    fig = Figure(figsize=(1.35 * sum(ncols) + 0.6, 1.5 * len(groups) + 1.2), layout="constrained")
    subfigs = fig.subfigures(1, 2, width_ratios=ncols)
    for side, (subfig, (heading, colour, background, shown)) in enumerate(zip(subfigs, sides)):
        subfig.set_facecolor(background)
        subfig.suptitle(heading, color=colour, fontweight="bold")
        axes = subfig.subplots(len(groups), ncols[side], squeeze=False)
        for row, group in enumerate(groups):
            for ax in axes[row]:
                ax.set_axis_off()
            for k, i in enumerate(shown[group]):
                for p, panel in enumerate(panels):
                    ax = axes[row, k * len(panels) + p]
                    if panel == "parts":
                        _draw_parts(ax, images[i], part_maps[i].astype(np.float32))
                    elif panel == "mask":
                        ax.imshow(mask_overlay(images[i], hard_masks[i]))
                    else:
                        ax.imshow(images[i])
                    ax.set_title(
                        f"{panel}, y={labels[i]} ŷ={preds[i]}" if p == 0 else panel, fontsize=8, color=colour
                    )
            first = axes[row, 0]
            if not shown[group]:
                first.text(0.5, 0.5, f"no {heading}", ha="center", va="center", fontsize=8, color="grey")
            if side == 0 or not shown[group]:  # the axis carries the row's group name or the "no ..." text
                first.set_axis_on()
                first.set(xticks=[], yticks=[], facecolor="none")
                first.spines[:].set_visible(False)
            if side == 0:
                first.set_ylabel(group + (RARE_MARK if group in rare else ""), fontsize=9)
    num_parts = part_maps.shape[1] - 1 if part_maps is not None else None
    handles = _overlay_legend(num_parts, hard_masks is not None)
    if handles:
        _legend_that_fits(fig, handles)
    if title:
        fig.suptitle(title)
    return fig
