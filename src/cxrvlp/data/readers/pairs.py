"""Bring your own data: a CSV of image paths and report texts (paths relative to the CSV)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxrvlp.data.base import CXRDataset
from cxrvlp.data.readers.csv_tables import is_blank, read_csv_table, require_columns
from cxrvlp.data.sample import Record
from cxrvlp.errors import MissingFileError, Problem
from cxrvlp.text.sections import ReportSections


class ImageReportPairs(CXRDataset):
    """One record per CSV row: the image at ``image_column``, the report at ``report_column``.

    Image paths are relative to the CSV's folder (absolute paths are kept). The report is one
    string, stored as ``findings`` (sections are unknown). Without ``patient_column`` each
    image is its own patient; without ``split_column`` records have no split. Rows with an
    empty report or image path are counted skips.
    """

    name = "pairs"

    def __init__(
        self,
        csv_path: str | Path,
        image_column: str = "image",
        report_column: str = "report",
        patient_column: str | None = None,
        split_column: str | None = None,
        **kwargs: Any,
    ):
        self.csv_path = Path(csv_path)
        if not self.csv_path.is_file():
            raise MissingFileError(
                self.csv_path,
                "image/report pairs CSV",
                "Pass a CSV with one row per image: an image path and its report.",
            )
        self.image_column = image_column
        self.report_column = report_column
        self.patient_column = patient_column
        self.split_column = split_column
        super().__init__(self.csv_path.parent, **kwargs)

    def _read(self) -> tuple[list[Record], list[Problem]]:
        what = "image/report pairs CSV"
        # Strings as written (an identifier "007" must stay "007"); empty cells and NaN -> NaN.
        frame = read_csv_table(self.csv_path, what, dtype=str)
        columns = [self.image_column, self.report_column]
        columns += [c for c in (self.patient_column, self.split_column) if c is not None]
        require_columns(
            frame,
            columns,
            self.csv_path,
            what,
            fix="Name the CSV's columns with the reader's column options.",
        )
        self.n_rows = len(frame)
        records, problems = [], []
        for row_number, row in enumerate(frame.to_dict("records"), start=2):  # 1 is the header
            source = f"{self.csv_path.name} row {row_number}"
            image, report = row[self.image_column], row[self.report_column]
            if is_blank(image):
                problems.append(Problem(source, f"empty {self.image_column!r}"))
                continue
            if is_blank(report):
                problems.append(Problem(source, f"empty report ({self.image_column}={image})"))
                continue
            image, text = image.strip(), report.strip()
            patient = row[self.patient_column] if self.patient_column else None
            split = row[self.split_column] if self.split_column else None
            records.append(
                Record(
                    image_id=image,
                    patient_id=image if is_blank(patient) else patient.strip(),
                    image_path=self.root / image,
                    split="" if is_blank(split) else split.strip(),
                    report=ReportSections(findings=text, text=text),
                )
            )
        return records, problems
