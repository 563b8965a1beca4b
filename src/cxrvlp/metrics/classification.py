"""Multi-label classification metrics: AUROC (torchmetrics), F1 and accuracy at 0.5, ROC
curves for the report. Classes without both a positive and a negative test label have no
AUROC; they are listed, not averaged as 0.5."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics.functional.classification import binary_auroc, binary_roc


def classification_metrics(
    probabilities: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    names: Sequence[str],
    threshold: float = 0.5,
) -> dict[str, Any]:
    """``probabilities``, ``labels`` (N, L); ``mask`` (N, L) bool: which labels are known.

    Returns macro ``auroc`` / ``f1`` / ``accuracy`` over the classes that can be scored, and
    ``per_class`` {name: {auroc, f1, accuracy, positives, negatives}}.
    """
    per_class: dict[str, dict[str, float | int | None]] = {}
    for column, name in enumerate(names):
        known = mask[:, column].bool()
        scores = probabilities[known, column].float()
        truth = labels[known, column].round().long()
        positives = int(truth.sum())
        negatives = int(len(truth) - positives)
        entry: dict[str, float | int | None] = {"positives": positives, "negatives": negatives}
        if positives and negatives:
            entry["auroc"] = float(binary_auroc(scores, truth))
        else:
            entry["auroc"] = None
        predicted = (scores >= threshold).long()
        true_positive = int(((predicted == 1) & (truth == 1)).sum())
        false_positive = int(((predicted == 1) & (truth == 0)).sum())
        false_negative = int(((predicted == 0) & (truth == 1)).sum())
        denominator = 2 * true_positive + false_positive + false_negative
        entry["f1"] = 2 * true_positive / denominator if denominator else None
        entry["accuracy"] = float((predicted == truth).float().mean()) if len(truth) else None
        per_class[name] = entry

    def macro(key: str) -> float | None:
        values = [entry[key] for entry in per_class.values() if entry[key] is not None]
        return float(sum(values) / len(values)) if values else None

    return {
        "auroc": macro("auroc"),
        "f1": macro("f1"),
        "accuracy": macro("accuracy"),
        "classes_scored": sum(entry["auroc"] is not None for entry in per_class.values()),
        "per_class": per_class,
    }


def roc_curves(
    probabilities: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, names: Sequence[str]
) -> dict[str, dict[str, list[float]]]:
    """{class: {"fpr": [...], "tpr": [...]}} for the classes with both labels (for plots)."""
    curves = {}
    for column, name in enumerate(names):
        known = mask[:, column].bool()
        truth = labels[known, column].round().long()
        if 0 < int(truth.sum()) < len(truth):
            fpr, tpr, _ = binary_roc(probabilities[known, column].float(), truth)
            curves[name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    return curves
