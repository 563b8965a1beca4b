"""What every writer shares: the Exporter base class, identifiers drawn from hashes, splits by
patient, and file writers that give the same bytes for the same input."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from PIL import Image

from cxrvlp.synth.anatomy import Box
from cxrvlp.synth.questions import balance_closed_answers
from cxrvlp.synth.study import RenderedStudy

WORLD_SPLITS = ("train", "validate", "test")
# Pixel spacings (mm) of NIH ChestX-ray14 images, which RSNA and SIIM are drawn from too.
NIH_PIXEL_SPACINGS = (0.143, 0.139, 0.168)


class ExportError(OSError):
    """A file of an export could not be written; the message names the file."""


# ---- deterministic identifiers -------------------------------------------------------------------


def stable_digest(*parts: object) -> bytes:
    return hashlib.sha256("\x1f".join(str(part) for part in parts).encode()).digest()


def stable_number(*parts: object) -> int:
    return int.from_bytes(stable_digest(*parts)[:8], "big")


class IdAllocator:
    """Unique integers in [first, first + count) drawn from hashes; collisions take the next."""

    def __init__(self, first: int, count: int, what: str) -> None:
        self.first, self.count, self.what = first, count, what
        self._used: set[int] = set()

    def claim(self, *parts: object) -> int:
        if len(self._used) >= self.count:
            raise ValueError(f"more than {self.count} {self.what} identifiers requested")
        offset = stable_number(*parts) % self.count
        while offset in self._used:
            offset = (offset + 1) % self.count
        self._used.add(offset)
        return self.first + offset


class PatientSplits:
    """Splits are by patient in every real release: a patient keeps its first study's split."""

    def __init__(self) -> None:
        self._splits: dict[int, str] = {}

    def __call__(self, study: RenderedStudy) -> str:
        if study.split not in WORLD_SPLITS:
            raise ValueError(
                f"study {study.patient_index}/{study.study_index} of cohort {study.cohort!r} "
                f"has split {study.split!r}; expected one of {WORLD_SPLITS}"
            )
        return self._splits.setdefault(study.patient_index, study.split)


# ---- file writing --------------------------------------------------------------------------------


def write_bytes(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as error:
        raise ExportError(f"cannot write {path}: {error.strerror or error}") from error


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, value: object) -> None:
    write_text(path, json.dumps(value, ensure_ascii=False, indent=1) + "\n")


def write_csv(path: Path, frame: pd.DataFrame, *, index: bool = False) -> None:
    data = frame.to_csv(index=index, lineterminator="\n").encode("utf-8")
    # gzip.compress writes neither a file name nor, with mtime=0, a time: same input, same bytes.
    write_bytes(path, gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


def pixels8(image: np.ndarray) -> np.ndarray:
    if image.ndim != 2:
        raise ValueError(f"expected a (height, width) image, got shape {image.shape}")
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_image(path: Path, image: np.ndarray) -> None:
    """8-bit grayscale JPEG (quality 95) or PNG (no time chunk), chosen by the suffix."""
    buffer = io.BytesIO()
    picture = Image.fromarray(pixels8(image))
    if path.suffix == ".png":
        picture.save(buffer, format="PNG")
    else:
        picture.save(buffer, format="JPEG", quality=95)
    write_bytes(path, buffer.getvalue())


def two_decimals(value: float) -> float:
    return round(float(value), 2)


def table(rows: list[dict], columns: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(columns))


# ---- the base class ------------------------------------------------------------------------------


class Exporter(ABC):
    """Shared plumbing: the world root, per-patient splits and truth rows."""

    folder: ClassVar[str]  # the dataset's folder under the world root
    split_names: ClassVar[dict[str, str]]  # world split -> the dataset's own split name

    def __init__(self, out_dir: Path) -> None:
        self.root = Path(out_dir)
        self.base = self.root / self.folder
        self._patient_split = PatientSplits()

    @abstractmethod
    def add(self, study: RenderedStudy) -> list[dict]:
        """Write the study's images (and report files); return one truth row per image."""

    @abstractmethod
    def close(self) -> None:
        """Write the index files (CSV / JSON) of everything added."""

    def _split(self, study: RenderedStudy) -> str:
        return self.split_names[self._patient_split(study)]

    def _frontal_row(self, study: RenderedStudy, path: Path, **fields: Any) -> list[dict]:
        """Write the study's frontal image to ``path``; its one truth row (see ``_truth``),
        with the scene's view and region boxes, which are the frontal image's."""
        save_image(path, study.frontal)
        scene = study.scene
        return [
            self._truth(
                study,
                path,
                study.frontal,
                view=scene.anatomy.view,
                regions=scene.region_boxes(),
                **fields,
            )
        ]

    def _truth(
        self,
        study: RenderedStudy,
        path: Path,
        image: np.ndarray,
        *,
        image_id: str,
        study_id: str,
        patient_id: str,
        view: str,
        split: str,
        regions: dict[str, Box] | None,
    ) -> dict:
        """One truth row; ``regions`` None marks a lateral image (no boxes in its frame)."""
        findings = [finding.to_json() for finding in study.scene.findings]
        if regions is None:
            findings = [{**finding, "boxes": []} for finding in findings]
        return {
            "dataset": self.folder,
            "image_id": image_id,
            "path": path.relative_to(self.root).as_posix(),
            "study_id": study_id,
            "patient_id": patient_id,
            "view": view,
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "split": split,
            "findings": findings,
            "regions": None if regions is None else {n: b.as_list() for n, b in regions.items()},
        }


def check_frontal(study: RenderedStudy) -> None:
    """Boxes are in the scene's pixel frame: the frontal image must have the scene's size."""
    anatomy = study.scene.anatomy
    if study.frontal.shape != (anatomy.height, anatomy.width):
        raise ValueError(
            f"study {study.patient_index}/{study.study_index} of cohort {study.cohort!r}: "
            f"frontal image is {study.frontal.shape}, its scene is "
            f"{(anatomy.height, anatomy.width)} (height, width)"
        )


def patient_key(study: RenderedStudy) -> str:
    """Truth patient key for formats that name no patient (IU X-Ray, VQA-RAD, SLAKE)."""
    return f"patient{study.patient_index:05d}"


# ---- question sets (VQA-RAD, SLAKE) --------------------------------------------------------------


def balanced_splits(cohort: str, entries: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Each split's entries less what `balance_closed_answers` drops from its English ones.

    Split by split: balancing the cohort as a whole would leave each text's surplus answer in
    the training split as its deficit in the test split, where a text prior would score below
    chance. SLAKE's Chinese copies stay as they are: there are too few per text to balance (a
    small world would lose them all), and readers keep one language, English by default.
    """
    balanced = {}
    for split, split_entries in entries.items():
        english = [entry for entry in split_entries if entry.get("q_lang", "en") == "en"]
        kept = balance_closed_answers(
            english, rank=lambda entry: stable_number(cohort, entry["qid"])
        )
        dropped = {entry["qid"] for entry in english} - {entry["qid"] for entry in kept}
        balanced[split] = [entry for entry in split_entries if entry["qid"] not in dropped]
    return balanced
