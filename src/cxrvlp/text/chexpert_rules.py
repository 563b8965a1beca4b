"""The CheXpert-14 label rule shared by the labeller and the synthetic report writer.

Kept free of heavy imports: the synthetic world uses it to label the reports it writes.
"""

from __future__ import annotations

from collections.abc import Iterable

from cxrvlp.constants import CHEXPERT_LABELS

EXISTENCE_RANK = {"present": 3, "uncertain": 2, "absent": 1}
LABEL_VALUES = {"present": 1.0, "uncertain": -1.0, "absent": 0.0}
NOT_ABNORMAL = ("No Finding", "Support Devices")


def combine_statements(statements: Iterable[tuple[Iterable[str], str]]) -> dict[str, float | None]:
    """Labels from (observations, existence) statements, in CHEXPERT_LABELS order.

    Positive beats uncertain beats negative when an observation is stated more than once;
    unstated observations are None; "No Finding" is 1.0 when no observation other than
    Support Devices is positive or uncertain, else None.
    """
    best: dict[str, str] = {}
    for observations, existence in statements:
        for observation in observations:
            held = best.get(observation)
            if held is None or EXISTENCE_RANK[existence] > EXISTENCE_RANK[held]:
                best[observation] = existence
    labels: dict[str, float | None] = {
        name: LABEL_VALUES[best[name]] if name in best else None for name in CHEXPERT_LABELS
    }
    abnormal = any(
        value in (1.0, -1.0) for name, value in labels.items() if name not in NOT_ABNORMAL
    )
    labels["No Finding"] = None if abnormal else 1.0
    return labels
