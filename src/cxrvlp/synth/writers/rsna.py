"""Synthetic studies as RSNA Pneumonia Detection (stage 2), one DICOM per image."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import ClassVar

import numpy as np
import pydicom
from pydicom.uid import ComputedRadiographyImageStorage

from cxrvlp.synth.study import RenderedStudy
from cxrvlp.synth.writers.base import (
    NIH_PIXEL_SPACINGS,
    WORLD_SPLITS,
    Exporter,
    check_frontal,
    stable_digest,
    table,
    two_decimals,
    write_csv,
)
from cxrvlp.synth.writers.dicom import kaggle_dicom, write_dicom

RSNA_LABEL_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
RSNA_CLASS_COLUMNS = ("patientId", "class")


class RsnaExporter(Exporter):
    """RSNA Pneumonia Detection stage 2: label CSVs and one DICOM per frontal image."""

    folder = "rsna"
    split_names: ClassVar[dict[str, str]] = {s: "train" for s in WORLD_SPLITS}

    def __init__(self, out_dir: Path) -> None:
        super().__init__(out_dir)
        self._labels: list[dict] = []
        self._classes: list[dict] = []

    def add(self, study: RenderedStudy) -> list[dict]:
        check_frontal(study)
        split = self._split(study)
        patient_id = str(
            uuid.UUID(
                bytes=stable_digest("rsna", study.patient_index, study.study_index)[:16], version=4
            )
        )
        boxes = [
            box
            for finding in study.scene.findings
            if finding.type.rsna_opacity
            for box in finding.boxes
        ]
        if boxes:
            label_rows = [
                {
                    "patientId": patient_id,
                    "x": two_decimals(box.x1),
                    "y": two_decimals(box.y1),
                    "width": two_decimals(box.width),
                    "height": two_decimals(box.height),
                    "Target": 1,
                }
                for box in boxes
            ]
            kind = "Lung Opacity"
        else:
            label_rows = [{"patientId": patient_id, "Target": 0}]
            kind = "Normal" if study.scene.is_normal else "No Lung Opacity / Not Normal"
        self._labels += label_rows
        # The real class file repeats the patient's class once per label row.
        self._classes += [{"patientId": patient_id, "class": kind}] * len(label_rows)
        path = self.base / "stage_2_train_images" / f"{patient_id}.dcm"
        write_dicom(path, _rsna_dicom(study, patient_id))
        return [
            self._truth(
                study,
                path,
                study.frontal,
                image_id=patient_id,
                study_id=patient_id,
                patient_id=patient_id,
                view=study.scene.anatomy.view,
                split=split,
                regions=study.scene.region_boxes(),
            )
        ]

    def close(self) -> None:
        write_csv(self.base / "stage_2_train_labels.csv", table(self._labels, RSNA_LABEL_COLUMNS))
        write_csv(
            self.base / "stage_2_detailed_class_info.csv", table(self._classes, RSNA_CLASS_COLUMNS)
        )


# (RescaleSlope, RescaleIntercept) variants; None writes no rescale at all.
_RESCALES: tuple[tuple[str, str] | None, ...] = (None, ("1", "-1024"), ("0.5", "0"))


def _rsna_dicom(study: RenderedStudy, patient_id: str) -> pydicom.Dataset:
    """A CR DICOM whose correct display (modality LUT, then MONOCHROME1 inverted) is the image.

    Files vary as real archives do: 12 to 16 stored bits, a quarter MONOCHROME1, some with a
    rescale and some with a window.
    """
    variant = stable_digest("rsna-dicom", study.patient_index, study.study_index)
    bits = 12 + variant[0] % 5
    monochrome1 = variant[1] % 4 == 0
    rescale = _RESCALES[variant[2] % len(_RESCALES)]
    top = (1 << bits) - 1
    stored = np.round(np.clip(study.frontal, 0.0, 1.0) * top).astype(np.uint16)
    if monochrome1:
        stored = (top - stored).astype(np.uint16)  # high values display dark in MONOCHROME1
    ds = kaggle_dicom(
        study,
        source="rsna",
        key=patient_id,
        patient_id=patient_id,
        sop_class=ComputedRadiographyImageStorage,
        stored=stored,
        bits=bits,
        photometric="MONOCHROME1" if monochrome1 else "MONOCHROME2",
        spacing=NIH_PIXEL_SPACINGS[variant[3] % 3],
    )
    slope, intercept = (1.0, 0.0) if rescale is None else (float(rescale[0]), float(rescale[1]))
    if rescale is not None:
        ds.RescaleIntercept, ds.RescaleSlope = rescale[1], rescale[0]
        ds.RescaleType = "US"
    if variant[4] % 2 == 0:
        low, high = intercept, slope * top + intercept
        ds.WindowCenter = f"{(low + high) / 2:.10g}"
        ds.WindowWidth = f"{high - low:.10g}"
    return ds
