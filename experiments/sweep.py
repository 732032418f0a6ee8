"""Train chosen variants under one configuration and score them on the validation split (issue 7's study).

One call = one *setting*: ``params.yaml`` + ``--set KEY=VALUE`` overrides, trained for every ``--variants`` x
``--seeds`` through the real training loop (``hardmask.training.loop.train``) and evaluated with the real
runner (``hardmask.evaluation.runner.evaluate_run``). Settings are chosen on the validation split only;
``--test`` adds the test and OOD splits and is meant for the final chosen setting, once.

Outputs (all under git-ignored directories):

    data/experiments/<sha of the generator settings>/   the benchmark, shared by settings with equal data
    runs/experiments/<name>/<variant>/seed<seed>/      training runs
    runs/experiments/<name>/reports/eval/...           the runner's tidy tables
    experiments/results.jsonl                          one line per (setting, variant, seed): the numbers
                                                       reports/experiments.md is written from

Timing: wall clock and CPU seconds (this process and its data-loader workers, ``os.times``) are recorded with
the 1-minute load average, because the machine is shared and wall clock alone is noisy.

    python experiments/sweep.py --name k4_ep5 --variants baseline_vit two_stage_hard --seeds 0 \
        --set optim.epochs=5 --set model.num_parts=4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from hardmask import layout
from hardmask.config import Config, config_from_dict, deep_merge, load_config, parse_override
from hardmask.models import VARIANTS

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "experiments" / "results.jsonl"
VAL_ONLY = ("val",)
ALL_SPLITS = ("val", "test", "only_fg", "mixed_rand", "mixed_same", "only_bg")

log = logging.getLogger("experiments.sweep")


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its reaped children (the data-loader workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def data_dir_for(cfg: Config) -> Path:
    """One benchmark directory per distinct generator setting (the seed included)."""
    key = json.dumps(
        {"seed": cfg.base.seed, "synthetic": cfg.data.synthetic.model_dump(mode="json")}, sort_keys=True
    )
    return REPO / "data" / "experiments" / hashlib.sha256(key.encode()).hexdigest()[:12]


def setting_config(name: str, overrides: list[str], params: Path, splits: tuple[str, ...]) -> Config:
    """params.yaml + overrides, with every output redirected to the experiment's own directories."""
    cfg = load_config(params, overrides=overrides)
    out = REPO / "runs" / "experiments" / name
    data = data_dir_for(cfg)
    paths = {
        "base": {"data_dir": str(data.parent), "runs_dir": str(out), "reports_dir": str(out / "reports")},
        "data": {"root": str(data / "synthetic")},
        "cluster": {"executor": "debug"},
        "evaluate": {"splits": list(splits), "leave_one_part_out": "test" in splits},
        "report": {"overlay_per_group": 0},
    }
    return config_from_dict(
        deep_merge(cfg.dump(), paths), source=f"{params} + {overrides} (experiment {name})"
    )


def ensure_data(cfg: Config) -> float:
    """Generate the setting's benchmark unless it exists; returns the seconds spent."""
    from hardmask.data import generate_synthetic, is_up_to_date

    root = cfg.data_root
    if is_up_to_date(cfg.data.synthetic, root, cfg.base.seed):
        return 0.0
    start = time.perf_counter()
    manifest = generate_synthetic(cfg.data.synthetic, root, seed=cfg.base.seed, num_workers=2)
    seconds = time.perf_counter() - start
    log.info("generated %s in %.1f s (fg fraction %s)", root, seconds, manifest.mean_fg_fraction)
    return seconds


def _value(
    frame: pd.DataFrame, split: str, metric: str, checkpoint: str = "best", intervention: str = "none"
):
    rows = frame[
        (frame.split == split)
        & (frame.metric == metric)
        & (frame.checkpoint == checkpoint)
        & (frame.intervention == intervention)
    ]
    return None if rows.empty else round(float(rows.value.iloc[0]), 4)


def scores(frame: pd.DataFrame, splits: tuple[str, ...]) -> dict[str, Any]:
    """The numbers the study table needs, from one run's tidy evaluation rows."""
    out: dict[str, Any] = {}
    for split in splits:
        for metric in ("avg_acc", "worst_group_acc", "fg_iou", "fg_fraction"):
            value = _value(frame, split, metric)
            if value is not None:
                out[f"{split}/{metric}"] = value
        selected = _value(frame, split, "worst_group_acc", intervention="selected")
        if selected is not None:
            out[f"{split}/selected/worst_group_acc"] = selected
            out[f"{split}/selected/avg_acc"] = _value(frame, split, "avg_acc", intervention="selected")
    for split in ("val", "test"):
        if split in splits:
            out[f"last/{split}/avg_acc"] = _value(frame, split, "avg_acc", checkpoint="last")
            out[f"last/{split}/worst_group_acc"] = _value(frame, split, "worst_group_acc", checkpoint="last")
    gap = frame[(frame.metric == "bg_gap") & (frame.checkpoint == "best") & (frame.intervention == "none")]
    if not gap.empty:
        out["bg_gap"] = round(float(gap.value.iloc[0]), 4)
    return out


def run_one(
    cfg: Config, name: str, variant: str, seed: int, overrides: list[str], note: str
) -> dict[str, Any]:
    from hardmask.evaluation.runner import evaluate_run
    from hardmask.training.loop import train

    run_dir = layout.run_dir(cfg, variant, seed)
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = train(cfg, variant, seed, run_dir)
    train_wall, train_cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    wall, cpu = time.perf_counter(), cpu_seconds()
    frame = evaluate_run(cfg, run_dir)
    eval_wall, eval_cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    record = {
        "setting": name,
        "note": note,
        "overrides": overrides,
        "variant": variant,
        "seed": seed,
        "best_epoch": result.best_epoch,
        "train_wall_s": round(train_wall, 1),
        "train_cpu_s": round(train_cpu, 1),
        "eval_wall_s": round(eval_wall, 1),
        "eval_cpu_s": round(eval_cpu, 1),
        "load1": round(load, 2),
        "splits": list(cfg.evaluate.splits),
        **scores(frame, tuple(cfg.evaluate.splits)),
    }
    history = pd.read_csv(layout.RunFiles(run_dir).history)
    record["history_val_wga"] = [round(v, 3) for v in history["val_worst_group_acc"]]
    record["history_val_avg"] = [round(v, 3) for v in history["val_avg_acc"]]
    return record


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--name", required=True, help="setting name (directory and table row)")
    parser.add_argument(
        "--variants", nargs="+", default=["baseline_vit", "two_stage_hard", "oracle_mask"], choices=VARIANTS
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--test", action="store_true", help="also evaluate test and OOD splits (final only)")
    parser.add_argument("--note", default="", help="free text stored with the results")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for text in args.set:
        parse_override(text)  # fail on a malformed override before any work

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{REPO / 'runs' / 'experiments' / 'mlflow.db'}")
    cfg = setting_config(args.name, args.set, args.params, ALL_SPLITS if args.test else VAL_ONLY)
    from hardmask.tracking import init_tracking

    init_tracking(cfg)
    ensure_data(cfg)
    for seed in args.seeds:
        for variant in args.variants:
            record = run_one(cfg, args.name, variant, seed, args.set, args.note)
            log.info("RESULT %s", json.dumps(record))
            with RESULTS.open("a") as fh:
                fh.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
