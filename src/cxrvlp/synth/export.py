"""Exporters that write synthetic studies in the real dataset layouts of DATA_FORMATS.md.

One exporter per cohort, each a world of its own patients under one root folder:

    exporter = EXPORTERS["mimic"](out_dir)
    for study in studies:            # one at a time, in order: images go to disk at once
        truth_rows += exporter.add(study)
    exporter.close()                 # index files (CSV / JSON) are written here

Images are written at the exact size of their arrays, so every box of the truth rows is in
the exported image's pixel coordinates. Chest ImaGenome's ``x1, y1, x2, y2, width, height``
are those pixel coordinates scaled to a 224 x 224 image (``x * 224 / W``, ``y * 224 / H``),
as the real release scales them; ``original_*`` are the pixel coordinates themselves.

Everything is deterministic: identifiers come from hashes of (cohort, patient, study), a
collision moves an identifier to the next free value, question ids count in arrival order,
gzip carries no time or file name, PNG no time chunk, DICOM no timestamp and only UIDs
derived from the study.

Truth rows (one per exported image) carry ``split`` in the dataset's own split names
(MIMIC ``validate``, CheXpert ``valid``, NIH ``train_val``, COVIDx ``val``, ...; RSNA and SIIM
ship everything as ``train``). Splits are per patient: a patient keeps the split of its first
study. SIIM rows add ``pneumothorax_pixels``, the size of the image's exported mask.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import json
import re
import uuid
from abc import ABC, abstractmethod
from pathlib import Path, PurePosixPath
from typing import ClassVar

import numpy as np
import pandas as pd
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from cxrvlp.constants import CHEST_IMAGENOME_REGIONS, CHEXPERT_CSV_LABELS, CHEXPERT_LABELS
from cxrvlp.synth.anatomy import Box
from cxrvlp.synth.questions import balance_closed_answers
from cxrvlp.synth.render import pneumothorax_mask
from cxrvlp.synth.report import Mention, Report
from cxrvlp.synth.scene import COVID_NAME, FINDING_TYPES
from cxrvlp.synth.study import RenderedStudy

WORLD_SPLITS = ("train", "validate", "test")
IMAGENOME_SIZE = 224

MIMIC_METADATA_COLUMNS = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
MIMIC_SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
MIMIC_LABEL_COLUMNS = ("subject_id", "study_id", *CHEXPERT_LABELS)
IMAGENOME_SPLIT_COLUMNS = ("subject_id", "study_id", "dicom_id", "path", "ViewPosition")
IMAGENOME_SPLIT_NAMES = {"train": "train", "validate": "valid", "test": "test"}
RSNA_LABEL_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
RSNA_CLASS_COLUMNS = ("patientId", "class")
# The real NIH headers, as shipped: the bracketed names hold commas, so a CSV reader splits
# them into several columns, and BBox_List_2017.csv ends its header with three empty names.
NIH_ENTRY_COLUMNS = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
)
NIH_BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
NIH_PIXEL_SPACINGS = (0.143, 0.139, 0.168)
CHEXPERT_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_CSV_LABELS)
CHEXPERT_ROOT = "CheXpert-v1.0-small"
VQA_RAD_IMAGES = "VQA_RAD Image Folder"
SIIM_RLE_HEADER = "ImageId, EncodedPixels"  # with the leading space, as shipped
SIIM_IMAGES = "dicom-images-train"
# COVIDx gathers public sets; each patient comes from one (its data_source), in turn.
COVIDX_SOURCES = ("bimcv", "ricord", "rsna", "sirm")

# SLAKE ships Chinese copies of its questions; these translate the closed presence questions.
CHINESE_FINDINGS = {
    "pleural effusion": "胸腔积液",
    "effusion": "胸腔积液",
    "consolidation": "实变",
    "pneumonia": "肺炎",
    "lung opacity": "肺部阴影",
    "opacity": "肺部阴影",
    "atelectasis": "肺不张",
    "pulmonary edema": "肺水肿",
    "edema": "肺水肿",
    "pneumothorax": "气胸",
    "cardiomegaly": "心脏增大",
    "enlarged cardiomediastinum": "纵隔增宽",
    "nodule": "结节",
    "mass": "肿块",
    "fracture": "骨折",
    "endotracheal tube": "气管插管",
    "enteric tube": "胃管",
    "central venous catheter": "中心静脉导管",
    "pacemaker": "起搏器",
    COVID_NAME: "新型冠状病毒肺炎",
}
CHINESE_ANSWERS = {"yes": "是", "no": "否"}


class ExportError(OSError):
    """A file of an export could not be written; the message names the file."""


# ---- deterministic identifiers -------------------------------------------------------------------


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\x1f".join(str(part) for part in parts).encode()).digest()


def _number(*parts: object) -> int:
    return int.from_bytes(_digest(*parts)[:8], "big")


class _IdAllocator:
    """Unique integers in [first, first + count) drawn from hashes; collisions take the next."""

    def __init__(self, first: int, count: int, what: str) -> None:
        self.first, self.count, self.what = first, count, what
        self._used: set[int] = set()

    def claim(self, *parts: object) -> int:
        if len(self._used) >= self.count:
            raise ValueError(f"more than {self.count} {self.what} identifiers requested")
        offset = _number(*parts) % self.count
        while offset in self._used:
            offset = (offset + 1) % self.count
        self._used.add(offset)
        return self.first + offset


class _PatientSplits:
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


def _write_bytes(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as error:
        raise ExportError(f"cannot write {path}: {error.strerror or error}") from error


def _write_text(path: Path, text: str) -> None:
    _write_bytes(path, text.encode("utf-8"))


def _write_json(path: Path, value: object) -> None:
    _write_text(path, json.dumps(value, ensure_ascii=False, indent=1) + "\n")


def _write_csv(path: Path, frame: pd.DataFrame, *, index: bool = False) -> None:
    data = frame.to_csv(index=index, lineterminator="\n").encode("utf-8")
    # gzip.compress writes neither a file name nor, with mtime=0, a time: same input, same bytes.
    _write_bytes(path, gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


def _pixels8(image: np.ndarray) -> np.ndarray:
    if image.ndim != 2:
        raise ValueError(f"expected a (height, width) image, got shape {image.shape}")
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _save_image(path: Path, image: np.ndarray) -> None:
    """8-bit grayscale JPEG (quality 95) or PNG (no time chunk), chosen by the suffix."""
    buffer = io.BytesIO()
    picture = Image.fromarray(_pixels8(image))
    if path.suffix == ".png":
        picture.save(buffer, format="PNG")
    else:
        picture.save(buffer, format="JPEG", quality=95)
    _write_bytes(path, buffer.getvalue())


def _round(value: float) -> float:
    return round(float(value), 2)


def _frame(rows: list[dict], columns: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(columns))


# ---- the exporters -------------------------------------------------------------------------------


class Exporter(ABC):
    """Shared plumbing: the world root, per-patient splits and truth rows."""

    folder: ClassVar[str]  # the dataset's folder under the world root
    split_names: ClassVar[dict[str, str]]  # world split -> the dataset's own split name

    def __init__(self, out_dir: Path) -> None:
        self.root = Path(out_dir)
        self.base = self.root / self.folder
        self._patient_split = _PatientSplits()

    @abstractmethod
    def add(self, study: RenderedStudy) -> list[dict]:
        """Write the study's images (and report files); return one truth row per image."""

    @abstractmethod
    def close(self) -> None:
        """Write the index files (CSV / JSON) of everything added."""

    def _split(self, study: RenderedStudy) -> str:
        return self.split_names[self._patient_split(study)]

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


def _check_frontal(study: RenderedStudy) -> None:
    """Boxes are in the scene's pixel frame: the frontal image must have the scene's size."""
    anatomy = study.scene.anatomy
    if study.frontal.shape != (anatomy.height, anatomy.width):
        raise ValueError(
            f"study {study.patient_index}/{study.study_index} of cohort {study.cohort!r}: "
            f"frontal image is {study.frontal.shape}, its scene is "
            f"{(anatomy.height, anatomy.width)} (height, width)"
        )


def _patient_key(study: RenderedStudy) -> str:
    """Truth patient key for formats that name no patient (IU X-Ray, VQA-RAD, SLAKE)."""
    return f"patient{study.patient_index:05d}"


# ---- MIMIC-CXR-JPG, MIMIC-CXR reports and Chest ImaGenome ----------------------------------------


class MimicExporter(Exporter):
    """MIMIC-CXR-JPG 2.0.0, the MIMIC-CXR 2.0.0 reports and Chest ImaGenome's silver set."""

    folder = "mimic-cxr-jpg"
    split_names: ClassVar[dict[str, str]] = {s: s for s in WORLD_SPLITS}
    gold_every = 5  # one test patient in five goes to the gold set (images_to_avoid.csv)

    def __init__(self, out_dir: Path) -> None:
        super().__init__(out_dir)
        self.reports = self.root / "mimic-cxr-reports"
        self.imagenome = self.root / "chest-imagenome" / "silver_dataset"
        self._subject_ids = _IdAllocator(10_000_000, 10_000_000, "MIMIC subject")
        self._study_ids = _IdAllocator(50_000_000, 10_000_000, "MIMIC study")
        self._subjects: dict[int, int] = {}
        self._gold: dict[int, bool] = {}
        self._metadata: list[dict] = []
        self._split_rows: list[dict] = []
        self._labels: list[dict] = []
        self._imagenome_splits: dict[str, list[dict]] = {
            name: [] for name in IMAGENOME_SPLIT_NAMES.values()
        }
        self._gold_rows: list[dict] = []

    def add(self, study: RenderedStudy) -> list[dict]:
        _check_frontal(study)
        split = self._split(study)
        subject_id = self._subject_id(study)
        study_id = self._study_ids.claim("mimic", study.patient_index, study.study_index)
        folder = f"files/p{str(subject_id)[:2]}/p{subject_id}/s{study_id}"
        date, time = _mimic_date_time(study)
        frontal_view = study.scene.anatomy.view
        views = [(frontal_view, study.frontal)]
        if study.lateral is not None:
            views.append(("LATERAL", study.lateral))
        procedure = _mimic_procedure(frontal_view, study.lateral is not None)
        regions = study.scene.region_boxes()
        rows = []
        for view, image in views:
            dicom_id = _dicom_id(study, view)
            path = self.base / folder / f"{dicom_id}.jpg"
            _save_image(path, image)
            self._metadata.append(
                {
                    "dicom_id": dicom_id,
                    "subject_id": subject_id,
                    "study_id": study_id,
                    "PerformedProcedureStepDescription": procedure,
                    "ViewPosition": view,
                    "Rows": image.shape[0],
                    "Columns": image.shape[1],
                    "StudyDate": date,
                    "StudyTime": time,
                    "ProcedureCodeSequence_CodeMeaning": procedure,
                    "ViewCodeSequence_CodeMeaning": _MIMIC_VIEW_MEANINGS[view],
                    "PatientOrientationCodeSequence_CodeMeaning": (
                        "Recumbent" if view == "AP" else "Erect"
                    ),
                }
            )
            self._split_rows.append(
                {
                    "dicom_id": dicom_id,
                    "study_id": study_id,
                    "subject_id": subject_id,
                    "split": split,
                }
            )
            rows.append(
                self._truth(
                    study,
                    path,
                    image,
                    image_id=dicom_id,
                    study_id=str(study_id),
                    patient_id=str(subject_id),
                    view=view,
                    split=split,
                    regions=None if view == "LATERAL" else regions,
                )
            )
        labels = study.report.chexpert_labels()
        self._labels.append(
            {"subject_id": subject_id, "study_id": study_id}
            | {name: labels.get(name) for name in CHEXPERT_LABELS}
        )
        _write_text(self.reports / f"{folder}.txt", study.report.text())
        self._add_imagenome(
            study, split, regions, subject_id, study_id, folder, rows[0]["image_id"]
        )
        return rows

    def close(self) -> None:
        order = ["subject_id", "study_id"]
        metadata = _frame(self._metadata, MIMIC_METADATA_COLUMNS)
        _write_csv(
            self.base / "mimic-cxr-2.0.0-metadata.csv.gz",
            metadata.sort_values(order, kind="stable"),
        )
        splits = _frame(self._split_rows, MIMIC_SPLIT_COLUMNS).sort_values(order, kind="stable")
        _write_csv(self.base / "mimic-cxr-2.0.0-split.csv.gz", splits)
        labels = _frame(self._labels, MIMIC_LABEL_COLUMNS).sort_values(order, kind="stable")
        labels[list(CHEXPERT_LABELS)] = labels[list(CHEXPERT_LABELS)].astype("float64")
        # MIMIC ships labels of two labellers; ours both read the same report truth.
        for labeller in ("chexpert", "negbio"):
            _write_csv(self.base / f"mimic-cxr-2.0.0-{labeller}.csv.gz", labels)
        order.append("dicom_id")
        for name, rows in self._imagenome_splits.items():
            frame = _frame(rows, IMAGENOME_SPLIT_COLUMNS).sort_values(order, kind="stable")
            _write_csv(
                self.imagenome / "splits" / f"{name}.csv", frame.reset_index(drop=True), index=True
            )
        gold = _frame(self._gold_rows, IMAGENOME_SPLIT_COLUMNS).sort_values(order, kind="stable")
        _write_csv(self.imagenome / "splits" / "images_to_avoid.csv", gold)

    def _subject_id(self, study: RenderedStudy) -> int:
        if study.patient_index not in self._subjects:
            self._subjects[study.patient_index] = self._subject_ids.claim(
                "mimic", study.patient_index
            )
        return self._subjects[study.patient_index]

    def _is_gold(self, study: RenderedStudy, split: str) -> bool:
        """The second test patient and every ``gold_every``-th after it form the gold set.

        Not the first: a tiny world keeps at least one test patient outside the gold set,
        which readers that drop images_to_avoid.csv everywhere would otherwise lose.
        """
        if split != "test":
            return False
        if study.patient_index not in self._gold:
            self._gold[study.patient_index] = len(self._gold) % self.gold_every == 1
        return self._gold[study.patient_index]

    def _add_imagenome(
        self,
        study: RenderedStudy,
        split: str,
        regions: dict[str, Box],
        subject_id: int,
        study_id: int,
        folder: str,
        dicom_id: str,
    ) -> None:
        """Chest ImaGenome covers frontal images only: one scene graph and split row each."""
        view = study.scene.anatomy.view
        row = {
            "subject_id": subject_id,
            "study_id": study_id,
            "dicom_id": dicom_id,
            # The real release names the MIMIC-CXR DICOM; readers of the JPG release swap .jpg.
            "path": f"{folder}/{dicom_id}.dcm",
            "ViewPosition": view,
        }
        self._imagenome_splits[IMAGENOME_SPLIT_NAMES[split]].append(row)
        if self._is_gold(study, split):
            self._gold_rows.append(row)
        graph = {
            "image_id": dicom_id,
            "viewpoint": view,
            "patient_id": subject_id,
            "study_id": study_id,
            "objects": _scene_graph_objects(regions, study.frontal.shape, dicom_id),
            "attributes": _scene_graph_attributes(study.report, study_id),
            "relationships": [],
        }
        _write_json(self.imagenome / "scene_graph" / f"{dicom_id}_SceneGraph.json", graph)


_MIMIC_VIEW_MEANINGS = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral"}


def _mimic_procedure(frontal_view: str, has_lateral: bool) -> str:
    if has_lateral:
        return "CHEST (PA AND LAT)"
    return "CHEST (PORTABLE AP)" if frontal_view == "AP" else "CHEST (SINGLE VIEW)"


def _mimic_date_time(study: RenderedStudy) -> tuple[int, float]:
    """MIMIC's shifted dates (2100s), increasing with study_index; times like 213014.531."""
    first = datetime.date(2110, 1, 1) + datetime.timedelta(
        days=_number("mimic-date", study.patient_index) % (70 * 365)
    )
    # Each study falls in its own 60-day window after the previous one: dates only increase.
    jitter = _number("mimic-gap", study.patient_index, study.study_index) % 50
    date = first + datetime.timedelta(days=60 * study.study_index + jitter)
    clock = _number("mimic-time", study.patient_index, study.study_index)
    seconds, millis = clock % 86_400, (clock // 86_400) % 1000
    hhmmss = (seconds // 3600) * 10_000 + (seconds // 60 % 60) * 100 + seconds % 60
    return int(date.strftime("%Y%m%d")), float(f"{hhmmss}.{millis:03d}")


def _dicom_id(study: RenderedStudy, view: str) -> str:
    """Five dash-separated groups of 8 hex digits, like MIMIC's."""
    digits = _digest("mimic-dicom", study.patient_index, study.study_index, view).hex()[:40]
    return "-".join(digits[i : i + 8] for i in range(0, 40, 8))


def _scene_graph_objects(
    regions: dict[str, Box], shape: tuple[int, ...], dicom_id: str
) -> list[dict]:
    height, width = shape
    scale_x, scale_y = IMAGENOME_SIZE / width, IMAGENOME_SIZE / height
    objects = []
    for name, box in regions.items():
        x1, y1, x2, y2 = box.as_list()
        objects.append(
            {
                "object_id": f"{dicom_id}_{name}",
                "bbox_name": name,
                "x1": _round(x1 * scale_x),
                "y1": _round(y1 * scale_y),
                "x2": _round(x2 * scale_x),
                "y2": _round(y2 * scale_y),
                "width": _round((x2 - x1) * scale_x),
                "height": _round((y2 - y1) * scale_y),
                "original_x1": x1,
                "original_y1": y1,
                "original_x2": x2,
                "original_y2": y2,
                "original_width": _round(x2 - x1),
                "original_height": _round(y2 - y1),
            }
        )
    return objects


def _mention_attribute(mention: Mention) -> str:
    kind = FINDING_TYPES[mention.finding]
    said = "no" if mention.existence == "absent" else "yes"  # uncertain counts as yes
    return f"{kind.category}|{said}|{kind.imagenome_label}"


def _scene_graph_attributes(report: Report, study_id: int) -> list[dict]:
    """Per region some mention refers to: its phrases and one attribute list per phrase."""
    sentence_ids: dict[str, int] = {}
    sections: dict[str, str] = {}
    by_region: dict[str, dict[str, set[str]]] = {}
    for mention in report.mentions:
        sentence_ids.setdefault(mention.sentence, len(sentence_ids))
        sections.setdefault(mention.sentence, mention.section)
        for region in mention.regions:
            if region not in CHEST_IMAGENOME_REGIONS:
                raise ValueError(
                    f"report mention {mention.sentence!r} names region {region!r}, "
                    "which is not a Chest ImaGenome region"
                )
            phrases = by_region.setdefault(region, {})
            phrases.setdefault(mention.sentence, set()).add(_mention_attribute(mention))
    attributes = []
    for region in CHEST_IMAGENOME_REGIONS:
        if region not in by_region:
            continue
        phrases = sorted(by_region[region], key=sentence_ids.__getitem__)
        lists = []
        for phrase in phrases:
            labels = by_region[region][phrase]
            abnormal = any("|yes|" in label for label in labels)
            lists.append(sorted(labels | {f"nlp|yes|{'abnormal' if abnormal else 'normal'}"}))
        attributes.append(
            {
                "bbox_name": region,
                "phrases": phrases,
                "attributes": lists,
                "phrase_IDs": [f"{study_id}|{sentence_ids[phrase]}" for phrase in phrases],
                "sections": [sections[phrase] for phrase in phrases],
            }
        )
    return attributes


# ---- RSNA Pneumonia Detection --------------------------------------------------------------------


class RsnaExporter(Exporter):
    """RSNA Pneumonia Detection stage 2: label CSVs and one DICOM per frontal image."""

    folder = "rsna"
    split_names: ClassVar[dict[str, str]] = {s: "train" for s in WORLD_SPLITS}

    def __init__(self, out_dir: Path) -> None:
        super().__init__(out_dir)
        self._labels: list[dict] = []
        self._classes: list[dict] = []

    def add(self, study: RenderedStudy) -> list[dict]:
        _check_frontal(study)
        split = self._split(study)
        patient_id = str(
            uuid.UUID(bytes=_digest("rsna", study.patient_index, study.study_index)[:16], version=4)
        )
        boxes = [
            box
            for finding in study.scene.findings
            if finding.type.rsna_opacity
            for box in finding.boxes
        ]
        if boxes:
            label_rows = [
                {
                    "patientId": patient_id,
                    "x": _round(box.x1),
                    "y": _round(box.y1),
                    "width": _round(box.width),
                    "height": _round(box.height),
                    "Target": 1,
                }
                for box in boxes
            ]
            kind = "Lung Opacity"
        else:
            label_rows = [{"patientId": patient_id, "Target": 0}]
            kind = "Normal" if study.scene.is_normal else "No Lung Opacity / Not Normal"
        self._labels += label_rows
        # The real class file repeats the patient's class once per label row.
        self._classes += [{"patientId": patient_id, "class": kind}] * len(label_rows)
        path = self.base / "stage_2_train_images" / f"{patient_id}.dcm"
        _write_dicom(path, _rsna_dicom(study, patient_id))
        return [
            self._truth(
                study,
                path,
                study.frontal,
                image_id=patient_id,
                study_id=patient_id,
                patient_id=patient_id,
                view=study.scene.anatomy.view,
                split=split,
                regions=study.scene.region_boxes(),
            )
        ]

    def close(self) -> None:
        _write_csv(self.base / "stage_2_train_labels.csv", _frame(self._labels, RSNA_LABEL_COLUMNS))
        _write_csv(
            self.base / "stage_2_detailed_class_info.csv", _frame(self._classes, RSNA_CLASS_COLUMNS)
        )


# (RescaleSlope, RescaleIntercept) variants; None writes no rescale at all.
_RESCALES: tuple[tuple[str, str] | None, ...] = (None, ("1", "-1024"), ("0.5", "0"))


def _write_dicom(path: Path, dataset: pydicom.Dataset) -> None:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    _write_bytes(path, buffer.getvalue())


def _rsna_dicom(study: RenderedStudy, patient_id: str) -> pydicom.Dataset:
    """A CR DICOM whose correct display (modality LUT, then MONOCHROME1 inverted) is the image.

    Files vary as real archives do: 12 to 16 stored bits, a quarter MONOCHROME1, some with a
    rescale and some with a window.
    """
    variant = _digest("rsna-dicom", study.patient_index, study.study_index)
    bits = 12 + variant[0] % 5
    monochrome1 = variant[1] % 4 == 0
    rescale = _RESCALES[variant[2] % len(_RESCALES)]
    top = (1 << bits) - 1
    stored = np.round(np.clip(study.frontal, 0.0, 1.0) * top).astype(np.uint16)
    if monochrome1:
        stored = (top - stored).astype(np.uint16)  # high values display dark in MONOCHROME1
    ds = _kaggle_dicom(
        study,
        source="rsna",
        key=patient_id,
        patient_id=patient_id,
        sop_class=ComputedRadiographyImageStorage,
        stored=stored,
        bits=bits,
        photometric="MONOCHROME1" if monochrome1 else "MONOCHROME2",
        spacing=NIH_PIXEL_SPACINGS[variant[3] % 3],
    )
    slope, intercept = (1.0, 0.0) if rescale is None else (float(rescale[0]), float(rescale[1]))
    if rescale is not None:
        ds.RescaleIntercept, ds.RescaleSlope = rescale[1], rescale[0]
        ds.RescaleType = "US"
    if variant[4] % 2 == 0:
        low, high = intercept, slope * top + intercept
        ds.WindowCenter = f"{(low + high) / 2:.10g}"
        ds.WindowWidth = f"{high - low:.10g}"
    return ds


def _kaggle_dicom(
    study: RenderedStudy,
    *,
    source: str,
    key: str,
    patient_id: str,
    sop_class: str,
    stored: np.ndarray,
    bits: int,
    photometric: str,
    spacing: float,
) -> pydicom.Dataset:
    """The de-identified frontal DICOM of the Kaggle sets built on NIH images (RSNA, SIIM):
    placeholder date and time, the patient id as name, ``view: PA`` as series description,
    and UIDs derived from (source, key). ``stored`` holds ``bits`` of uint8 or uint16 pixels.
    """

    def uid(kind: str) -> str:
        return generate_uid(entropy_srcs=["cxrvlp", source, key, kind])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid("instance")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    # The Kaggle sets' de-identified dates and times are all the same placeholder.
    ds.StudyDate = "19010101"
    ds.StudyTime = "000000.00"
    ds.AccessionNumber = ""
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = f"view: {study.scene.anatomy.view}"
    ds.PatientName = patient_id
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = study.scene.anatomy.sex
    ds.PatientAge = f"{study.age:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = study.scene.anatomy.view
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = stored.shape
    ds.PixelSpacing = [f"{spacing}"] * 2
    ds.BitsAllocated = 8 if stored.dtype == np.uint8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    data = stored.astype("<u2").tobytes() if ds.BitsAllocated == 16 else stored.tobytes()
    ds.PixelData = data + b"\0" * (len(data) % 2)  # values have even length
    return ds


# ---- NIH ChestX-ray14 ----------------------------------------------------------------------------


class NihExporter(Exporter):
    """NIH ChestX-ray14: Data_Entry_2017.csv, BBox_List_2017.csv, split lists, PNG images."""

    folder = "nih"
    split_names: ClassVar[dict[str, str]] = {
        "train": "train_val",
        "validate": "train_val",
        "test": "test",
    }

    def __init__(self, out_dir: Path) -> None:
        super().__init__(out_dir)
        self._entries: list[dict] = []
        self._boxes: list[dict] = []
        self._lists: dict[str, list[str]] = {"train_val": [], "test": []}

    def add(self, study: RenderedStudy) -> list[dict]:
        _check_frontal(study)
        split = self._split(study)
        patient = study.patient_index + 1  # NIH patient IDs count from 1
        image_index = f"{patient:08d}_{study.study_index:03d}.png"
        labels = sorted({f.type.nih for f in study.scene.findings if f.type.nih is not None})
        height, width = study.frontal.shape
        spacing = NIH_PIXEL_SPACINGS[_number("nih-spacing", study.patient_index) % 3]
        view = study.scene.anatomy.view
        self._entries.append(
            dict(
                zip(
                    NIH_ENTRY_COLUMNS,
                    (
                        image_index,
                        "|".join(labels) or "No Finding",
                        study.study_index,
                        patient,
                        study.age,
                        study.scene.anatomy.sex,
                        view,
                        width,
                        height,
                        spacing,
                        spacing,
                    ),
                    strict=True,
                )
            )
        )
        for finding in study.scene.findings:
            if finding.type.nih_box is None:
                continue
            for box in finding.boxes:
                self._boxes.append(
                    {
                        "Image Index": image_index,
                        "Finding Label": finding.type.nih_box,
                        "x": _round(box.x1),
                        "y": _round(box.y1),
                        "w": _round(box.width),
                        "h": _round(box.height),
                    }
                )
        self._lists[split].append(image_index)
        path = self.base / "images" / image_index
        _save_image(path, study.frontal)
        return [
            self._truth(
                study,
                path,
                study.frontal,
                image_id=image_index,
                study_id=image_index.removesuffix(".png"),
                patient_id=str(patient),
                view=view,
                split=split,
                regions=study.scene.region_boxes(),
            )
        ]

    def close(self) -> None:
        entries = _frame(self._entries, NIH_ENTRY_COLUMNS).sort_values("Image Index")
        _write_csv(self.base / "Data_Entry_2017.csv", entries)
        boxes = _frame(self._boxes, ("Image Index", "Finding Label", "x", "y", "w", "h"))
        # Real rows have six fields under a nine-name header: write that header verbatim.
        rows = boxes.to_csv(index=False, header=False, lineterminator="\n")
        _write_text(self.base / "BBox_List_2017.csv", f"{NIH_BBOX_HEADER}\n{rows}")
        for name, images in self._lists.items():
            _write_text(self.base / f"{name}_list.txt", "".join(f"{i}\n" for i in sorted(images)))


# ---- CheXpert ------------------------------------------------------------------------------------


class ChexpertExporter(Exporter):
    """CheXpert-v1.0-small: train.csv (labeller output), valid.csv (truth 0/1), JPEG images."""

    folder = "chexpert"
    split_names: ClassVar[dict[str, str]] = {
        "train": "train",
        "validate": "valid",
        "test": "valid",
    }

    def __init__(self, out_dir: Path) -> None:
        super().__init__(out_dir)
        self._rows: dict[str, list[dict]] = {"train": [], "valid": []}

    def add(self, study: RenderedStudy) -> list[dict]:
        _check_frontal(study)
        split = self._split(study)
        patient = f"patient{study.patient_index + 1:05d}"
        study_folder = PurePosixPath(CHEXPERT_ROOT, split, patient, f"study{study.study_index + 1}")
        if split == "train":
            report_labels = study.report.chexpert_labels()
            labels = {name: report_labels.get(name) for name in CHEXPERT_CSV_LABELS}
        else:
            labels = _truth_chexpert_labels(study)
        frontal_view = study.scene.anatomy.view
        views = [("view1_frontal.jpg", "Frontal", frontal_view, study.frontal)]
        if study.lateral is not None:
            views.append(("view2_lateral.jpg", "Lateral", None, study.lateral))
        regions = study.scene.region_boxes()
        rows = []
        for file_name, orientation, projection, image in views:
            csv_path = (study_folder / file_name).as_posix()
            path = self.base / csv_path
            _save_image(path, image)
            self._rows[split].append(
                {
                    "Path": csv_path,
                    "Sex": "Male" if study.scene.anatomy.sex == "M" else "Female",
                    "Age": study.age,
                    "Frontal/Lateral": orientation,
                    "AP/PA": projection,
                }
                | labels
            )
            rows.append(
                self._truth(
                    study,
                    path,
                    image,
                    image_id=csv_path,
                    study_id=f"{patient}/{study_folder.name}",
                    patient_id=patient,
                    view=projection or "LATERAL",
                    split=split,
                    regions=None if projection is None else regions,
                )
            )
        return rows

    def close(self) -> None:
        for split, rows in self._rows.items():
            frame = _frame(rows, CHEXPERT_COLUMNS)
            frame[list(CHEXPERT_CSV_LABELS)] = frame[list(CHEXPERT_CSV_LABELS)].astype("float64")
            _write_csv(self.base / CHEXPERT_ROOT / f"{split}.csv", frame)


def _truth_chexpert_labels(study: RenderedStudy) -> dict[str, float]:
    """Expert-style 0/1 labels: CheXpert's validation set is labelled by radiologists."""
    positive = {label for f in study.scene.findings for label in f.type.chexpert}
    # "No Finding" ignores support devices, as CheXpert's labeller does.
    if not any(not f.is_device for f in study.scene.findings):
        positive.add("No Finding")
    return {name: float(name in positive) for name in CHEXPERT_CSV_LABELS}


# ---- IU X-Ray (R2Gen annotation.json) ------------------------------------------------------------


class IuXrayExporter(Exporter):
    """IU X-Ray in R2Gen's layout: annotation.json and images/<id>/{0,1}.png (two views)."""

    folder = "iu_xray"
    split_names: ClassVar[dict[str, str]] = {"train": "train", "validate": "val", "test": "test"}

    def __init__(self, out_dir: Path) -> None:
        super().__init__(out_dir)
        self._reports = _IdAllocator(1, 9_999, "IU X-Ray report")
        self._entries: dict[str, list[dict]] = {"train": [], "val": [], "test": []}

    def add(self, study: RenderedStudy) -> list[dict]:
        _check_frontal(study)
        if study.lateral is None:
            raise ValueError(
                f"IU X-Ray study {study.patient_index}/{study.study_index} has no lateral image; "
                "every IU X-Ray study has two views"
            )
        split = self._split(study)
        report_number = self._reports.claim("iu", study.patient_index, study.study_index)
        image_number = _number("iu-image", study.patient_index, study.study_index) % 3000
        study_id = f"CXR{report_number}_IM-{image_number:04d}"
        # R2Gen keeps findings then impression on one line.
        text = " ".join(f"{study.report.findings} {study.report.impression}".split())
        image_paths = [f"{study_id}/0.png", f"{study_id}/1.png"]
        self._entries[split].append(
            {
                "id": study_id,
                # Open-i writes de-identified words as XXXX where MIMIC writes ___.
                "report": text.replace("___", "XXXX"),
                "image_path": image_paths,
                "split": split,
            }
        )
        rows = []
        for image_path, image, view, regions in (
            (image_paths[0], study.frontal, study.scene.anatomy.view, study.scene.region_boxes()),
            (image_paths[1], study.lateral, "LATERAL", None),
        ):
            path = self.base / "images" / image_path
            _save_image(path, image)
            rows.append(
                self._truth(
                    study,
                    path,
                    image,
                    image_id=image_path,
                    study_id=study_id,
                    patient_id=_patient_key(study),
                    view=view,
                    split=split,
                    regions=regions,
                )
            )
        return rows

    def close(self) -> None:
        _write_json(self.base / "annotation.json", self._entries)


# ---- VQA-RAD and SLAKE ---------------------------------------------------------------------------


def _balanced_splits(cohort: str, entries: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Each split's entries less what `balance_closed_answers` drops from its English ones.

    Split by split: balancing the cohort as a whole would leave each text's surplus answer in
    the training split as its deficit in the test split, where a text prior would score below
    chance. SLAKE's Chinese copies stay as they are: there are too few per text to balance (a
    small world would lose them all), and readers keep one language, English by default.
    """
    balanced = {}
    for split, split_entries in entries.items():
        english = [entry for entry in split_entries if entry.get("q_lang", "en") == "en"]
        kept = balance_closed_answers(english, rank=lambda entry: _number(cohort, entry["qid"]))
        dropped = {entry["qid"] for entry in english} - {entry["qid"] for entry in kept}
        balanced[split] = [entry for entry in split_entries if entry["qid"] not in dropped]
    return balanced


class VqaRadExporter(Exporter):
    """VQA-RAD: the public JSON, MEVF's trainset/testset split and the image folder."""

    folder = "vqa_rad"
    split_names: ClassVar[dict[str, str]] = {"train": "train", "validate": "train", "test": "test"}

    def __init__(self, out_dir: Path) -> None:
        super().__init__(out_dir)
        self._images = _IdAllocator(100, 99_900, "VQA-RAD image")
        self._entries: dict[str, list[dict]] = {"train": [], "test": []}
        self._next_qid = 1

    def add(self, study: RenderedStudy) -> list[dict]:
        _check_frontal(study)
        split = self._split(study)
        image_name = (
            f"synpic{self._images.claim('vqa_rad', study.patient_index, study.study_index)}.jpg"
        )
        for qa in study.questions:
            self._entries[split].append(
                {
                    "qid": self._next_qid,
                    "image_name": image_name,
                    "image_organ": "CHEST",
                    "answer": qa.answer,
                    "answer_type": qa.answer_type,
                    "question_type": qa.question_type,
                    "question": qa.question,
                    "phrase_type": "freeform" if split == "train" else "test_freeform",
                }
            )
            self._next_qid += 1
        path = self.base / VQA_RAD_IMAGES / image_name
        _save_image(path, study.frontal)
        return [
            self._truth(
                study,
                path,
                study.frontal,
                image_id=image_name,
                study_id=image_name.removesuffix(".jpg"),
                patient_id=_patient_key(study),
                view=study.scene.anatomy.view,
                split=split,
                regions=study.scene.region_boxes(),
            )
        ]

    def close(self) -> None:
        entries = _balanced_splits(self.folder, self._entries)
        _write_json(self.base / "trainset.json", entries["train"])
        _write_json(self.base / "testset.json", entries["test"])
        everything = sorted(entries["train"] + entries["test"], key=lambda e: e["qid"])
        _write_json(self.base / "VQA_RAD Dataset Public.json", everything)


class SlakeExporter(Exporter):
    """SLAKE 1.0: train/validate/test JSON and imgs/xmlab{N}/source.jpg, English and Chinese."""

    folder = "slake"
    split_names: ClassVar[dict[str, str]] = {s: s for s in WORLD_SPLITS}
    chinese_every = 2  # one study in two gets a Chinese copy of a closed question

    def __init__(self, out_dir: Path) -> None:
        super().__init__(out_dir)
        self._images = _IdAllocator(0, 100_000, "SLAKE image")
        self._entries: dict[str, list[dict]] = {name: [] for name in WORLD_SPLITS}
        self._next_qid = 0

    def add(self, study: RenderedStudy) -> list[dict]:
        _check_frontal(study)
        split = self._split(study)
        image_id = self._images.claim("slake", study.patient_index, study.study_index)
        image_name = f"xmlab{image_id}/source.jpg"
        questions = [(qa.question, qa.answer, "en", qa) for qa in study.questions]
        if _number("slake-zh", study.patient_index, study.study_index) % self.chinese_every == 0:
            questions += _chinese_copy(study)
        for question, answer, language, qa in questions:
            self._entries[split].append(
                {
                    "img_id": image_id,
                    "img_name": image_name,
                    "question": question,
                    "answer": answer,
                    "q_lang": language,
                    "location": qa.location,
                    "modality": "X-Ray",
                    "answer_type": qa.answer_type,
                    "base_type": "vqa",
                    "content_type": qa.content_type,
                    "qid": self._next_qid,
                }
            )
            self._next_qid += 1
        path = self.base / "imgs" / image_name
        _save_image(path, study.frontal)
        return [
            self._truth(
                study,
                path,
                study.frontal,
                image_id=image_name,
                study_id=f"xmlab{image_id}",
                patient_id=_patient_key(study),
                view=study.scene.anatomy.view,
                split=split,
                regions=study.scene.region_boxes(),
            )
        ]

    def close(self) -> None:
        for split, entries in _balanced_splits(self.folder, self._entries).items():
            _write_json(self.base / f"{split}.json", entries)


def _chinese_copy(study: RenderedStudy) -> list[tuple]:
    """A Chinese copy of the study's first closed question that names a known finding."""
    names = sorted(CHINESE_FINDINGS, key=len, reverse=True)  # "pleural effusion" before "effusion"
    for qa in study.questions:
        answer = CHINESE_ANSWERS.get(qa.answer.strip().lower())
        if qa.answer_type != "CLOSED" or answer is None:
            continue
        text = qa.question.lower()
        for name in names:
            if re.search(rf"\b{re.escape(name)}\b", text):
                return [(f"这张图片中有{CHINESE_FINDINGS[name]}吗?", answer, "zh", qa)]
    return []


# ---- SIIM-ACR Pneumothorax -----------------------------------------------------------------------


class SiimExporter(Exporter):
    """SIIM-ACR Pneumothorax: train-rle.csv (one row per image, ``-1`` without pneumothorax) and
    one 8-bit MONOCHROME2 DICOM per image, as on Kaggle, under
    ``dicom-images-train/<StudyInstanceUID>/<SeriesInstanceUID>/<ImageId>.dcm`` with ImageId
    the SOPInstanceUID. The mask is `render.pneumothorax_mask`: the pneumothorax as drawn.
    Everything is ``train`` (the labelled release); readers split it themselves.
    """

    folder = "siim"
    split_names: ClassVar[dict[str, str]] = {s: "train" for s in WORLD_SPLITS}

    def __init__(self, out_dir: Path) -> None:
        # The reader's own encoding, so that its decoding is the exact inverse. Imported here:
        # the readers' package imports torch, which no other exporter needs.
        from cxrvlp.data.readers.siim import encode_rle

        super().__init__(out_dir)
        self._encode_rle = encode_rle
        self._rows: list[str] = []

    def add(self, study: RenderedStudy) -> list[dict]:
        _check_frontal(study)
        split = self._split(study)
        patient_id = str(uuid.UUID(bytes=_digest("siim", study.patient_index)[:16], version=4))
        ds = _kaggle_dicom(
            study,
            source="siim",
            key=f"{patient_id}/{study.study_index}",
            patient_id=patient_id,
            sop_class=SecondaryCaptureImageStorage,
            stored=_pixels8(study.frontal),
            bits=8,
            photometric="MONOCHROME2",
            spacing=NIH_PIXEL_SPACINGS[_number("siim-spacing", study.patient_index) % 3],
        )
        image_id = str(ds.SOPInstanceUID)
        mask = pneumothorax_mask(study.scene)
        self._rows.append(f"{image_id},{self._encode_rle(mask)}")
        series = self.base / SIIM_IMAGES / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID)
        path = series / f"{image_id}.dcm"
        _write_dicom(path, ds)
        row = self._truth(
            study,
            path,
            study.frontal,
            image_id=image_id,
            study_id=str(ds.StudyInstanceUID),
            patient_id=patient_id,
            view=study.scene.anatomy.view,
            split=split,
            regions=study.scene.region_boxes(),
        )
        return [row | {"pneumothorax_pixels": int(mask.sum())}]

    def close(self) -> None:
        _write_text(
            self.base / "train-rle.csv",
            "".join(f"{line}\n" for line in [SIIM_RLE_HEADER, *self._rows]),
        )


# ---- COVIDx CXR ----------------------------------------------------------------------------------


class CovidxExporter(Exporter):
    """COVIDx CXR-3: train.txt, val.txt and test.txt, one image a line
    (``patient_id filename class data_source``, class ``positive`` exactly when the scene has
    COVID-19 pneumonia), images in train/, val/ and test/: PNG, and JPEG from two of the
    sources, as the real release mixes them."""

    folder = "covidx"
    split_names: ClassVar[dict[str, str]] = {"train": "train", "validate": "val", "test": "test"}

    def __init__(self, out_dir: Path) -> None:
        super().__init__(out_dir)
        self._numbers = _IdAllocator(1, 99_999, "COVIDx patient")
        self._numbers_of: dict[int, int] = {}  # patient_index -> number in its names
        self._lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}

    def add(self, study: RenderedStudy) -> list[dict]:
        _check_frontal(study)
        split = self._split(study)
        source = COVIDX_SOURCES[study.patient_index % len(COVIDX_SOURCES)]
        patient_id, filename = self._names(study, source)
        label = "negative" if study.scene.finding(COVID_NAME) is None else "positive"
        self._lines[split].append(f"{patient_id} {filename} {label} {source}")
        path = self.base / split / filename
        _save_image(path, study.frontal)
        return [
            self._truth(
                study,
                path,
                study.frontal,
                image_id=filename,
                study_id=PurePosixPath(filename).stem,
                patient_id=patient_id,
                view=study.scene.anatomy.view,
                split=split,
                regions=study.scene.region_boxes(),
            )
        ]

    def close(self) -> None:
        for split, lines in self._lines.items():
            _write_text(self.base / f"{split}.txt", "".join(f"{line}\n" for line in lines))

    def _names(self, study: RenderedStudy, source: str) -> tuple[str, str]:
        """(patient_id, file name) in the style of the patient's source."""
        if study.patient_index not in self._numbers_of:
            self._numbers_of[study.patient_index] = self._numbers.claim(
                "covidx", study.patient_index
            )
        number, index = self._numbers_of[study.patient_index], study.study_index
        if source == "bimcv":
            patient = f"sub-S{number:05d}"
            view = study.scene.anatomy.view.lower()
            return (
                patient,
                f"{patient}_ses-E{10 * number + index:06d}_run-1_bp-chest_vp-{view}_cr.png",
            )
        if source == "ricord":
            patient = f"MIDRC-RICORD-1C-419639-{number:06d}"
            return patient, f"{patient}-{index + 1:05d}-0.jpg"
        if source == "rsna":
            patient = str(
                uuid.UUID(bytes=_digest("covidx-rsna", study.patient_index)[:16], version=4)
            )
            return patient, f"{patient}.png" if index == 0 else f"{patient}-{index}.png"
        return str(number), f"SIRM-{number:05d}-{index + 1}.jpeg"


EXPORTERS: dict[str, type[Exporter]] = {
    "mimic": MimicExporter,
    "rsna": RsnaExporter,
    "nih": NihExporter,
    "chexpert": ChexpertExporter,
    "iu_xray": IuXrayExporter,
    "vqa_rad": VqaRadExporter,
    "slake": SlakeExporter,
    "siim": SiimExporter,
    "covidx": CovidxExporter,
}
