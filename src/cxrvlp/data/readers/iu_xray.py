"""IU X-Ray (Indiana University chest X-rays): R2Gen's ``annotation.json`` and Open-i XML.

R2Gen's layout is ``annotation.json`` = ``{"train": [...], "val": [...], "test": [...]}``
with entries ``{id, report, image_path: [frontal, lateral], split}`` and the images under
``images/``; MIMIC-CXR in R2Gen's layout adds ``study_id, subject_id``. The original
Open-i release is one XML file per report (``ecgen-radiology/<n>.xml``), read by
:class:`OpenIReports` from the folder or from the ``.tgz`` archive as downloaded.
"""

from __future__ import annotations

import json
import logging
import tarfile
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrvlp.data.base import CXRDataset
from cxrvlp.data.sample import Record
from cxrvlp.errors import DataError, MissingFileError, Problem
from cxrvlp.text.sections import ReportSections

log = logging.getLogger(__name__)

ANNOTATION_FILE = "annotation.json"
IMAGE_FOLDER = "images"
R2GEN_SPLITS = ("train", "val", "test")
OPENI_SECTIONS = ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION")


def load_json(path: Path, what: str) -> Any:
    """A JSON file's content, or a DataError naming the file and where it breaks."""
    try:
        with path.open("rb") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(
            f"{what} {path} is not valid JSON (line {error.lineno}, column {error.colno}: "
            f"{error.msg}). Re-download it; it must be the publisher's file, unmodified."
        ) from error
    except UnicodeDecodeError as error:
        raise DataError(f"{what} {path} is not UTF-8 text ({error}). Re-download it.") from error


class IUXrayDataset(CXRDataset):
    """One record per report: the first image as the image, the others as ``extra_paths``.

    ``split`` is ``train``, ``val``, ``test`` (R2Gen's names) or None for all. The report is
    stored as ``findings`` because R2Gen keeps findings and impression in one string.
    With ``two_views`` (R2Gen's IU setting) an entry must list two images, else it is a
    counted skip; without, only the first image is used. Empty reports are counted skips.
    """

    name = "iu-xray"

    def __init__(
        self, root: str | Path, split: str | None = None, two_views: bool = True, **kwargs: Any
    ):
        if split is not None and split not in R2GEN_SPLITS:
            raise ValueError(f"R2Gen split must be one of {R2GEN_SPLITS} or None, got {split!r}")
        self.two_views = two_views
        super().__init__(root, split=split, **kwargs)

    def _read(self) -> tuple[list[Record], list[Problem]]:
        path = self.require(
            ANNOTATION_FILE,
            "Download R2Gen's IU X-Ray release (annotation.json and images/) and unpack it "
            "into the root.",
        )
        what = "R2Gen annotation file"
        annotation = load_json(path, what)
        if not isinstance(annotation, dict) or not all(
            isinstance(entries, list) for entries in annotation.values()
        ):
            raise DataError(
                f"{what} {path} must be an object of lists ({{'train': [...], 'val': [...], "
                "'test': [...]}}), as R2Gen writes it."
            )
        images = self.root / IMAGE_FOLDER
        records, problems = [], []
        for split, entries in annotation.items():
            self.n_rows += len(entries)
            for position, entry in enumerate(entries):
                source = f"{path.name} {split}[{position}]"
                record = self._record(entry, split, images)
                if isinstance(record, str):
                    problems.append(Problem(source, record))
                else:
                    records.append(record)
        return records, problems

    def _record(self, entry: Any, split: str, images: Path) -> Record | str:
        """The entry's record, or the reason it is skipped."""
        if not isinstance(entry, dict) or not entry.get("id"):
            return "entry without an id"
        study = str(entry["id"])
        paths = entry.get("image_path")
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
            return f"{study}: no image_path list"
        if self.two_views and len(paths) < 2:
            return f"{study}: one view listed, two_views needs two"
        report = entry.get("report")
        if not isinstance(report, str) or not report.strip():
            return f"{study}: empty report"
        text = report.strip()
        image_paths = [images / p for p in paths[: 2 if self.two_views else 1]]
        # IU names no patient: its report number (CXR2384 of CXR2384_IM-0942) stands in.
        patient = str(entry.get("subject_id", study.split("_")[0]))
        return Record(
            image_id=paths[0],
            patient_id=patient,
            image_path=image_paths[0],
            study_id=str(entry.get("study_id", study)),
            split=split,
            report=ReportSections(findings=text, text=text),
            extra_paths=tuple(image_paths[1:]),
            extra={"id": study},
        )


# ---- Open-i XML ----------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenIReport:
    """One Open-i report: sections, MeSH terms and the images it belongs to."""

    report_id: str  # uId, e.g. "CXR1"
    file_name: str  # e.g. "1.xml"
    sections: ReportSections  # findings, impression; text = all sections with headings
    indication: str
    comparison: str
    mesh_major: tuple[str, ...]  # manually assigned MeSH terms ("normal" for normal studies)
    mesh_automatic: tuple[str, ...]  # terms found by MTI, where any
    image_ids: tuple[str, ...]  # parentImage ids, e.g. "CXR1_1_IM-0001-3001"


class OpenIReports:
    """The Open-i IU X-Ray reports from ``ecgen-radiology/`` or its ``.tgz`` archive.

    ``path`` is the folder of XML files (or a folder holding ``ecgen-radiology/``) or the
    ``NLMCXR_reports.tgz`` archive. A file that is not valid XML is a counted problem.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise MissingFileError(
                self.path,
                "Open-i reports (ecgen-radiology folder or NLMCXR_reports.tgz)",
                "Download NLMCXR_reports.tgz from Open-i and pass the archive or its folder.",
            )
        self.reports: list[OpenIReport] = []
        self.problems: list[Problem] = []
        for name, data in self._xml_files():
            try:
                self.reports.append(parse_openi_report(data, Path(name).name))
            except (ElementTree.ParseError, ValueError) as error:
                self.problems.append(Problem(name, f"not an Open-i report: {error}"))
        for problem in self.problems[:20]:
            log.warning("Open-i: skipped %s", problem)

    def _xml_files(self) -> Iterator[tuple[str, bytes]]:
        if self.path.is_dir():
            folder = self.path / "ecgen-radiology"
            folder = folder if folder.is_dir() else self.path
            for file in sorted(folder.glob("*.xml"), key=_report_order):
                yield file.name, file.read_bytes()
            return
        try:
            with tarfile.open(self.path) as archive:
                members = [m for m in archive if m.isfile() and m.name.endswith(".xml")]
                for member in sorted(members, key=lambda m: _report_order(Path(m.name))):
                    handle = archive.extractfile(member)
                    if handle is not None:
                        yield member.name, handle.read()
        except (tarfile.TarError, EOFError, OSError) as error:
            raise DataError(
                f"Open-i archive {self.path} cannot be read ({error}). Re-download "
                "NLMCXR_reports.tgz, or pass the unpacked ecgen-radiology folder."
            ) from error

    def __len__(self) -> int:
        return len(self.reports)

    def __iter__(self) -> Iterator[OpenIReport]:
        return iter(self.reports)

    def summary(self) -> dict[str, Any]:
        return {
            "n_reports": len(self.reports),
            "n_with_findings": sum(1 for r in self.reports if r.sections.findings),
            "n_with_impression": sum(1 for r in self.reports if r.sections.impression),
            "n_images": sum(len(r.image_ids) for r in self.reports),
            "n_problems": len(self.problems),
        }


def _report_order(path: Path) -> tuple[int, str]:
    """1.xml, 2.xml, ..., 10.xml: numeric order where the stem is a number."""
    return (int(path.stem), "") if path.stem.isdigit() else (1 << 62, path.stem)


def parse_openi_report(data: bytes, file_name: str) -> OpenIReport:
    """One ``ecgen-radiology`` XML file; ValueError when it is XML but not a report."""
    root = ElementTree.fromstring(data)
    uid = root.find("uId")
    if uid is None or not uid.get("id"):
        raise ValueError("no <uId id=...>")
    sections = {
        element.get("Label", "").upper(): " ".join((element.text or "").split())
        for element in root.iter("AbstractText")
    }
    mesh = root.find("MeSH")

    def terms(tag: str) -> tuple[str, ...]:
        found = [] if mesh is None else mesh.findall(tag)
        return tuple(t.text.strip() for t in found if t.text and t.text.strip())

    text = "\n".join(
        f"{label}: {sections[label]}" for label in OPENI_SECTIONS if sections.get(label)
    )
    return OpenIReport(
        report_id=uid.get("id"),
        file_name=file_name,
        sections=ReportSections(
            findings=sections.get("FINDINGS", ""),
            impression=sections.get("IMPRESSION", ""),
            text=text,
        ),
        indication=sections.get("INDICATION", ""),
        comparison=sections.get("COMPARISON", ""),
        mesh_major=terms("major"),
        mesh_automatic=terms("automatic"),
        image_ids=tuple(
            image.get("id") for image in root.findall("parentImage") if image.get("id")
        ),
    )
