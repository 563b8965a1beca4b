"""Synthetic studies as MIMIC-CXR-JPG, the MIMIC-CXR reports and Chest ImaGenome's silver set."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import ClassVar

from cxrvlp.constants import CHEST_IMAGENOME_REGIONS, CHEXPERT_LABELS
from cxrvlp.synth.anatomy import Box
from cxrvlp.synth.report import Mention, Report
from cxrvlp.synth.scene import FINDING_TYPES
from cxrvlp.synth.study import RenderedStudy
from cxrvlp.synth.writers.base import (
    WORLD_SPLITS,
    Exporter,
    IdAllocator,
    check_frontal,
    save_image,
    stable_digest,
    stable_number,
    table,
    two_decimals,
    write_csv,
    write_json,
    write_text,
)

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


class MimicExporter(Exporter):
    """MIMIC-CXR-JPG 2.0.0, the MIMIC-CXR 2.0.0 reports and Chest ImaGenome's silver set."""

    folder = "mimic-cxr-jpg"
    split_names: ClassVar[dict[str, str]] = {s: s for s in WORLD_SPLITS}
    gold_every = 5  # one test patient in five goes to the gold set (images_to_avoid.csv)

    def __init__(self, out_dir: Path) -> None:
        super().__init__(out_dir)
        self.reports = self.root / "mimic-cxr-reports"
        self.imagenome = self.root / "chest-imagenome" / "silver_dataset"
        self._subject_ids = IdAllocator(10_000_000, 10_000_000, "MIMIC subject")
        self._study_ids = IdAllocator(50_000_000, 10_000_000, "MIMIC study")
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
        check_frontal(study)
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
            save_image(path, image)
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
        write_text(self.reports / f"{folder}.txt", study.report.text())
        self._add_imagenome(
            study, split, regions, subject_id, study_id, folder, rows[0]["image_id"]
        )
        return rows

    def close(self) -> None:
        order = ["subject_id", "study_id"]
        metadata = table(self._metadata, MIMIC_METADATA_COLUMNS)
        write_csv(
            self.base / "mimic-cxr-2.0.0-metadata.csv.gz",
            metadata.sort_values(order, kind="stable"),
        )
        splits = table(self._split_rows, MIMIC_SPLIT_COLUMNS).sort_values(order, kind="stable")
        write_csv(self.base / "mimic-cxr-2.0.0-split.csv.gz", splits)
        labels = table(self._labels, MIMIC_LABEL_COLUMNS).sort_values(order, kind="stable")
        labels[list(CHEXPERT_LABELS)] = labels[list(CHEXPERT_LABELS)].astype("float64")
        # MIMIC ships labels of two labellers; ours both read the same report truth.
        for labeller in ("chexpert", "negbio"):
            write_csv(self.base / f"mimic-cxr-2.0.0-{labeller}.csv.gz", labels)
        order.append("dicom_id")
        for name, rows in self._imagenome_splits.items():
            frame = table(rows, IMAGENOME_SPLIT_COLUMNS).sort_values(order, kind="stable")
            write_csv(
                self.imagenome / "splits" / f"{name}.csv", frame.reset_index(drop=True), index=True
            )
        gold = table(self._gold_rows, IMAGENOME_SPLIT_COLUMNS).sort_values(order, kind="stable")
        write_csv(self.imagenome / "splits" / "images_to_avoid.csv", gold)

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
        write_json(self.imagenome / "scene_graph" / f"{dicom_id}_SceneGraph.json", graph)


_MIMIC_VIEW_MEANINGS = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral"}


def _mimic_procedure(frontal_view: str, has_lateral: bool) -> str:
    if has_lateral:
        return "CHEST (PA AND LAT)"
    return "CHEST (PORTABLE AP)" if frontal_view == "AP" else "CHEST (SINGLE VIEW)"


def _mimic_date_time(study: RenderedStudy) -> tuple[int, float]:
    """MIMIC's shifted dates (2100s), increasing with study_index; times like 213014.531."""
    first = datetime.date(2110, 1, 1) + datetime.timedelta(
        days=stable_number("mimic-date", study.patient_index) % (70 * 365)
    )
    # Each study falls in its own 60-day window after the previous one: dates only increase.
    jitter = stable_number("mimic-gap", study.patient_index, study.study_index) % 50
    date = first + datetime.timedelta(days=60 * study.study_index + jitter)
    clock = stable_number("mimic-time", study.patient_index, study.study_index)
    seconds, millis = clock % 86_400, (clock // 86_400) % 1000
    hhmmss = (seconds // 3600) * 10_000 + (seconds // 60 % 60) * 100 + seconds % 60
    return int(date.strftime("%Y%m%d")), float(f"{hhmmss}.{millis:03d}")


def _dicom_id(study: RenderedStudy, view: str) -> str:
    """Five dash-separated groups of 8 hex digits, like MIMIC's."""
    digits = stable_digest("mimic-dicom", study.patient_index, study.study_index, view).hex()[:40]
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
                "x1": two_decimals(x1 * scale_x),
                "y1": two_decimals(y1 * scale_y),
                "x2": two_decimals(x2 * scale_x),
                "y2": two_decimals(y2 * scale_y),
                "width": two_decimals((x2 - x1) * scale_x),
                "height": two_decimals((y2 - y1) * scale_y),
                "original_x1": x1,
                "original_y1": y1,
                "original_x2": x2,
                "original_y2": y2,
                "original_width": two_decimals(x2 - x1),
                "original_height": two_decimals(y2 - y1),
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
