"""Medical VQA: VQA-RAD (public JSON and MEVF's train/test split) and SLAKE 1.0.

One record per question. Answers are stored as the publisher gives them; accuracy compares
them through :func:`normalize_answer` (case- and whitespace-normalised), reported for OPEN,
CLOSED and all questions.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from cxrvlp.data.base import CXRDataset
from cxrvlp.data.readers.iu_xray import load_json
from cxrvlp.data.sample import Record
from cxrvlp.errors import DataError, Problem

log = logging.getLogger(__name__)

ANSWER_TYPES = ("OPEN", "CLOSED")
VQA_RAD_PUBLIC = "VQA_RAD Dataset Public.json"
VQA_RAD_SPLIT_FILES = {"train": "trainset.json", "test": "testset.json"}
VQA_RAD_IMAGES = "VQA_RAD Image Folder"
SLAKE_SPLITS = ("train", "validate", "test")
SLAKE_LANGUAGES = ("en", "zh")


def normalize_answer(text: object) -> str:
    """The form answers are compared in: lower case, single spaces, no outer whitespace."""
    return " ".join(str(text).lower().split())


def _question_record(
    entry: Any, image_path: Path, image_id: str, study_id: str, split: str
) -> Record | str:
    """A record of one question entry, or the reason it is skipped."""
    question, answer = entry.get("question"), entry.get("answer")
    if not isinstance(question, str) or not question.strip():
        return "empty question"
    if answer is None or not str(answer).strip():
        return "empty answer"
    # Stray spaces and lower case in the type ("closed ") are tolerated, nothing else.
    answer_type = str(entry.get("answer_type", "")).strip().upper()
    if answer_type not in ANSWER_TYPES:
        return f"answer_type {entry.get('answer_type')!r} is not OPEN or CLOSED"
    return Record(
        image_id=image_id,
        # Neither data set names patients: the image is the unit a split or fraction keeps.
        patient_id=image_id,
        image_path=image_path,
        study_id=study_id,
        split=split,
        question=question.strip(),
        answer=str(answer),
        answer_type=answer_type,
    )


def _entries(path: Path, what: str) -> list:
    entries = load_json(path, what)
    if not isinstance(entries, list):
        raise DataError(f"{what} {path} must be a JSON list of question entries.")
    return entries


class VQARADDataset(CXRDataset):
    """VQA-RAD questions on ``VQA_RAD Image Folder/{image_name}``.

    ``split`` ``train`` or ``test`` reads MEVF's ``trainset.json`` / ``testset.json`` (the
    split papers report on); ``all`` reads ``VQA_RAD Dataset Public.json``, every question in
    split ``all``; None reads MEVF's two files where present, else the public JSON. ``extra``
    holds qid, question_type, phrase_type and image_organ.
    """

    name = "vqa-rad"

    def __init__(self, root: str | Path, split: str | None = None, **kwargs: Any):
        if split is not None and split not in (*VQA_RAD_SPLIT_FILES, "all"):
            raise ValueError(f"VQA-RAD split must be train, test, all or None, got {split!r}")
        self.requested_split = split
        super().__init__(root, split=split, **kwargs)

    def _read(self) -> tuple[list[Record], list[Problem]]:
        files = self._question_files()
        images = self.root / VQA_RAD_IMAGES
        records, problems = [], []
        for split, path in files.items():
            entries = _entries(path, "VQA-RAD question file")
            self.n_rows += len(entries)
            for position, entry in enumerate(entries):
                source = f"{path.name}[{position}]"
                if not isinstance(entry, dict) or not str(entry.get("image_name") or "").strip():
                    problems.append(Problem(source, "entry without an image_name"))
                    continue
                image_name = str(entry["image_name"]).strip()
                record = _question_record(
                    entry, images / image_name, image_name, Path(image_name).stem, split
                )
                if isinstance(record, str):
                    problems.append(Problem(source, f"qid {entry.get('qid')}: {record}"))
                    continue
                record.extra = {
                    key: entry[key]
                    for key in ("qid", "question_type", "phrase_type", "image_organ")
                    if key in entry
                }
                records.append(record)
        return records, problems

    def _question_files(self) -> dict[str, Path]:
        """split -> file: MEVF's split where present, else the public JSON as split 'all'."""
        fix = (
            "MEVF's split files (trainset.json, testset.json) go beside the public JSON; "
            f"without them, pass split='all' (or None) to read {VQA_RAD_PUBLIC!r}."
        )
        if self.requested_split in VQA_RAD_SPLIT_FILES:
            name = VQA_RAD_SPLIT_FILES[self.requested_split]
            return {self.requested_split: self.require(name, fix)}
        mevf = any((self.root / name).is_file() for name in VQA_RAD_SPLIT_FILES.values())
        if mevf and self.requested_split is None:
            return {split: self.require(name, fix) for split, name in VQA_RAD_SPLIT_FILES.items()}
        return {
            "all": self.require(
                VQA_RAD_PUBLIC,
                f"Download VQA-RAD (the JSON and {VQA_RAD_IMAGES!r}) and unpack it into the root.",
            )
        }


class SLAKEDataset(CXRDataset):
    """SLAKE 1.0 questions on ``imgs/{img_name}``, in one language (English by default).

    ``split`` is ``train``, ``validate``, ``test`` or None for all three. Questions in the
    other language are not problems: they are counted in ``n_other_language``. ``extra``
    holds qid, location, modality, content_type and base_type.
    """

    name = "slake"

    def __init__(
        self, root: str | Path, split: str | None = None, language: str = "en", **kwargs: Any
    ):
        if split is not None and split not in SLAKE_SPLITS:
            raise ValueError(f"SLAKE split must be one of {SLAKE_SPLITS} or None, got {split!r}")
        if language not in SLAKE_LANGUAGES:
            raise ValueError(f"SLAKE language must be one of {SLAKE_LANGUAGES}, got {language!r}")
        self.requested_split = split
        self.language = language
        self.n_other_language = 0
        super().__init__(root, split=split, **kwargs)

    def _read(self) -> tuple[list[Record], list[Problem]]:
        images = self.root / "imgs"
        languages: Counter[str] = Counter()
        records, problems = [], []
        for split in (self.requested_split,) if self.requested_split else SLAKE_SPLITS:
            path = self.require(
                f"{split}.json",
                "Download SLAKE 1.0 (train.json, validate.json, test.json and imgs/) and unpack "
                "it into the root.",
            )
            entries = _entries(path, "SLAKE question file")
            self.n_rows += len(entries)
            for position, entry in enumerate(entries):
                source = f"{path.name}[{position}]"
                if not isinstance(entry, dict) or not str(entry.get("img_name") or "").strip():
                    problems.append(Problem(source, "entry without an img_name"))
                    continue
                languages[str(entry.get("q_lang"))] += 1
                if entry.get("q_lang") != self.language:
                    continue
                image_name = str(entry["img_name"]).strip()
                # img_name is "xmlab{N}/source.jpg": the folder names the image.
                study = Path(image_name).parent.name or Path(image_name).stem
                record = _question_record(entry, images / image_name, image_name, study, split)
                if isinstance(record, str):
                    problems.append(Problem(source, f"qid {entry.get('qid')}: {record}"))
                    continue
                record.extra = {
                    key: entry[key]
                    for key in ("qid", "location", "modality", "content_type", "base_type")
                    if key in entry
                }
                records.append(record)
        self.n_other_language = sum(n for lang, n in languages.items() if lang != self.language)
        if self.n_other_language:
            log.info(
                "SLAKE: kept %d %r questions; %d in other languages left out (%s)",
                languages[self.language],
                self.language,
                self.n_other_language,
                dict(languages),
            )
        return records, problems

    def summary(self) -> dict[str, Any]:
        summary = super().summary()
        summary["n_other_language"] = self.n_other_language
        return summary
