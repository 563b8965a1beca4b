"""Entity classification loss (ECLS): present (image, entity) pairs against absent ones.

A present pair (i, e) competes with the pairs that say "not e" or "not in i": the absent pairs
of the same entity in every image of the global batch, and the other entities image i lacks:
``-log(exp(s_ie) / (exp(s_ie) + sum_j exp(s_je) + sum_e' exp(s_ie')))``, averaged over the
present pairs. Uncertain mentions take no part; images without a present entity add only
negatives. The same-entity negatives across images rank images per entity (what entity
presence read from the score needs); the same-image ones keep entities of one image apart
(the negative sets compared: docs/pretraining.md, ECLS negatives).
"""

from __future__ import annotations

import torch


def ecls_loss_terms(
    scores: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor,
    batch_scores: torch.Tensor | None = None,
    batch_negatives: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss over the present pairs of ``scores`` and how many there were.

    ``scores`` (B, E); ``targets`` (B, E) 1 = present, 0 = absent; ``valid`` (B, E) bool.
    ``batch_scores`` / ``batch_negatives``: the scores of the whole (global) batch and which of
    them are absent pairs, for the same-entity negatives; by default ``scores`` itself.
    """
    scores = scores.float()
    positive = valid & (targets > 0.5)
    own_negatives = valid & (targets < 0.5)
    if batch_scores is None:
        batch_scores, batch_negatives = scores, own_negatives
    same_entity = torch.logsumexp(
        batch_scores.float().masked_fill(~batch_negatives, float("-inf")), dim=0
    )
    same_image = torch.logsumexp(scores.masked_fill(~own_negatives, float("-inf")), dim=1)
    negatives_lse = torch.logaddexp(same_entity[None, :], same_image[:, None])
    per_positive = torch.logaddexp(scores, negatives_lse) - scores
    return (per_positive * positive).sum(), positive.sum()
