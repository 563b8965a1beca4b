"""Synthetic studies and their questions as SLAKE 1.0, in English and Chinese."""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

from cxrvlp.synth.scene import COVID_NAME
from cxrvlp.synth.study import RenderedStudy
from cxrvlp.synth.writers.base import (
    WORLD_SPLITS,
    Exporter,
    IdAllocator,
    balanced_splits,
    check_frontal,
    patient_key,
    stable_number,
    write_json,
)

# SLAKE ships Chinese copies of its questions; these translate the closed presence questions.
CHINESE_FINDINGS = {
    "pleural effusion": "胸腔积液",
    "effusion": "胸腔积液",
    "consolidation": "实变",
    "pneumonia": "肺炎",
    "lung opacity": "肺部阴影",
    "opacity": "肺部阴影",
    "atelectasis": "肺不张",
    "pulmonary edema": "肺水肿",
    "edema": "肺水肿",
    "pneumothorax": "气胸",
    "cardiomegaly": "心脏增大",
    "enlarged cardiomediastinum": "纵隔增宽",
    "nodule": "结节",
    "mass": "肿块",
    "fracture": "骨折",
    "endotracheal tube": "气管插管",
    "enteric tube": "胃管",
    "central venous catheter": "中心静脉导管",
    "pacemaker": "起搏器",
    COVID_NAME: "新型冠状病毒肺炎",
}
CHINESE_ANSWERS = {"yes": "是", "no": "否"}


class SlakeExporter(Exporter):
    """SLAKE 1.0: train/validate/test JSON and imgs/xmlab{N}/source.jpg, English and Chinese."""

    folder = "slake"
    split_names: ClassVar[dict[str, str]] = {s: s for s in WORLD_SPLITS}
    chinese_every = 2  # one study in two gets a Chinese copy of a closed question

    def __init__(self, out_dir: Path) -> None:
        super().__init__(out_dir)
        self._images = IdAllocator(0, 100_000, "SLAKE image")
        self._entries: dict[str, list[dict]] = {name: [] for name in WORLD_SPLITS}
        self._next_qid = 0

    def add(self, study: RenderedStudy) -> list[dict]:
        check_frontal(study)
        split = self._split(study)
        image_id = self._images.claim("slake", study.patient_index, study.study_index)
        image_name = f"xmlab{image_id}/source.jpg"
        questions = [(qa.question, qa.answer, "en", qa) for qa in study.questions]
        if (
            stable_number("slake-zh", study.patient_index, study.study_index) % self.chinese_every
            == 0
        ):
            questions += _chinese_copy(study)
        for question, answer, language, qa in questions:
            self._entries[split].append(
                {
                    "img_id": image_id,
                    "img_name": image_name,
                    "question": question,
                    "answer": answer,
                    "q_lang": language,
                    "location": qa.location,
                    "modality": "X-Ray",
                    "answer_type": qa.answer_type,
                    "base_type": "vqa",
                    "content_type": qa.content_type,
                    "qid": self._next_qid,
                }
            )
            self._next_qid += 1
        path = self.base / "imgs" / image_name
        return self._frontal_row(
            study,
            path,
            image_id=image_name,
            study_id=f"xmlab{image_id}",
            patient_id=patient_key(study),
            split=split,
        )

    def close(self) -> None:
        for split, entries in balanced_splits(self.folder, self._entries).items():
            write_json(self.base / f"{split}.json", entries)


def _chinese_copy(study: RenderedStudy) -> list[tuple]:
    """A Chinese copy of the study's first closed question that names a known finding."""
    names = sorted(CHINESE_FINDINGS, key=len, reverse=True)  # "pleural effusion" before "effusion"
    for qa in study.questions:
        answer = CHINESE_ANSWERS.get(qa.answer.strip().lower())
        if qa.answer_type != "CLOSED" or answer is None:
            continue
        text = qa.question.lower()
        for name in names:
            if re.search(rf"\b{re.escape(name)}\b", text):
                return [(f"这张图片中有{CHINESE_FINDINGS[name]}吗?", answer, "zh", qa)]
    return []
