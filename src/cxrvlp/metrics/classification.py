"""Multi-label classification metrics: AUROC (torchmetrics), F1 and accuracy at 0.5 (or at a
threshold per class), ROC curves for the report, and the F1-maximising threshold per class
for choosing thresholds on a validation split. Classes without both a positive and a negative
test label have no AUROC; they are listed, not averaged as 0.5."""

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
    threshold: float | torch.Tensor = 0.5,
) -> dict[str, Any]:
    """``probabilities``, ``labels`` (N, L); ``mask`` (N, L) bool: which labels are known.
    A class is predicted present when its probability is >= ``threshold``: one number for all
    classes, or a tensor (L,) with one per class.

    Returns macro ``auroc`` / ``f1`` / ``accuracy`` over the classes that can be scored, and
    ``per_class`` {name: {auroc, f1, accuracy, positives, negatives}}; with a threshold per
    class, each entry also holds its ``threshold``.
    """
    per_class_thresholds = isinstance(threshold, torch.Tensor)
    per_class: dict[str, dict[str, float | int | None]] = {}
    for column, name in enumerate(names):
        cut = float(threshold[column]) if per_class_thresholds else threshold
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
        predicted = (scores >= cut).long()
        true_positive = int(((predicted == 1) & (truth == 1)).sum())
        false_positive = int(((predicted == 1) & (truth == 0)).sum())
        false_negative = int(((predicted == 0) & (truth == 1)).sum())
        denominator = 2 * true_positive + false_positive + false_negative
        entry["f1"] = 2 * true_positive / denominator if denominator else None
        entry["accuracy"] = float((predicted == truth).float().mean()) if len(truth) else None
        if per_class_thresholds:
            entry["threshold"] = cut
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


def f1_maximising_thresholds(
    scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Per class (column), the threshold ``t`` whose prediction ``score >= t`` has the highest
    F1 over the rows whose label is known (``mask``); on a tie, the lower threshold. The
    candidates are the known scores themselves: any other ``t`` predicts as the next score
    above it does. NaN for a class with no known positive, where F1 cannot pick one.

    ``scores``, ``labels`` (N, L); ``mask`` (N, L) bool. All classes at once: each column is
    sorted by score (known rows first) and true and false positives are counted cumulatively.
    The counts are integers, so ties in F1 = 2 TP / (TP + FP + positives) are exact (a
    precision-recall curve in floating point would make them depend on rounding).
    """
    rows, classes = scores.shape
    undefined = torch.full((classes,), float("nan"), dtype=scores.dtype)
    if rows == 0:
        return undefined
    known = mask.bool()
    truth = labels.round() == 1
    # Highest score first, then every unknown row after the known ones.
    order = scores.argsort(dim=0, descending=True, stable=True)
    order = order.gather(
        0, known.gather(0, order).long().argsort(dim=0, descending=True, stable=True)
    )
    ranked, known = scores.gather(0, order), known.gather(0, order)
    true_positives = (truth.gather(0, order) & known).long().cumsum(dim=0)
    false_positives = (~truth.gather(0, order) & known).long().cumsum(dim=0)
    positives = true_positives[-1]
    denominator = (true_positives + false_positives + positives).clamp(min=1)
    f1 = 2 * true_positives.double() / denominator.double()
    # A candidate is the last known row of its run of equal scores: "score >= t" takes them all.
    last_of_run = torch.ones_like(known)
    last_of_run[:-1] = (ranked[:-1] != ranked[1:]) | ~known[1:]
    f1 = f1.masked_fill(~(known & last_of_run), -1.0)
    # argmax returns the first maximum; over the reversed rows that is the lowest threshold.
    best = rows - 1 - f1.flip(0).argmax(dim=0)
    thresholds = ranked.gather(0, best[None]).squeeze(0)
    return torch.where(positives > 0, thresholds, undefined)
