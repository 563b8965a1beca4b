"""Synthetic studies as CheXpert-v1.0-small."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import ClassVar

from cxrvlp.constants import CHEXPERT_CSV_LABELS
from cxrvlp.synth.study import RenderedStudy
from cxrvlp.synth.writers.base import Exporter, check_frontal, save_image, table, write_csv

CHEXPERT_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_CSV_LABELS)
CHEXPERT_ROOT = "CheXpert-v1.0-small"


class ChexpertExporter(Exporter):
    """CheXpert-v1.0-small: train.csv (labeller output), valid.csv (truth 0/1), JPEG images."""

    folder = "chexpert"
    split_names: ClassVar[dict[str, str]] = {
        "train": "train",
        "validate": "valid",
        "test": "valid",
    }

    def __init__(self, out_dir: Path) -> None:
        super().__init__(out_dir)
        self._rows: dict[str, list[dict]] = {"train": [], "valid": []}

    def add(self, study: RenderedStudy) -> list[dict]:
        check_frontal(study)
        split = self._split(study)
        patient = f"patient{study.patient_index + 1:05d}"
        study_folder = PurePosixPath(CHEXPERT_ROOT, split, patient, f"study{study.study_index + 1}")
        if split == "train":
            report_labels = study.report.chexpert_labels()
            labels = {name: report_labels.get(name) for name in CHEXPERT_CSV_LABELS}
        else:
            labels = _truth_chexpert_labels(study)
        frontal_view = study.scene.anatomy.view
        views = [("view1_frontal.jpg", "Frontal", frontal_view, study.frontal)]
        if study.lateral is not None:
            views.append(("view2_lateral.jpg", "Lateral", None, study.lateral))
        regions = study.scene.region_boxes()
        rows = []
        for file_name, orientation, projection, image in views:
            csv_path = (study_folder / file_name).as_posix()
            path = self.base / csv_path
            save_image(path, image)
            self._rows[split].append(
                {
                    "Path": csv_path,
                    "Sex": "Male" if study.scene.anatomy.sex == "M" else "Female",
                    "Age": study.age,
                    "Frontal/Lateral": orientation,
                    "AP/PA": projection,
                }
                | labels
            )
            rows.append(
                self._truth(
                    study,
                    path,
                    image,
                    image_id=csv_path,
                    study_id=f"{patient}/{study_folder.name}",
                    patient_id=patient,
                    view=projection or "LATERAL",
                    split=split,
                    regions=None if projection is None else regions,
                )
            )
        return rows

    def close(self) -> None:
        for split, rows in self._rows.items():
            frame = table(rows, CHEXPERT_COLUMNS)
            frame[list(CHEXPERT_CSV_LABELS)] = frame[list(CHEXPERT_CSV_LABELS)].astype("float64")
            write_csv(self.base / CHEXPERT_ROOT / f"{split}.csv", frame)


def _truth_chexpert_labels(study: RenderedStudy) -> dict[str, float]:
    """Expert-style 0/1 labels: CheXpert's validation set is labelled by radiologists."""
    positive = {label for f in study.scene.findings for label in f.type.chexpert}
    # "No Finding" ignores support devices, as CheXpert's labeller does.
    if not any(not f.is_device for f in study.scene.findings):
        positive.add("No Finding")
    return {name: float(name in positive) for name in CHEXPERT_CSV_LABELS}
