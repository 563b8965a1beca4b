"""COVIDx CXR (CXR-2, CXR-3 and later; older releases too): split files and PNG/JPEG images.

Zhao et al. / Wang et al., COVID-Net, https://github.com/lindawangg/COVID-Net (data on Kaggle
as "COVIDx CXR-2" and later). The root holds the split files as shipped: ``train.txt``,
``test.txt`` and, from CXR-3 on, ``val.txt``; one image a line, space separated::

    419639-003251 MIDRC-RICORD-1C-419639-003251-46647-0.png positive ricord

that is ``patient_id filename class data_source`` (a few filenames hold spaces). The images
are in ``train/``, ``test/`` and ``val/`` (some releases keep the validation images in
``train/``), mixed PNG and JPEG of many sizes, from several public sources. Classes are
``positive`` / ``negative`` from CXR-2 on, ``normal`` / ``pneumonia`` / ``COVID-19`` before.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrvlp.data.base import CXRDataset
from cxrvlp.data.sample import Record
from cxrvlp.data.splits import SPLIT_NAMES, patient_split
from cxrvlp.errors import Problem

# split file -> (project split, image folders looked in, in order)
SPLIT_FILES: dict[str, tuple[str, tuple[str, ...]]] = {
    "train.txt": ("train", ("train",)),
    "val.txt": ("validate", ("val", "train")),
    "test.txt": ("test", ("test",)),
}
BINARY_LABELS = ("COVID-19",)
THREE_CLASS_LABELS = ("Normal", "Pneumonia", "COVID-19")
# Shipped class (lower-cased) -> (release, index into that release's label names).
CLASSES: dict[str, tuple[str, int]] = {
    "negative": ("binary", -1),
    "positive": ("binary", 0),
    "normal": ("three-class", 0),
    "pneumonia": ("three-class", 1),
    "covid-19": ("three-class", 2),
}
RELEASES = {"binary": "CXR-2 on", "three-class": "releases before CXR-2"}


@dataclass(frozen=True)
class _Line:
    file: str
    number: int
    patient_id: str
    filename: str
    cls: str  # as shipped
    data_source: str


class COVIDxDataset(CXRDataset):
    """One record per listed image, labels from the shipped class.

    From CXR-2 on: one label ``COVID-19`` (1 = positive). Releases before CXR-2: three
    one-hot labels ``Normal, Pneumonia, COVID-19`` and ``exclusive_labels`` is True (exactly
    one class per image: argmax accuracy applies). The release is told by the classes in the
    split files; ``label_names`` is therefore set per instance.

    ``split``: ``test`` is test.txt; ``validate`` is val.txt where shipped, otherwise a seeded
    ``val_fraction`` of train.txt's patients (ASG's protocol: 10 % of train), the rest
    ``train``; None for all. ``extra["data_source"]`` holds the source named on the line.
    """

    name = "covidx"
    label_names = BINARY_LABELS
    exclusive_labels = False

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        seed: int = 0,
        val_fraction: float = 0.1,
        **kwargs: Any,
    ):
        if split is not None and split not in SPLIT_NAMES:
            raise ValueError(f"COVIDx split must be one of {SPLIT_NAMES} or None, got {split!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"COVIDx val_fraction must be in [0, 1), got {val_fraction}")
        self.split_seed = seed
        self.val_fraction = val_fraction
        super().__init__(root, split=split, seed=seed, **kwargs)

    def _read(self) -> tuple[list[Record], list[Problem]]:
        self.require_one_of(
            tuple(SPLIT_FILES),
            "Unpack COVIDx so that train.txt and test.txt (and val.txt from CXR-3 on) sit "
            "at the root, beside the train/ and test/ image folders.",
        )
        problems: list[Problem] = []
        lines: list[_Line] = []
        for file in SPLIT_FILES:
            if (self.root / file).is_file():
                lines += self._parse(file, problems)
        lines = self._known_classes(lines, problems)
        # Per instance: the label space depends on the release found in this root.
        three_class = self._release(lines) == "three-class"
        self.label_names = THREE_CLASS_LABELS if three_class else BINARY_LABELS
        self.exclusive_labels = three_class
        lines = self._first_listings(lines, problems)

        split_of_train_patient = self._train_validate_split(lines)
        records = []
        for line in lines:
            split, folders = SPLIT_FILES[line.file]
            if line.file == "train.txt":
                split = split_of_train_patient[line.patient_id]
            index = CLASSES[line.cls.lower()][1]
            labels = np.zeros(len(self.label_names), dtype=np.float32)
            if index >= 0:
                labels[index] = 1.0
            records.append(
                Record(
                    image_id=line.filename,
                    patient_id=line.patient_id,
                    image_path=self._image_path(folders, line.filename),
                    study_id=line.filename,
                    split=split,
                    labels=labels,
                    extra={"data_source": line.data_source},
                )
            )
        return records, problems

    def _parse(self, file: str, problems: list[Problem]) -> list[_Line]:
        lines = []
        text = (self.root / file).read_text(encoding="utf-8")
        for number, raw in enumerate(text.splitlines(), start=1):
            tokens = raw.split()
            if not tokens:
                continue
            self.n_rows += 1
            if len(tokens) < 4:
                problems.append(
                    Problem(
                        f"{file} line {number}",
                        f"{len(tokens)} tokens, need 'patient_id filename class data_source'",
                    )
                )
                continue
            # Filename = everything between patient id and class: some hold spaces.
            filename = " ".join(tokens[1:-2])
            lines.append(_Line(file, number, tokens[0], filename, tokens[-2], tokens[-1]))
        return lines

    @staticmethod
    def _known_classes(lines: list[_Line], problems: list[Problem]) -> list[_Line]:
        kept = []
        for line in lines:
            if line.cls.lower() in CLASSES:
                kept.append(line)
            else:
                problems.append(
                    Problem(
                        f"{line.file} line {line.number}",
                        f"unknown class {line.cls!r} (expected one of "
                        "positive, negative, normal, pneumonia, COVID-19)",
                    )
                )
        return kept

    @staticmethod
    def _release(lines: list[_Line]) -> str:
        """binary (CXR-2 on) or three-class, from all split files together; a mix is an error."""
        first: dict[str, _Line] = {}
        for line in lines:
            release = CLASSES[line.cls.lower()][0]
            first.setdefault(release, line)
            if len(first) > 1:
                # Labels of two releases cannot share one label space: refuse, naming both.
                other = next(seen for kind, seen in first.items() if kind != release)
                raise ValueError(
                    f"COVIDx split files mix class vocabularies: {line.file} line {line.number} "
                    f"has {line.cls!r} ({RELEASES[release]}) but {other.file} line "
                    f"{other.number} has {other.cls!r} "
                    f"({RELEASES[CLASSES[other.cls.lower()][0]]}). "
                    "Unpack the split files of one release into the root."
                )
        return next(iter(first), "binary")

    @staticmethod
    def _first_listings(lines: list[_Line], problems: list[Problem]) -> list[_Line]:
        """Drops a second listing of an image in the same split file (the first one stays)."""
        first: dict[tuple[str, str], int] = {}
        kept = []
        for line in lines:
            key = (line.file, line.filename)
            if key in first:
                problems.append(
                    Problem(
                        f"{line.file} line {line.number}",
                        f"{line.filename} listed twice (first on line {first[key]})",
                    )
                )
                continue
            first[key] = line.number
            kept.append(line)
        return kept

    def _train_validate_split(self, lines: list[_Line]) -> dict[str, str]:
        """train.txt patient -> train / validate: all train while val.txt is shipped."""
        train = (line.patient_id for line in lines if line.file == "train.txt")
        patients = list(dict.fromkeys(train))
        if (self.root / "val.txt").is_file():
            return dict.fromkeys(patients, "train")
        fractions = (1.0 - self.val_fraction, self.val_fraction, 0.0)
        assigned = patient_split(patients, fractions, self.split_seed)
        # Rounding can leave a patient in the empty "test" share: it stays in train.
        return {p: "validate" if s == "validate" else "train" for p, s in assigned.items()}

    def _image_path(self, folders: tuple[str, ...], filename: str) -> Path:
        """The first folder holding the image, else the first folder (the base class then
        counts the image as missing)."""
        paths = [self.root / folder / filename for folder in folders]
        return next((path for path in paths if path.is_file()), paths[0])

    def summary(self) -> dict[str, Any]:
        summary = super().summary()
        if self.exclusive_labels:
            classes = {name: 0 for name in self.label_names}
            for record in self.records:
                classes[self.label_names[int(np.argmax(record.labels))]] += 1
        else:
            positive = sum(1 for record in self.records if record.labels[0] == 1)
            classes = {"positive": positive, "negative": len(self.records) - positive}
        summary["per_class"] = classes
        summary["per_source"] = dict(
            sorted(Counter(r.extra["data_source"] for r in self.records).items())
        )
        return summary
