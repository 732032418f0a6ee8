"""One deterministic pass over an evaluation split, collecting what the metrics and the report need.

Every intervention setting is applied to each batch while it is on the device, so a split is read from disk
once however many settings are evaluated. Masks and part assignments are kept at the patch grid, only for the
images that have ground-truth masks (see :mod:`hardmask.metrics` for the comparison convention).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hardmask.evaluation.interventions import NO_INTERVENTION, InterventionSetting
from hardmask.evaluation.overlays import OverlaySamples
from hardmask.metrics import pool_mask_to_patches, pool_parts_to_patches


@dataclass
class SplitPredictions:
    """The outputs of one split under one intervention setting, as numpy arrays on the CPU."""

    index: np.ndarray  # [N] dataset index
    labels: np.ndarray  # [N]
    preds: np.ndarray  # [N]
    groups: np.ndarray  # [N]
    probs: np.ndarray  # [N,C] softmax of the logits
    has_mask: np.ndarray  # [N] bool, the image has ground-truth masks
    hard_masks: np.ndarray | None = None  # [N,h*w] bool, the tokens stage 2 sees; None without a mask
    part_ids: np.ndarray | None = None  # [N,h*w] int16, argmax part (K = background); None without parts
    # ground truth pooled to the patch grid, for the M images with has_mask (in order); None without a grid
    gt_patches: np.ndarray | None = None  # [M,h*w] bool
    gt_parts: np.ndarray | None = None  # [M,h*w] int16 (0 = background)

    @property
    def fg_fraction(self) -> np.ndarray:
        """[N] share of patches kept by the hard mask (nan for a model without one)."""
        if self.hard_masks is None:
            return np.full(len(self.labels), np.nan)
        return self.hard_masks.mean(axis=1)


class _Collector:
    """Per-batch numpy chunks of one setting, concatenated at the end."""

    def __init__(self) -> None:
        self.chunks: dict[str, list[np.ndarray]] = {}

    def add(self, **arrays: np.ndarray | None) -> None:
        for name, value in arrays.items():
            if value is not None:
                self.chunks.setdefault(name, []).append(value)

    def result(self) -> SplitPredictions:
        if not self.chunks:
            raise ValueError("the evaluation split is empty")
        merged = {name: np.concatenate(parts) for name, parts in self.chunks.items()}
        return SplitPredictions(**merged)


def denormalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalised image [3,H,W] back to uint8 [H,W,3] pixels (what the model saw, for overlays)."""
    mean_t = torch.tensor(mean, device=image.device)[:, None, None]
    std_t = torch.tensor(std, device=image.device)[:, None, None]
    pixels = (image.float() * std_t + mean_t).clamp(0, 1).mul(255).round().byte()  # [3,H,W]
    return pixels.permute(1, 2, 0).cpu().numpy()


class OverlayPicker:
    """Keeps, per group, the first ``per_group / 2`` (rounded up) correct predictions and as many failures:
    the report shows them side by side, so that a group's failures are seen next to its successes whatever
    the accuracy (filling a row with failures first made an accurate model look like it mostly failed)."""

    def __init__(
        self, per_group: int, *, mean: Sequence[float], std: Sequence[float], group_names: Sequence[str]
    ) -> None:
        self.per_side = max(1, -(-per_group // 2))  # of each kind, correct and failures
        self.mean, self.std = tuple(mean), tuple(std)
        self.group_names = tuple(group_names)
        self._kept: dict[tuple[int, bool], list[dict[str, np.ndarray]]] = {}  # (group, correct) -> samples

    def add(
        self,
        images: torch.Tensor,  # [B,3,H,W] normalised
        labels: np.ndarray,
        groups: np.ndarray,
        output,  # the model's ModelOutput
        grid: tuple[int, int] | None,
    ) -> None:
        preds = output.logits.argmax(-1).cpu().numpy()
        for i in range(len(labels)):
            bucket = self._kept.setdefault((int(groups[i]), bool(preds[i] == labels[i])), [])
            if len(bucket) >= self.per_side:
                continue
            sample = {
                "images": denormalize(images[i], self.mean, self.std),
                "labels": labels[i],
                "preds": preds[i],
            }
            sample["groups"] = groups[i]
            if output.part_maps is not None:
                sample["part_maps"] = output.part_maps[i].float().cpu().numpy().astype(np.float16)
            if output.hard_mask is not None and grid is not None:
                sample["hard_masks"] = output.hard_mask[i].cpu().numpy().astype(bool).reshape(grid)
            bucket.append(sample)

    def result(self) -> OverlaySamples | None:
        """The kept samples by group id, each group's correct predictions before its failures."""
        chosen: list[dict[str, np.ndarray]] = []
        for group in sorted({g for g, _ in self._kept}):
            chosen += self._kept.get((group, True), []) + self._kept.get((group, False), [])
        if not chosen:
            return None
        stacked = {name: np.stack([s[name] for s in chosen]) for name in chosen[0]}
        return OverlaySamples(group_names=self.group_names, **stacked)


def _patch_grid(model: nn.Module, output) -> tuple[int, int] | None:
    """(h, w) of the model's patch grid; None for a model without masks or parts."""
    if output.part_logits is not None:
        return tuple(output.part_logits.shape[-2:])
    if output.hard_mask is None:
        return None
    grid = getattr(model, "grid_size", None)
    if grid is None:
        raise ValueError(f"{type(model).__name__} returns a hard mask but exposes no grid_size (h, w)")
    return tuple(grid)


def _output_arrays(out) -> dict[str, np.ndarray | None]:
    """The per-image numpy arrays of one ModelOutput (float32 probabilities, int16 part ids)."""
    logits = out.logits.float()  # [B,C]
    assign_from = out.part_logits if out.part_logits is not None else out.part_maps  # [B,K+1,h,w]
    return {
        "preds": logits.argmax(-1).cpu().numpy(),
        "probs": logits.softmax(-1).cpu().numpy(),
        "hard_masks": out.hard_mask.bool().cpu().numpy() if out.hard_mask is not None else None,
        "part_ids": None if assign_from is None else assign_from.argmax(1).flatten(1).short().cpu().numpy(),
    }


def _pooled_truth(
    batch: Mapping[str, torch.Tensor], has_mask: np.ndarray, grid: tuple[int, int], threshold: float
) -> dict[str, np.ndarray]:
    """Ground-truth mask and part ids of the batch's images with masks, at the patch grid: [M,h*w] each."""
    return {
        "gt_patches": pool_mask_to_patches(batch["fg_mask"].numpy()[has_mask], grid, threshold),
        "gt_parts": pool_parts_to_patches(batch["parts"].numpy()[has_mask], grid).astype(np.int16),
    }


def encodes_parts(model: nn.Module) -> bool:
    """Whether ``model`` splits its forward pass into ``encode_parts(images)`` (stage 1's backbone and
    prototype scores, which no intervention changes) and ``classify(images, parts, interventions)``."""
    return callable(getattr(model, "encode_parts", None)) and callable(getattr(model, "classify", None))


@torch.inference_mode()
def predict_split(
    model: nn.Module,
    loader: Iterable[Mapping[str, torch.Tensor]],
    settings: Sequence[InterventionSetting],
    *,
    device: torch.device,
    fg_mask_input: bool,
    patch_threshold: float,
    autocast_dtype: torch.dtype | None = None,
    overlays: OverlayPicker | None = None,
) -> dict[str, SplitPredictions]:
    """Predictions of ``model`` on every batch of ``loader`` under each setting (keyed by setting name).

    ``fg_mask_input`` passes the ground-truth mask to the model (the ``oracle_mask`` variant);
    ``overlays`` collects display samples from the ``none`` setting; ``autocast_dtype`` runs the forward
    passes under ``torch.autocast`` (metrics are computed from float32 copies of the outputs).

    A model with parts (:func:`encodes_parts`) runs stage 1's backbone once per batch; each further setting
    then costs the part maps, the mask, and stage 2 for the images whose mask it changes (the others keep the
    first setting's logits: stage 2 sees the same tokens).
    """
    model.eval()
    collectors = {s.name: _Collector() for s in settings}
    interventions = {s.name: s.model_interventions() for s in settings}
    split_forward = encodes_parts(model) and not fg_mask_input

    def amp() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, autocast_dtype) if autocast_dtype else contextlib.nullcontext()

    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        fg_mask = batch["fg_mask"].to(device) if fg_mask_input else None
        labels, groups = batch["label"].numpy(), batch["group"].numpy()
        has_mask = batch["has_mask"].numpy().astype(bool)
        truth: dict[str, np.ndarray] | None = None  # pooled once per batch, for the first output with a grid
        if split_forward:
            with amp():
                parts = model.encode_parts(images)
        first = None  # the first setting's output, whose stage-2 logits later settings reuse
        for setting in settings:
            with amp():
                if split_forward:
                    out = model.classify(images, parts, interventions[setting.name], reuse=first)
                    first = out if first is None else first
                else:
                    out = model(images, fg_mask=fg_mask, interventions=interventions[setting.name])
            collector = collectors[setting.name]
            collector.add(index=batch["index"].numpy(), labels=labels, groups=groups, has_mask=has_mask)
            collector.add(**_output_arrays(out))
            grid = _patch_grid(model, out)
            if grid is not None and has_mask.any():
                truth = truth or _pooled_truth(batch, has_mask, grid, patch_threshold)
                collector.add(**truth)
            if overlays is not None and setting.name == NO_INTERVENTION:
                overlays.add(images, labels, groups, out, grid)
    return {name: collector.result() for name, collector in collectors.items()}
