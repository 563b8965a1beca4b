"""The pre-training index: the annotated records of ``pretraining_dataset`` stored once.

Parsing 227k MIMIC-CXR reports and 240k Chest ImaGenome scene graphs takes many minutes at
every start; the index keeps what that parsing yields per record (ids, labels, report
sections, entities, prompts, sentence links, boxes, scene-graph findings and phrases) in one
``.npz`` file read back in seconds. Only arrays and JSON text go in (``allow_pickle=False``):
loading an index never runs code.

An index is used only when its key matches: the index format, cxrvlp's and the parser's
versions, the split, the box source and a digest of (path, size, mtime_ns) of every source
file (label CSVs, report files, scene graphs, the parser's knowledge files and code). Any
other index is rebuilt; an unreadable one is rebuilt with a warning. The file is written to a
temporary name and renamed, so a crash mid-write leaves no half index behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from cxrvlp.constants import CHEST_IMAGENOME_REGIONS, CHEXPERT_LABELS
from cxrvlp.data.sample import Record, relative_or_absolute
from cxrvlp.errors import Problem
from cxrvlp.text.prompts import KnowledgePrompt
from cxrvlp.text.sections import ReportSections

log = logging.getLogger(__name__)

INDEX_FORMAT = 2  # bump when the stored fields or their encoding change
INDEX_FOLDER = ".cxrvlp-index"  # default home, inside the pre-training root
# What a truncated or altered file raises from np.load, zipfile, json or the unpacking.
_UNREADABLE = (OSError, ValueError, KeyError, TypeError, IndexError, EOFError, zipfile.BadZipFile)
_PROMPT_FIELDS = tuple(field.name for field in dataclasses.fields(KnowledgePrompt))


class LoadedIndex(NamedTuple):
    records: list[Record]
    problems: list[Problem]
    n_rows: int
    n_filtered_views: int
    unboxed_images: frozenset[str]  # image ids the box source has no boxes for


def index_file(folder: Path, split: str, boxes: str | Path | None) -> Path:
    """The index of one split and box source inside ``folder``."""
    if boxes is None:
        source = "noboxes"
    elif str(boxes) == "imagenome":
        source = "imagenome"
    else:  # a detector JSONL: one index per file
        digest = hashlib.sha256(str(Path(boxes).resolve()).encode()).hexdigest()[:12]
        source = f"detector-{digest}"
    return folder / f"pretraining-{split}-{source}.npz"


def source_digest(paths: Iterable[Path]) -> str:
    """sha256 of (path, size, mtime_ns) of every file given or found under a folder given."""
    digest = hashlib.sha256()
    for path in paths:
        for file, size, mtime_ns in sorted(_file_stats(path)):
            digest.update(f"{file}\0{size}\0{mtime_ns}\n".encode())
    return digest.hexdigest()


def _file_stats(path: Path) -> Iterable[tuple[str, int, int]]:
    if path.is_file():
        stat = path.stat()
        yield str(path), stat.st_size, stat.st_mtime_ns
        return
    pending = [str(path)]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif entry.is_file():
                    stat = entry.stat()
                    yield entry.path, stat.st_size, stat.st_mtime_ns


def write_index(
    path: Path,
    key: dict[str, Any],
    mimic_root: Path,
    records: list[Record],
    problems: list[Problem],
    counts: dict[str, int],
    unboxed_images: set[str],
) -> None:
    """Store annotated records (as ``pretraining_dataset`` makes them) under ``key``."""
    studies: dict[str, Any] = {}
    images: dict[str, Any] = {}
    # Prompts come from {entity, position, exist} templates: a few thousand distinct ones
    # across all reports, stored once each and referred to by their row.
    prompt_rows: dict[tuple[Any, ...], int] = {}
    rows = []
    for record in records:
        extra = record.extra
        if record.study_id not in studies:
            report = record.report
            studies[record.study_id] = [
                None if report is None else [report.findings, report.impression, report.text],
                extra["entities"],
                [_prompt_row(prompt, prompt_rows) for prompt in extra["prompts"]],
                extra["region_sentences"]["rules"],
            ]
        if "finding_regions" in extra:
            images[record.image_id] = [
                {finding: sorted(regions) for finding, regions in extra["finding_regions"].items()},
                extra["region_sentences"]["imagenome"],
            ]
        image_path = record.image_path
        rows.append(
            [
                record.image_id,
                record.patient_id,
                record.study_id,
                record.view,
                record.split,
                None if image_path is None else relative_or_absolute(image_path, mimic_root),
            ]
        )
    no_labels = np.full(len(CHEXPERT_LABELS), np.nan, np.float32)
    no_boxes = np.full((len(CHEST_IMAGENOME_REGIONS), 4), np.nan, np.float32)
    manifest = {
        "key": key,
        "counts": counts,
        "n_records": len(records),
        "imagenome": bool(images),
    }
    arrays = {
        "manifest": _text(manifest),
        "records": _text(rows),
        "studies": _text(studies),
        "prompts": _text([list(values) for values in prompt_rows]),
        "images": _text(images),
        "problems": _text([[p.source, p.reason] for p in problems]),
        "unboxed": _text(sorted(unboxed_images)),
        "labels": np.array(
            [no_labels if r.labels is None else r.labels for r in records], np.float32
        ).reshape(len(records), len(CHEXPERT_LABELS)),
        "boxes": np.array(
            [no_boxes if r.boxes is None else r.boxes for r in records], np.float32
        ).reshape(len(records), len(CHEST_IMAGENOME_REGIONS), 4),
    }
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with temporary.open("wb") as stream:
            np.savez(stream, **arrays)
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        log.warning(
            "pre-training index not written to %s (%s): the next start parses again. "
            "Pass data.index=<a writable folder> (or index= in Python) to keep one.",
            path,
            error,
        )
        return
    log.info(
        "pre-training index built: %s (%d images, %d studies, %d scene graphs)",
        path,
        len(records),
        len(studies),
        len(images),
    )


def load_index(path: Path, key: dict[str, Any], mimic_root: Path) -> LoadedIndex | None:
    """The records stored at ``path`` if its key is ``key``; None when absent, stale or
    unreadable (the caller then rebuilds it)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            manifest = _json(stored["manifest"])
            if manifest["key"] != key:
                log.info("pre-training index %s is stale (sources or versions changed)", path)
                return None
            loaded = _records(stored, manifest, mimic_root)
    except _UNREADABLE as e:
        log.warning("pre-training index %s is unreadable (%s): rebuilding it", path, e)
        return None
    log.info(
        "pre-training index loaded: %s (%d images, %d studies)",
        path,
        len(loaded.records),
        len({r.study_id for r in loaded.records}),
    )
    return loaded


def _records(stored: Any, manifest: dict[str, Any], mimic_root: Path) -> LoadedIndex:
    rows = _json(stored["records"])
    labels = stored["labels"]
    boxes = stored["boxes"]
    if not len(rows) == len(labels) == len(boxes) == manifest["n_records"]:
        raise ValueError("record, label and box counts differ")
    prompts_stored = [_prompt(values) for values in _json(stored["prompts"])]
    studies = {
        study: (
            None if sections is None else ReportSections(*sections),
            entities,
            [prompts_stored[row] for row in prompts],
            rule_links,
        )
        for study, (sections, entities, prompts, rule_links) in _json(stored["studies"]).items()
    }
    images = _json(stored["images"])
    records = []
    for index, (image_id, patient_id, study_id, view, split, image_path) in enumerate(rows):
        report, entities, prompts, rule_links = studies[study_id]
        links: dict[str, Any] = {"rules": rule_links}
        extra: dict[str, Any] = {
            "entities": entities,
            "prompts": prompts,
            "region_sentences": links,
        }
        if manifest["imagenome"]:
            finding_regions, phrases = images.get(image_id, ({}, {}))
            extra["finding_regions"] = {f: set(regions) for f, regions in finding_regions.items()}
            links["imagenome"] = phrases
        records.append(
            Record(
                image_id=image_id,
                patient_id=patient_id,
                study_id=study_id,
                view=view,
                split=split,
                labels=labels[index],
                image_path=None if image_path is None else mimic_root / image_path,
                boxes=boxes[index],
                box_labels=CHEST_IMAGENOME_REGIONS,
                report=report,
                extra=extra,
            )
        )
    counts = manifest["counts"]
    return LoadedIndex(
        records=records,
        problems=[Problem(source, reason) for source, reason in _json(stored["problems"])],
        n_rows=counts["n_rows"],
        n_filtered_views=counts["n_filtered_views"],
        unboxed_images=frozenset(_json(stored["unboxed"])),
    )


def _prompt_row(prompt: KnowledgePrompt, rows: dict[tuple[Any, ...], int]) -> int:
    """The row of ``prompt``'s field values in ``rows``, added when new."""
    values = tuple(getattr(prompt, name) for name in _PROMPT_FIELDS)
    return rows.setdefault(values, len(rows))


def _prompt(values: list[Any]) -> KnowledgePrompt:
    fields = dict(zip(_PROMPT_FIELDS, values, strict=True))
    fields["regions"] = tuple(fields["regions"])
    return KnowledgePrompt(**fields)


def _text(value: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(value, ensure_ascii=False).encode(), np.uint8)


def _json(array: np.ndarray) -> Any:
    return json.loads(array.tobytes().decode())
