"""The study's result in words, for the top of the report: the method's test worst-group-accuracy gain over
the baseline with its uncertainty (sd over seeds, paired bootstrap interval over test images), then the
BG-gap and the ground-truth-mask upper bound where they were evaluated.

Every number is of the primary checkpoint without intervention, as in the headline table.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from hardmask.evaluation.tidy import BG_GAP_SPLIT
from hardmask.report.stats import PairedRun, paired_bootstrap_gain
from hardmask.report.tables import format_mean_std, model_order, primary_rows

METHOD, BASELINE, ORACLE = "two_stage_hard", "baseline_vit", "oracle_mask"
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0  # fixed: the report is deterministic


def per_seed(eval_df: pd.DataFrame, model: str, split: str, metric: str) -> pd.Series:
    """``seed -> value`` of ``model`` (primary checkpoint, no intervention; nan values left out)."""
    rows = primary_rows(eval_df)
    rows = rows[
        (rows["model"] == model)
        & (rows["split"] == split)
        & (rows["metric"] == metric)
        & (rows["intervention"] == "none")
    ]
    return rows.set_index("seed")["value"].dropna().sort_index()


def paired_runs(
    test_predictions: Mapping[tuple[str, int], pd.DataFrame], method: str, baseline: str
) -> dict[int, PairedRun]:
    """``seed -> (method correct, baseline correct, group)`` over the test images both models were scored on,
    matched by dataset index. ``test_predictions``: ``{(model, seed): frame with index, group, correct}``."""
    runs = {}
    for (model, seed), ours in sorted(test_predictions.items()):
        theirs = test_predictions.get((baseline, seed))
        if model != method or theirs is None:
            continue
        both = ours.merge(theirs[["index", "correct"]], on="index", suffixes=("_method", "_baseline"))
        if not both.empty:
            runs[seed] = (
                both["correct_method"].to_numpy(dtype=bool),
                both["correct_baseline"].to_numpy(dtype=bool),
                both["group"].to_numpy(),
            )
    return runs


def _seeds(seeds) -> str:
    seeds = list(seeds)
    return f"seed {seeds[0]}" if len(seeds) == 1 else "seeds " + ", ".join(map(str, seeds))


def _mean_sd(values: pd.Series) -> str:
    return format_mean_std(values.mean(), values.std()) if len(values) else "–"


def gain_sentence(
    eval_df: pd.DataFrame,
    test_predictions: Mapping[tuple[str, int], pd.DataFrame],
    method: str = METHOD,
    baseline: str = BASELINE,
) -> str:
    """The method's test worst-group-accuracy gain over the baseline: mean and sd over seeds of the paired
    (same seed) gains, and the paired bootstrap 95 % interval over test images (:mod:`.stats`)."""
    ours, theirs = (per_seed(eval_df, m, "test", "worst_group_acc") for m in (method, baseline))
    if ours.empty or theirs.empty:
        present = model_order(primary_rows(eval_df)["model"]) or ["none"]
        return (
            f"No method-vs-baseline comparison: it needs the test worst-group accuracy of both {method} and "
            f"{baseline}, and this report has {', '.join(present)}."
        )
    gains = (ours - theirs).dropna()
    if gains.empty:
        return (
            f"No method-vs-baseline comparison: {method} ({_seeds(ours.index)}) and {baseline} "
            f"({_seeds(theirs.index)}) share no seed."
        )
    spread = f"sd {gains.std():.3f} over seeds" if len(gains) > 1 else "one seed, so no sd over seeds"
    runs = paired_runs(test_predictions, method, baseline)
    if runs:
        low, high = paired_bootstrap_gain(
            list(runs.values()), n_resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED
        )
        images = "test images" if list(runs) == list(gains.index) else f"the test images of {_seeds(runs)}"
        interval = f"95 % paired bootstrap interval over {images} [{low:+.3f}, {high:+.3f}]"
    else:
        interval = "no per-image test predictions of both models, so no bootstrap interval"
    return (
        f"{method} (the method) over {baseline}: test worst-group accuracy {gains.mean():+.3f}, from "
        f"{_mean_sd(theirs[gains.index])} to {_mean_sd(ours[gains.index])} (the gain is the mean of the "
        f"paired per-seed gains over {_seeds(gains.index)}, {spread}; {interval})."
    )


def bg_gap_sentence(eval_df: pd.DataFrame, models: tuple[str, ...] = (METHOD, BASELINE)) -> str | None:
    values = {m: per_seed(eval_df, m, BG_GAP_SPLIT, "bg_gap") for m in models}
    shown = [f"{_mean_sd(v)} for {m}" for m, v in values.items() if not v.empty]
    if not shown:
        return None
    return (
        "BG-gap (acc(mixed_same) - acc(mixed_rand); near 0 = the background does not sway the prediction): "
        f"{' vs '.join(shown)}."
    )


def oracle_sentence(eval_df: pd.DataFrame, oracle: str = ORACLE, method: str = METHOD) -> str | None:
    bound = per_seed(eval_df, oracle, "test", "worst_group_acc")
    if bound.empty:
        return None
    sentence = (
        f"Upper bound with the ground-truth foreground mask in place of the learned one ({oracle}): test "
        f"worst-group accuracy {_mean_sd(bound)}"
    )
    ours = per_seed(eval_df, method, "test", "worst_group_acc")
    if not ours.empty:
        sentence += f", {bound.mean() - ours.mean():.3f} above {method}"
    return sentence + "."


def result_sentences(
    eval_df: pd.DataFrame, test_predictions: Mapping[tuple[str, int], pd.DataFrame] | None = None
) -> list[str]:
    """The gain sentence, then the BG-gap and oracle sentences where those were evaluated."""
    sentences = [gain_sentence(eval_df, test_predictions or {})]
    sentences += [s for s in (bg_gap_sentence(eval_df), oracle_sentence(eval_df)) if s is not None]
    return sentences
