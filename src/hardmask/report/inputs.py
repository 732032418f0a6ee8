"""Read what the report is built from: the evaluate stage's table and the per-run files it left behind."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from hardmask import layout
from hardmask.config import Config
from hardmask.evaluation.overlays import OverlaySamples
from hardmask.evaluation.tidy import check_columns
from hardmask.report.result import BASELINE, METHOD

log = logging.getLogger("hardmask.report")

PREDICTION_COLUMNS = ("index", "group", "correct")  # what the paired bootstrap needs of predictions.csv


@dataclass(frozen=True)
class TrainGroups:
    """How many training images each group had, and which groups were rare (``minority_groups``)."""

    counts: dict[str, int]  # group name -> images in the training split
    minority: frozenset[str]


@dataclass
class ReportInputs:
    eval_df: pd.DataFrame
    histories: dict[tuple[str, int], pd.DataFrame]  # (model, seed) -> history.csv
    overlays: dict[str, OverlaySamples]  # model -> samples of its first seed that has them
    selections: dict[tuple[str, int], str]  # (model, seed) -> intervention selected on validation
    # (model, seed) -> test images without intervention (PREDICTION_COLUMNS), of the two compared models only
    test_predictions: dict[tuple[str, int], pd.DataFrame] = field(default_factory=dict)
    train_groups: TrainGroups | None = None  # from the first selection.json that records them
    variants: dict[str, dict] = field(default_factory=dict)  # variants.json: what each model is


def read_eval_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: evaluation table not found (run the evaluate stage first)")
    df = pd.read_csv(path)
    check_columns(df)
    return df


def read_test_predictions(path: str | Path) -> pd.DataFrame:
    """The test rows without intervention of a ``predictions.csv``, columns :data:`PREDICTION_COLUMNS`."""
    frame = pd.read_csv(path, usecols=["split", "intervention", *PREDICTION_COLUMNS])
    test = frame[(frame["split"] == "test") & (frame["intervention"] == "none")]
    return test[list(PREDICTION_COLUMNS)].astype({"correct": bool}).reset_index(drop=True)


def train_groups_of(record: dict) -> TrainGroups | None:
    """The training group counts of a ``selection.json`` record (None for one written before they were)."""
    if "train_group_counts" not in record:
        return None
    counts = {str(name): int(n) for name, n in record["train_group_counts"].items()}
    return TrainGroups(counts, frozenset(record.get("minority_groups", ())))


def load_report_inputs(cfg: Config) -> ReportInputs:
    """``<reports_dir>/eval/eval.csv``, each run's ``history.csv`` and its
    ``{overlays.npz,selection.json,predictions.csv}`` eval files of ``train.variants`` x ``train.seeds``
    (predictions of the method and the baseline only: nothing else reads them).
    A missing per-run file only shrinks the report (it is logged)."""
    eval_df = read_eval_table(layout.eval_table(cfg))
    inputs = ReportInputs(eval_df=eval_df, histories={}, overlays={}, selections={})
    if layout.eval_variants(cfg).is_file():
        inputs.variants = json.loads(layout.eval_variants(cfg).read_text())
    for variant in cfg.train.variants:
        for seed in cfg.train.seeds:
            history = layout.run_files(cfg, variant, seed).history
            if history.is_file():
                inputs.histories[(variant, seed)] = pd.read_csv(history)
            else:
                log.info("%s: no training history; left out of the training curves", history)
            files = layout.eval_files(cfg, variant, seed)
            if variant not in inputs.overlays and files.overlays.is_file():
                inputs.overlays[variant] = OverlaySamples.load(files.overlays)
            if variant in (METHOD, BASELINE):
                if files.predictions.is_file():
                    inputs.test_predictions[(variant, seed)] = read_test_predictions(files.predictions)
                else:
                    log.info("%s: no predictions; left out of the bootstrap interval", files.predictions)
            if files.selection.is_file():
                record = json.loads(files.selection.read_text())
                if len(record.get("settings", [])) > 1:  # only runs that had interventions to choose from
                    inputs.selections[(variant, seed)] = record["selected"]
                inputs.train_groups = inputs.train_groups or train_groups_of(record)
    return inputs
