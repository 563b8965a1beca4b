"""Clinical efficacy (CE) of generated reports: the CheXpert-14 labels our rule-based labeller
(:func:`cxrvlp.text.chexpert.label_report`) reads from the generated report, scored as
multi-label predictions of the labels it reads from the reference report.

A label counts as positive only where the labeller says 1.0. Uncertain (-1.0), negative (0.0)
and unmentioned labels all count as not positive, in the generated and in the reference report
alike. Precision, recall and F1 are micro averages over all 14 labels ("No Finding" included)
and all reports; per label they are None where undefined (nothing predicted, or nothing to
find).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_fscore_support

from cxrvlp.constants import CHEXPERT_LABELS
from cxrvlp.text.chexpert import label_report

POSITIVE = 1.0


def positive_labels(reports: Sequence[str]) -> np.ndarray:
    """(N, 14) 0/1 in CHEXPERT_LABELS order: 1 where the labeller says positive."""
    found: dict[str, np.ndarray] = {}  # generated reports often repeat: label each text once
    rows = []
    for report in reports:
        if report not in found:
            labels = label_report(report)
            found[report] = np.array(
                [labels[name] == POSITIVE for name in CHEXPERT_LABELS], dtype=np.int64
            )
        rows.append(found[report])
    return np.stack(rows) if rows else np.zeros((0, len(CHEXPERT_LABELS)), np.int64)


def clinical_efficacy(generated: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """``ce_precision``, ``ce_recall``, ``ce_f1`` (micro) and ``ce_per_label``."""
    if len(generated) != len(references):
        raise ValueError(f"{len(generated)} generated reports for {len(references)} references")
    if not generated:
        raise ValueError("no reports to score")
    predicted, truth = positive_labels(generated), positive_labels(references)
    precision, recall, f1, _ = precision_recall_fscore_support(
        truth, predicted, average="micro", zero_division=np.nan
    )
    per_label = precision_recall_fscore_support(
        truth, predicted, average=None, zero_division=np.nan
    )
    return {
        "ce_precision": _number(precision),
        "ce_recall": _number(recall),
        "ce_f1": _number(f1),
        "ce_per_label": {
            name: {
                "precision": _number(per_label[0][column]),
                "recall": _number(per_label[1][column]),
                "f1": _number(per_label[2][column]),
                "reference_positives": int(truth[:, column].sum()),
                "generated_positives": int(predicted[:, column].sum()),
            }
            for column, name in enumerate(CHEXPERT_LABELS)
        },
    }


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)
