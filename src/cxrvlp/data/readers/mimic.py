"""MIMIC-CXR-JPG 2.0.0 images and labels, with the reports of MIMIC-CXR 2.0.0.

The JPG release holds images, metadata, the official split and two labellers' CheXpert-14
labels; the reports come from the MIMIC-CXR release (``mimic-cxr-reports.zip``), either as
the unzipped report folder (sectioned here on the fly) or as ``mimic_cxr_sectioned.csv.gz``
built once with ``cxrvlp data sections --reports DIR --out FILE``.

One record per image of the chosen views (PA and AP by default; the others are counted in
``n_filtered_views``); labels and report are the study's. Images whose study has no report,
or a report with neither findings nor impression, are counted problems.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from cxrvlp.constants import CHEXPERT_LABELS
from cxrvlp.data.base import CXRDataset
from cxrvlp.data.readers.csv_tables import read_csv_table, require_columns
from cxrvlp.data.sample import Record
from cxrvlp.errors import MissingFileError, Problem
from cxrvlp.text.sections import ReportSections, section_mimic_report

log = logging.getLogger(__name__)

PREFIX = "mimic-cxr-2.0.0"
LABEL_SOURCES = ("chexpert", "negbio")
SECTIONED_NAMES = ("mimic_cxr_sectioned.csv.gz", "mimic_cxr_sectioned.csv")
REPORTS_FOLDER = "mimic-cxr-reports"  # where the synthetic world (and many users) unzip them
SECTIONS_COMMAND = "cxrvlp data sections --reports DIR --out FILE"
_DOWNLOAD_FIX = "Download it from PhysioNet's MIMIC-CXR-JPG 2.0.0 page into the root folder."


class MIMICCXRDataset(CXRDataset):
    """MIMIC-CXR-JPG images with CheXpert-14 labels and sectioned reports.

    ``root`` is the MIMIC-CXR-JPG folder (metadata, split and label CSVs, ``.csv`` or
    ``.csv.gz``, and ``files/``). ``reports`` is the unzipped MIMIC-CXR reports folder,
    ``sectioned`` a ``mimic_cxr_sectioned.csv(.gz)``; with neither, the sectioned CSV in or
    beside ``root`` and then a sibling ``mimic-cxr-reports`` folder are looked for. In
    labels-only mode missing reports are allowed (records then carry no report).
    ``label_source`` picks the labeller: ``chexpert`` or ``negbio``.
    """

    name = "mimic-cxr"
    label_names = CHEXPERT_LABELS

    def __init__(
        self,
        root: str | Path,
        *,
        reports: str | Path | None = None,
        sectioned: str | Path | None = None,
        views: Sequence[str] | None = ("PA", "AP"),
        label_source: str = "chexpert",
        **kwargs: Any,
    ):
        if label_source not in LABEL_SOURCES:
            raise ValueError(f"label_source must be one of {LABEL_SOURCES}, got {label_source!r}")
        self.reports_path = None if reports is None else Path(reports)
        self.sectioned_path = None if sectioned is None else Path(sectioned)
        self.views = None if views is None else tuple(views)
        self.label_source = label_source
        # Reading reports costs; those of studies outside the requested split are not read.
        self._wanted_split = kwargs.get("split")
        self.n_filtered_views = 0
        super().__init__(root, **kwargs)

    # ---- reading ---------------------------------------------------------------------------
    def _read(self) -> tuple[list[Record], list[Problem]]:
        metadata = self._read_csv(
            "metadata", ["dicom_id", "subject_id", "study_id", "ViewPosition"]
        )
        splits = self._read_csv("split", ["dicom_id", "split"])
        labels = self._read_csv(self.label_source, ["study_id", *CHEXPERT_LABELS])
        self.n_rows = len(metadata)
        problems: list[Problem] = []

        split_of = dict(zip(splits["dicom_id"], splits["split"], strict=True))
        label_matrix = labels[list(CHEXPERT_LABELS)].to_numpy(np.float32)
        labels_of = dict(zip(labels["study_id"], label_matrix, strict=True))
        no_labels = np.full(len(CHEXPERT_LABELS), np.nan, np.float32)

        view = metadata["ViewPosition"].fillna("")
        if self.views is not None:
            keep = view.isin(self.views)
            self.n_filtered_views = int((~keep).sum())
            metadata, view = metadata[keep], view[keep]
        files = self.root / "files"
        records = []
        for dicom_id, subject_id, study_id, position in zip(
            metadata["dicom_id"].tolist(),
            metadata["subject_id"].tolist(),
            metadata["study_id"].tolist(),
            view.tolist(),
            strict=True,
        ):
            split = split_of.get(dicom_id)
            if split is None:
                problems.append(
                    Problem(f"{PREFIX}-split.csv: {dicom_id}", "image not in the split file")
                )
                continue
            if self._wanted_split is not None and split != self._wanted_split:
                continue
            records.append(
                Record(
                    image_id=dicom_id,
                    patient_id=subject_id,
                    study_id=study_id,
                    view=position,
                    split=split,
                    labels=labels_of.get(study_id, no_labels),
                    image_path=files
                    / f"p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg",
                )
            )
        unlabelled = len({r.study_id for r in records if r.study_id not in labels_of})
        if unlabelled:
            log.info(
                "%s: %d studies have no %s labels (all blank)",
                self.name,
                unlabelled,
                self.label_source,
            )
        return self._attach_reports(records, problems), problems

    def _read_csv(self, kind: str, columns: list[str]) -> pd.DataFrame:
        """``mimic-cxr-2.0.0-{kind}.csv`` or ``.csv.gz``; ids read as text."""
        stem = f"{PREFIX}-{kind}.csv"
        path = self.root / stem
        if not path.exists():
            path = self.require(
                f"{stem}.gz", f"Neither {stem} nor {stem}.gz is there. {_DOWNLOAD_FIX}"
            )
        what = f"MIMIC-CXR {kind} file"
        frame = read_csv_table(
            path, what, dtype={"dicom_id": str, "subject_id": str, "study_id": str, "split": str}
        )
        require_columns(frame, columns, path, what)
        return frame[columns]

    # ---- reports ---------------------------------------------------------------------------
    def _attach_reports(self, records: list[Record], problems: list[Problem]) -> list[Record]:
        source = self._report_source()
        if source is None:
            log.info("%s: labels-only and no reports found: records carry no report", self.name)
            return records
        studies = sorted({(r.patient_id, r.study_id) for r in records})
        from_csv = source.is_file()
        reports = (
            self._sectioned_reports(source, {study for _, study in studies})
            if from_csv
            else self._folder_reports(source, studies, problems)
        )

        def skip(subject_id: str, study_id: str, reason: str) -> None:
            where = (
                f"{source.name}: s{study_id}"
                if from_csv
                else str(_report_file(source, subject_id, study_id))
            )
            problems.append(Problem(where, reason))

        usable: dict[str, ReportSections] = {}
        for subject_id, study_id in studies:
            if study_id not in reports:
                skip(subject_id, study_id, "study has no report")
            elif reports[study_id] is None:
                continue  # unreadable: counted when read
            elif reports[study_id].is_empty:
                skip(subject_id, study_id, "report has neither findings nor impression")
            else:
                usable[study_id] = reports[study_id]
        kept = [record for record in records if record.study_id in usable]
        for record in kept:
            record.report = usable[record.study_id]
        return kept

    def _report_source(self) -> Path | None:
        """The sectioned CSV or the reports' ``files`` folder to read reports from."""
        if self.sectioned_path is not None:
            if not self.sectioned_path.is_file():
                raise MissingFileError(
                    self.sectioned_path,
                    "MIMIC-CXR sectioned reports",
                    f"Build it from the reports folder with `{SECTIONS_COMMAND}`.",
                )
            return self.sectioned_path
        if self.reports_path is not None:
            return _files_folder(self.reports_path)
        for folder in (self.root, self.root.parent):
            for name in SECTIONED_NAMES:
                if (folder / name).is_file():
                    return folder / name
        sibling = self.root.parent / REPORTS_FOLDER
        if (sibling / "files").is_dir():
            return sibling / "files"
        if self.labels_only:
            return None
        raise MissingFileError(
            sibling,
            "MIMIC-CXR reports (they are not part of MIMIC-CXR-JPG)",
            "Pass reports=<the unzipped mimic-cxr-reports.zip folder, holding "
            "files/p10/p10000032/s50414267.txt> or sectioned=<mimic_cxr_sectioned.csv.gz>; "
            f"build the sectioned CSV once with `{SECTIONS_COMMAND}`.",
        )

    def _sectioned_reports(self, path: Path, studies: set[str]) -> dict[str, ReportSections | None]:
        what = "MIMIC-CXR sectioned report file"
        frame = read_csv_table(path, what, dtype=str, keep_default_na=False)
        fix = f"Rebuild it with `{SECTIONS_COMMAND}`."
        require_columns(frame, ("study", "findings", "impression"), path, what, fix=fix)
        return {
            study: ReportSections(findings=findings.strip(), impression=impression.strip())
            for study, findings, impression in zip(
                frame["study"].str.removeprefix("s").tolist(),
                frame["findings"].tolist(),
                frame["impression"].tolist(),
                strict=True,
            )
            if study in studies
        }

    def _folder_reports(
        self, files: Path, studies: list[tuple[str, str]], problems: list[Problem]
    ) -> dict[str, ReportSections | None]:
        """Sectioned reports by study; None for an unreadable file (counted here)."""
        reports: dict[str, ReportSections | None] = {}
        for subject_id, study_id in tqdm(studies, desc="reports", unit="study", disable=None):
            path = _report_file(files, subject_id, study_id)
            try:
                reports[study_id] = section_mimic_report(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                continue  # a study without report: counted by the caller
            except (OSError, UnicodeDecodeError) as error:
                problems.append(Problem(str(path), f"unreadable report: {error}"))
                reports[study_id] = None
        return reports


def _report_file(files: Path, subject_id: str, study_id: str) -> Path:
    return files / f"p{subject_id[:2]}/p{subject_id}/s{study_id}.txt"


def _files_folder(reports: Path) -> Path:
    """The ``files`` folder of a reports root given as the folder above it or as itself."""
    if (reports / "files").is_dir():
        return reports / "files"
    if reports.name == "files" and reports.is_dir():
        return reports
    raise MissingFileError(
        reports / "files",
        "MIMIC-CXR reports folder",
        "Pass the unzipped mimic-cxr-reports.zip folder, the one holding "
        "files/p10/p10000032/s50414267.txt.",
    )
