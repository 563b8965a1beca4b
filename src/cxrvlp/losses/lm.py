"""Language-modelling loss of the report decoder (teacher forcing, next-token prediction)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lm_loss_terms(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed token cross-entropy and the number of predicted tokens.

    Token t+1 is predicted from positions <= t; padding is not predicted.
    """
    predicted = logits[:, :-1].float()
    targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
    total = F.cross_entropy(
        predicted.reshape(-1, predicted.shape[-1]),
        targets.reshape(-1),
        ignore_index=-100,
        reduction="sum",
        label_smoothing=label_smoothing,
    )
    return total, (targets != -100).sum()
