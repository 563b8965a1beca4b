"""Synthetic studies as NIH ChestX-ray14."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from cxrvlp.synth.study import RenderedStudy
from cxrvlp.synth.writers.base import (
    NIH_PIXEL_SPACINGS,
    Exporter,
    check_frontal,
    stable_number,
    table,
    two_decimals,
    write_csv,
    write_text,
)

# The real NIH headers, as shipped: the bracketed names hold commas, so a CSV reader splits
# them into several columns, and BBox_List_2017.csv ends its header with three empty names.
NIH_ENTRY_COLUMNS = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
)
NIH_BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"


class NihExporter(Exporter):
    """NIH ChestX-ray14: Data_Entry_2017.csv, BBox_List_2017.csv, split lists, PNG images."""

    folder = "nih"
    split_names: ClassVar[dict[str, str]] = {
        "train": "train_val",
        "validate": "train_val",
        "test": "test",
    }

    def __init__(self, out_dir: Path) -> None:
        super().__init__(out_dir)
        self._entries: list[dict] = []
        self._boxes: list[dict] = []
        self._lists: dict[str, list[str]] = {"train_val": [], "test": []}

    def add(self, study: RenderedStudy) -> list[dict]:
        check_frontal(study)
        split = self._split(study)
        patient = study.patient_index + 1  # NIH patient IDs count from 1
        image_index = f"{patient:08d}_{study.study_index:03d}.png"
        labels = sorted({f.type.nih for f in study.scene.findings if f.type.nih is not None})
        height, width = study.frontal.shape
        spacing = NIH_PIXEL_SPACINGS[stable_number("nih-spacing", study.patient_index) % 3]
        view = study.scene.anatomy.view
        self._entries.append(
            dict(
                zip(
                    NIH_ENTRY_COLUMNS,
                    (
                        image_index,
                        "|".join(labels) or "No Finding",
                        study.study_index,
                        patient,
                        study.age,
                        study.scene.anatomy.sex,
                        view,
                        width,
                        height,
                        spacing,
                        spacing,
                    ),
                    strict=True,
                )
            )
        )
        for finding in study.scene.findings:
            if finding.type.nih_box is None:
                continue
            for box in finding.boxes:
                self._boxes.append(
                    {
                        "Image Index": image_index,
                        "Finding Label": finding.type.nih_box,
                        "x": two_decimals(box.x1),
                        "y": two_decimals(box.y1),
                        "w": two_decimals(box.width),
                        "h": two_decimals(box.height),
                    }
                )
        self._lists[split].append(image_index)
        path = self.base / "images" / image_index
        return self._frontal_row(
            study,
            path,
            image_id=image_index,
            study_id=image_index.removesuffix(".png"),
            patient_id=str(patient),
            split=split,
        )

    def close(self) -> None:
        entries = table(self._entries, NIH_ENTRY_COLUMNS).sort_values("Image Index")
        write_csv(self.base / "Data_Entry_2017.csv", entries)
        boxes = table(self._boxes, ("Image Index", "Finding Label", "x", "y", "w", "h"))
        # Real rows have six fields under a nine-name header: write that header verbatim.
        rows = boxes.to_csv(index=False, header=False, lineterminator="\n")
        write_text(self.base / "BBox_List_2017.csv", f"{NIH_BBOX_HEADER}\n{rows}")
        for name, images in self._lists.items():
            write_text(self.base / f"{name}_list.txt", "".join(f"{i}\n" for i in sorted(images)))
