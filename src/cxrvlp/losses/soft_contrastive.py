"""ASG's external relation learning (ERL): image-report contrast against soft targets.

Two studies whose images carry similar finding tags are not plain negatives of each other.
The target of a row mixes its own pair with the tag similarity of every column,
``Q = row_normalise(0.8 P + 0.2 C + 1e-6)`` (P: same-study positives, the identity when every
study is in the batch once; C: cosine similarity of the tag vectors), and the loss is the
symmetric KL divergence ``KL(Q || S) + KL(S || Q)`` between Q and the row softmax S of the
similarity logits. Written here because the soft-target symmetric KL is ASG's own; the
cosine and softmax are torch's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IDENTITY_WEIGHT = 0.8
TARGET_FLOOR = 1e-6


def soft_label_targets(
    row_tags: torch.Tensor,
    column_tags: torch.Tensor,
    positives: torch.Tensor,
    identity_weight: float = IDENTITY_WEIGHT,
) -> torch.Tensor:
    """(Q, K) targets: ``row_normalise(w P + (1 - w) C + 1e-6)``.

    ``row_tags`` (Q, T) and ``column_tags`` (K, T) tag vectors (a row without a tag has
    cosine 0 with everything); ``positives`` (Q, K) bool, each row's own pair(s).
    """
    similarity = F.normalize(row_tags.float(), dim=-1) @ F.normalize(column_tags.float(), dim=-1).T
    own = positives.float() / positives.float().sum(dim=1, keepdim=True).clamp(min=1.0)
    mixed = identity_weight * own + (1.0 - identity_weight) * similarity + TARGET_FLOOR
    return mixed / mixed.sum(dim=1, keepdim=True)


def symmetric_kl_loss_terms(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """Summed ``KL(Q || S) + KL(S || Q)`` over the rows of ``logits`` (Q, K), S their row
    softmax and Q ``targets`` (rows summing to 1, no zeros), and the row count."""
    log_predicted = F.log_softmax(logits.float(), dim=1)
    log_targets = targets.log()
    forward = (targets * (log_targets - log_predicted)).sum(dim=1)
    backward = (log_predicted.exp() * (log_predicted - log_targets)).sum(dim=1)
    return (forward + backward).sum(), len(logits)
