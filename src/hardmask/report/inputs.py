"""Read what the report is built from: the evaluate stage's table and the per-run files it left behind."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from hardmask import layout
from hardmask.config import Config
from hardmask.evaluation.overlays import OverlaySamples
from hardmask.evaluation.tidy import check_columns

log = logging.getLogger("hardmask.report")


@dataclass
class ReportInputs:
    eval_df: pd.DataFrame
    histories: dict[tuple[str, int], pd.DataFrame]  # (model, seed) -> history.csv
    overlays: dict[str, OverlaySamples]  # model -> samples of its first seed that has them
    selections: dict[tuple[str, int], str]  # (model, seed) -> intervention selected on validation


def read_eval_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: evaluation table not found (run the evaluate stage first)")
    df = pd.read_csv(path)
    check_columns(df)
    return df


def load_report_inputs(cfg: Config) -> ReportInputs:
    """``<reports_dir>/eval/eval.csv``, each run's ``history.csv`` and its
    ``{overlays.npz,selection.json}`` eval files of ``train.variants`` x ``train.seeds``.
    A missing per-run file only shrinks the report (it is logged)."""
    eval_df = read_eval_table(layout.eval_table(cfg))
    inputs = ReportInputs(eval_df=eval_df, histories={}, overlays={}, selections={})
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
            if files.selection.is_file():
                record = json.loads(files.selection.read_text())
                if len(record.get("settings", [])) > 1:  # only runs that had interventions to choose from
                    inputs.selections[(variant, seed)] = record["selected"]
    return inputs
