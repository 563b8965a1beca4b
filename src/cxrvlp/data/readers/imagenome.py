"""Chest ImaGenome 1.0.0 silver set: 29 anatomical region boxes and region-linked phrases.

The scene graphs annotate MIMIC-CXR images; the images themselves come from MIMIC-CXR-JPG
(the split CSVs name the DICOM, ``.../<dicom_id>.dcm``, read here as ``.jpg``). Every scene
graph of the requested split is parsed when the reader is built (one progress bar): a missing
or broken graph is a counted problem then, not a failure mid-epoch.

Boxes are the ``original_x1..original_y2`` of the 29 detection regions, in
``CHEST_IMAGENOME_REGIONS`` order, in the image's own pixels; a region the graph lacks is a
NaN row (counted in ``n_missing_regions``). ``record.extra["region_phrases"]`` maps each
region to its ``(phrase, [attribute strings])`` pairs, e.g.
``("Small left pleural effusion.", ["anatomicalfinding|yes|pleural effusion", ...])``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
from cxrvlp.data.base import CXRDataset
from cxrvlp.data.readers.csv_tables import read_csv_table, require_columns
from cxrvlp.data.sample import Record
from cxrvlp.errors import DataError, MissingFileError, Problem

log = logging.getLogger(__name__)

# The user's split names (the release's file names) -> the split names records carry.
SPLITS = {"train": "train", "valid": "validate", "validate": "validate", "test": "test"}
SPLIT_FILES = {"train": "train.csv", "validate": "valid.csv", "test": "test.csv"}
GOLD_FILE = "images_to_avoid.csv"
SCENE_GRAPH_SUFFIX = "_SceneGraph.json"
BOX_KEYS = ("original_x1", "original_y1", "original_x2", "original_y2")
_MIMIC_JPG_FOLDER = "mimic-cxr-jpg"  # sibling image root the synthetic world uses


class ChestImaGenomeDataset(CXRDataset):
    """Chest ImaGenome silver-set scene graphs joined to MIMIC-CXR-JPG images.

    ``root`` is the Chest ImaGenome folder (holding ``silver_dataset/``) or
    ``silver_dataset`` itself; ``images`` the MIMIC-CXR-JPG root (default: a
    ``mimic-cxr-jpg`` folder beside the Chest ImaGenome folder; not needed in labels-only
    mode). ``split`` is ``train``,
    ``valid`` or ``test`` (records carry ``train`` / ``validate`` / ``test``, as MIMIC-CXR
    does). With ``exclude_gold`` the gold-set images of ``images_to_avoid.csv`` are left out
    of train and valid (counted in ``n_excluded_gold``).
    """

    name = "chest-imagenome"
    label_names = ()

    def __init__(
        self,
        root: str | Path,
        *,
        images: str | Path | None = None,
        split: str | None = None,
        exclude_gold: bool = True,
        **kwargs: Any,
    ):
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of train, valid, test; got {split!r}")
        self.images_path = None if images is None else Path(images)
        self.exclude_gold = exclude_gold
        self._wanted_split = None if split is None else SPLITS[split]
        self.n_excluded_gold = 0
        self.n_missing_regions = 0
        super().__init__(root, split=self._wanted_split, **kwargs)

    # ---- reading ---------------------------------------------------------------------------
    def _read(self) -> tuple[list[Record], list[Problem]]:
        silver = "silver_dataset/" if (self.root / "silver_dataset").is_dir() else ""
        split_names = [self._wanted_split] if self._wanted_split else list(SPLIT_FILES)
        rows = pd.concat(
            [self._read_split(f"{silver}splits/{SPLIT_FILES[name]}", name) for name in split_names],
            ignore_index=True,
        )
        self.n_rows = len(rows)
        if self.exclude_gold:
            gold_file = self.require(
                f"{silver}splits/{GOLD_FILE}",
                "It ships with Chest ImaGenome; pass exclude_gold=False to use the splits as-is.",
            )
            gold_rows = pd.read_csv(gold_file, dtype=str)
            if "dicom_id" not in gold_rows.columns:
                raise DataError(f"{gold_file} lacks the dicom_id column: is it the release's?")
            gold = set(gold_rows["dicom_id"])
            avoid = rows["dicom_id"].isin(gold) & rows["split"].isin(("train", "validate"))
            self.n_excluded_gold = int(avoid.sum())
            rows = rows[~avoid]
        graphs = self._index_scene_graphs(
            self.require(
                f"{silver}scene_graph",
                "Unzip silver_dataset/scene_graph.zip of Chest ImaGenome 1.0.0 in place.",
            )
        )
        images_root = self._images_root()
        records: list[Record] = []
        problems: list[Problem] = []
        for row in tqdm(
            rows.itertuples(index=False), total=len(rows), desc="scene graphs", disable=None
        ):
            graph_path = graphs.get(row.dicom_id)
            if graph_path is None:
                problems.append(
                    Problem(
                        f"scene_graph/{row.dicom_id}{SCENE_GRAPH_SUFFIX}", "scene graph missing"
                    )
                )
                continue
            try:
                boxes, region_phrases = _parse_scene_graph(graph_path)
            except (OSError, ValueError, KeyError, TypeError) as error:
                # ValueError covers json.JSONDecodeError and UnicodeDecodeError.
                problems.append(Problem(str(graph_path), f"broken scene graph: {error}"))
                continue
            self.n_missing_regions += int(np.isnan(boxes[:, 0]).sum())
            image_path = None
            if images_root is not None:
                image_path = images_root / PurePosixPath(row.path).with_suffix(".jpg")
            records.append(
                Record(
                    image_id=row.dicom_id,
                    patient_id=row.subject_id,
                    study_id=row.study_id,
                    view=row.ViewPosition,
                    split=row.split,
                    image_path=image_path,
                    boxes=boxes,
                    box_labels=CHEST_IMAGENOME_REGIONS,
                    extra={"region_phrases": region_phrases},
                )
            )
        if self.n_missing_regions:
            log.info("%s: %d region boxes missing (NaN rows)", self.name, self.n_missing_regions)
        return records, problems

    def _read_split(self, relative: str, split: str) -> pd.DataFrame:
        path = self.require(relative, "It ships in Chest ImaGenome's silver_dataset/splits/.")
        what = "Chest ImaGenome split file"
        frame = read_csv_table(path, what, dtype=str, keep_default_na=False)
        columns = ["subject_id", "study_id", "dicom_id", "path", "ViewPosition"]
        require_columns(frame, columns, path, what)
        return frame[columns].assign(split=split)

    def _index_scene_graphs(self, folder: Path) -> dict[str, Path]:
        """dicom_id -> scene graph file, searched recursively (extractions nest differently)."""
        index = {}
        for directory, _, names in os.walk(folder):
            for name in names:
                if name.endswith(SCENE_GRAPH_SUFFIX):
                    index[name.removesuffix(SCENE_GRAPH_SUFFIX)] = Path(directory, name)
        return index

    def _images_root(self) -> Path | None:
        if self.images_path is not None:
            if not self.images_path.is_dir():
                raise MissingFileError(
                    self.images_path,
                    "MIMIC-CXR-JPG root for Chest ImaGenome",
                    "Pass images=<the MIMIC-CXR-JPG folder holding files/p10/...>.",
                )
            return self.images_path
        # Beside the Chest ImaGenome folder, whether root is that folder or its silver_dataset.
        for folder in (self.root.parent, self.root.parent.parent):
            candidate = folder / _MIMIC_JPG_FOLDER
            if (candidate / "files").is_dir():
                return candidate
        if self.labels_only:
            return None
        raise MissingFileError(
            self.root.parent / _MIMIC_JPG_FOLDER,
            "MIMIC-CXR-JPG images for Chest ImaGenome (its scene graphs hold no pixels)",
            "Pass images=<the MIMIC-CXR-JPG folder holding files/p10/...>, or labels_only=True.",
        )


def _parse_scene_graph(path: Path) -> tuple[np.ndarray, dict[str, list[tuple[str, list[str]]]]]:
    """(29, 4) boxes (NaN rows for absent regions) and the region-linked phrases."""
    graph = json.loads(path.read_text(encoding="utf-8"))
    by_region = {obj["bbox_name"]: obj for obj in graph["objects"]}
    boxes = np.full((len(CHEST_IMAGENOME_REGIONS), 4), np.nan, np.float32)
    for index, region in enumerate(CHEST_IMAGENOME_REGIONS):
        if region in by_region:
            boxes[index] = [float(by_region[region][key]) for key in BOX_KEYS]
    region_phrases: dict[str, list[tuple[str, list[str]]]] = {}
    for entry in graph.get("attributes", []):
        pairs = region_phrases.setdefault(entry["bbox_name"], [])
        # One attribute list per phrase, in the same order.
        for phrase, attributes in zip(entry["phrases"], entry["attributes"], strict=True):
            pairs.append((phrase, list(attributes)))
    return boxes, region_phrases


def finding_regions_of(region_phrases: dict) -> dict[str, set[str]]:
    """``region_phrases`` -> {finding: regions stated positive ("...|yes|finding")}."""
    found: dict[str, set[str]] = {}
    for region, pairs in region_phrases.items():
        for _, attributes in pairs:
            for attribute in attributes:
                parts = attribute.split("|")
                if len(parts) == 3 and parts[1] == "yes":
                    found.setdefault(parts[2], set()).add(region)
    return found
