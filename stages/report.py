"""DVC stage `report`: build reports/report.{md,html}, figures, tables and plot data from the evaluation."""

from __future__ import annotations

import logging

import matplotlib

matplotlib.use("Agg")  # headless: figures are only ever written to files

from hardmask.config import run_stage, stage_cli  # noqa: E402
from hardmask.report.inputs import load_report_inputs  # noqa: E402
from hardmask.report.render import build_report  # noqa: E402


def main() -> None:
    cfg, _ = stage_cli(__doc__)
    paths = build_report(cfg, load_report_inputs(cfg))
    logging.getLogger("hardmask.report").info("wrote %s", paths.html or paths.markdown)


if __name__ == "__main__":
    run_stage(main)
