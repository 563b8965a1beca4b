"""Reading chest radiographs from JPEG, 8/16-bit PNG and DICOM into one pixel convention."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def load_image(path: str | Path) -> np.ndarray:
    """Pixels as float32 (H, W) in [0, 1], displayed-radiograph convention (bone bright).

    Raises ImageReadError naming the file and the fix when it cannot be decoded.
    """
    raise NotImplementedError
