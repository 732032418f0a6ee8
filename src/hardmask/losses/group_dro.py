"""Group DRO (Sagawa et al., ICLR 2020, Algorithm 1): minimise the loss of the worst training group.

Online version: a weight ``q_g`` per group, kept across steps; each step raises the weights of the groups with
a high loss in the batch (``q_g <- q_g exp(eta * loss_g)``, renormalised) and the objective is the
``q``-weighted sum of the per-group mean losses. It needs the group label of every training image, which the
method itself never uses: in a comparison table it is the one row that saw them.

Under DDP the group means are those of the global batch (one all-reduce of the per-group sums and counts), so
every rank keeps the same weights and the gradient the ranks average is that of the single-process algorithm
on the concatenated batch: each rank returns its share of the objective times the world size.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


class GroupDRO:
    def __init__(self, num_groups: int, step_size: float) -> None:
        if num_groups < 1:
            raise ValueError(f"GroupDRO: num_groups must be >= 1, got {num_groups}")
        self.step_size = step_size
        self.weights = torch.full((num_groups,), 1.0 / num_groups, dtype=torch.float64)  # q [G]

    def __call__(
        self, logits: Tensor, labels: Tensor, groups: Tensor, label_smoothing: float = 0.0
    ) -> Tensor:
        """The objective of a batch (logits [B,C], labels and groups [B]); updates the group weights."""
        losses = F.cross_entropy(logits.float(), labels, reduction="none", label_smoothing=label_smoothing)
        members = F.one_hot(groups, self.weights.numel()).to(losses.dtype)  # [B,G]
        sums = (members * losses[:, None]).sum(0)  # [G]
        counts = members.sum(0)  # [G]
        totals = torch.stack([sums.detach(), counts])  # [2,G], over the global batch below
        world = 1
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            world = dist.get_world_size()
            dist.all_reduce(totals)
        counts = totals[1].clamp_min(1.0)
        with torch.no_grad():  # a group absent from the batch keeps its weight (exp(0) = 1)
            group_loss = totals[0] / counts  # [G], the global batch's means, 0 where absent
            weights = self.weights.to(losses.device) * torch.exp(self.step_size * group_loss.double())
            self.weights = weights / weights.sum()
        return world * (self.weights.to(sums.dtype) * (sums / counts)).sum()

    def state_dict(self) -> dict[str, Tensor]:
        return {"weights": self.weights.cpu()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.weights = state["weights"].clone()
