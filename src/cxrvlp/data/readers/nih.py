"""NIH ChestX-ray14: ``Data_Entry_2017(_v2020).csv``, ``BBox_List_2017.csv``, split lists.

The publisher ships the PNGs in twelve archives that unpack to ``images_001/images/...`` up
to ``images_012/images/...`` (some mirrors: one ``images/`` folder); the reader finds every
image under the root's ``images*`` folders once, by name. Labels are the 14 findings as 1 / 0
(``No Finding`` is all zeros). ``BBox_List_2017.csv`` gives 984 boxes on 880 images, as
``x, y, w, h`` (read here as ``x1, y1, x2, y2``); images without a box have ``boxes`` None
(not annotated, which is not the same as "no finding").

Splits: ``train_val_list.txt`` -> ``train``, ``test_list.txt`` -> ``test`` (the official
split); without both lists, a 70/15/15 patient split (seed 0) into train / validate / test.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrvlp.constants import NIH_LABELS
from cxrvlp.data.base import CXRDataset
from cxrvlp.data.readers.csv_tables import read_csv_table, require_columns
from cxrvlp.data.sample import Record
from cxrvlp.data.splits import patient_split
from cxrvlp.errors import MissingFileError, Problem

log = logging.getLogger(__name__)

ENTRY_NAMES = (
    "Data_Entry_2017_v2020.csv",
    "Data_Entry_2017_v2020.csv.gz",
    "Data_Entry_2017.csv",
    "Data_Entry_2017.csv.gz",
)
BBOX_NAMES = ("BBox_List_2017.csv", "BBox_List_2017.csv.gz")
SPLIT_LISTS = {"train_val_list.txt": "train", "test_list.txt": "test"}
ENTRY_COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "View Position")
NO_FINDING = "No Finding"
SPLIT_SEED = 0


class NIHDataset(CXRDataset):
    """NIH ChestX-ray14 images with 14 labels, boxes where given, and the official split.

    ``root`` holds ``Data_Entry_2017.csv`` (or the ``_v2020`` file, either maybe gzipped),
    optionally ``BBox_List_2017.csv``, ``train_val_list.txt`` / ``test_list.txt``, and the
    ``images*`` folders. ``split`` is ``train`` or ``test`` (``validate`` too with the
    fallback patient split).
    """

    name = "nih"
    label_names = NIH_LABELS

    def _read(self) -> tuple[list[Record], list[Problem]]:
        entries = self._read_entries()
        self.n_rows = len(entries)
        problems: list[Problem] = []
        labels = self._labels(entries["Finding Labels"].tolist(), problems)
        boxes = self._read_boxes(set(entries["Image Index"]), problems)
        split_of = self._splits(entries)
        index = {} if self.labels_only else self._index_images()
        default_folder = self.root / "images"
        records = []
        for row, (image, patient, view) in enumerate(
            zip(
                entries["Image Index"].tolist(),
                entries["Patient ID"].tolist(),
                entries["View Position"].fillna("").tolist(),
                strict=True,
            )
        ):
            split = split_of.get(image)
            if split is None:
                problems.append(Problem(f"split lists: {image}", "image in neither split list"))
                continue
            image_boxes, box_labels = boxes.get(image, (None, ()))
            records.append(
                Record(
                    image_id=image,
                    patient_id=patient,
                    study_id=image.removesuffix(".png"),
                    view=view,
                    split=split,
                    labels=labels[row],
                    boxes=image_boxes,
                    box_labels=box_labels,
                    # An image not found keeps its expected path: the base counts it missing.
                    image_path=index.get(image) or default_folder / image,
                )
            )
        return records, problems

    def _read_entries(self) -> pd.DataFrame:
        path = next((self.root / n for n in ENTRY_NAMES if (self.root / n).is_file()), None)
        if path is None:
            raise MissingFileError(
                self.root / ENTRY_NAMES[2],
                f"{self.name} label file (or {ENTRY_NAMES[0]}, either maybe .gz)",
                "Download Data_Entry_2017.csv from the NIH ChestX-ray14 release into the root.",
            )
        what = "NIH ChestX-ray14 label file"
        frame = read_csv_table(path, what, dtype={"Image Index": str, "Patient ID": str})
        require_columns(frame, ENTRY_COLUMNS, path, what)
        return frame

    def _labels(self, findings: list[str], problems: list[Problem]) -> np.ndarray:
        column = {name: index for index, name in enumerate(NIH_LABELS)}
        labels = np.zeros((len(findings), len(NIH_LABELS)), np.float32)
        unknown: set[str] = set()
        for row, text in enumerate(findings):
            for finding in str(text).split("|"):
                finding = finding.strip()
                if finding in column:
                    labels[row, column[finding]] = 1.0
                elif finding != NO_FINDING:
                    unknown.add(finding)
        for finding in sorted(unknown):
            problems.append(Problem("Finding Labels", f"unknown label {finding!r} ignored"))
        return labels

    def _read_boxes(
        self, images: set[str], problems: list[Problem]
    ) -> dict[str, tuple[np.ndarray, tuple[str, ...]]]:
        path = next((self.root / n for n in BBOX_NAMES if (self.root / n).is_file()), None)
        if path is None:
            log.info("%s: no %s in %s: records carry no boxes", self.name, BBOX_NAMES[0], self.root)
            return {}
        # The header "Image Index,Finding Label,Bbox [x,y,w,h],,," names the four numbers
        # with commas inside: read the six fields by position, not by name.
        frame = pd.read_csv(
            path,
            header=None,
            skiprows=1,
            usecols=range(6),
            names=["image", "label", "x", "y", "w", "h"],
            dtype={"image": str, "label": str},
        )
        grouped: dict[str, tuple[list[list[float]], list[str]]] = {}
        for image, label, x, y, w, h in frame.itertuples(index=False):
            if image not in images:
                problems.append(Problem(f"{path.name}: {image}", "box for an image not listed"))
                continue
            if not all(np.isfinite((x, y, w, h))) or w <= 0 or h <= 0:
                problems.append(Problem(f"{path.name}: {image}", f"bad box {(x, y, w, h)}"))
                continue
            image_boxes, image_labels = grouped.setdefault(image, ([], []))
            image_boxes.append([x, y, x + w, y + h])
            image_labels.append(label)
        return {
            image: (np.asarray(image_boxes, np.float32), tuple(image_labels))
            for image, (image_boxes, image_labels) in grouped.items()
        }

    def _splits(self, entries: pd.DataFrame) -> dict[str, str]:
        present = {name: (self.root / name).is_file() for name in SPLIT_LISTS}
        if all(present.values()):
            split_of = {}
            for name, split in SPLIT_LISTS.items():
                for line in (self.root / name).read_text().splitlines():
                    if line.strip():
                        split_of[line.strip()] = split
            return split_of
        if any(present.values()):
            absent = next(name for name, there in present.items() if not there)
            raise MissingFileError(
                self.root / absent,
                f"{self.name} split list",
                "The official split needs both train_val_list.txt and test_list.txt.",
            )
        log.info(
            "%s: no official split lists in %s: 70/15/15 patient split (seed %d)",
            self.name,
            self.root,
            SPLIT_SEED,
        )
        by_patient = patient_split(entries["Patient ID"], seed=SPLIT_SEED)
        return {
            image: by_patient[patient]
            for image, patient in zip(
                entries["Image Index"].tolist(), entries["Patient ID"].tolist(), strict=True
            )
        }

    def _index_images(self) -> dict[str, Path]:
        """Image name -> file, over every ``images*`` folder of the root (walked once)."""
        index: dict[str, Path] = {}
        for top in sorted(self.root.glob("images*")):
            if not top.is_dir():
                continue
            for directory, _, names in os.walk(top):
                for name in names:
                    if name.endswith(".png"):
                        index.setdefault(name, Path(directory, name))
        return index
