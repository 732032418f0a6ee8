"""Report tables from the tidy evaluation frame (:mod:`hardmask.evaluation.tidy`).

Each table exists in two forms: numeric (``<title> mean|std|n`` columns, for ``reports/tables/*.csv``) and
display (``"0.912 ± 0.013"`` strings, for the Markdown/HTML report). Statistics are over seeds; ``std`` is the
sample standard deviation (ddof 1), undefined (nan, shown as a bare mean) for a single seed. Only rows of the
primary checkpoint (``best`` when evaluated, else ``last``) enter the tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from hardmask.evaluation.tidy import BG_GAP_SPLIT, GROUP_ACC_PREFIX, primary_checkpoint

HEADLINE = (  # (column title, split, metric)
    ("avg acc", "test", "avg_acc"),
    ("worst-group acc", "test", "worst_group_acc"),
    ("BG-gap", BG_GAP_SPLIT, "bg_gap"),
    ("fg IoU", "test", "fg_iou"),
)
SPLIT_METRICS = (
    "avg_acc",
    "worst_group_acc",
    "adj_avg_acc",
    "minority_class_acc",
    "auroc",
    "fg_iou",
    "fg_fraction",
    "nmi",
    "ari",
)
SELECTED_SUFFIX = " + selected intervention"


def primary_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of the primary checkpoint (``best`` when present, else ``last``)."""
    return df[df["checkpoint"] == primary_checkpoint(df)]


def model_order(models: Sequence[str]) -> list[str]:
    """Models in order of first appearance: the evaluate stage writes them in ``train.variants`` order."""
    return list(dict.fromkeys(models))


def seed_stats(rows: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """``mean``, ``std`` and ``n`` of ``value`` over seeds, per ``keys`` (nan values are not counted)."""
    return rows.groupby(list(keys), sort=False)["value"].agg(mean="mean", std="std", n="count")


def _wide(stats: pd.DataFrame, level: str) -> pd.DataFrame:
    """Move index ``level`` into ``<level value> mean|std|n`` columns."""
    wide = stats.unstack(level)
    wide.columns = [f"{name} {stat}" for stat, name in wide.columns]
    return wide.sort_index(axis=1)


def format_mean_std(mean: float, std: float, digits: int = 3) -> str:
    if np.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if np.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def display(numeric: pd.DataFrame) -> pd.DataFrame:
    """``<t> mean``/``<t> std`` column pairs -> one ``"mean ± std"`` string column ``<t>`` each."""
    titles = [c.removesuffix(" mean") for c in numeric.columns if c.endswith(" mean")]
    out = pd.DataFrame(index=numeric.index)
    for title in titles:
        pairs = zip(numeric[f"{title} mean"], numeric[f"{title} std"])
        out[title] = [format_mean_std(mean, std) for mean, std in pairs]
    return out


# ----------------------------------------------------------------------------------------- tables
def model_table(df: pd.DataFrame, columns: Sequence[tuple[str, str, str]]) -> pd.DataFrame:
    """Models x ``columns`` (``(title, split, metric)`` triples), numeric ``<title> mean|std|n``.

    A model evaluated with interventions gets a second row, ``<model> + selected intervention`` (the setting
    chosen on validation, reported on the other splits).
    """
    rows = primary_rows(df)
    rows = rows[rows["intervention"].isin(["none", "selected"])]
    parts = [
        seed_stats(
            rows[(rows["split"] == split) & (rows["metric"] == metric)].assign(title=title),
            ["model", "intervention", "title"],
        )
        for title, split, metric in columns
    ]
    table = _wide(pd.concat(parts), "title")
    if table.empty:
        return table
    rank = {m: r for r, m in enumerate(model_order(df["model"]))}
    # each model's plain row first ("none" < "selected"), models in canonical order
    table = table.iloc[sorted(range(len(table)), key=lambda r: (rank[table.index[r][0]], table.index[r][1]))]
    table.index = pd.Index([m if i == "none" else m + SELECTED_SUFFIX for m, i in table.index], name="model")
    ordered = [f"{title} {stat}" for title, _, _ in columns for stat in ("mean", "std", "n")]
    return table[[c for c in ordered if c in table.columns]]


def headline_table(df: pd.DataFrame) -> pd.DataFrame:
    """Models x {avg, worst-group, BG-gap, fg IoU} (:data:`HEADLINE`)."""
    return model_table(df, HEADLINE)


def full_metrics_table(df: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Models x every metric of :data:`SPLIT_METRICS` on ``split`` (columns no model has are left out)."""
    return model_table(df, [(metric, split, metric) for metric in SPLIT_METRICS])


def split_table(df: pd.DataFrame, metrics: Sequence[str] = ("avg_acc", "worst_group_acc")) -> pd.DataFrame:
    """(model, split) x metrics without interventions."""
    rows = primary_rows(df)
    rows = rows[(rows["intervention"] == "none") & rows["metric"].isin(metrics)]
    return _wide(seed_stats(rows, ["model", "split", "metric"]), "metric")


def group_accuracy_matrix(df: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Models x groups: mean per-group accuracy over seeds (no intervention)."""
    rows = primary_rows(df)
    rows = rows[(rows["split"] == split) & (rows["intervention"] == "none")]
    rows = rows[rows["metric"].str.startswith(GROUP_ACC_PREFIX)]
    rows = rows.assign(group=rows["metric"].str.removeprefix(GROUP_ACC_PREFIX))
    matrix = rows.pivot_table(index="model", columns="group", values="value", aggfunc="mean", sort=False)
    return matrix.reindex(model_order(matrix.index))


def intervention_table(df: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """(model, intervention) x {avg, worst-group}, for the models evaluated with more settings than
    ``none`` and ``selected``."""
    rows = primary_rows(df)
    rows = rows[(rows["split"] == split) & rows["metric"].isin(["avg_acc", "worst_group_acc"])]
    swept = rows.groupby("model")["intervention"].nunique()
    rows = rows[rows["model"].isin(swept[swept > 2].index)]
    if rows.empty:
        return pd.DataFrame()
    return _wide(seed_stats(rows, ["model", "intervention", "metric"]), "metric")


def selection_table(selections: dict[tuple[str, int], str]) -> pd.DataFrame:
    """(model, seed) -> the intervention selected on validation."""
    records = [
        {"model": m, "seed": s, "selected on val": name} for (m, s), name in sorted(selections.items())
    ]
    return pd.DataFrame(records, columns=["model", "seed", "selected on val"]).set_index(["model", "seed"])


def to_markdown(frame: pd.DataFrame, float_digits: int = 3) -> str:
    """A GitHub pipe table (no extra dependency); named index levels become the first columns."""
    flat = frame.reset_index() if any(name is not None for name in frame.index.names) else frame

    def cell(value: object) -> str:
        if isinstance(value, float | np.floating):
            return "–" if np.isnan(value) else f"{value:.{float_digits}f}"
        return str(value).replace("|", "\\|")

    headers = [cell(c) for c in flat.columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in flat.itertuples(index=False)]
    return "\n".join(lines)


def models_table(variants: Mapping[str, Mapping[str, object]]) -> pd.DataFrame:
    """One row per model: what it is and the supervision beyond image labels it trains with (the evaluate
    stage's ``variants.json``)."""
    rows = [
        {
            "model": name,
            "what it is": info["summary"],
            "ground-truth masks": "yes" if info["ground_truth_mask"] else "no",
            "training group labels": "yes" if info["group_labels"] else "no",
        }
        for name, info in variants.items()
    ]
    return pd.DataFrame(rows).set_index("model")
