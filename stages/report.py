"""DVC stage `report`: build reports/report.{md,html}, figures, tables and plot data from the evaluation."""

from __future__ import annotations

import argparse
import logging

import matplotlib

matplotlib.use("Agg")  # headless: figures are only ever written to files

from hardmask.config import load_config  # noqa: E402
from hardmask.report.inputs import load_report_inputs  # noqa: E402
from hardmask.report.render import build_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    cfg = load_config(args.params, overrides=args.set)
    inputs = load_report_inputs(cfg)
    paths = build_report(cfg, inputs.eval_df, inputs.histories, inputs.overlays, inputs.selections)
    logging.getLogger("hardmask.report").info("wrote %s", paths.html or paths.markdown)


if __name__ == "__main__":
    main()
