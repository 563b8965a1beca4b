"""Entity classification loss (ECLS): each present entity against the absent ones.

For an image with at least one present entity, each present entity's score competes with the
scores of the entities the report leaves absent (stated absent or not mentioned):
``-log(exp(s_p) / (exp(s_p) + sum_n exp(s_n)))``, averaged over its present entities.
Uncertain mentions take no part. Images without a present entity contribute nothing.
"""

from __future__ import annotations

import torch


def ecls_loss_terms(
    scores: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed per-image loss over images with a present entity, and how many there were.

    ``scores`` (B, E); ``targets`` (B, E) 1 = present, 0 = absent; ``valid`` (B, E) bool.
    """
    scores = scores.float()
    positive = valid & (targets > 0.5)
    negative = valid & (targets < 0.5)
    negatives_lse = torch.logsumexp(scores.masked_fill(~negative, float("-inf")), dim=1)
    per_positive = torch.logaddexp(scores, negatives_lse[:, None]) - scores
    counts = positive.sum(dim=1)
    per_image = (per_positive * positive).sum(dim=1) / counts.clamp(min=1)
    has_positive = counts > 0
    return per_image[has_positive].sum(), has_positive.sum()
