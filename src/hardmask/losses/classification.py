"""Classification loss of both stages (method.md §2, formulas 1-2): cross-entropy, label smoothing."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def classification_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of ``logits`` [B,C] against integer ``labels`` [B].

    Stage 2: the prediction's logits. Stage 1: the part classifier's logits, already averaged over the K
    parts.
    """
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
