"""DVC stage `prepare`: generate the built-in benchmark (or check/download a real dataset), write its manifest
and a figure of samples per group (see :mod:`hardmask.data.prepare`).

Outputs: the dataset under ``cfg.data_root``, ``<base.data_dir>/<dataset>/manifest.json`` and
``<base.reports_dir>/samples.png``.
"""

from __future__ import annotations

import logging

from hardmask.config import run_stage, stage_cli
from hardmask.data.prepare import prepare


def main() -> None:
    cfg, args = stage_cli(
        __doc__,
        lambda p: p.add_argument(
            "--workers", type=int, default=2, help="processes rendering the generated benchmark"
        ),
    )
    manifest = prepare(cfg, num_workers=args.workers)
    logging.getLogger("hardmask.prepare").info(
        "dataset %s at %s, fingerprint %s",
        manifest["dataset"],
        manifest["root"],
        manifest["fingerprint"][:12],
    )


if __name__ == "__main__":
    run_stage(main)
