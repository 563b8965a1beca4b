"""The pre-training pairs of GK-MVLP: MIMIC-CXR-JPG images with their reports, each image
joined to its 29 region boxes and each report parsed into entity existences.

``root`` holds ``mimic-cxr-jpg/``, the reports (``mimic-cxr-reports/`` or a sectioned CSV, as
:class:`MIMICCXRDataset` finds them) and, for boxes, ``chest-imagenome/``: the layout of a
``cxrvlp synth`` world and of the unpacked PhysioNet releases side by side. Boxes may come from
the detector's ``annotate`` JSONL instead. An image without boxes keeps NaN boxes (counted and
logged; the GK module then attends to the whole image).
"""

from __future__ import annotations

import inspect
import json
import logging
import multiprocessing
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

import cxrvlp
from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
from cxrvlp.data.pretraining_index import (
    INDEX_FOLDER,
    INDEX_FORMAT,
    index_file,
    load_index,
    source_digest,
    write_index,
)
from cxrvlp.data.readers.imagenome import ChestImaGenomeDataset, finding_regions_of
from cxrvlp.data.readers.mimic import PREFIX, MIMICCXRDataset
from cxrvlp.data.sample import Record
from cxrvlp.errors import DataError, MissingFileError, Problem
from cxrvlp.text.parse import ENTITIES_PATH, PARSER_VERSION, Triplet, parse_report
from cxrvlp.text.prompts import KnowledgePrompt, prompts_from_triplets
from cxrvlp.text.sections import ReportSections, section_mimic_report

log = logging.getLogger(__name__)

MIMIC_FOLDER = "mimic-cxr-jpg"
IMAGENOME_FOLDER = "chest-imagenome"
IMAGENOME_SPLITS = ("train", "valid", "test")
_PARALLEL_FROM = 2000  # reports below which forking workers costs more than it saves
# The code whose output the index stores: an edit to it (or this module) makes it stale.
_PARSING_CODE = (
    parse_report,
    prompts_from_triplets,
    section_mimic_report,
    MIMICCXRDataset,
    ChestImaGenomeDataset,
    write_index,
)


def pretraining_dataset(
    root: str | Path,
    *,
    split: str = "train",
    boxes: str | Path | None = "imagenome",
    transform: Any = None,
    cache: Any = None,
    index: str | Path | None = "auto",
    workers: int | None = None,
) -> PretrainingDataset:
    """MIMIC-CXR pairs of one official split (``train``, ``validate``, ``test``) with boxes
    (``"imagenome"``, a detector JSONL path, or None), ``extra["entities"]``: entity name ->
    existence of the report (the parser's), the source of the ECLS targets, and
    ``extra["prompts"]``: the report's knowledge prompts (``prompts_from_triplets``) and
    ``extra["region_sentences"]["rules"]``: region -> the report sentences the parser reads a
    finding of that region from (ASG's region-sentence links). With Chest ImaGenome boxes,
    ``extra["finding_regions"]`` holds finding -> regions of its scene graph, and
    ``extra["region_sentences"]["imagenome"]`` region -> the phrases the scene graph links it to.

    ``index`` is the folder of the pre-training index (``"auto"``: ``ROOT/.cxrvlp-index``;
    None: parse every start), see :mod:`cxrvlp.data.pretraining_index`; ``workers``
    processes parse the reports when it is built (default: up to 4 CPUs).
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
    folder = root / INDEX_FOLDER if str(index) == "auto" else index
    dataset = PretrainingDataset(
        root,
        boxes=boxes,
        index=None if folder is None else index_file(Path(folder), split, boxes),
        workers=workers or min(4, os.cpu_count() or 1),
        split=split,
        transform=transform,
        cache=cache,
    )
    if not dataset.records:
        raise DataError(f"{mimic_root} holds no image of split {split!r} with a report")
    missing_boxes = sum(record.image_id in dataset.unboxed_images for record in dataset.records)
    dataset.n_missing_boxes = missing_boxes
    if boxes is not None and missing_boxes:
        log.warning(
            "%d of %d %s images have no region boxes: the GK module sees the whole image there",
            missing_boxes,
            len(dataset.records),
            split,
        )
    return dataset


class PretrainingDataset(MIMICCXRDataset):
    """MIMIC-CXR images whose records carry the pre-training annotations (see
    :func:`pretraining_dataset`), read from the index when it is current."""

    def __init__(
        self,
        root: Path,
        *,
        boxes: str | Path | None,
        index: Path | None,
        workers: int = 1,
        **kwargs: Any,
    ):
        self.pretraining_root = root
        self.boxes_source = boxes
        self.index_path = index
        self.workers = workers
        self.unboxed_images: frozenset[str] = frozenset()
        self.n_missing_boxes = 0
        super().__init__(root / MIMIC_FOLDER, **kwargs)

    def _read(self) -> tuple[list[Record], list[Problem]]:
        # The key is taken before reading: a file changed meanwhile makes the index stale.
        key = None if self.index_path is None else self._index_key()
        if key is not None:
            loaded = load_index(self.index_path, key, self.root)
            if loaded is not None:
                self.n_rows, self.n_filtered_views = loaded.n_rows, loaded.n_filtered_views
                self.unboxed_images = loaded.unboxed_images
                return loaded.records, loaded.problems
        records, problems = super()._read()
        annotations = _region_boxes(self.pretraining_root, self.boxes_source)
        self.unboxed_images = frozenset(annotate(records, annotations, self.workers))
        if key is not None:
            counts = {"n_rows": self.n_rows, "n_filtered_views": self.n_filtered_views}
            write_index(
                self.index_path, key, self.root, records, problems, counts, self.unboxed_images
            )
        return records, problems

    def _index_key(self) -> dict[str, Any]:
        """What the index must match: versions, split, box source and the sources' stats."""
        sources = [*sorted(self.root.glob(f"{PREFIX}-*.csv*"))]
        report_source = self._report_source()
        if report_source is not None:
            sources.append(report_source)
        if self.boxes_source is not None:
            imagenome = str(self.boxes_source) == "imagenome"
            sources.append(
                self.pretraining_root / IMAGENOME_FOLDER if imagenome else Path(self.boxes_source)
            )
        # The parser's rules and vocabulary: an edit changes what parsing yields.
        sources += [Path(inspect.getfile(code)) for code in _PARSING_CODE]
        sources.append(Path(__file__))
        sources.append(ENTITIES_PATH.parent)
        return {
            "format": INDEX_FORMAT,
            "cxrvlp": cxrvlp.__version__,
            "parser": PARSER_VERSION,
            "split": self._wanted_split,
            "boxes": None if self.boxes_source is None else str(self.boxes_source),
            "sources": source_digest(path for path in sources if path.exists()),
        }


def annotate(records: list[Record], annotations: RegionAnnotations, workers: int = 1) -> set[str]:
    """Attach boxes, entities, prompts and sentence links to ``records`` (in place); returns
    the image ids ``annotations`` has no boxes for (they keep NaN boxes)."""
    reports = {record.study_id: record.report for record in records}
    parsed = dict(zip(reports, _parse_all(list(reports.values()), workers), strict=True))
    unboxed = set()
    for record in records:
        found = annotations.boxes.get(record.image_id)
        if found is None:
            unboxed.add(record.image_id)
            found = np.full((len(CHEST_IMAGENOME_REGIONS), 4), np.nan, np.float32)
        record.boxes = found
        record.box_labels = CHEST_IMAGENOME_REGIONS
        entities, prompts, rule_links = parsed[record.study_id]
        links = {"rules": rule_links}
        record.extra = {
            **record.extra,
            "entities": entities,
            "prompts": prompts,
            "region_sentences": links,
        }
        if annotations.finding_regions is not None:
            record.extra["finding_regions"] = annotations.finding_regions.get(record.image_id, {})
            phrases = annotations.region_phrases.get(record.image_id, {})
            links["imagenome"] = {
                region: [phrase for phrase, _ in pairs] for region, pairs in phrases.items()
            }
    return unboxed


StudyAnnotations = tuple[dict[str, str], list[KnowledgePrompt], dict[str, list[str]]]


def _parse_all(reports: list[ReportSections | None], workers: int) -> list[StudyAnnotations]:
    """Entities, prompts and rule links of each report, in order; forked workers share the
    parse for large sets (our own processes: their pickled results are trusted)."""
    progress = {"total": len(reports), "desc": "reports", "unit": "study", "disable": None}
    if workers <= 1 or len(reports) < _PARALLEL_FROM:
        return [_parse_study(report) for report in tqdm(reports, **progress)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return list(tqdm(pool.imap(_parse_study, reports, chunksize=256), **progress))


def _parse_study(report: ReportSections | None) -> StudyAnnotations:
    if not report:
        return {}, [], {}
    parsed = parse_report(report)
    return (
        parsed.findings(),
        prompts_from_triplets(parsed.triplets),
        sentences_by_region(parsed.triplets),
    )


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
