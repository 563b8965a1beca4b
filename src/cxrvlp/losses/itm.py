"""Hard negatives for image-report matching (ITM), drawn from contrastive similarities.

A negative is drawn with probability softmax(similarity) over the candidates that are not
forbidden: the row's own pair, the same study, or the very same report text. A row without any
allowed candidate gets no negative (``valid`` False), so a positive is never used as one.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def sample_hard_negatives(
    similarity: torch.Tensor, forbidden: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One candidate column per row: (indices (N,), valid (N,) bool).

    ``similarity`` (N, M) and ``forbidden`` (N, M) bool. Drawing uses ``generator`` only, so
    every process that draws for the same global rows gets the same negatives.
    """
    weights = torch.softmax(similarity.float(), dim=1).masked_fill(forbidden, 0.0)
    valid = weights.sum(dim=1) > 0
    # Rows without a candidate draw from a dummy uniform row and are flagged invalid.
    weights[~valid] = 1.0
    indices = torch.multinomial(weights.cpu(), 1, generator=generator).squeeze(1)
    return indices.to(similarity.device), valid
