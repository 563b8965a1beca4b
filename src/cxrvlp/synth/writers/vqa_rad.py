"""Synthetic studies and their questions as VQA-RAD."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from cxrvlp.synth.study import RenderedStudy
from cxrvlp.synth.writers.base import (
    Exporter,
    IdAllocator,
    balanced_splits,
    check_frontal,
    patient_key,
    write_json,
)

VQA_RAD_IMAGES = "VQA_RAD Image Folder"


class VqaRadExporter(Exporter):
    """VQA-RAD: the public JSON, MEVF's trainset/testset split and the image folder."""

    folder = "vqa_rad"
    split_names: ClassVar[dict[str, str]] = {"train": "train", "validate": "train", "test": "test"}

    def __init__(self, out_dir: Path) -> None:
        super().__init__(out_dir)
        self._images = IdAllocator(100, 99_900, "VQA-RAD image")
        self._entries: dict[str, list[dict]] = {"train": [], "test": []}
        self._next_qid = 1

    def add(self, study: RenderedStudy) -> list[dict]:
        check_frontal(study)
        split = self._split(study)
        image_name = (
            f"synpic{self._images.claim('vqa_rad', study.patient_index, study.study_index)}.jpg"
        )
        for qa in study.questions:
            self._entries[split].append(
                {
                    "qid": self._next_qid,
                    "image_name": image_name,
                    "image_organ": "CHEST",
                    "answer": qa.answer,
                    "answer_type": qa.answer_type,
                    "question_type": qa.question_type,
                    "question": qa.question,
                    "phrase_type": "freeform" if split == "train" else "test_freeform",
                }
            )
            self._next_qid += 1
        path = self.base / VQA_RAD_IMAGES / image_name
        return self._frontal_row(
            study,
            path,
            image_id=image_name,
            study_id=image_name.removesuffix(".jpg"),
            patient_id=patient_key(study),
            split=split,
        )

    def close(self) -> None:
        entries = balanced_splits(self.folder, self._entries)
        write_json(self.base / "trainset.json", entries["train"])
        write_json(self.base / "testset.json", entries["test"])
        everything = sorted(entries["train"] + entries["test"], key=lambda e: e["qid"])
        write_json(self.base / "VQA_RAD Dataset Public.json", everything)
