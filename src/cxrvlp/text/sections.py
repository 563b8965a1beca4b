"""MIMIC-CXR report sectioning: FINDINGS / IMPRESSION (+ COMPARISON, last paragraph).

Follows the rules of the MIT-LCP ``create_section_files.py`` script (written anew here):

* a heading is a run of words at the start of a line followed by a colon (``FINDINGS:``,
  ``IMPRESSION:``, ``FINDINGS AND IMPRESSION:``); uppercase headings of any name count, and
  the known names below count in any case;
* heading variants and frequent misspellings are mapped to one name (``CONCLUSION`` and
  ``FINDINGS AND IMPRESSION`` are impressions, ``FINIDNGS`` is findings, ...);
* when a heading occurs twice, its last occurrence wins;
* a report with neither findings nor impression gets its last paragraph as impression.

Section texts have their line wrapping undone (whitespace collapsed to single spaces).
``write_sectioned_csv`` turns the report folder of ``mimic-cxr-reports.zip`` into
``mimic_cxr_sectioned.csv.gz``, the file the MIMIC-CXR reader can use instead of the folder.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from tqdm import tqdm

from cxrvlp.errors import MissingFileError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportSections:
    """A report as sections; ``text`` is the whole report as shipped (may be empty)."""

    findings: str = ""
    impression: str = ""
    text: str = ""

    @property
    def findings_and_impression(self) -> str:
        return " ".join(part for part in (self.findings, self.impression) if part).strip()

    @property
    def is_empty(self) -> bool:
        return not (self.findings.strip() or self.impression.strip())


SECTIONED_COLUMNS = ("study", "impression", "findings", "last_paragraph", "comparison")

# Heading variants seen in MIMIC-CXR reports -> the section they stand for. Names not listed
# keep their own (lower-cased) name and never count as findings or impression.
_HEADING_ALIASES: dict[str, str] = {
    **dict.fromkeys(
        (
            "findings",
            "finding",
            "findins",
            "findngs",
            "findnings",
            "finidngs",
            "findgings",
            "findindgs",
            "reference findings",
            "chest, two views",
            "chest, two views, pa and lateral",
        ),
        "findings",
    ),
    **dict.fromkeys(
        (
            "impression",
            "impressions",
            "impresson",
            "impresion",
            "impession",
            "imprssion",
            "imprression",
            "impressoin",
            "imoression",
            "imperssion",
            "mpression",
            "conclusion",
            "conclusions",
            "findings and impression",
            "impression and findings",
            "findings/impression",
            "impression/findings",
            "findings / impression",
            "findings/ impression",
        ),
        "impression",
    ),
    **dict.fromkeys(
        (
            "comparison",
            "comparisons",
            "comparison exam",
            "comparison film",
            "comparision",
            "comparisions",
            "comparsion",
            "comparrison",
            "reference exam",
        ),
        "comparison",
    ),
}

# At a line start: up to ~8 words of letters and ",()/&'-", then a colon. The word cap keeps
# ordinary sentences that happen to hold a colon from being read as headings.
_HEADING_CANDIDATE = re.compile(
    r"^[ \t]*(?P<name>[A-Za-z][A-Za-z ,()/&'-]{0,60}?)[ \t]*:", re.MULTILINE
)
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


class ParsedReport(NamedTuple):
    """All sections of one report; texts with whitespace collapsed."""

    findings: str
    impression: str
    comparison: str
    last_paragraph: str
    sections: dict[str, str]  # normalised heading -> text ("preamble": text before any)


def _normalise_heading(name: str) -> str:
    name = " ".join(name.lower().split())
    return _HEADING_ALIASES.get(name, name)


def _is_heading(name: str) -> bool:
    words = name.split()
    if not words or len(words) > 8:
        return False
    return name.isupper() or " ".join(name.lower().split()) in _HEADING_ALIASES


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _last_paragraph(text: str) -> str:
    paragraphs = [p for p in _BLANK_LINE.split(text) if p.strip()]
    if not paragraphs:
        return ""
    last = paragraphs[-1]
    # A paragraph that opens with a heading ("IMPRESSION: ...") keeps only its text.
    match = _HEADING_CANDIDATE.match(last)
    if match and _is_heading(match.group("name")):
        last = last[match.end() :]
    return _collapse(last)


def parse_mimic_report(text: str) -> ParsedReport:
    """Split a MIMIC-CXR report into its sections (see the module docstring for the rules)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    headings = [m for m in _HEADING_CANDIDATE.finditer(text) if _is_heading(m.group("name"))]
    sections: dict[str, str] = {}
    preamble_end = headings[0].start() if headings else len(text)
    if text[:preamble_end].strip():
        sections["preamble"] = _collapse(text[:preamble_end])
    for number, heading in enumerate(headings):
        body_end = headings[number + 1].start() if number + 1 < len(headings) else len(text)
        # A later heading of the same name replaces an earlier one (the script's rule).
        sections[_normalise_heading(heading.group("name"))] = _collapse(
            text[heading.end() : body_end]
        )
    last_paragraph = _last_paragraph(text)
    findings = sections.get("findings", "")
    impression = sections.get("impression", "")
    if not findings and not impression:
        impression = last_paragraph
    return ParsedReport(
        findings=findings,
        impression=impression,
        comparison=sections.get("comparison", ""),
        last_paragraph=last_paragraph,
        sections=sections,
    )


def section_mimic_report(text: str) -> ReportSections:
    """FINDINGS and IMPRESSION of a MIMIC-CXR report; ``text`` is kept as given."""
    parsed = parse_mimic_report(text)
    return ReportSections(findings=parsed.findings, impression=parsed.impression, text=text)


@dataclass
class SectioningStats:
    """What ``write_sectioned_csv`` did; unreadable reports are named, never silently lost."""

    n_reports: int = 0  # report files found
    n_written: int = 0  # rows written (readable reports, empty ones included)
    n_empty: int = 0  # written, but neither findings nor impression
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    @property
    def n_unreadable(self) -> int:
        return len(self.unreadable)


def find_report_files(reports_root: str | Path) -> list[Path]:
    """``files/p*/p*/s*.txt`` under the reports root (or its ``files`` folder), sorted."""
    root = Path(reports_root)
    files_dir = root / "files" if (root / "files").is_dir() else root
    if not files_dir.is_dir() or files_dir.name != "files":
        raise MissingFileError(
            root / "files",
            "MIMIC-CXR reports folder",
            "Unzip mimic-cxr-reports.zip (MIMIC-CXR 2.0.0) and pass the folder that holds "
            "files/p10/p10000032/s50414267.txt.",
        )
    return sorted(files_dir.glob("p*/p*/s*.txt"))


def write_sectioned_csv(
    reports_root: str | Path, out_path: str | Path, *, progress: bool = True
) -> SectioningStats:
    """Section every report under ``reports_root`` into ``out_path`` (CSV, gzip if ``.gz``).

    Columns: study (``s50414267``), impression, findings, last_paragraph, comparison; rows in
    path order. The gzip stream carries no time or file name, so the same reports give the
    same bytes. The file is written to a temporary name and renamed when complete.
    """
    import pandas as pd  # here, not at the top: parsing one report needs no pandas

    paths = find_report_files(reports_root)
    stats = SectioningStats(n_reports=len(paths))
    if not paths:
        raise MissingFileError(
            Path(reports_root) / "files" / "p10",
            "MIMIC-CXR report files (files/p*/p*/s*.txt)",
            "The reports folder holds no report; unzip mimic-cxr-reports.zip there.",
        )
    rows = []
    for path in tqdm(paths, desc="sections", unit="report", disable=not progress):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            stats.unreadable.append((str(path), str(error)))
            continue
        parsed = parse_mimic_report(text)
        if not (parsed.findings or parsed.impression):
            stats.n_empty += 1
        rows.append(
            (
                path.stem,
                parsed.impression,
                parsed.findings,
                parsed.last_paragraph,
                parsed.comparison,
            )
        )
    stats.n_written = len(rows)
    _write_csv_atomically(pd.DataFrame(rows, columns=list(SECTIONED_COLUMNS)), Path(out_path))
    for file, reason in stats.unreadable[:20]:
        log.warning("sections: unreadable report %s: %s", file, reason)
    log.info(
        "sections: %d reports, %d written (%d with neither findings nor impression), "
        "%d unreadable -> %s",
        stats.n_reports,
        stats.n_written,
        stats.n_empty,
        stats.n_unreadable,
        out_path,
    )
    return stats


def _write_csv_atomically(frame: pd.DataFrame, out_path: Path) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.")
    try:
        with os.fdopen(handle, "wb") as raw:
            if out_path.suffix == ".gz":
                # filename="" and mtime=0: no name or time in the header, same bytes every run.
                with (
                    gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as compressed,
                    io.TextIOWrapper(compressed, encoding="utf-8", newline="") as text,
                ):
                    frame.to_csv(text, index=False, lineterminator="\n")
            else:
                with io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
                    frame.to_csv(text, index=False, lineterminator="\n")
        os.replace(temporary, out_path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
