"""The ``hardmask`` command: subcommands for using trained models (the pipeline itself runs through DVC).

``hardmask predict``: a trained model's predictions on your own images, and its TorchScript export
(:mod:`hardmask.predict`, :mod:`hardmask.export`). Expected failures end in one line naming the file or option
and the fix, exit status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from hardmask.console import configure_logging
from hardmask.errors import DEBUG_ENV, reported_errors


def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict classes (and part maps, masks) of your own images with a trained model",
        description="Predict the classes of image files and folders of images (searched recursively) with a\n"
        "trained model, preprocessed as evaluation does. Writes OUT/predictions.csv and, for part\n"
        "models, one overlay PNG per image (image | parts | hard mask) in OUT/overlays/.",
        epilog="examples:\n"
        "  hardmask predict --run runs/train/two_stage_hard/seed0 photos/ extra.jpg\n"
        "  hardmask predict --mlflow-run 3f2a9c...e1 --out preds photos/\n"
        "  hardmask predict --run runs/train/two_stage_hard/seed0 --export model.pt",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="*", type=Path, metavar="IMAGE_OR_DIR", help="image files or folders")
    model = parser.add_argument_group("the model (give --run or --mlflow-run)")
    source = model.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, metavar="DIR", help="a training run directory")
    source.add_argument(
        "--mlflow-run", metavar="ID", help="an MLflow training run id (its checkpoints/best.pt artifact)"
    )
    model.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default="best",
        help="with --run: which checkpoint of the run (default: %(default)s)",
    )
    model.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="with --mlflow-run: the MLflow store (default: $MLFLOW_TRACKING_URI, else the tracking.uri "
        "of --params)",
    )
    model.add_argument(
        "--params",
        type=Path,
        default=Path("params.yaml"),
        metavar="FILE",
        help="the config whose tracking.uri names the store (default: %(default)s)",
    )
    output = parser.add_argument_group("outputs")
    output.add_argument(
        "--out",
        type=Path,
        default=Path("predictions"),
        metavar="DIR",
        help="output folder (default: %(default)s)",
    )
    output.add_argument("--no-overlays", action="store_true", help="skip the overlay PNGs of part models")
    output.add_argument(
        "--export",
        type=Path,
        metavar="FILE",
        help="also write the model as TorchScript to FILE (e.g. model.pt) and its description to the same "
        "name with .json; needs no images",
    )
    run = parser.add_argument_group("running")
    run.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    run.add_argument(
        "--batch-size", type=int, default=32, metavar="N", help="images per forward pass (default: 32)"
    )
    run.add_argument("--debug", action="store_true", help="show tracebacks of expected errors too")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hardmask", description="Use trained hardmask models (the pipeline itself runs with dvc repro)."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_predict(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.debug:
        os.environ[DEBUG_ENV] = "1"
    configure_logging()
    with reported_errors():
        if args.command == "predict":
            from hardmask.predict import predict  # torch, timm and matplotlib load only for a real command

            predict(
                run_dir=args.run,
                mlflow_run=args.mlflow_run,
                checkpoint=args.checkpoint,
                tracking_uri=args.tracking_uri,
                params=args.params,
                inputs=args.images,
                out_dir=args.out,
                export=args.export,
                device=args.device,
                batch_size=args.batch_size,
                overlays=not args.no_overlays,
            )
    return 0
