"""CheXpert and NIH ChestX-ray14 readers: on the synthetic world's exports (checked against
truth.jsonl and the exported CSVs) and on the real label files that ship with torchxrayvision
(labels-only), whose counts must match the published facts; plus bad input.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrvlp import cli
from cxrvlp.constants import CHEXPERT_CSV_LABELS, NIH_LABELS
from cxrvlp.data.labels import CHEXPERT_COMMON_POLICY
from cxrvlp.data.readers.chexpert import CheXpertDataset
from cxrvlp.data.readers.nih import NIHDataset
from cxrvlp.errors import DataError, MissingFileError

WORLD_ARGS = ["--studies", "16", "--image-size", "96", "--cohorts", "mimic,nih,chexpert"]
REAL_DATA = Path(importlib.util.find_spec("torchxrayvision").submodule_search_locations[0]) / "data"


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small synthetic world per session, shared with the MIMIC reader tests."""
    root = tmp_path_factory.getbasetemp() / "readers-world"
    if not (root / "truth.jsonl").exists():
        assert (
            cli.main(["synth", "--out", str(root), *WORLD_ARGS, "--quiet", "--workers", "1"]) == 0
        )
    return root


def truth_rows(world: Path, dataset: str) -> dict[str, dict]:
    rows = [json.loads(line) for line in (world / "truth.jsonl").read_text().splitlines()]
    return {row["image_id"]: row for row in rows if row["dataset"] == dataset}


def linked_root(tmp_path_factory: pytest.TempPathFactory, name: str, files: dict[str, str]):
    """A root holding real label files under the names the reader expects (symlinks)."""
    root = tmp_path_factory.mktemp(name)
    for link, real in files.items():
        (root / link).symlink_to(REAL_DATA / real)
    return root


# ---- CheXpert: synthetic -------------------------------------------------------------------


@pytest.fixture(scope="session")
def chexpert(world: Path) -> CheXpertDataset:
    return CheXpertDataset(world / "chexpert")


def test_chexpert_records_match_truth(chexpert: CheXpertDataset, world: Path):
    truth = truth_rows(world, "chexpert")
    frontal = {k: row for k, row in truth.items() if row["view"] != "LATERAL"}
    assert chexpert.problems == []
    assert chexpert.n_rows == len(truth)
    assert chexpert.n_filtered_views == len(truth) - len(frontal)
    assert {r.image_id for r in chexpert.records} == set(frontal)
    for record in chexpert.records:
        row = frontal[record.image_id]
        assert record.image_path == world / row["path"]
        assert (record.patient_id, record.study_id) == (row["patient_id"], row["study_id"])
        assert (record.view, record.split) == (row["view"], row["split"])


def test_chexpert_labels_match_csv(chexpert: CheXpertDataset, world: Path):
    release = world / "chexpert/CheXpert-v1.0-small"
    exported = pd.concat([pd.read_csv(release / f"{s}.csv") for s in ("train", "valid")])
    by_path = exported.set_index("Path")
    assert chexpert.label_names == CHEXPERT_CSV_LABELS
    for record in chexpert.records:
        expected = by_path.loc[record.image_id, list(CHEXPERT_CSV_LABELS)].to_numpy(np.float32)
        np.testing.assert_array_equal(record.labels, expected)


def test_chexpert_root_views_and_splits(chexpert: CheXpertDataset, world: Path):
    release = CheXpertDataset(world / "chexpert/CheXpert-v1.0-small")
    assert [r.image_path for r in release.records] == [r.image_path for r in chexpert.records]
    every_view = CheXpertDataset(world / "chexpert", views=None)
    assert len(every_view) == every_view.n_rows == chexpert.n_rows
    assert every_view.n_filtered_views == 0
    assert "LATERAL" in {r.view for r in every_view.records}
    valid = CheXpertDataset(world / "chexpert", split="valid", views=None)
    truth = truth_rows(world, "chexpert")
    assert {r.image_id for r in valid.records} == {
        k for k, row in truth.items() if row["split"] == "valid"
    }
    with pytest.raises(ValueError, match="split"):
        CheXpertDataset(world / "chexpert", split="test")


def test_chexpert_loads_images(chexpert: CheXpertDataset, world: Path):
    truth = truth_rows(world, "chexpert")
    sample = chexpert[0]
    row = truth[sample.image_id]
    assert sample.error == ""
    assert sample.image.shape == (1, row["height"], row["width"])
    assert sample.labels.shape == (len(CHEXPERT_CSV_LABELS),)


def test_chexpert_default_policy_is_the_common_one(tmp_path: Path):
    """U-Ones for Atelectasis, U-Zeros for Cardiomegaly, other uncertain labels masked."""
    header = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_CSV_LABELS)
    values = {"Atelectasis": "-1.0", "Cardiomegaly": "-1.0", "Lung Opacity": "-1.0"}
    row = ",".join(values.get(name, "") for name in CHEXPERT_CSV_LABELS)
    path = "CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg"
    (tmp_path / "train.csv").write_text(f"{header}\n{path},Male,60,Frontal,PA,{row}\n")
    dataset = CheXpertDataset(tmp_path, labels_only=True, split="train")
    assert dataset.label_policy == CHEXPERT_COMMON_POLICY
    sample = dataset[0]
    labels = dict(zip(CHEXPERT_CSV_LABELS, sample.labels.tolist(), strict=True))
    mask = dict(zip(CHEXPERT_CSV_LABELS, sample.label_mask.tolist(), strict=True))
    assert (labels["Atelectasis"], mask["Atelectasis"]) == (1.0, True)
    assert (labels["Cardiomegaly"], mask["Cardiomegaly"]) == (0.0, True)
    assert mask["Lung Opacity"] is False
    assert dataset.records[0].image_path == tmp_path / path.removeprefix("CheXpert-v1.0/")
    explicit = CheXpertDataset(tmp_path, labels_only=True, split="train", label_policy="ones")
    assert explicit[0].labels[CHEXPERT_CSV_LABELS.index("Lung Opacity")] == 1.0


def test_chexpert_bad_input(world: Path, tmp_path: Path):
    shutil.copytree(world / "chexpert", tmp_path / "chexpert")
    root = tmp_path / "chexpert"
    images = sorted((root / "CheXpert-v1.0-small/train").rglob("view1_frontal.jpg"))
    images[0].unlink()
    dataset = CheXpertDataset(root)
    assert [p.reason for p in dataset.problems] == ["image listed but missing"]
    assert dataset.problems[0].source.endswith(images[0].relative_to(root).as_posix())
    (root / "CheXpert-v1.0-small/valid.csv").unlink()
    with pytest.raises(MissingFileError, match=r"valid\.csv.*CheXpert-v1\.0\(-small\) folder"):
        CheXpertDataset(root, split="valid")
    train_only = CheXpertDataset(root, labels_only=True)  # valid.csv optional without split
    assert {r.split for r in train_only.records} == {"train"}
    with pytest.raises(MissingFileError, match=r"train\.csv"):
        CheXpertDataset(tmp_path)


def test_unreadable_or_foreign_label_files_name_the_file(tmp_path: Path):
    """A label file that is not CSV, or lacks the publisher's columns, is a DataError naming it."""
    (tmp_path / "train.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match=r"CheXpert.*train\.csv cannot be read as CSV"):
        CheXpertDataset(tmp_path, labels_only=True, split="train")
    (tmp_path / "train.csv").write_text("Path,Sex\nCheXpert-v1.0/train/a.jpg,Male\n")
    with pytest.raises(DataError, match=r"train\.csv lacks column\(s\) \['Age'"):
        CheXpertDataset(tmp_path, labels_only=True, split="train")
    (tmp_path / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels\na.png,Mass\n")
    with pytest.raises(DataError, match=r"Data_Entry_2017\.csv lacks column\(s\)"):
        NIHDataset(tmp_path, labels_only=True)


# ---- CheXpert: the real train.csv (labels only) --------------------------------------------


@pytest.fixture(scope="session")
def real_chexpert(tmp_path_factory: pytest.TempPathFactory) -> CheXpertDataset:
    root = linked_root(tmp_path_factory, "chexpert-real", {"train.csv.gz": "chexpert_train.csv.gz"})
    # Parsed once per session: 223k rows.
    return CheXpertDataset(root, split="train", views=None, labels_only=True)


def test_real_chexpert_counts(real_chexpert: CheXpertDataset):
    summary = real_chexpert.summary()
    assert real_chexpert.n_rows == len(real_chexpert) == 223_414
    assert real_chexpert.problems == []
    assert summary["n_patients"] == 64_540
    # The published label statistics of the CheXpert training set.
    per_label = summary["per_label"]
    assert per_label["No Finding"]["positive"] == 22_381
    assert per_label["Pleural Effusion"]["positive"] == 86_187
    assert per_label["Pleural Effusion"]["uncertain"] == 11_628
    for name, counts in per_label.items():
        assert sum(counts.values()) == 223_414, name
        assert counts["positive"] > 0, name
    frontal = sum(r.view != "LATERAL" for r in real_chexpert.records)
    assert frontal == 191_027
    assert all(r.image_path.parts[-4] == "train" for r in real_chexpert.records[:100])


# ---- NIH: synthetic ------------------------------------------------------------------------


def read_bbox_csv(path: Path) -> dict[str, list[tuple[str, list[float]]]]:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    boxes: dict[str, list[tuple[str, list[float]]]] = {}
    for image, label, x, y, w, h, *_ in rows:
        x1, y1 = float(x), float(y)
        boxes.setdefault(image, []).append((label, [x1, y1, x1 + float(w), y1 + float(h)]))
    return boxes


@pytest.fixture(scope="session")
def nih(world: Path) -> NIHDataset:
    return NIHDataset(world / "nih")


def test_nih_records_match_truth_and_files(nih: NIHDataset, world: Path):
    truth = truth_rows(world, "nih")
    assert nih.problems == []
    assert nih.n_rows == len(truth)
    assert {r.image_id for r in nih.records} == set(truth)
    entries = pd.read_csv(world / "nih/Data_Entry_2017.csv", dtype=str).set_index("Image Index")
    boxes = read_bbox_csv(world / "nih/BBox_List_2017.csv")
    assert boxes, "the synthetic NIH export should hold some boxes"
    for record in nih.records:
        row = truth[record.image_id]
        assert record.image_path == world / row["path"]
        assert record.patient_id == row["patient_id"] == entries.loc[record.image_id, "Patient ID"]
        assert record.split == {"train_val": "train", "test": "test"}[row["split"]]
        findings = set(entries.loc[record.image_id, "Finding Labels"].split("|")) - {"No Finding"}
        assert {n for n, v in zip(NIH_LABELS, record.labels, strict=True) if v == 1} == findings
        assert set(np.unique(record.labels)) <= {0.0, 1.0}
        expected = boxes.get(record.image_id)
        if expected is None:
            assert record.boxes is None and record.box_labels == ()
        else:
            assert record.box_labels == tuple(label for label, _ in expected)
            np.testing.assert_allclose(record.boxes, [b for _, b in expected], atol=1e-3)
    assert nih.summary()["n_boxes"] == sum(len(v) for v in boxes.values())


def test_nih_loads_image_with_boxes(nih: NIHDataset, world: Path):
    index = next(i for i, r in enumerate(nih.records) if r.boxes is not None)
    sample = nih[index]
    row = truth_rows(world, "nih")[sample.image_id]
    assert sample.image.shape == (1, row["height"], row["width"])
    np.testing.assert_allclose(sample.boxes.numpy(), nih.records[index].boxes, atol=1e-4)


def test_nih_finds_images_in_the_publishers_folders(nih: NIHDataset, world, tmp_path: Path):
    shutil.copytree(world / "nih", tmp_path / "nih")
    root = tmp_path / "nih"
    # As the twelve archives unpack: images_001/images/..., images_002/images/...
    for number, image in enumerate(sorted((root / "images").glob("*.png"))):
        target = root / f"images_{number % 2 + 1:03d}/images" / image.name
        target.parent.mkdir(parents=True, exist_ok=True)
        image.rename(target)
    (root / "images").rmdir()
    dataset = NIHDataset(root)
    assert dataset.problems == []
    assert len(dataset) == len(nih)
    assert {r.image_path.parent.parent.name for r in dataset.records} == {
        "images_001",
        "images_002",
    }


def test_nih_patient_split_without_lists(world: Path, tmp_path: Path, caplog):
    shutil.copytree(world / "nih", tmp_path / "nih")
    root = tmp_path / "nih"
    (root / "test_list.txt").unlink()
    with pytest.raises(MissingFileError, match=r"test_list\.txt"):
        NIHDataset(root)
    (root / "train_val_list.txt").unlink()
    with caplog.at_level(logging.INFO, logger="cxrvlp.data.readers.nih"):
        dataset = NIHDataset(root)
    assert "70/15/15 patient split" in caplog.text
    split_of_patient: dict[str, set[str]] = {}
    for record in dataset.records:
        split_of_patient.setdefault(record.patient_id, set()).add(record.split)
    assert all(len(splits) == 1 for splits in split_of_patient.values())
    assert {r.split for r in dataset.records} <= {"train", "validate", "test"}


def test_nih_bad_input(nih: NIHDataset, world: Path, tmp_path: Path):
    shutil.copytree(world / "nih", tmp_path / "nih")
    root = tmp_path / "nih"
    missing = nih.records[0].image_id
    (root / "images" / missing).unlink()
    dataset = NIHDataset(root)
    assert [(p.source, p.reason) for p in dataset.problems] == [
        (f"images/{missing}", "image listed but missing")
    ]
    assert len(dataset) == len(nih) - 1
    (root / "Data_Entry_2017.csv").unlink()
    with pytest.raises(MissingFileError, match=r"Data_Entry_2017\.csv.*NIH ChestX-ray14"):
        NIHDataset(root)


# ---- NIH: the real Data_Entry and BBox files (labels only) ---------------------------------


@pytest.fixture(scope="session")
def real_nih(tmp_path_factory: pytest.TempPathFactory) -> NIHDataset:
    files = {name: name for name in ("Data_Entry_2017_v2020.csv.gz", "BBox_List_2017.csv.gz")}
    return NIHDataset(linked_root(tmp_path_factory, "nih-real", files), labels_only=True)


def test_real_nih_counts(real_nih: NIHDataset):
    summary = real_nih.summary()
    assert real_nih.problems == []
    assert real_nih.n_rows == summary["n_images"] == 112_120
    assert summary["n_patients"] == 30_805
    assert summary["n_boxes"] == 984
    assert sum(r.boxes is not None for r in real_nih.records) == 880
    positives = {name: counts["positive"] for name, counts in summary["per_label"].items()}
    # Published per-class counts of ChestX-ray14.
    assert positives["Infiltration"] == 19_894
    assert positives["Hernia"] == 227
    assert sum(not r.labels.any() for r in real_nih.records) == 60_361  # "No Finding"
    box_labels = {label for r in real_nih.records for label in r.box_labels}
    assert box_labels == {
        "Atelectasis",
        "Cardiomegaly",
        "Effusion",
        "Infiltrate",
        "Mass",
        "Nodule",
        "Pneumonia",
        "Pneumothorax",
    }


def test_real_nih_boxes_are_corners(real_nih: NIHDataset):
    raw = pd.read_csv(
        REAL_DATA / "BBox_List_2017.csv.gz", header=None, skiprows=1, usecols=range(6)
    )
    boxes = np.concatenate([r.boxes for r in real_nih.records if r.boxes is not None])
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    np.testing.assert_allclose((boxes[:, 2] - boxes[:, 0]).sum(), raw[4].sum(), rtol=1e-5)
    np.testing.assert_allclose((boxes[:, 3] - boxes[:, 1]).sum(), raw[5].sum(), rtol=1e-5)


def test_real_nih_fallback_split_is_by_patient(real_nih: NIHDataset):
    per_split = real_nih.summary()["per_split"]
    assert set(per_split) == {"train", "validate", "test"}
    assert 0.6 < per_split["train"] / 112_120 < 0.8
    split_of_patient: dict[str, str] = {}
    for record in real_nih.records:
        assert split_of_patient.setdefault(record.patient_id, record.split) == record.split
