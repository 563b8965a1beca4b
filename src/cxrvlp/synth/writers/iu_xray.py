"""Synthetic studies as IU X-Ray, in R2Gen's layout (annotation.json)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from cxrvlp.synth.study import RenderedStudy
from cxrvlp.synth.writers.base import (
    Exporter,
    IdAllocator,
    check_frontal,
    patient_key,
    save_image,
    stable_number,
    write_json,
)


class IuXrayExporter(Exporter):
    """IU X-Ray in R2Gen's layout: annotation.json and images/<id>/{0,1}.png (two views)."""

    folder = "iu_xray"
    split_names: ClassVar[dict[str, str]] = {"train": "train", "validate": "val", "test": "test"}

    def __init__(self, out_dir: Path) -> None:
        super().__init__(out_dir)
        self._reports = IdAllocator(1, 9_999, "IU X-Ray report")
        self._entries: dict[str, list[dict]] = {"train": [], "val": [], "test": []}

    def add(self, study: RenderedStudy) -> list[dict]:
        check_frontal(study)
        if study.lateral is None:
            raise ValueError(
                f"IU X-Ray study {study.patient_index}/{study.study_index} has no lateral image; "
                "every IU X-Ray study has two views"
            )
        split = self._split(study)
        report_number = self._reports.claim("iu", study.patient_index, study.study_index)
        image_number = stable_number("iu-image", study.patient_index, study.study_index) % 3000
        study_id = f"CXR{report_number}_IM-{image_number:04d}"
        # R2Gen keeps findings then impression on one line.
        text = " ".join(f"{study.report.findings} {study.report.impression}".split())
        image_paths = [f"{study_id}/0.png", f"{study_id}/1.png"]
        self._entries[split].append(
            {
                "id": study_id,
                # Open-i writes de-identified words as XXXX where MIMIC writes ___.
                "report": text.replace("___", "XXXX"),
                "image_path": image_paths,
                "split": split,
            }
        )
        rows = []
        for image_path, image, view, regions in (
            (image_paths[0], study.frontal, study.scene.anatomy.view, study.scene.region_boxes()),
            (image_paths[1], study.lateral, "LATERAL", None),
        ):
            path = self.base / "images" / image_path
            save_image(path, image)
            rows.append(
                self._truth(
                    study,
                    path,
                    image,
                    image_id=image_path,
                    study_id=study_id,
                    patient_id=patient_key(study),
                    view=view,
                    split=split,
                    regions=regions,
                )
            )
        return rows

    def close(self) -> None:
        write_json(self.base / "annotation.json", self._entries)
