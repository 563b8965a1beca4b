"""The pre-training pairs of GK-MVLP: MIMIC-CXR-JPG images with their reports, each image
joined to its 29 region boxes and each report parsed into entity existences.

``root`` holds ``mimic-cxr-jpg/``, the reports (``mimic-cxr-reports/`` or a sectioned CSV, as
:class:`MIMICCXRDataset` finds them) and, for boxes, ``chest-imagenome/``: the layout of a
``cxrvlp synth`` world and of the unpacked PhysioNet releases side by side. Boxes may come from
the detector's ``annotate`` JSONL instead. An image without boxes keeps NaN boxes (counted and
logged; the GK module then attends to the whole image).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
from cxrvlp.data.readers.imagenome import ChestImaGenomeDataset, finding_regions_of
from cxrvlp.data.readers.mimic import MIMICCXRDataset
from cxrvlp.errors import DataError, MissingFileError
from cxrvlp.text.parse import Triplet, parse_report
from cxrvlp.text.prompts import prompts_from_triplets

log = logging.getLogger(__name__)

MIMIC_FOLDER = "mimic-cxr-jpg"
IMAGENOME_FOLDER = "chest-imagenome"
IMAGENOME_SPLITS = ("train", "valid", "test")


def pretraining_dataset(
    root: str | Path,
    *,
    split: str = "train",
    boxes: str | Path | None = "imagenome",
    transform: Any = None,
    cache: Any = None,
) -> MIMICCXRDataset:
    """MIMIC-CXR pairs of one official split (``train``, ``validate``, ``test``) with boxes
    (``"imagenome"``, a detector JSONL path, or None), ``extra["entities"]``: entity name ->
    existence of the report (the parser's), the source of the ECLS targets, and
    ``extra["prompts"]``: the report's knowledge prompts (``prompts_from_triplets``) and
    ``extra["region_sentences"]["rules"]``: region -> the report sentences the parser reads a
    finding of that region from (ASG's region-sentence links). With Chest ImaGenome boxes,
    ``extra["finding_regions"]`` holds finding -> regions of its scene graph, and
    ``extra["region_sentences"]["imagenome"]`` region -> the phrases the scene graph links it to.
    """
    root = Path(root)
    mimic_root = root / MIMIC_FOLDER
    if not mimic_root.is_dir():
        raise MissingFileError(
            mimic_root,
            "MIMIC-CXR-JPG folder of the pre-training root",
            "Pass --data the folder holding mimic-cxr-jpg/, mimic-cxr-reports/ and "
            "chest-imagenome/ (a `cxrvlp synth` output has this layout).",
        )
    dataset = MIMICCXRDataset(mimic_root, split=split, transform=transform, cache=cache)
    if not dataset.records:
        raise DataError(f"{mimic_root} holds no image of split {split!r} with a report")
    annotations = _region_boxes(root, boxes)
    parsed: dict[str, dict[str, Any]] = {}
    missing_boxes = 0
    for record in tqdm(dataset.records, desc=f"reports ({split})", unit="image", disable=None):
        key = record.study_id
        if key not in parsed:
            report = parse_report(record.report) if record.report else None
            parsed[key] = {
                "entities": report.findings() if report else {},
                "prompts": prompts_from_triplets(report.triplets) if report else [],
                "rule_links": sentences_by_region(report.triplets) if report else {},
            }
        found = annotations.boxes.get(record.image_id)
        if found is None:
            missing_boxes += 1
            found = np.full((len(CHEST_IMAGENOME_REGIONS), 4), np.nan, np.float32)
        record.boxes = found
        record.box_labels = CHEST_IMAGENOME_REGIONS
        study = parsed[key]
        links = {"rules": study["rule_links"]}
        record.extra = {
            **record.extra,
            "entities": study["entities"],
            "prompts": study["prompts"],
            "region_sentences": links,
        }
        if annotations.finding_regions is not None:
            record.extra["finding_regions"] = annotations.finding_regions.get(record.image_id, {})
            phrases = annotations.region_phrases.get(record.image_id, {})
            links["imagenome"] = {
                region: [phrase for phrase, _ in pairs] for region, pairs in phrases.items()
            }
    dataset.n_missing_boxes = missing_boxes
    if boxes is not None and missing_boxes:
        log.warning(
            "%d of %d %s images have no region boxes: the GK module sees the whole image there",
            missing_boxes,
            len(dataset.records),
            split,
        )
    return dataset


class RegionAnnotations(NamedTuple):
    """Per image_id: (29, 4) boxes and, from Chest ImaGenome only, finding -> the regions its
    scene graph links it to (what grounding is scored against) and region -> its
    (phrase, attributes) pairs."""

    boxes: dict[str, np.ndarray]
    finding_regions: dict[str, dict[str, set[str]]] | None = None
    region_phrases: dict[str, dict[str, list[tuple[str, list[str]]]]] | None = None


def sentences_by_region(triplets: list[Triplet]) -> dict[str, list[str]]:
    """Region -> the distinct sentences (in report order) a parsed triplet of it comes from:
    our rules for ASG's sentence-to-region links, whatever the existence a sentence states."""
    links: dict[str, list[str]] = {}
    for triplet in triplets:
        sentences = links.setdefault(triplet.region, [])
        if triplet.sentence not in sentences:
            sentences.append(triplet.sentence)
    return links


def _region_boxes(root: Path, boxes: str | Path | None) -> RegionAnnotations:
    if boxes is None:
        return RegionAnnotations({})
    if str(boxes) == "imagenome":
        return read_imagenome(root)
    return RegionAnnotations(read_detector_boxes(Path(boxes)))


def read_imagenome(root: str | Path) -> RegionAnnotations:
    """Every split of ``root/chest-imagenome``: boxes, finding -> regions and region -> phrases
    of each image's scene graph."""
    root = Path(root)
    annotations = RegionAnnotations({}, {}, {})
    for split in IMAGENOME_SPLITS:
        reader = ChestImaGenomeDataset(
            root / IMAGENOME_FOLDER, images=root / MIMIC_FOLDER, split=split, labels_only=True
        )
        for record in reader.records:
            phrases = record.extra["region_phrases"]
            annotations.boxes[record.image_id] = record.boxes
            annotations.finding_regions[record.image_id] = finding_regions_of(phrases)
            annotations.region_phrases[record.image_id] = phrases
    return annotations


def read_detector_boxes(path: Path) -> dict[str, np.ndarray]:
    """image_id -> (29, 4) boxes from ``cxrvlp detector annotate`` output (file pixels)."""
    if not path.is_file():
        raise MissingFileError(
            path, "region boxes JSONL", "Write it with `cxrvlp detector annotate --out FILE`."
        )
    found = {}
    with path.open(encoding="utf-8") as stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                regions = row["regions"]
                found[row["image_id"]] = np.array(
                    [regions[name]["box"] for name in CHEST_IMAGENOME_REGIONS], np.float32
                )
            except (ValueError, KeyError, TypeError) as error:
                raise DataError(
                    f"{path}, line {number}: not a detector annotation row ({error}); "
                    "re-run `cxrvlp detector annotate`"
                ) from error
    return found
