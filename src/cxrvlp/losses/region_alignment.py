"""Region alignment: each query (a knowledge prompt, a region's sentences) against the
anatomical regions of its own image, with the regions it names as the positives.

``-log sum_{r named} softmax_r(logits)``: one named region suffices (a bilateral finding names
two, and pointing at either is right), and only the image's own regions compete, so the term
asks *where in this image* rather than *which image*. GK-MVLP's grounding term uses it on its
prompt-to-region attention (logits = log attention) and ASG's region-sentence alignment
(:func:`region_sentence_loss_terms`) on sentence-region similarities. Written here because
neither library we use has a multi-positive, per-image softmax over boxes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def region_alignment_loss_terms(
    logits: torch.Tensor, positives: torch.Tensor, region_valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss over the queries that name at least one valid region, and their count.

    ``logits`` (B, Q, R) a query's scores over its image's regions; ``positives`` (B, Q, R)
    bool, the regions it names; ``region_valid`` (B, R) bool, the regions the image has (the
    others take no part, as positives or as negatives).
    """
    logits = logits.float()
    if region_valid is not None:
        logits = logits.masked_fill(~region_valid[:, None, :], float("-inf"))
        positives = positives & region_valid[:, None, :]
    counted = positives.any(dim=-1)
    # Queries without a named region get flat logits and every region as a positive (loss 0),
    # so no all--inf row reaches logsumexp (its gradient would be NaN).
    logits = logits.masked_fill(~counted[..., None], 0.0)
    positives = positives | ~counted[..., None]
    named = torch.logsumexp(logits.masked_fill(~positives, float("-inf")), dim=-1)
    every = torch.logsumexp(logits, dim=-1)
    return ((every - named) * counted).sum(), counted.sum()


def region_sentence_loss_terms(
    region_embeddings: torch.Tensor,
    sentence_embeddings: torch.Tensor,
    valid: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ASG's anatomical region-sentence alignment: per image, an R x R cosine score matrix of
    its regions (``region_embeddings`` (B, R, D)) against the sentences linked to each region
    (``sentence_embeddings`` (B, R, D)), cross-entropy over rows and over columns with the
    diagonal as the target; the other regions of the same image are the negatives.

    ``valid`` (B, R) bool: regions with a box and a linked sentence (others are padding). The
    result sums the row and column terms over the valid regions, halved, and their count.
    """
    regions = F.normalize(region_embeddings.float(), dim=-1)
    sentences = F.normalize(sentence_embeddings.float(), dim=-1)
    logits = regions @ sentences.transpose(1, 2) / temperature
    diagonal = torch.eye(logits.shape[1], dtype=torch.bool, device=logits.device)
    diagonal = diagonal[None].expand(len(logits), -1, -1)
    rows, count = region_alignment_loss_terms(logits, diagonal, valid)
    columns, _ = region_alignment_loss_terms(logits.transpose(1, 2), diagonal, valid)
    return (rows + columns) / 2, count
