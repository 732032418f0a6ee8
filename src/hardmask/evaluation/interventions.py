"""Test-time interventions on the stage-1 parts (method spec §6, decisions §10.4 and §10.6).

- **Low-confidence token removal** (§6.1): per-part thresholds are quantiles ``q`` of the similarity
  ``part_sims[k]`` (dot product with prototype k) over the training-split tokens whose deterministic
  assignment (argmax of the part logits, §10.3) is part k. The model gates its part logits with them
  (-inf below the threshold); ``q = 0.05`` (the reference's "0.95" file) is the default.
- **Leave-one-part-out** (§6.2): one setting per foreground part, the part's tokens moved to background.
- **User part removal**: the parts named in ``evaluate.remove_parts``, removed together.
- **Selection**: the setting with the best worst-group accuracy on the validation split is then reported on
  test (and the OOD splits) under the name ``selected``; nothing is ever chosen on test.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

log = logging.getLogger("hardmask.evaluate")

NO_INTERVENTION = "none"
SELECTED = "selected"


@dataclass(frozen=True)
class InterventionSetting:
    """One named test-time intervention; ``none`` runs the model unchanged."""

    name: str
    remove_parts: tuple[int, ...] = ()
    thresholds: tuple[float, ...] | None = None  # one per foreground part, in part order

    def model_interventions(self) -> Any:
        """The model's ``Interventions`` for this setting (``None`` for no intervention)."""
        if not self.remove_parts and self.thresholds is None:
            return None
        from hardmask.models.interventions import Interventions

        thresholds = None if self.thresholds is None else torch.tensor(self.thresholds, dtype=torch.float32)
        return Interventions(part_ids_to_remove=self.remove_parts, thresholds=thresholds)


# ----------------------------------------------------------------------------------------- thresholds
def matched_similarities(part_sims: torch.Tensor, part_logits: torch.Tensor) -> list[torch.Tensor]:
    """For every foreground part k, the similarities ``part_sims[:, k]`` of the tokens assigned to k.

    part_sims, part_logits: [B,K+1,h,w] (background = last channel). Returns K 1-d float tensors (CPU).
    """
    if part_sims.shape != part_logits.shape or part_sims.ndim != 4:
        raise ValueError(
            f"part_sims {tuple(part_sims.shape)} and part_logits {tuple(part_logits.shape)} "
            "must both be [B,K+1,h,w]"
        )
    num_fg = part_sims.shape[1] - 1
    assignment = part_logits.argmax(dim=1)  # [B,h,w], deterministic (no Gumbel noise, §10.3)
    return [part_sims[:, k][assignment == k].float().cpu() for k in range(num_fg)]


def quantile_thresholds(
    matched: Sequence[np.ndarray], quantiles: Iterable[float]
) -> dict[float, tuple[float, ...]]:
    """Per-part thresholds ``{q: (thr_0, ..., thr_{K-1})}`` with ``thr_k = quantile(matched[k], q)``.

    A part that no training token was assigned to gets no gate (``-inf``), with a warning: there is no
    evidence of what a confident token of that part looks like.
    """
    quantiles = sorted(set(quantiles))
    for q in quantiles:
        if not 0.0 < q < 1.0:
            raise ValueError(f"evaluate.threshold_quantiles: {q} is not in (0, 1)")
    out: dict[float, list[float]] = {q: [] for q in quantiles}
    for k, values in enumerate(matched):
        values = np.asarray(values, dtype=np.float64)
        if values.size == 0:
            log.warning("part %d was never assigned on the training split; its tokens are not gated", k)
            for q in quantiles:
                out[q].append(float("-inf"))
            continue
        for q, thr in zip(quantiles, np.quantile(values, quantiles)):
            out[q].append(float(thr))
    return {q: tuple(values) for q, values in out.items()}


@torch.inference_mode()
def training_split_thresholds(
    model: torch.nn.Module,
    loader: Iterable[Mapping[str, torch.Tensor]],
    quantiles: Iterable[float],
    *,
    device: torch.device,
    fg_mask_input: bool = False,
) -> dict[float, tuple[float, ...]]:
    """Run ``model`` (eval mode, no intervention) over the training split and return its part thresholds."""
    model.eval()
    encode_parts = getattr(model, "encode_parts", None)  # two-stage and stage-1-only models
    per_part: list[list[torch.Tensor]] = []
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        fg_mask = batch["fg_mask"].to(device) if fg_mask_input else None
        # stage 1's scores (part_sims, part_logits) are all the thresholds need: no stage 2 where possible
        out = encode_parts(images) if encode_parts is not None else model(images, fg_mask=fg_mask)
        if out.part_sims is None or out.part_logits is None:
            raise ValueError(f"{type(model).__name__} returns no part_sims/part_logits: no parts to gate")
        for k, values in enumerate(matched_similarities(out.part_sims, out.part_logits)):
            if k == len(per_part):
                per_part.append([])
            per_part[k].append(values)
    matched = [torch.cat(chunks).numpy() for chunks in per_part]
    return quantile_thresholds(matched, quantiles)


# ----------------------------------------------------------------------------------------- settings
def threshold_setting_name(quantile: float) -> str:
    return f"threshold_q{quantile:g}"


def intervention_settings(
    *,
    num_parts: int,
    thresholds: Mapping[float, tuple[float, ...]] | None,
    leave_one_part_out: bool,
    remove_parts: Sequence[int] = (),
) -> list[InterventionSetting]:
    """The settings to evaluate, ``none`` first (it wins ties in :func:`select_intervention`)."""
    bad = [p for p in remove_parts if not 0 <= p < num_parts]
    if bad:
        raise ValueError(
            f"evaluate.remove_parts: part ids {bad} do not exist; "
            f"the model has foreground parts 0..{num_parts - 1}"
        )
    settings = [InterventionSetting(NO_INTERVENTION)]
    for q, values in sorted((thresholds or {}).items()):
        if len(values) != num_parts:
            raise ValueError(
                f"thresholds for q={q}: {len(values)} entries, expected {num_parts} (one per part)"
            )
        settings.append(InterventionSetting(threshold_setting_name(q), thresholds=tuple(values)))
    if leave_one_part_out:
        settings += [InterventionSetting(f"drop_part_{k}", remove_parts=(k,)) for k in range(num_parts)]
    if remove_parts:
        parts = tuple(sorted(set(remove_parts)))
        settings.append(InterventionSetting("remove_parts_" + "+".join(map(str, parts)), remove_parts=parts))
    return settings


def select_intervention(val_worst_group_acc: Mapping[str, float]) -> str:
    """The setting with the highest validation worst-group accuracy. Ties go to ``none`` (no change without
    evidence), then to the earlier setting in the mapping's order."""
    if not val_worst_group_acc:
        raise ValueError("no intervention was evaluated on the validation split")
    best = max(val_worst_group_acc.values())
    if val_worst_group_acc.get(NO_INTERVENTION) == best:
        return NO_INTERVENTION
    return next(name for name, value in val_worst_group_acc.items() if value == best)
