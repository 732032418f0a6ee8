"""The command line shared by every ``stages/*.py``, and ``python -m hardmask.config`` (write params.yaml)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from hardmask.config.loading import CONF_DIR, CONF_NAME, ConfigError, load_config
from hardmask.config.schema import Config


def stage_cli(
    description: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: list[str] | None = None,
) -> tuple[Config, argparse.Namespace]:
    """``--params FILE`` and repeatable ``--set KEY=VALUE``; logging set up; the validated config returned.

    A configuration error ends the process with its message (which names the file and key) and exit status 2,
    not a traceback.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="the config file (default: %(default)s)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)"
    )
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        cfg = load_config(args.params, overrides=args.set)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return cfg, args


def write_params(overrides: list[str], output: str | Path = "params.yaml", conf_dir: str = CONF_DIR) -> None:
    """Compose ``conf_dir`` with Hydra ``overrides`` into ``output`` exactly as ``dvc exp run -S`` does (DVC's
    own function), then validate the result."""
    from dvc.utils.hydra import compose_and_dump

    root = Path(conf_dir).resolve().parent
    compose_and_dump(output, str(Path(conf_dir).resolve()), None, CONF_NAME, str(root), overrides)
    load_config(output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hardmask.config",
        description="Write params.yaml composed from conf/ (what `dvc exp run -S ...` writes first).",
    )
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides, e.g. dataset=cub recipe=paper optim.lr=1e-5"
    )
    parser.add_argument("--output", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        write_params(args.overrides, args.output)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0
