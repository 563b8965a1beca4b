"""Image-report contrastive loss (ITC) with several positives per row.

Rows whose ids match are positives of each other (images of one study share its report), so
the target of a row is uniform over its positives, as in BLIP's retrieval fine-tuning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss_terms(
    queries: torch.Tensor,
    keys: torch.Tensor,
    query_ids: torch.Tensor,
    key_ids: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Per-row cross-entropy (Q,) of ``logit_scale * queries @ keys.T`` against soft targets.

    ``queries`` (Q, D) and ``keys`` (K, D) are L2-normalised; every query must have at least
    one key with its id. The ITC loss is the mean of the image->report and report->image terms.
    """
    logits = logit_scale * queries.float() @ keys.float().T
    positives = (query_ids[:, None] == key_ids[None, :]).float()
    if bool((positives.sum(dim=1) == 0).any()):
        raise ValueError("every query needs a positive key (its own pair) among the keys")
    targets = positives / positives.sum(dim=1, keepdim=True)
    return -(F.log_softmax(logits, dim=1) * targets).sum(dim=1)
