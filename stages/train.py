"""DVC stage `train`: submit one job array over train.variants x train.seeds and wait for every result.

``<reports_dir>/train_metrics.json`` (a DVC metrics file) keeps the numbers of each result; where a run lives
and its MLflow id are in the run directory and in MLflow.
"""

from __future__ import annotations

from dataclasses import asdict

from hardmask import layout
from hardmask.cluster import submit_training
from hardmask.config import stage_cli
from hardmask.io import atomic_write_json
from hardmask.tracking import init_tracking


def main() -> None:
    cfg, _ = stage_cli(__doc__)
    init_tracking(cfg)  # schema and experiment exist before any job starts writing
    results = submit_training(cfg, [(v, s) for v in cfg.train.variants for s in cfg.train.seeds])
    summary = {
        f"{r.variant}/seed{r.seed}": {
            key: value for key, value in asdict(r).items() if isinstance(value, int | float) and key != "seed"
        }
        for r in results
    }
    atomic_write_json(layout.train_metrics_json(cfg), summary)


if __name__ == "__main__":
    main()
