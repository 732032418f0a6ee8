"""DVC stage `train`: submit one job array over train.variants x train.seeds and wait for every result.

Output: the run directories ``<base.runs_dir>/<variant>/seed<seed>/`` (see :mod:`hardmask.layout`).
"""

from __future__ import annotations

from hardmask.cluster import submit_training
from hardmask.config import run_stage, stage_cli
from hardmask.tracking import init_tracking


def main() -> None:
    cfg, _ = stage_cli(__doc__)
    init_tracking(cfg)  # schema and experiment exist before any job starts writing
    submit_training(cfg, [(v, s) for v in cfg.train.variants for s in cfg.train.seeds])


if __name__ == "__main__":
    run_stage(main, interrupted="interrupted: every run keeps its last checkpoint; `dvc repro` resumes them")
