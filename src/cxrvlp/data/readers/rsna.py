"""RSNA Pneumonia Detection Challenge (Kaggle, stage 2): labels, opacity boxes, DICOM images.

``stage_2_train_labels.csv`` has one row per box (``patientId,x,y,width,height,Target``; the
box columns are empty when ``Target`` is 0); a patient is one image. There are no official
test labels, so patients are split 70/15/15 with a fixed seed, as papers do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrvlp.data.base import CXRDataset
from cxrvlp.data.readers.csv_tables import read_csv_table, require_columns
from cxrvlp.data.sample import Record
from cxrvlp.data.splits import SPLIT_NAMES, patient_split
from cxrvlp.errors import Problem

LABEL_FILES = ("stage_2_train_labels.csv", "stage_2_train_labels.csv.zip")
CLASS_FILE = "stage_2_detailed_class_info.csv"
IMAGE_FOLDER = "stage_2_train_images"
LABEL_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
BOX_LABEL = "Lung Opacity"


class RSNAPneumoniaDataset(CXRDataset):
    """One record per patient: label ``[Target]``, boxes x1, y1, x2, y2 labelled Lung Opacity.

    ``split`` is one of train / validate / test (a seeded patient split with ``fractions``)
    or None for all patients. ``extra["class"]`` holds the detailed class when
    ``stage_2_detailed_class_info.csv`` is present. With ``masks_from_boxes`` a sample also
    carries a segmentation mask with the boxes filled in (box-supervised segmentation).
    """

    name = "rsna"
    label_names = (BOX_LABEL,)

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        seed: int = 0,
        fractions: Sequence[float] = (0.7, 0.15, 0.15),
        masks_from_boxes: bool = False,
        **kwargs: Any,
    ):
        if split is not None and split not in SPLIT_NAMES:
            raise ValueError(f"RSNA split must be one of {SPLIT_NAMES} or None, got {split!r}")
        self.fractions = tuple(fractions)
        self.split_seed = seed
        self.masks_from_boxes = masks_from_boxes
        super().__init__(root, split=split, seed=seed, **kwargs)

    def _read(self) -> tuple[list[Record], list[Problem]]:
        path = self._labels_path()
        labels = read_csv_table(path, "RSNA label file", dtype={"patientId": str})
        require_columns(labels, LABEL_COLUMNS, path, "RSNA label file")
        self.n_rows = len(labels)
        problems: list[Problem] = []

        # Every row is checked (vectorised): a bad row is a counted skip, not a crash.
        target = pd.to_numeric(labels["Target"], errors="coerce")
        box = labels[["x", "y", "width", "height"]].apply(pd.to_numeric, errors="coerce")
        no_patient = labels["patientId"].isna()
        bad_target = ~target.isin((0, 1))
        bad_box = (target == 1) & (
            box.isna().any(axis=1) | (box[["width", "height"]] <= 0).any(axis=1)
        )
        for row in np.flatnonzero(no_patient | bad_target | bad_box):
            if no_patient.iloc[row]:
                reason = "no patientId"
            elif bad_target.iloc[row]:
                reason = f"Target {labels['Target'].iloc[row]} is not 0 or 1"
            else:
                reason = "Target 1 without a complete positive-size box"
            problems.append(Problem(f"{path.name} row {row + 2}", reason))
        good = ~(no_patient | bad_target | bad_box)
        labels, target, box = labels[good], target[good], box[good]

        # Rows are grouped per patient: boxes of the positive rows, label = any positive row.
        positive = target == 1
        corners = np.column_stack(
            [box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"]]
        ).astype(np.float32)
        boxes_of: dict[str, list[np.ndarray]] = {}
        for patient, corner in zip(
            labels["patientId"][positive], corners[positive.to_numpy()], strict=True
        ):
            boxes_of.setdefault(patient, []).append(corner)
        classes = self._detailed_classes()
        patients = list(dict.fromkeys(labels["patientId"]))  # first-appearance order
        splits = patient_split(patients, self.fractions, self.split_seed)
        images = self.root / IMAGE_FOLDER
        records = []
        for patient in patients:
            patient_boxes = boxes_of.get(patient, [])
            records.append(
                Record(
                    image_id=patient,
                    patient_id=patient,
                    image_path=images / f"{patient}.dcm",
                    study_id=patient,
                    split=splits[patient],
                    labels=np.array([1.0 if patient_boxes else 0.0], dtype=np.float32),
                    boxes=np.array(patient_boxes, dtype=np.float32).reshape(-1, 4),
                    box_labels=(BOX_LABEL,) * len(patient_boxes),
                    extra={"class": classes[patient]} if patient in classes else {},
                )
            )
        return records, problems

    def _labels_path(self) -> Path:
        return self.require_one_of(
            LABEL_FILES,
            "Download the RSNA Pneumonia Detection Challenge data from Kaggle and unpack it "
            f"into the root (the zipped {LABEL_FILES[1]} is read as well).",
        )

    def _detailed_classes(self) -> dict[str, str]:
        """patientId -> class from the optional class file (repeated once per label row)."""
        path = self.root / CLASS_FILE
        if not path.is_file():
            return {}
        frame = read_csv_table(path, "RSNA class file", dtype=str)
        require_columns(frame, ("patientId", "class"), path, "RSNA class file")
        frame = frame.dropna().drop_duplicates("patientId")
        return dict(zip(frame["patientId"], frame["class"], strict=True))

    def _mask(self, record: Record, height: int, width: int) -> np.ndarray | None:
        if not self.masks_from_boxes:
            return None
        mask = np.zeros((height, width), dtype=np.uint8)
        for x1, y1, x2, y2 in record.boxes:
            # Pixels whose centre lies inside the box.
            rows = slice(max(0, round(y1)), max(0, round(y2)))
            cols = slice(max(0, round(x1)), max(0, round(x2)))
            mask[rows, cols] = 1
        return mask

    def summary(self) -> dict[str, Any]:
        summary = super().summary()
        summary["n_positive_patients"] = sum(
            1 for record in self.records if record.labels is not None and record.labels[0] == 1
        )
        return summary
