"""Entity classification loss (ECLS): present (image, entity) pairs against absent ones.

Every present pair of an image competes with all absent pairs of the global batch (entities
the reports state absent or do not mention, in any image):
``-log(exp(s_p) / (exp(s_p) + sum_n exp(s_n)))``, averaged over the present pairs. Uncertain
mentions take no part; images without a present entity add only negatives. Competing across
images, not only within one, is what makes a score comparable between images (entity
presence read from it): with negatives from the same image only, a pre-trained tiny model's
per-entity AUROC stayed at 0.69 (0.35 for central venous catheters).
"""

from __future__ import annotations

import torch


def ecls_loss_terms(
    scores: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor,
    negative_scores: torch.Tensor | None = None,
    negative_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss over the present pairs of ``scores`` and how many there were.

    ``scores`` (B, E); ``targets`` (B, E) 1 = present, 0 = absent; ``valid`` (B, E) bool.
    ``negative_scores`` / ``negative_mask``: the scores of the whole (global) batch and which of
    them are negatives; by default the absent pairs of ``scores`` itself.
    """
    scores = scores.float()
    positive = valid & (targets > 0.5)
    if negative_scores is None:
        negative_scores, negative_mask = scores, valid & (targets < 0.5)
    negatives_lse = torch.logsumexp(
        negative_scores.float().masked_fill(~negative_mask, float("-inf")).flatten(), dim=0
    )
    per_positive = torch.logaddexp(scores, negatives_lse) - scores
    return (per_positive * positive).sum(), positive.sum()
