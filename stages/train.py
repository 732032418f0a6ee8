"""DVC stage `train`: submit one job array over train.variants x train.seeds and wait for every result."""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict

from hardmask.cluster import submit_training
from hardmask.config import load_config
from hardmask.io import atomic_write_json
from hardmask.tracking import init_tracking


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    cfg = load_config(args.params, overrides=args.set)
    init_tracking(cfg)  # schema and experiment exist before any job starts writing
    results = submit_training(cfg, [(v, s) for v in cfg.train.variants for s in cfg.train.seeds])
    summary = {f"{r.variant}/seed{r.seed}": asdict(r) for r in results}
    atomic_write_json(f"{cfg.base.reports_dir}/train_metrics.json", summary)


if __name__ == "__main__":
    main()
