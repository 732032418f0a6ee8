"""Every run of the study evaluated, in ``evaluate.workers`` processes.

Apart from :mod:`hardmask.evaluation.runner` on purpose: the evaluate stage imports this module, and its
workers start before anything loads torch, timm and the data stack, which each worker loads itself (the stage
used to load them first, about 3 s before the workers started, with one core idle).
"""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path

import pandas as pd

from hardmask import layout
from hardmask.config import Config
from hardmask.models import check_variants, get_variant
from hardmask.process import start_worker_process

log = logging.getLogger("hardmask.evaluate")

__all__ = ["evaluate_all"]


def evaluate_all(cfg: Config) -> pd.DataFrame:
    """Evaluate every ``train.variants`` x ``train.seeds`` run; a missing run is an error, not a gap.

    With ``evaluate.workers`` > 1 the runs are evaluated by that many processes, each with an equal share of
    the torch threads (small models use one thread better than two: about 1.7x on two cores), the runs with
    parts first (they cost the most). The table is in the same order, and every number equal, either way.
    """
    check_variants(cfg.train.variants)
    runs = [(v, s) for v in cfg.train.variants for s in cfg.train.seeds]
    run_dirs = [layout.run_dir(cfg, v, s) for v, s in runs]
    workers = min(cfg.evaluate.workers, len(run_dirs))
    if workers <= 1:
        return pd.concat([_evaluate(cfg, run_dir) for run_dir in run_dirs], ignore_index=True)
    has_parts = {run_dir: get_variant(v).has_parts for run_dir, (v, _) in zip(run_dirs, runs, strict=True)}
    costly_first = sorted(run_dirs, key=lambda run_dir: not has_parts[run_dir])
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools and locks
    with ProcessPoolExecutor(workers, context, initializer=_init_worker, initargs=(workers,)) as pool:
        frames = dict(zip(costly_first, pool.map(_evaluate, repeat(cfg), costly_first), strict=True))
    return pd.concat([frames[run_dir] for run_dir in run_dirs], ignore_index=True)


def _evaluate(cfg: Config, run_dir: Path) -> pd.DataFrame:
    from hardmask.evaluation.runner import evaluate_run

    log.info("evaluating %s", run_dir)
    return evaluate_run(cfg, run_dir)


def _init_worker(workers: int) -> None:
    import torch

    start_worker_process()
    torch.set_num_threads(max(1, torch.get_num_threads() // workers))  # this process's share of the default
