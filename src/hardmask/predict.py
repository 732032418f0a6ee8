"""``hardmask predict``: a trained model's predictions on your own images.

The model comes from a training run directory (``checkpoints/best.pt`` or ``last.pt``) or from the
``checkpoints/best.pt`` artifact of an MLflow training run (logged when ``tracking.log_checkpoints`` is true).
The checkpoint holds the resolved training config, the variant and the seed; the model is rebuilt from them
alone (:func:`hardmask.evaluation.checkpoints.load_checkpoint_file`), with its mask and part maps
deterministic (the evaluation setting, no intervention).

Images (files, or folders searched recursively for :data:`hardmask.data.common.IMAGE_SUFFIXES`) are resized
and cropped exactly as evaluation does for the test split of the training dataset and normalised with the
backbone's mean/std. Outputs in ``--out``:

- ``predictions.csv``: one row per image: ``path``, ``pred`` (class index), ``class_name`` (when the training
  dataset is on disk to name the classes), ``prob_<class>`` per class, and for part models ``fg_fraction``
  (share of patch tokens in the hard mask) and ``overlay``;
- ``overlays/<row>_<stem>.png`` for part models: the image, its argmax part map with a legend, and the hard
  mask (the tokens stage 2 attends to).

Variants that read the ground-truth foreground mask (``oracle_mask``) cannot predict on plain images.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import Tensor

from hardmask.config import load_config
from hardmask.data import build_dataset
from hardmask.data.common import IMAGE_SUFFIXES, DataError, list_images, read_rgb
from hardmask.errors import HardmaskError
from hardmask.evaluation.checkpoints import LoadedRun, load_checkpoint_file
from hardmask.evaluation.inference import denormalize
from hardmask.export import Preprocessing, export_torchscript, inference_model
from hardmask.io import atomic_write_text
from hardmask.layout import RunFiles
from hardmask.report.figures import mask_overlay, part_colours, part_overlay
from hardmask.runtime import autocast, resolve_device
from hardmask.tracking.mlflow import URI_ENV, resolve_tracking_uri

log = logging.getLogger("hardmask.predict")

CHECKPOINT_ARTIFACT = "checkpoints/best.pt"  # what training logs when tracking.log_checkpoints is true
PREDICTIONS_FILE = "predictions.csv"
OVERLAY_DIR = "overlays"


class PredictError(HardmaskError):
    """Bad input to ``hardmask predict``; the message names the file or option and the fix."""


# ------------------------------------------------------------------------------------------------ the model
def load_from_run(run_dir: Path, *, which: str, device: torch.device) -> LoadedRun:
    """The model of a training run directory's ``checkpoints/<which>.pt``."""
    if not run_dir.is_dir():
        raise PredictError(
            f"--run {run_dir}: no such directory (give a training run directory such as "
            "runs/train/two_stage_hard/seed0)"
        )
    path = RunFiles(run_dir).checkpoint(which)
    if not path.is_file():
        other = "last" if which == "best" else "best"
        raise PredictError(
            f"{path}: checkpoint not found (is {run_dir} a finished training run? "
            f"--checkpoint {other} picks checkpoints/{other}.pt)"
        )
    return require_image_input(load_checkpoint_file(path, which=which, device=device))


def load_from_mlflow(run_id: str, *, tracking_uri: str, device: torch.device) -> LoadedRun:
    """The model of the ``checkpoints/best.pt`` artifact of MLflow run ``run_id``, downloaded to a temporary
    directory that is removed once the weights are in memory."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    sqlite_prefix = "sqlite:///"
    if tracking_uri.startswith(sqlite_prefix) and not Path(tracking_uri[len(sqlite_prefix) :]).is_file():
        # MLflow would create an empty store there and then report that the run does not exist
        raise PredictError(
            f"MLflow store {tracking_uri}: no such database file (pass --tracking-uri, set "
            f"{URI_ENV}, or run from the project whose params.yaml names the store)"
        )
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise PredictError(
            f"--mlflow-run {run_id}: no such run in the MLflow store {tracking_uri} "
            f"({str(exc).splitlines()[0]}); copy the run id from the MLflow UI (make mlflow-ui)"
        ) from None
    with tempfile.TemporaryDirectory(prefix="hardmask-predict-") as tmp:
        try:
            path = client.download_artifacts(run_id, CHECKPOINT_ARTIFACT, tmp)
        except (MlflowException, OSError) as exc:
            kind = run.data.tags.get("kind", "unknown")
            raise PredictError(
                f"--mlflow-run {run_id}: the run (kind: {kind}) has no artifact {CHECKPOINT_ARTIFACT} "
                f"({str(exc).splitlines()[0]}); training runs log it when tracking.log_checkpoints is "
                "true; otherwise use --run with the run directory"
            ) from None
        return require_image_input(load_checkpoint_file(Path(path), which="best", device=device))


def require_image_input(run: LoadedRun) -> LoadedRun:
    """``run`` if its variant predicts from images alone."""
    if run.spec.takes_fg_mask:
        raise PredictError(
            f"variant {run.variant}: the model reads the ground-truth foreground mask, so it cannot predict "
            "on plain images; use a run of another variant (e.g. two_stage_hard)"
        )
    return run


def tracking_uri_for(explicit: str | None, params: Path) -> str:
    """``explicit``, else ``MLFLOW_TRACKING_URI``, else ``tracking.uri`` of ``params``
    (:func:`hardmask.tracking.resolve_tracking_uri`: a relative sqlite path is taken from ``params``'s
    directory, the project root)."""
    if explicit:
        return explicit
    if os.environ.get(URI_ENV):
        return os.environ[URI_ENV]  # resolve_tracking_uri's first choice; params.yaml is then not needed
    if not params.is_file():
        raise PredictError(
            f"--params {params}: file not found; it is read for tracking.uri only: pass --tracking-uri URI "
            f"or set {URI_ENV}"
        )
    return resolve_tracking_uri(load_config(params), root=params.resolve().parent)


def class_names_of(run: LoadedRun) -> tuple[str, ...] | None:
    """The class names of the training dataset when it is on disk; None otherwise (class indices then)."""
    try:
        names = tuple(build_dataset(run.train_cfg, "train").class_names)
    except (HardmaskError, OSError) as exc:
        log.info("class names unavailable (%s); classes are given by index", str(exc).splitlines()[0])
        return None
    if len(names) != run.num_classes:
        log.warning(
            "the dataset at %s has %d classes, the model %d: classes are given by index",
            run.train_cfg.data_root,
            len(names),
            run.num_classes,
        )
        return None
    return names


def device_for(name: str) -> torch.device:
    try:
        return resolve_device(name)
    except RuntimeError as exc:
        raise PredictError(f"--device {name}: {exc}") from None


# ------------------------------------------------------------------------------------------------ the images
def collect_images(inputs: Sequence[Path]) -> list[Path]:
    """The image files of ``inputs`` (files as given, folders searched recursively), each once, in order."""
    found: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found += list_images(item)
        elif item.is_file():
            found.append(item)  # named by the user: read whatever its suffix
        else:
            raise PredictError(f"{item}: no such file or directory (give image files or folders of images)")
    images = list(dict.fromkeys(found))
    if not images:
        raise PredictError(
            f"no images found in {', '.join(str(i) for i in inputs)} (searched recursively for "
            f"{', '.join(IMAGE_SUFFIXES)} files)"
        )
    return images


def load_image(path: Path, transform: A.Compose) -> Tensor:
    """``path`` as the model's input [3,H,W]."""
    try:
        pixels = read_rgb(path)
    except DataError as exc:
        raise PredictError(f"{exc}; remove it from the inputs or convert it to PNG or JPEG") from None
    return transform(image=pixels)["image"].float()


def batches(paths: Sequence[Path], batch_size: int) -> Iterator[tuple[int, Sequence[Path]]]:
    """(index of the first image, paths) chunks of ``paths``."""
    for start in range(0, len(paths), batch_size):
        yield start, paths[start : start + batch_size]


# ------------------------------------------------------------------------------------------------ predicting
def predict_images(
    run: LoadedRun,
    images: Sequence[Path],
    *,
    out_dir: Path,
    class_names: Sequence[str] | None,
    batch_size: int = 32,
    overlays: bool = True,
) -> pd.DataFrame:
    """Predict every image of ``images``; write ``out_dir/predictions.csv`` (and the overlays of a part model)
    and return its rows."""
    device = next(run.model.parameters()).device
    prep = Preprocessing.of(run)
    transform = prep.transform()
    model = inference_model(run)
    names = list(class_names) if class_names is not None else [str(c) for c in range(run.num_classes)]
    draw = overlays and run.spec.has_parts
    rows: list[dict[str, object]] = []
    for start, chunk in batches(images, batch_size):
        batch = torch.stack([load_image(path, transform) for path in chunk]).to(device)  # [B,3,H,W]
        # as evaluation runs the model: autocast as it was trained (float32 on a CPU)
        with torch.inference_mode(), autocast(run.train_cfg.optim.amp, device):
            outputs = model(batch)
        probs = outputs[0].float().softmax(dim=-1).cpu().numpy()  # [B,C]
        for i, path in enumerate(chunk):
            pred = int(probs[i].argmax())
            row: dict[str, object] = {"path": str(path), "pred": pred}
            if class_names is not None:
                row["class_name"] = class_names[pred]
            row |= {f"prob_{name}": float(p) for name, p in zip(names, probs[i])}
            if run.spec.has_parts:
                hard_mask = outputs[1][i].cpu().numpy()  # [h,w] bool
                row["fg_fraction"] = float(hard_mask.mean())
            if draw:
                overlay = Path(OVERLAY_DIR) / f"{start + i:05d}_{path.stem}.png"
                figure = overlay_figure(
                    denormalize(batch[i], prep.mean, prep.std),
                    part_maps=outputs[2][i].float().cpu().numpy(),
                    hard_mask=hard_mask,
                    title=f"{path.name}: {names[pred]} (p = {probs[i, pred]:.2f})",
                )
                (out_dir / overlay).parent.mkdir(parents=True, exist_ok=True)
                figure.savefig(out_dir / overlay, dpi=100)
                row["overlay"] = str(overlay)
            rows.append(row)
    table = pd.DataFrame(rows)
    atomic_write_text(out_dir / PREDICTIONS_FILE, table.to_csv(index=False))
    return table


def overlay_figure(image: np.ndarray, *, part_maps: np.ndarray, hard_mask: np.ndarray, title: str) -> Figure:
    """[image | argmax part map with a legend | hard mask] of one image, on the Agg canvas.

    image [H,W,3] uint8 (the model's input crop); part_maps [K+1,h,w] (background last); hard_mask [h,w] bool.
    """
    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax_image, ax_parts, ax_mask = fig.subplots(1, 3)
    ax_image.imshow(image)
    ax_image.set_title("input (resized, cropped)", fontsize=9)
    ax_parts.imshow(part_overlay(image, part_maps))
    ax_parts.set_title("parts (argmax)", fontsize=9)
    num_fg = part_maps.shape[0] - 1
    legend = [Patch(color=colour, label=f"part {k}") for k, colour in enumerate(part_colours(num_fg))]
    legend.append(Patch(facecolor="none", edgecolor="0.5", label="background part (no tint)"))
    ax_parts.legend(
        handles=legend, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(legend), 3), fontsize=7,
        frameon=False,
    )  # fmt: skip
    ax_mask.imshow(mask_overlay(image, hard_mask))
    ax_mask.set_title(f"hard mask: {hard_mask.mean():.0%} of tokens kept", fontsize=9)
    for ax in (ax_image, ax_parts, ax_mask):
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    return fig


# ------------------------------------------------------------------------------------------------ the command
def predict(
    *,
    run_dir: Path | None,
    mlflow_run: str | None,
    checkpoint: str = "best",
    tracking_uri: str | None = None,
    params: Path = Path("params.yaml"),
    inputs: Sequence[Path] = (),
    out_dir: Path = Path("predictions"),
    export: Path | None = None,
    device: str = "auto",
    batch_size: int = 32,
    overlays: bool = True,
) -> pd.DataFrame | None:
    """``hardmask predict``: load the model of ``run_dir`` or ``mlflow_run``, predict ``inputs`` into
    ``out_dir`` and/or export it to ``export``; returns the predictions (None when only exporting)."""
    if (run_dir is None) == (mlflow_run is None):
        raise PredictError("give exactly one of --run DIR and --mlflow-run ID")
    if mlflow_run is not None and checkpoint != "best":
        raise PredictError(f"--checkpoint {checkpoint}: MLflow runs log checkpoints/best.pt only; use --run")
    if not inputs and export is None:
        raise PredictError("no images given: name image files or folders (or --export FILE to only export)")
    if export is not None and export.suffix == ".json":
        raise PredictError(f"--export {export}: the JSON description goes to <name>.json; use e.g. model.pt")
    if batch_size < 1:
        raise PredictError(f"--batch-size {batch_size}: must be at least 1")
    images = collect_images(inputs) if inputs else []  # bad inputs fail before the model is loaded
    target = device_for(device)
    if run_dir is not None:
        run = load_from_run(run_dir, which=checkpoint, device=target)
        source = f"run directory {run_dir} (checkpoints/{checkpoint}.pt)"
    else:
        uri = tracking_uri_for(tracking_uri, params)
        run = load_from_mlflow(mlflow_run, tracking_uri=uri, device=target)
        source = f"MLflow run {mlflow_run} ({uri}), artifact {CHECKPOINT_ARTIFACT}"
    log.info("%s seed %d from %s", run.variant, run.seed, source)
    class_names = class_names_of(run)
    table = None
    if images:
        table = predict_images(
            run, images, out_dir=out_dir, class_names=class_names, batch_size=batch_size, overlays=overlays
        )
        log.info("%d images -> %s", len(images), out_dir / PREDICTIONS_FILE)
    if export is not None:
        metadata = export_torchscript(run, export, class_names=class_names, source=source)
        worst = {impl: diffs["logits"] for impl, diffs in metadata["check"]["vs_eager"].items()}
        log.info("exported to %s (+ %s); logits vs eager: %s", export, export.with_suffix(".json"), worst)
    return table
