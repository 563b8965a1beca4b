"""Multi-label tag recognition (ASG's internal relation learning, IRL): binary cross-entropy
of one logit per tag, over the (image, tag) pairs whose existence the report states."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def tag_loss_terms(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed BCE over the valid pairs of ``logits`` (B, T) against ``targets`` (B, T) 0/1,
    and their count; ``valid`` (B, T) bool leaves uncertain tags out."""
    losses = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return (losses * valid).sum(), valid.sum()
