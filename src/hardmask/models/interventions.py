"""Test-time interventions on the part assignment (method.md §6, §10.4).

Both act on the stage-1 part logits before the maps and the mask are formed, so that the returned part maps,
the part logits and the stage-2 mask all tell the same story:

- **Low-confidence token removal** (``thresholds``, one per foreground part): foreground logit ``k`` becomes
  -inf wherever the dot product ``part_sims_k < thresholds[k]``; the -squared-distance logits are kept
  elsewhere (§10.4: a gate, not the reference's switch to dot-product logits). The background logit is never
  gated, so a token failing every threshold is background, never NaN.
- **Part removal** (``part_ids_to_remove``): tokens whose (gated) argmax is a removed part become background,
  and the removed parts can no longer be assigned anywhere (§6.2). Every other token keeps its assignment, so
  exactly the removed parts' tokens leave the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)  # holds a tensor: no field-wise == (ambiguous truth value)
class Interventions:
    """Evaluation-time edits of the part assignment (empty by default)."""

    part_ids_to_remove: tuple[int, ...] = ()
    thresholds: Tensor | None = None  # [K] per foreground part, compared with part_sims

    @property
    def is_empty(self) -> bool:
        return not self.part_ids_to_remove and self.thresholds is None

    def validate(self, num_parts: int) -> None:
        bad = [i for i in self.part_ids_to_remove if not 0 <= int(i) < num_parts]
        if bad:
            raise ValueError(
                f"Interventions.part_ids_to_remove: part ids {bad} out of range; "
                f"foreground parts are 0..{num_parts - 1}"
            )
        if self.thresholds is not None and self.thresholds.numel() != num_parts:
            raise ValueError(
                f"Interventions.thresholds: expected one threshold per foreground part ({num_parts}), "
                f"got shape {tuple(self.thresholds.shape)}"
            )


def apply_interventions(part_logits: Tensor, part_sims: Tensor, interventions: Interventions) -> Tensor:
    """Edited copy of ``part_logits`` [B,K+1,h,w] (channel K = background); -inf marks excluded parts."""
    num_parts = part_logits.shape[1] - 1
    interventions.validate(num_parts)
    logits = part_logits.clone()
    fg_logits = logits[:, :num_parts]  # a view: edits below write into ``logits``
    if interventions.thresholds is not None:
        thresholds = interventions.thresholds.to(part_sims).reshape(1, num_parts, 1, 1)
        fg_logits.masked_fill_(part_sims[:, :num_parts] < thresholds, float("-inf"))
    if interventions.part_ids_to_remove:
        removed = torch.tensor(sorted(set(interventions.part_ids_to_remove)), device=logits.device)
        assigned = logits.argmax(dim=1, keepdim=True)  # [B,1,h,w], after the threshold gate
        to_background = torch.isin(assigned, removed)  # tokens of a removed part
        fg_logits.masked_fill_(to_background, float("-inf"))  # ...lose every foreground part
        fg_logits[:, removed] = float("-inf")  # removed parts are assigned nowhere
    return logits
