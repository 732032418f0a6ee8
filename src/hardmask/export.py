"""A trained model as a self-contained TorchScript file (``hardmask predict --export FILE``).

The file holds the model as a function of a normalised image batch: ``torch.jit.load(FILE)(images)`` with
``images`` float32 [B,3,H,W] returns ``(logits [B,C],)``, or for part models ``(logits [B,C], hard_mask
[B,h,w] bool, part_maps [B,K+1,h,w])`` (:class:`InferenceModel`). It needs torch only (Python or C++
libtorch): no hardmask, no timm. ``FILE`` with the suffix ``.json`` (also stored inside the file as the extra
file ``hardmask.json``) says what a user needs: image size, resize/crop steps, mean/std, class names or count,
output names and shapes, and the check below.

Why TorchScript, traced on the dense stage-2 path: stage 2 has two paths that compute the same function.
The packed path gathers each image's kept tokens and groups images by kept count: its shapes depend on the
data (counts read on the host, a Python loop over the groups), so a trace would freeze the example batch's
token counts and groups and be wrong for any other image, and ``torch.jit.script`` cannot compile the
package's models (dataclass outputs, timm internals). The dense path keeps every token and masks the
attention keys with a boolean mask: for a given image size all its shapes are static and only the batch size
varies, which the trace keeps symbolic. So the export traces the dense path (batch :data:`TRACE_BATCH`), then
runs the file on random images at batch :data:`CHECK_BATCH` against the eager model on both paths. It refuses
to write a file whose outputs differ from the eager dense path (the same computation: a difference would be a
tracing error) by more than :data:`EXPORT_ATOL` or whose hard masks differ; the differences from both paths go
into the JSON (on the tiny test models: 0 from dense, < 1e-7 from packed).

torch 2.14 marks ``torch.jit.trace``/``save``/``load`` deprecated in favour of ``torch.export`` (a
FutureWarning, silenced here); the files still load with ``torch.jit.load`` and in libtorch.

Not supported by the file: other input sizes than the trained ``image_size`` (patch grid and position
embeddings are fixed; resizing, cropping and normalising are the caller's, as described in the JSON);
``oracle_mask`` (it needs the ground-truth mask); test-time interventions, stochastic evaluation and training
(traced in eval mode: deterministic mask, no dropout, no gradients through the mask); autocast (traced in
float32 on the CPU; the graph holds no device constant, so ``torch.jit.load(FILE, map_location=...)`` moves
it); and the packed path's speed: the dense path runs every token through stage 2 however few are kept.
"""

from __future__ import annotations

import contextlib
import copy
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import torch
from torch import Tensor, nn

from hardmask.data import build_eval_transform, eval_crop_pct
from hardmask.evaluation.checkpoints import LoadedRun
from hardmask.io import atomic_path, atomic_write_text
from hardmask.models.backbone import input_normalization
from hardmask.models.stage2 import MaskedViT, Stage2Impl

OUTPUT_NAMES = ("logits", "hard_mask", "part_maps")  # what InferenceModel returns (part models: all three)
METADATA_NAME = "hardmask.json"  # the extra file inside the TorchScript archive
TRACE_BATCH = 2
CHECK_BATCH = 3  # differs from TRACE_BATCH: the check also shows that the batch size is not frozen
EXPORT_ATOL = 1e-4  # refuse an export whose outputs differ more than this from the eager dense path's


class InferenceModel(nn.Module):
    """A trained model as a function of a normalised image batch alone, with tensor outputs only.

    ``images`` [B,3,H,W] -> ``(logits [B,C],)``, or for part models ``(logits [B,C], hard_mask [B,h,w] bool
    (True = a token stage 2 attends to), part_maps [B,K+1,h,w] (softmax over parts, background last))``;
    names in :data:`OUTPUT_NAMES`. ``hardmask predict`` runs it eagerly, the export traces it.
    """

    def __init__(self, model: nn.Module, *, has_parts: bool) -> None:
        super().__init__()
        self.model = model
        self.has_parts = has_parts

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.model(images)
        if not self.has_parts:
            return (out.logits,)
        grid = out.part_maps.shape[-2:]  # (h, w)
        return out.logits, out.hard_mask.unflatten(1, grid), out.part_maps


def inference_model(run: LoadedRun) -> InferenceModel:
    return InferenceModel(run.model, has_parts=run.spec.has_parts).eval()


@contextlib.contextmanager
def stage2_impl(model: nn.Module, impl: Stage2Impl) -> Iterator[None]:
    """Every stage 2 of ``model`` on the ``packed`` or ``dense`` path inside the block, then as it was."""
    stages = [m for m in model.modules() if isinstance(m, MaskedViT)]
    before = [m.impl for m in stages]
    for module in stages:
        module.impl = impl
    try:
        yield
    finally:
        for module, previous in zip(stages, before):
            module.impl = previous


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input: evaluation's resize, centre crop and normalisation."""

    image_size: int
    crop_pct: float  # the shorter side goes to round(image_size / crop_pct) before the centre crop
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, run: LoadedRun) -> Preprocessing:
        """The preprocessing of ``run``'s test split (ImageNet-1k models: timm's crop_pct)."""
        mean, std = input_normalization(run.model)
        data = run.train_cfg.data
        return cls(data.image_size, eval_crop_pct(data.dataset, "test"), tuple(mean), tuple(std))

    def transform(self) -> A.Compose:
        """uint8 [H,W,3] -> float [3,image_size,image_size] (``transform(image=...)["image"]``)."""
        return build_eval_transform(self.image_size, self.mean, self.std, crop_pct=self.crop_pct)

    def describe(self) -> dict[str, Any]:
        """For someone who reimplements it without this package (the export's JSON)."""
        return {
            "image_size": self.image_size,
            "crop_pct": self.crop_pct,
            "mean": list(self.mean),
            "std": list(self.std),
            "steps": [
                "read as RGB, uint8",
                f"resize so that the shorter side is {round(self.image_size / self.crop_pct)} px, keeping "
                "the aspect ratio (area averaging when shrinking, bilinear when enlarging)",
                f"centre crop {self.image_size}x{self.image_size}",
                "divide by 255, subtract mean, divide by std (per RGB channel)",
                "channels first, batched: [B, 3, H, W] float32",
            ],
        }


# ------------------------------------------------------------------------------------------------ export
def export_torchscript(
    run: LoadedRun, path: Path, *, class_names: tuple[str, ...] | None, source: str
) -> dict[str, Any]:
    """Write ``run``'s model to ``path`` (TorchScript) and its description to ``path`` with suffix ``.json``;
    return the description. ``source`` says where the model came from (run directory or MLflow run)."""
    model = inference_model(run)
    if next(model.parameters()).device.type != "cpu":  # traced on the CPU; the caller's model stays put
        model = copy.deepcopy(model).cpu()
    prep = Preprocessing.of(run)
    size = prep.image_size
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(TRACE_BATCH, 3, size, size, generator=generator)
    with stage2_impl(model, "dense"), torch.no_grad(), warnings.catch_warnings():
        # Expected: the tracer's notes on shape assertions (timm's patch embedding, stage 2's mask check),
        # which hold for every input of this image size, and torch's deprecation of torch.jit (see above).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit\.trace.* is deprecated", category=FutureWarning
        )
        traced = torch.jit.trace(model, example, check_trace=False)
    check = compare_with_eager(traced, model, torch.randn(CHECK_BATCH, 3, size, size, generator=generator))
    dense = check["dense"]
    float_diff = max(diff for name, diff in dense.items() if name != "hard_mask")
    mask_diff = max(impl.get("hard_mask", 0) for impl in check.values())
    if float_diff > EXPORT_ATOL or mask_diff:
        raise RuntimeError(  # a bug, not bad input: say what differs
            f"export: the traced model differs from the eager one (max abs difference {float_diff:.3g}, "
            f"{mask_diff} hard-mask tokens); nothing written"
        )
    with torch.no_grad():
        outputs = model(example)
    metadata = {
        "format": "TorchScript (torch.jit.trace of the dense stage-2 path); load with torch.jit.load",
        "torch_version": torch.__version__,
        "source": source,
        "variant": run.variant,
        "seed": run.seed,
        "checkpoint": run.checkpoint,
        "input": {"name": "images", "shape": ["B", 3, size, size], "dtype": "float32", **prep.describe()},
        "outputs": [
            {
                "name": name,
                "shape": ["B", *tensor.shape[1:]],
                "dtype": str(tensor.dtype).removeprefix("torch."),
            }
            for name, tensor in zip(OUTPUT_NAMES, outputs)
        ],
        "output_meaning": {
            "logits": "class scores; softmax for probabilities",
            "hard_mask": "True = a patch token stage 2 attends to (the foreground); [h, w] patch grid",
            "part_maps": "per-patch part probabilities, foreground parts first, background last",
        },
        "num_classes": run.num_classes,
        "class_names": list(class_names) if class_names is not None else None,
        "check": {
            "what": "max abs difference of the export vs the eager model on random images "
            f"(batch {CHECK_BATCH}; traced with batch {TRACE_BATCH}); hard_mask: differing tokens",
            "vs_eager": check,
        },
    }
    description = json.dumps(metadata, indent=2) + "\n"
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit\.save.* is deprecated", category=FutureWarning
        )
        torch.jit.save(traced, str(tmp), _extra_files={METADATA_NAME: description})
    atomic_write_text(path.with_suffix(".json"), description)
    return metadata


def compare_with_eager(
    exported: nn.Module, model: InferenceModel, images: Tensor
) -> dict[str, dict[str, float]]:
    """``{impl: {output: max abs difference}}`` of ``exported(images)`` against ``model`` on both stage-2
    paths (``hard_mask``: the number of differing tokens)."""
    with torch.no_grad():
        got = exported(images)
        result: dict[str, dict[str, float]] = {}
        for impl in ("packed", "dense"):
            with stage2_impl(model, impl):
                expected = model(images)
            result[impl] = output_differences(got, expected)
    return result


def output_differences(got: tuple[Tensor, ...], expected: tuple[Tensor, ...]) -> dict[str, float]:
    """Per output name: max abs difference (float outputs) or count of differing entries (boolean)."""
    differences: dict[str, float] = {}
    for name, a, b in zip(OUTPUT_NAMES, got, expected):
        if a.dtype == torch.bool:
            differences[name] = int((a != b).sum())
        else:
            differences[name] = float((a.float() - b.float()).abs().max())
    return differences
