"""Uncertainty policies for CheXpert-style labels (1 positive, 0 negative, -1 uncertain, blank)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

POLICIES = ("ones", "zeros", "ignore")
# The common choice in the CheXpert literature: U-Ones where the uncertain mentions are mostly
# positive, U-Zeros where they are mostly not.
CHEXPERT_COMMON_POLICY: dict[str, str] = {
    "Atelectasis": "ones",
    "Edema": "ones",
    "Pleural Effusion": "ones",
    "Cardiomegaly": "zeros",
    "Consolidation": "zeros",
}


def apply_uncertainty(
    labels: np.ndarray,
    names: Sequence[str],
    policy: str | Mapping[str, str] = "ignore",
    blank: str = "zeros",
) -> tuple[np.ndarray, np.ndarray]:
    """Map raw labels to (values in {0, 1}, mask of labelled entries).

    ``policy`` is one of ``ones``, ``zeros``, ``ignore`` for every class, or a mapping from
    class name to policy (classes not named use ``ignore``). ``blank`` (NaN, not mentioned)
    is read as ``zeros`` (negative, the usual practice) or ``ignore``.
    """
    raw = np.asarray(labels, dtype=np.float32)
    per_class = [
        policy if isinstance(policy, str) else policy.get(name, "ignore") for name in names
    ]
    for chosen in [*per_class, blank]:
        if chosen not in POLICIES:
            raise ValueError(f"unknown uncertainty policy {chosen!r}; choose from {POLICIES}")
    if blank == "ones":
        raise ValueError("blank labels can only be read as 'zeros' or 'ignore'")
    values = np.where(raw == 1.0, 1.0, 0.0).astype(np.float32)
    mask = np.isin(raw, (0.0, 1.0))
    for column, chosen in enumerate(per_class):
        uncertain = raw[..., column] == -1.0
        if chosen == "ones":
            values[..., column][uncertain] = 1.0
        if chosen != "ignore":
            mask[..., column] |= uncertain
    if blank == "zeros":
        mask |= np.isnan(raw)
    return values, mask
