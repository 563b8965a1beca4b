"""Entity presence from the ECLS scores: AUROC per knowledge-base entity against the report
labels (entities with too few positives or negatives are reported but not averaged)."""

from __future__ import annotations

import torch
from torchmetrics.functional.classification import binary_auroc


def entity_auroc(
    scores: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor,
    names: list[str],
    min_each: int = 5,
) -> dict:
    per_entity = {}
    for column, name in enumerate(names):
        mask = valid[:, column]
        truth = targets[mask, column].long()
        positives, negatives = int(truth.sum()), int((truth == 0).sum())
        row = {"positives": positives, "negatives": negatives, "auroc": None}
        if positives >= min_each and negatives >= min_each:
            row["auroc"] = float(binary_auroc(scores[mask, column].float(), truth))
        per_entity[name] = row
    scored = [row["auroc"] for row in per_entity.values() if row["auroc"] is not None]
    return {
        "auroc_macro": float(sum(scored) / len(scored)) if scored else None,
        "entities_scored": len(scored),
        "min_positives_and_negatives": min_each,
        "per_entity": per_entity,
    }
