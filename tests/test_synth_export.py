"""Exporters of the synthetic world: exact real file layouts, truth rows, determinism."""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut

from cxrvlp.constants import CHEST_IMAGENOME_REGIONS, CHEXPERT_CSV_LABELS, CHEXPERT_LABELS
from cxrvlp.synth.anatomy import sample_anatomy
from cxrvlp.synth.questions import QuestionAnswer
from cxrvlp.synth.report import write_report
from cxrvlp.synth.scene import FINDING_TYPES, Scene, place_finding
from cxrvlp.synth.study import RenderedStudy
from cxrvlp.synth.writers import EXPORTERS, ExportError

WIDTH, HEIGHT = 80, 96  # not square, so a swapped width/height shows
LATERAL_SHAPE = (96, 72)
# (findings, split) per patient; patient 1 has a follow-up study.
PATIENTS = (
    ((), "train"),
    (("pneumonia", "pleural effusion"), "train"),
    (("pacemaker",), "validate"),
    (("lung opacity", "nodule", "cardiomegaly"), "test"),
    (("consolidation",), "test"),
    (("atelectasis", "endotracheal tube"), "train"),
    (("pneumothorax",), "test"),
    (("mass", "pulmonary edema"), "validate"),
)
FOLDERS = {
    "mimic": "mimic-cxr-jpg",
    "rsna": "rsna",
    "nih": "nih",
    "chexpert": "chexpert",
    "iu_xray": "iu_xray",
    "vqa_rad": "vqa_rad",
    "slake": "slake",
    "siim": "siim",
    "covidx": "covidx",
}


def _image(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    ramp = np.linspace(0.0, 1.0, shape[1], dtype=np.float32)[None, :]
    noise = rng.uniform(0.0, 0.2, shape).astype(np.float32)
    return np.clip(0.8 * ramp + noise, 0.0, 1.0).astype(np.float32)


def _questions(scene: Scene) -> tuple[QuestionAnswer, ...]:
    present = {f.name for f in scene.findings}
    closed = tuple(
        QuestionAnswer(
            f"Is there a {name}?",
            "yes" if name in present else "no",
            "CLOSED",
            "PRES",
            "Abnormality",
            "Lung",
        )
        for name in ("pleural effusion", "pneumothorax")
    )
    count = sum(f.is_device for f in scene.findings)
    return (
        *closed,
        QuestionAnswer(
            "How many support devices are there?", str(count), "OPEN", "COUNT", "Quantity", "Chest"
        ),
    )


def _study(
    cohort: str, patient: int, study_index: int = 0, *, lateral: bool = True
) -> RenderedStudy:
    names, split = PATIENTS[patient % len(PATIENTS)]
    rng = np.random.default_rng([patient, study_index])
    view = "AP" if patient % 3 == 2 else "PA"
    anatomy = sample_anatomy(rng, WIDTH, HEIGHT, view, "F" if patient % 2 else "M")
    boxes = anatomy.region_boxes()
    scene = Scene(anatomy, tuple(place_finding(rng, anatomy, name, boxes) for name in names))
    return RenderedStudy(
        cohort=cohort,
        patient_index=patient,
        study_index=study_index,
        seed=int(rng.integers(2**31)),
        split=split,
        age=40 + patient + study_index,
        scene=scene,
        frontal=_image(rng, (HEIGHT, WIDTH)),
        lateral=_image(rng, LATERAL_SHAPE) if lateral else None,
        report=write_report(scene, rng),
        questions=_questions(scene),
    )


def _studies(cohort: str, patients: int = len(PATIENTS)) -> list[RenderedStudy]:
    studies = []
    for patient in range(patients):
        # MIMIC and CheXpert mix studies with and without a lateral view.
        lateral = cohort == "iu_xray" or (cohort in ("mimic", "chexpert") and patient % 2 == 1)
        studies.append(_study(cohort, patient, lateral=lateral))
        if patient == 1:
            studies.append(_study(cohort, patient, 1, lateral=lateral))
    return studies


def _export(cohort: str, root: Path, studies: list[RenderedStudy]) -> list[dict]:
    exporter = EXPORTERS[cohort](root)
    rows = [row for study in studies for row in exporter.add(study)]
    exporter.close()
    return rows


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list, list]]:
    """Every cohort exported once: (world root, studies, truth rows)."""
    worlds = {}
    for cohort in EXPORTERS:
        root = tmp_path_factory.mktemp(cohort)
        studies = _studies(cohort, 14 if cohort == "rsna" else len(PATIENTS))
        worlds[cohort] = (root, studies, _export(cohort, root, studies))
    return worlds


def _columns(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return handle.readline().rstrip("\n").split(",")


# ---- every exporter ------------------------------------------------------------------------------


def test_one_exporter_per_cohort() -> None:
    assert set(EXPORTERS) == set(FOLDERS)
    assert {cohort: cls.folder for cohort, cls in EXPORTERS.items()} == FOLDERS


@pytest.mark.parametrize("cohort", sorted(FOLDERS))
def test_same_input_same_bytes(cohort: str, tmp_path: Path) -> None:
    studies = _studies(cohort, 4)
    first = _export(cohort, tmp_path / "a", studies)
    second = _export(cohort, tmp_path / "b", studies)
    assert first == second
    files_a, files_b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert sorted(files_a) == sorted(files_b)
    assert files_a == files_b


@pytest.mark.parametrize("cohort", sorted(FOLDERS))
def test_truth_rows_match_the_images(cohort: str, exported: dict) -> None:
    root, studies, rows = exported[cohort]
    assert rows and all(row["dataset"] == FOLDERS[cohort] for row in rows)
    assert len({row["image_id"] for row in rows}) == len(rows)
    json.dumps(rows)  # truth rows go to truth.jsonl as they are
    for row in rows:
        path = root / row["path"]
        assert path.is_file(), row["path"]
        if path.suffix == ".dcm":
            dataset = pydicom.dcmread(path)
            size = (dataset.Columns, dataset.Rows)
        else:
            with Image.open(path) as image:
                assert image.mode == "L"
                size = image.size
        assert size == (row["width"], row["height"])
        if row["view"] == "LATERAL":
            assert row["regions"] is None
            assert (row["height"], row["width"]) == LATERAL_SHAPE
            assert all(finding["boxes"] == [] for finding in row["findings"])
            continue
        assert (row["width"], row["height"]) == (WIDTH, HEIGHT)
        assert list(row["regions"]) == list(CHEST_IMAGENOME_REGIONS)
        boxes = list(row["regions"].values())
        boxes += [box for finding in row["findings"] for box in finding["boxes"]]
        for x1, y1, x2, y2 in boxes:
            assert 0 <= x1 < x2 <= WIDTH and 0 <= y1 < y2 <= HEIGHT
    exported_studies = {(row["patient_id"], row["study_id"]) for row in rows}
    assert len(exported_studies) == len(studies)


@pytest.mark.parametrize("cohort", sorted(FOLDERS))
def test_splits_are_by_patient(cohort: str, exported: dict) -> None:
    _, _, rows = exported[cohort]
    splits: dict[str, set[str]] = {}
    for row in rows:
        splits.setdefault(row["patient_id"], set()).add(row["split"])
    assert all(len(names) == 1 for names in splits.values())


@pytest.mark.parametrize("cohort", sorted(FOLDERS))
def test_empty_cohort_still_writes_its_index_files(cohort: str, tmp_path: Path) -> None:
    EXPORTERS[cohort](tmp_path).close()
    index = {
        "mimic": "mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv.gz",
        "rsna": "rsna/stage_2_train_labels.csv",
        "nih": "nih/Data_Entry_2017.csv",
        "chexpert": "chexpert/CheXpert-v1.0-small/train.csv",
        "iu_xray": "iu_xray/annotation.json",
        "vqa_rad": "vqa_rad/trainset.json",
        "slake": "slake/train.json",
        "siim": "siim/train-rle.csv",
        "covidx": "covidx/train.txt",
    }[cohort]
    # COVIDx's split files have no header: an empty one is legitimately empty.
    assert (tmp_path / index).is_file()
    assert cohort == "covidx" or (tmp_path / index).stat().st_size > 0


def test_a_patient_keeps_its_first_split(tmp_path: Path) -> None:
    first = _study("nih", 1)
    follow_up = replace(_study("nih", 1, 1), split="test")
    rows = _export("nih", tmp_path, [first, follow_up])
    assert [row["split"] for row in rows] == ["train_val", "train_val"]
    assert (tmp_path / "nih" / "test_list.txt").read_text() == ""


def test_unwritable_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "nih").write_text("in the way")
    with pytest.raises(ExportError, match=re.escape(str(tmp_path / "nih" / "images"))):
        EXPORTERS["nih"](tmp_path).add(_study("nih", 0))


def test_image_of_wrong_size_is_refused(tmp_path: Path) -> None:
    study = _study("vqa_rad", 0)
    with pytest.raises(ValueError, match="frontal image"):
        EXPORTERS["vqa_rad"](tmp_path).add(replace(study, frontal=study.frontal.T))


# ---- MIMIC-CXR-JPG, reports, Chest ImaGenome -----------------------------------------------------


def test_mimic_files_and_columns(exported: dict) -> None:
    root, studies, rows = exported["mimic"]
    base = root / "mimic-cxr-jpg"
    metadata = pd.read_csv(base / "mimic-cxr-2.0.0-metadata.csv.gz")
    assert _columns(base / "mimic-cxr-2.0.0-metadata.csv.gz") == [
        "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription",
        "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime",
        "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
        "PatientOrientationCodeSequence_CodeMeaning",
    ]  # fmt: skip
    split_columns = ["dicom_id", "study_id", "subject_id", "split"]
    assert _columns(base / "mimic-cxr-2.0.0-split.csv.gz") == split_columns
    for labeller in ("chexpert", "negbio"):
        path = base / f"mimic-cxr-2.0.0-{labeller}.csv.gz"
        assert _columns(path) == ["subject_id", "study_id", *CHEXPERT_LABELS]
        header = path.read_bytes()[:10]
        assert header[3] == 0 and header[4:8] == b"\0\0\0\0"  # no file name, no time
        labels = pd.read_csv(path)
        assert len(labels) == len(studies)
        values = labels[list(CHEXPERT_LABELS)].to_numpy().ravel()
        assert set(values[~np.isnan(values)]) <= {1.0, 0.0, -1.0} and np.isnan(values).any()
    assert len(metadata) == len(rows)
    assert metadata["subject_id"].astype(str).str.fullmatch(r"1\d{7}").all()
    assert metadata["study_id"].astype(str).str.fullmatch(r"5\d{7}").all()
    assert metadata["dicom_id"].str.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}").all()
    assert set(metadata["ViewPosition"]) == {"PA", "AP", "LATERAL"}
    assert metadata["StudyDate"].between(21000101, 21991231).all()
    assert metadata["StudyTime"].between(0, 235959.999).all()
    by_row = {row["image_id"]: row for row in rows}
    for record in metadata.itertuples():
        row = by_row[record.dicom_id]
        assert (record.Rows, record.Columns) == (row["height"], row["width"])
        sid = str(record.subject_id)
        expected = f"mimic-cxr-jpg/files/p{sid[:2]}/p{sid}/s{record.study_id}/{record.dicom_id}.jpg"
        assert row["path"] == expected
        report = root / f"mimic-cxr-reports/files/p{sid[:2]}/p{sid}/s{record.study_id}.txt"
        assert report.read_text().strip()
    splits = pd.read_csv(base / "mimic-cxr-2.0.0-split.csv.gz")
    assert set(splits["split"]) == {"train", "validate", "test"}
    assert dict(zip(splits["dicom_id"], splits["split"], strict=True)) == {
        row["image_id"]: row["split"] for row in rows
    }


def test_mimic_study_dates_increase_with_study_index(exported: dict) -> None:
    root, _, rows = exported["mimic"]
    metadata = pd.read_csv(root / "mimic-cxr-jpg" / "mimic-cxr-2.0.0-metadata.csv.gz")
    patient = next(row["patient_id"] for row in rows if row["study_id"] != rows[0]["study_id"])
    studies = list(dict.fromkeys(r["study_id"] for r in rows if r["patient_id"] == patient))
    mine = metadata[metadata["subject_id"].astype(str) == patient]
    dates = [mine[mine["study_id"].astype(str) == s]["StudyDate"].iloc[0] for s in studies]
    assert len(studies) == 2 and dates[0] < dates[1]


def test_imagenome_splits_and_gold_set(exported: dict) -> None:
    root, _, rows = exported["mimic"]
    splits_dir = root / "chest-imagenome" / "silver_dataset" / "splits"
    frontal = {row["image_id"]: row for row in rows if row["view"] != "LATERAL"}
    listed = {}
    for name in ("train", "valid", "test"):
        path = splits_dir / f"{name}.csv"
        assert _columns(path) == ["", "subject_id", "study_id", "dicom_id", "path", "ViewPosition"]
        frame = pd.read_csv(path, index_col=0)
        for record in frame.itertuples():
            listed[record.dicom_id] = name
            row = frontal[record.dicom_id]
            assert record.path == row["path"].removeprefix("mimic-cxr-jpg/").replace(".jpg", ".dcm")
            assert record.ViewPosition == row["view"]
    assert listed == {
        dicom: {"train": "train", "validate": "valid", "test": "test"}[row["split"]]
        for dicom, row in frontal.items()
    }
    gold_path = splits_dir / "images_to_avoid.csv"
    assert _columns(gold_path) == ["subject_id", "study_id", "dicom_id", "path", "ViewPosition"]
    gold = set(pd.read_csv(gold_path)["dicom_id"])
    assert gold and all(listed[dicom] == "test" for dicom in gold)
    assert {dicom for dicom, name in listed.items() if name == "test"} - gold


def test_imagenome_scene_graphs(exported: dict) -> None:
    root, studies, rows = exported["mimic"]
    graphs = root / "chest-imagenome" / "silver_dataset" / "scene_graph"
    frontal = [row for row in rows if row["view"] != "LATERAL"]
    assert sorted(p.name for p in graphs.iterdir()) == sorted(
        f"{row['image_id']}_SceneGraph.json" for row in frontal
    )
    for row, study in zip(frontal, studies, strict=True):
        graph = json.loads((graphs / f"{row['image_id']}_SceneGraph.json").read_text())
        assert list(graph) == [
            "image_id", "viewpoint", "patient_id", "study_id", "objects", "attributes",
            "relationships",
        ]  # fmt: skip
        assert graph["image_id"] == row["image_id"] and graph["viewpoint"] == row["view"]
        assert str(graph["patient_id"]) == row["patient_id"]
        assert str(graph["study_id"]) == row["study_id"]
        assert [obj["bbox_name"] for obj in graph["objects"]] == list(CHEST_IMAGENOME_REGIONS)
        for obj in graph["objects"]:
            assert obj["object_id"] == f"{row['image_id']}_{obj['bbox_name']}"
            original = [obj[f"original_{k}"] for k in ("x1", "y1", "x2", "y2")]
            assert original == row["regions"][obj["bbox_name"]]
            for axis, size in (("x", WIDTH), ("y", HEIGHT)):
                for end in "12":
                    scaled = obj[f"original_{axis}{end}"] * 224 / size
                    assert obj[f"{axis}{end}"] == pytest.approx(scaled, abs=0.01)
                    assert 0 <= obj[f"{axis}{end}"] <= 224
            assert obj["width"] == pytest.approx(obj["x2"] - obj["x1"], abs=0.02)
            assert obj["height"] == pytest.approx(obj["y2"] - obj["y1"], abs=0.02)
            assert obj["original_width"] == pytest.approx(
                obj["original_x2"] - obj["original_x1"], abs=0.02
            )
        _check_attributes(graph, study)


def _check_attributes(graph: dict, study: RenderedStudy) -> None:
    """Every region a mention names carries that mention's sentence and yes/no label."""
    by_region = {entry["bbox_name"]: entry for entry in graph["attributes"]}
    named = {region for mention in study.report.mentions for region in mention.regions}
    assert set(by_region) == named
    for entry in graph["attributes"]:
        assert list(entry) == ["bbox_name", "phrases", "attributes", "phrase_IDs", "sections"]
        assert len(entry["phrases"]) == len(entry["attributes"]) == len(entry["phrase_IDs"])
        assert len(entry["sections"]) == len(entry["phrases"])
        assert all(pid.startswith(f"{graph['study_id']}|") for pid in entry["phrase_IDs"])
        for labels in entry["attributes"]:
            assert labels == sorted(labels)
            assert ("nlp|yes|abnormal" in labels) != ("nlp|yes|normal" in labels)
    for mention in study.report.mentions:
        kind = FINDING_TYPES[mention.finding]
        said = "no" if mention.existence == "absent" else "yes"
        for region in mention.regions:
            entry = by_region[region]
            labels = entry["attributes"][entry["phrases"].index(mention.sentence)]
            assert f"{kind.category}|{said}|{kind.imagenome_label}" in labels
            if said == "yes":
                assert "nlp|yes|abnormal" in labels


# ---- RSNA ----------------------------------------------------------------------------------------


def test_rsna_labels_follow_the_findings(exported: dict) -> None:
    root, studies, rows = exported["rsna"]
    base = root / "rsna"
    assert _columns(base / "stage_2_train_labels.csv") == [
        "patientId", "x", "y", "width", "height", "Target"
    ]  # fmt: skip
    assert _columns(base / "stage_2_detailed_class_info.csv") == ["patientId", "class"]
    labels = pd.read_csv(base / "stage_2_train_labels.csv")
    classes = pd.read_csv(base / "stage_2_detailed_class_info.csv")
    assert list(labels["patientId"]) == list(classes["patientId"])
    uuid_pattern = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    assert labels["patientId"].str.fullmatch(uuid_pattern).all()
    for row, study in zip(rows, studies, strict=True):
        mine = labels[labels["patientId"] == row["image_id"]]
        kinds = set(classes[classes["patientId"] == row["image_id"]]["class"])
        expected = [
            box.as_list() for f in study.scene.findings if f.type.rsna_opacity for box in f.boxes
        ]
        if expected:
            assert (mine["Target"] == 1).all() and kinds == {"Lung Opacity"}
            got = [[r.x, r.y, r.x + r.width, r.y + r.height] for r in mine.itertuples()]
            assert np.allclose(got, expected, atol=0.02)
        else:
            assert len(mine) == 1 and mine["Target"].iloc[0] == 0
            assert mine[["x", "y", "width", "height"]].isna().all(axis=None)
            normal = "Normal" if study.scene.is_normal else "No Lung Opacity / Not Normal"
            assert kinds == {normal}
    assert set(classes["class"]) == {"Lung Opacity", "No Lung Opacity / Not Normal", "Normal"}


def test_rsna_dicoms_display_as_the_image(exported: dict) -> None:
    root, studies, rows = exported["rsna"]
    photometric, bits, rescaled, windowed = set(), set(), set(), set()
    for row, study in zip(rows, studies, strict=True):
        dataset = pydicom.dcmread(root / row["path"])
        assert dataset.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert dataset.Modality == "CR" and dataset.PatientID == row["image_id"]
        assert dataset.BitsAllocated == 16 and dataset.PixelRepresentation == 0
        assert 12 <= dataset.BitsStored <= 16 and dataset.HighBit == dataset.BitsStored - 1
        top = (1 << dataset.BitsStored) - 1
        stored = dataset.pixel_array
        assert stored.shape == (HEIGHT, WIDTH) and int(stored.max()) <= top
        # A correct reader: modality LUT, then MONOCHROME1 inverted over the stored range.
        values = apply_modality_lut(stored, dataset).astype(np.float64)
        low = float(apply_modality_lut(np.array([0]), dataset)[0])
        high = float(apply_modality_lut(np.array([top]), dataset)[0])
        display = (values - low) / (high - low)
        if dataset.PhotometricInterpretation == "MONOCHROME1":
            display = 1.0 - display
        assert np.abs(display - study.frontal).max() <= 0.5 / top + 1e-6
        photometric.add(dataset.PhotometricInterpretation)
        bits.add(dataset.BitsStored)
        rescaled.add("RescaleSlope" in dataset)
        windowed.add("WindowCenter" in dataset)
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}
    assert len(bits) > 1 and rescaled == {True, False} and windowed == {True, False}


# ---- NIH -----------------------------------------------------------------------------------------


def _real_nih_header(name: str) -> str:
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None:
        pytest.skip("torchxrayvision's label files are not installed")
    with gzip.open(Path(spec.submodule_search_locations[0]) / "data" / name, "rt") as handle:
        return handle.readline().rstrip("\n")


def test_nih_headers_are_the_real_ones(exported: dict) -> None:
    root = exported["nih"][0] / "nih"
    entry_header = (root / "Data_Entry_2017.csv").read_text().split("\n")[0]
    assert entry_header == _real_nih_header("Data_Entry_2017_v2020.csv.gz")
    bbox_header = (root / "BBox_List_2017.csv").read_text().split("\n")[0]
    assert bbox_header == _real_nih_header("BBox_List_2017.csv.gz")


def test_nih_entries_boxes_and_lists(exported: dict) -> None:
    root, studies, rows = exported["nih"]
    base = root / "nih"
    entries = pd.read_csv(base / "Data_Entry_2017.csv").set_index("Image Index")
    boxes = pd.read_csv(base / "BBox_List_2017.csv")
    for row, study in zip(rows, studies, strict=True):
        name = row["image_id"]
        assert re.fullmatch(rf"{study.patient_index + 1:08d}_{study.study_index:03d}\.png", name)
        assert row["path"] == f"nih/images/{name}"
        entry = entries.loc[name]
        labels = sorted({f.type.nih for f in study.scene.findings if f.type.nih})
        assert entry["Finding Labels"] == ("|".join(labels) or "No Finding")
        assert (entry["Follow-up #"], entry["Patient ID"]) == (
            study.study_index,
            int(row["patient_id"]),
        )
        assert (entry["OriginalImage[Width"], entry["Height]"]) == (WIDTH, HEIGHT)
        expected = sorted(
            (f.type.nih_box, *box.as_list())
            for f in study.scene.findings
            if f.type.nih_box
            for box in f.boxes
        )
        mine = boxes[boxes["Image Index"] == name]
        # Columns: Image Index, Finding Label, x, y, w, h (+ three empty ones).
        got = sorted(
            (label, x, y, x + w, y + h) for _, label, x, y, w, h, *_ in mine.itertuples(index=False)
        )
        assert [g[0] for g in got] == [e[0] for e in expected]
        got_boxes = np.array([g[1:] for g in got]).reshape(-1, 4)
        assert np.allclose(got_boxes, np.array([e[1:] for e in expected]).reshape(-1, 4), atol=0.02)
    assert len(boxes) > 0
    train_val = (base / "train_val_list.txt").read_text().split()
    test = (base / "test_list.txt").read_text().split()
    assert sorted(train_val + test) == sorted(row["image_id"] for row in rows)
    patients = {name.split("_")[0] for name in test}
    assert patients and not patients & {name.split("_")[0] for name in train_val}


def test_png_has_no_time_chunk(exported: dict) -> None:
    root, _, rows = exported["nih"]
    data = (root / rows[0]["path"]).read_bytes()
    assert data.startswith(b"\x89PNG") and b"tIME" not in data


# ---- CheXpert ------------------------------------------------------------------------------------


def test_chexpert_csvs(exported: dict) -> None:
    root, studies, rows = exported["chexpert"]
    base = root / "chexpert" / "CheXpert-v1.0-small"
    columns = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_CSV_LABELS]
    frames = {}
    for split in ("train", "valid"):
        assert _columns(base / f"{split}.csv") == columns
        frames[split] = pd.read_csv(base / f"{split}.csv").set_index("Path")
    assert set(frames["valid"][list(CHEXPERT_CSV_LABELS)].stack()) <= {0.0, 1.0}
    study_of = {(s.patient_index, s.study_index): s for s in studies}
    for row in rows:
        split = row["split"]
        frame = frames[split]
        record = frame.loc[row["image_id"]]
        assert row["path"] == f"chexpert/{row['image_id']}"
        match = re.fullmatch(
            rf"CheXpert-v1\.0-small/{split}/patient(\d{{5}})/study(\d+)/"
            r"(view1_frontal|view2_lateral)\.jpg",
            row["image_id"],
        )
        assert match
        study = study_of[(int(match[1]) - 1, int(match[2]) - 1)]
        assert split == ("train" if study.split == "train" else "valid")
        lateral = match[3] == "view2_lateral"
        assert record["Frontal/Lateral"] == ("Lateral" if lateral else "Frontal")
        assert pd.isna(record["AP/PA"]) if lateral else record["AP/PA"] == row["view"]
        assert record["Sex"] == {"M": "Male", "F": "Female"}[study.scene.anatomy.sex]
        if split == "train":
            labels = study.report.chexpert_labels()
            for name in CHEXPERT_CSV_LABELS:
                value = labels.get(name)
                assert pd.isna(record[name]) if value is None else record[name] == value
        else:
            positive = {label for f in study.scene.findings for label in f.type.chexpert}
            for name in CHEXPERT_CSV_LABELS:
                if name != "No Finding":
                    assert record[name] == float(name in positive)
            pathology = any(not f.is_device for f in study.scene.findings)
            assert record["No Finding"] == float(not pathology)
    assert any(row["view"] == "LATERAL" for row in rows)


# ---- IU X-Ray ------------------------------------------------------------------------------------


def test_iu_xray_annotation(exported: dict) -> None:
    root, studies, rows = exported["iu_xray"]
    annotation = json.loads((root / "iu_xray" / "annotation.json").read_text())
    assert list(annotation) == ["train", "val", "test"]
    entries = [entry for split in annotation.values() for entry in split]
    assert len(entries) == len(studies)
    for split, items in annotation.items():
        for entry in items:
            assert list(entry) == ["id", "report", "image_path", "split"]
            assert entry["split"] == split
            assert re.fullmatch(r"CXR\d+_IM-\d{4}", entry["id"])
            assert entry["image_path"] == [f"{entry['id']}/0.png", f"{entry['id']}/1.png"]
            assert entry["report"] and "___" not in entry["report"]
            for image_path in entry["image_path"]:
                assert (root / "iu_xray" / "images" / image_path).is_file()
    by_id = {entry["id"]: entry for entry in entries}
    for study, frontal in zip(studies, rows[::2], strict=True):
        text = f"{study.report.findings} {study.report.impression}".replace("___", "XXXX")
        assert by_id[frontal["study_id"]]["report"] == " ".join(text.split())
    assert [row["view"] for row in rows].count("LATERAL") == len(studies)


def test_iu_xray_needs_a_lateral(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lateral"):
        EXPORTERS["iu_xray"](tmp_path).add(_study("iu_xray", 0, lateral=False))


# ---- VQA-RAD and SLAKE ---------------------------------------------------------------------------


def _kept_questions(studies: list[RenderedStudy], split_names: dict[str, str]) -> int:
    """Open questions all stay; in each exported split a closed text keeps its rarer answer's
    count of each answer."""
    kept = 0
    for split in set(split_names.values()):
        every = [
            qa for study in studies if split_names[study.split] == split for qa in study.questions
        ]
        closed = Counter((qa.question, qa.answer) for qa in every if qa.answer_type == "CLOSED")
        texts = {question for question, _ in closed}
        kept += sum(2 * min(closed[(text, "yes")], closed[(text, "no")]) for text in texts)
        kept += sum(qa.answer_type == "OPEN" for qa in every)
    return kept


def _assert_closed_balanced(entries: list[dict]) -> None:
    answers = Counter((e["question"], e["answer"]) for e in entries if e["answer_type"] == "CLOSED")
    for (question, answer), count in answers.items():
        other = {"yes": "no", "no": "yes"}[answer]
        assert answers[(question, other)] == count, question


def test_vqa_rad_files(exported: dict) -> None:
    root, studies, rows = exported["vqa_rad"]
    base = root / "vqa_rad"
    fields = [
        "qid", "image_name", "image_organ", "answer", "answer_type", "question_type", "question",
        "phrase_type",
    ]  # fmt: skip
    train = json.loads((base / "trainset.json").read_text())
    test = json.loads((base / "testset.json").read_text())
    public = json.loads((base / "VQA_RAD Dataset Public.json").read_text())
    assert sorted(public, key=lambda e: e["qid"]) == sorted(train + test, key=lambda e: e["qid"])
    assert len(public) == _kept_questions(studies, EXPORTERS["vqa_rad"].split_names)
    assert any(entry["answer_type"] == "CLOSED" for entry in public)
    split_of = {row["image_id"]: row["split"] for row in rows}
    for split, entries in (("train", train), ("test", test)):
        assert entries
        for entry in entries:
            assert list(entry) == fields
            assert entry["image_organ"] == "CHEST" and entry["answer_type"] in ("OPEN", "CLOSED")
            assert split_of[entry["image_name"]] == split
            assert re.fullmatch(r"synpic\d+\.jpg", entry["image_name"])
            assert (base / "VQA_RAD Image Folder" / entry["image_name"]).is_file()
        _assert_closed_balanced(entries)


def test_slake_files(exported: dict) -> None:
    root, studies, rows = exported["slake"]
    base = root / "slake"
    fields = [
        "img_id", "img_name", "question", "answer", "q_lang", "location", "modality",
        "answer_type", "base_type", "content_type", "qid",
    ]  # fmt: skip
    entries = []
    split_of = {row["image_id"]: row["split"] for row in rows}
    for split in ("train", "validate", "test"):
        items = json.loads((base / f"{split}.json").read_text(encoding="utf-8"))
        assert items
        for entry in items:
            assert list(entry) == fields
            assert entry["img_name"] == f"xmlab{entry['img_id']}/source.jpg"
            assert split_of[entry["img_name"]] == split
            assert (base / "imgs" / entry["img_name"]).is_file()
            assert entry["modality"] == "X-Ray" and entry["base_type"] == "vqa"
        _assert_closed_balanced([entry for entry in items if entry["q_lang"] == "en"])
        entries += items
    english = [entry for entry in entries if entry["q_lang"] == "en"]
    chinese = [entry for entry in entries if entry["q_lang"] == "zh"]
    assert len(english) == _kept_questions(studies, EXPORTERS["slake"].split_names)
    assert any(entry["answer_type"] == "CLOSED" for entry in english)
    assert chinese and all(e["answer_type"] == "CLOSED" for e in chinese)
    assert all(e["answer"] in ("是", "否") for e in chinese)
    assert len({entry["qid"] for entry in entries}) == len(entries)
