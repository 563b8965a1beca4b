"""CheXpert v1.0 (full or ``-small``): ``train.csv`` / ``valid.csv`` and the JPEG images.

Labels are the 14 observations in the CSV's column order (``CHEXPERT_CSV_LABELS``), coded
1 / 0 / -1 (uncertain) / blank. Unless the caller passes ``label_policy``, the common
per-class choice of the CheXpert literature applies (``labels.CHEXPERT_COMMON_POLICY``:
U-Ones for Atelectasis, Edema, Pleural Effusion; U-Zeros for Cardiomegaly, Consolidation;
uncertain labels of the other classes are masked out).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrvlp.constants import CHEXPERT_CSV_LABELS
from cxrvlp.data.base import CXRDataset
from cxrvlp.data.labels import CHEXPERT_COMMON_POLICY
from cxrvlp.data.readers.csv_tables import read_csv_table, require_columns
from cxrvlp.data.sample import Record
from cxrvlp.errors import MissingFileError, Problem

log = logging.getLogger(__name__)

SPLITS = ("train", "valid")
RELEASE_FOLDERS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
CSV_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_CSV_LABELS)
_FIX = "Pass the CheXpert-v1.0(-small) folder, or the folder that holds it."


class CheXpertDataset(CXRDataset):
    """CheXpert images with their 14 labels; frontal views by default.

    ``root`` is the ``CheXpert-v1.0-small`` (or ``CheXpert-v1.0``) folder or its parent.
    ``split`` is ``train``, ``valid`` or None (both; ``valid.csv`` is then optional).
    ``views`` filters the ``Frontal/Lateral`` column (None keeps every view); dropped rows are
    counted in ``n_filtered_views``. Each CSV may also be gzipped (``train.csv.gz``).
    """

    name = "chexpert"
    label_names = CHEXPERT_CSV_LABELS

    def __init__(
        self,
        root: str | Path,
        *,
        split: str | None = None,
        views: Sequence[str] | None = ("Frontal",),
        **kwargs: Any,
    ):
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        self.views = None if views is None else tuple(views)
        self._wanted_split = split
        self.n_filtered_views = 0
        kwargs.setdefault("label_policy", dict(CHEXPERT_COMMON_POLICY))
        super().__init__(root, split=split, **kwargs)

    def _read(self) -> tuple[list[Record], list[Problem]]:
        folder = self._release_folder()
        records: list[Record] = []
        problems: list[Problem] = []
        for split in [self._wanted_split] if self._wanted_split else SPLITS:
            path = _csv_path(folder, split)
            if path is None and self._wanted_split is None and split == "valid":
                log.warning("%s: no valid.csv in %s: validation split absent", self.name, folder)
                continue
            if path is None:
                raise MissingFileError(folder / f"{split}.csv", f"{self.name} file", _FIX)
            records += self._read_csv(path, folder, split, problems)
        return records, problems

    def _release_folder(self) -> Path:
        """The folder holding train.csv / valid.csv: the root or its release subfolder."""
        for folder in (self.root, *(self.root / name for name in RELEASE_FOLDERS)):
            if any(_csv_path(folder, split) for split in SPLITS):
                return folder
        raise MissingFileError(self.root / "train.csv", f"{self.name} file", _FIX)

    def _read_csv(
        self, path: Path, folder: Path, split: str, problems: list[Problem]
    ) -> list[Record]:
        what = "CheXpert label file"
        frame = read_csv_table(
            path, what, dtype={"Path": str, "Frontal/Lateral": str, "AP/PA": str}
        )
        require_columns(frame, CSV_COLUMNS, path, what)
        self.n_rows += len(frame)
        frame["Frontal/Lateral"] = frame["Frontal/Lateral"].fillna("")
        if self.views is not None:
            keep = frame["Frontal/Lateral"].isin(self.views)
            self.n_filtered_views += int((~keep).sum())
            frame = frame[keep]
        labels = frame[list(CHEXPERT_CSV_LABELS)].to_numpy(np.float32)
        records = []
        for row, (csv_path, side, projection, sex, age) in enumerate(
            zip(
                frame["Path"].tolist(),
                frame["Frontal/Lateral"].tolist(),
                frame["AP/PA"].fillna("").tolist(),
                frame["Sex"].tolist(),
                frame["Age"].tolist(),
                strict=True,
            )
        ):
            parts = csv_path.split("/")
            # "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg": the first
            # component names the release folder, which the user may have renamed.
            if parts[0].startswith("CheXpert-v1.0"):
                parts = parts[1:]
            if len(parts) != 4:
                problems.append(
                    Problem(f"{path.name}: {csv_path}", "Path is not split/patient/study/file")
                )
                continue
            patient, study = parts[1], parts[2]
            records.append(
                Record(
                    image_id=csv_path,
                    patient_id=patient,
                    study_id=f"{patient}/{study}",
                    # Lateral rows leave AP/PA blank.
                    view=projection or side.upper(),
                    split=split,
                    labels=labels[row],
                    image_path=folder / "/".join(parts),
                    extra={"sex": sex, "age": age},
                )
            )
        return records


def _csv_path(folder: Path, split: str) -> Path | None:
    for name in (f"{split}.csv", f"{split}.csv.gz"):
        if (folder / name).is_file():
            return folder / name
    return None
