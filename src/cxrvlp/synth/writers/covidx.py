"""Synthetic studies as COVIDx CXR-3."""

from __future__ import annotations

import uuid
from pathlib import Path, PurePosixPath
from typing import ClassVar

from cxrvlp.synth.scene import COVID_NAME
from cxrvlp.synth.study import RenderedStudy
from cxrvlp.synth.writers.base import (
    Exporter,
    IdAllocator,
    check_frontal,
    stable_digest,
    write_text,
)

# COVIDx gathers public sets; each patient comes from one (its data_source), in turn.
COVIDX_SOURCES = ("bimcv", "ricord", "rsna", "sirm")


class CovidxExporter(Exporter):
    """COVIDx CXR-3: train.txt, val.txt and test.txt, one image a line
    (``patient_id filename class data_source``, class ``positive`` exactly when the scene has
    COVID-19 pneumonia), images in train/, val/ and test/: PNG, and JPEG from two of the
    sources, as the real release mixes them."""

    folder = "covidx"
    split_names: ClassVar[dict[str, str]] = {"train": "train", "validate": "val", "test": "test"}

    def __init__(self, out_dir: Path) -> None:
        super().__init__(out_dir)
        self._numbers = IdAllocator(1, 99_999, "COVIDx patient")
        self._numbers_of: dict[int, int] = {}  # patient_index -> number in its names
        self._lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}

    def add(self, study: RenderedStudy) -> list[dict]:
        check_frontal(study)
        split = self._split(study)
        source = COVIDX_SOURCES[study.patient_index % len(COVIDX_SOURCES)]
        patient_id, filename = self._names(study, source)
        label = "negative" if study.scene.finding(COVID_NAME) is None else "positive"
        self._lines[split].append(f"{patient_id} {filename} {label} {source}")
        path = self.base / split / filename
        return self._frontal_row(
            study,
            path,
            image_id=filename,
            study_id=PurePosixPath(filename).stem,
            patient_id=patient_id,
            split=split,
        )

    def close(self) -> None:
        for split, lines in self._lines.items():
            write_text(self.base / f"{split}.txt", "".join(f"{line}\n" for line in lines))

    def _names(self, study: RenderedStudy, source: str) -> tuple[str, str]:
        """(patient_id, file name) in the style of the patient's source."""
        if study.patient_index not in self._numbers_of:
            self._numbers_of[study.patient_index] = self._numbers.claim(
                "covidx", study.patient_index
            )
        number, index = self._numbers_of[study.patient_index], study.study_index
        if source == "bimcv":
            patient = f"sub-S{number:05d}"
            view = study.scene.anatomy.view.lower()
            return (
                patient,
                f"{patient}_ses-E{10 * number + index:06d}_run-1_bp-chest_vp-{view}_cr.png",
            )
        if source == "ricord":
            patient = f"MIDRC-RICORD-1C-419639-{number:06d}"
            return patient, f"{patient}-{index + 1:05d}-0.jpg"
        if source == "rsna":
            patient = str(
                uuid.UUID(bytes=stable_digest("covidx-rsna", study.patient_index)[:16], version=4)
            )
            return patient, f"{patient}.png" if index == 0 else f"{patient}-{index}.png"
        return str(number), f"SIRM-{number:05d}-{index + 1}.jpeg"
