"""Patient-level splits and nested label fractions, deterministic for a seed."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence

SPLIT_NAMES = ("train", "validate", "test")


def _patient_order(patients: Iterable[str], seed: int) -> list[str]:
    """A seeded order of the unique patients that does not depend on input order."""

    def key(patient: str) -> str:
        return hashlib.sha256(f"{seed}:{patient}".encode()).hexdigest()

    return sorted(set(patients), key=key)


def patient_split(
    patients: Iterable[str], fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> dict[str, str]:
    """Assign each patient to train / validate / test (RSNA's usual 70/15/15 by default)."""
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(
            f"split fractions must be three non-negative numbers summing to 1: {fractions}"
        )
    order = _patient_order(patients, seed)
    n_train = round(fractions[0] * len(order))
    n_validate = round(fractions[1] * len(order))
    return {
        patient: SPLIT_NAMES[0 if rank < n_train else 1 if rank < n_train + n_validate else 2]
        for rank, patient in enumerate(order)
    }


def label_fraction(patients: Iterable[str], fraction: float, seed: int = 0) -> set[str]:
    """Patients kept for a label fraction (1 %, 10 %, 100 %).

    The patients come in one seeded order and a fraction keeps its head, so smaller fractions
    are nested in larger ones; at least one patient is kept.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    order = _patient_order(patients, seed)
    keep = max(1, math.ceil(fraction * len(order))) if order else 0
    return set(order[:keep])
