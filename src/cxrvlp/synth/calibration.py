"""Lesion box sizes calibrated on the real RSNA and NIH box lists.

The fitted statistics live in ``lesion_sizes.json`` beside this module so that synthesis
needs no data file; :func:`fit_lesion_sizes` recomputes them from the label files that ship
in ``torchxrayvision/data`` and a test checks the stored copy against them.
"""

from __future__ import annotations

import importlib.util
import json
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

LESION_SIZES_FILE = Path(__file__).with_name("lesion_sizes.json")

# Both publishers' images are 1024 x 1024 pixels; boxes are stored as fractions of that.
_REAL_IMAGE_SIZE = 1024.0

# Which real box list calibrates which synthetic lesion.
_SOURCES: dict[str, tuple[str, str]] = {
    "airspace": ("rsna", "Lung Opacity"),
    "atelectasis": ("nih", "Atelectasis"),
    "nodule": ("nih", "Nodule"),
    "mass": ("nih", "Mass"),
    "effusion": ("nih", "Effusion"),
    "pneumothorax": ("nih", "Pneumothorax"),
}


def torchxrayvision_data_dir() -> Path | None:
    """The folder of real label files shipped by torchxrayvision, without importing it."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0]) / "data"
    return folder if folder.is_dir() else None


def _fit(widths: np.ndarray, heights: np.ndarray) -> dict:
    logs = np.log(np.stack([widths, heights], axis=1) / _REAL_IMAGE_SIZE)
    return {
        "n": len(widths),
        "mean_log_wh": [round(float(v), 5) for v in logs.mean(axis=0)],
        "cov_log_wh": [[round(float(v), 5) for v in row] for row in np.cov(logs.T)],
    }


def fit_lesion_sizes(data_dir: Path) -> dict[str, dict]:
    """Fit a bivariate log-normal to (width, height) of each real box class."""
    rsna = pd.read_csv(data_dir / "kaggle_stage_2_train_labels.csv.zip").dropna()
    nih = pd.read_csv(data_dir / "BBox_List_2017.csv.gz")
    nih_width, nih_height = nih.columns[4], nih.columns[5]
    stats = {}
    for lesion, (source, label) in _SOURCES.items():
        if source == "rsna":
            stats[lesion] = _fit(rsna["width"].to_numpy(), rsna["height"].to_numpy())
        else:
            rows = nih[nih["Finding Label"] == label]
            stats[lesion] = _fit(rows[nih_width].to_numpy(), rows[nih_height].to_numpy())
        stats[lesion]["source"] = f"{source}:{label}"
    return stats


@cache
def lesion_sizes() -> dict[str, dict]:
    return json.loads(LESION_SIZES_FILE.read_text())


# Each severity draws its size from one band of the real log-area distribution, so that
# small lesions are the small real boxes and large ones the large real boxes.
SEVERITY_AREA_QUANTILES = {"small": (0.03, 0.35), "moderate": (0.35, 0.7), "large": (0.7, 0.97)}


def sample_lesion_size(rng: np.random.Generator, lesion: str, severity: str) -> tuple[float, float]:
    """(width, height) as fractions of the image width, from the real distribution's band."""
    from scipy.stats import norm

    stats = lesion_sizes()[lesion]
    mean = np.asarray(stats["mean_log_wh"])
    cov = np.asarray(stats["cov_log_wh"])
    area_mean = mean.sum()
    area_std = float(np.sqrt(cov.sum()))
    low, high = SEVERITY_AREA_QUANTILES[severity]
    z_low, z_high = norm.ppf(low), norm.ppf(high)
    for _ in range(200):
        log_wh = rng.multivariate_normal(mean, cov)
        z = (log_wh.sum() - area_mean) / area_std
        if z_low <= z <= z_high:
            break
    width, height = np.exp(log_wh)
    return float(width), float(height)
