"""The command line shared by every ``stages/*.py``, and ``python -m hardmask.config`` (write params.yaml).

A stage is ``main()`` that calls :func:`stage_cli`, run as ``run_stage(main)``: expected failures
(:class:`hardmask.errors.HardmaskError`: config, data, cluster, resources) end in one message that names the
key, file or resource and the fix, and Ctrl-C in one line, both without a traceback (``--debug`` or
``HARDMASK_DEBUG=1`` shows it).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from hardmask.config.loading import CONF_DIR, CONF_NAME, load_config
from hardmask.config.schema import Config
from hardmask.console import configure_logging
from hardmask.errors import DEBUG_ENV, reported_errors
from hardmask.process import skip_exit_collections


def stage_cli(
    description: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: list[str] | None = None,
) -> tuple[Config, argparse.Namespace]:
    """``--params FILE``, repeatable ``--set KEY=VALUE`` and ``--debug``; logging set up; the validated config
    returned (a bad one raises :class:`~hardmask.config.loading.ConfigError`, which :func:`run_stage`
    reports)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="the config file (default: %(default)s)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of expected errors too")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    if args.debug:
        os.environ[DEBUG_ENV] = "1"
    configure_logging()
    return load_config(args.params, overrides=args.set), args


def run_stage(main: Callable[[], None], interrupted: str = "interrupted") -> None:
    """A stage's ``main``, with expected errors and Ctrl-C reported in a line (module docstring)."""
    skip_exit_collections()
    with reported_errors(interrupted):
        main()


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
    with reported_errors():
        write_params(args.overrides, args.output)
    print(f"wrote {args.output}")
    return 0
