"""COVIDx CXR reader: split files of the shipped layout (invented ids), tiny PNG/JPEG images."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from cxrvlp.data.readers import reader_class
from cxrvlp.data.readers.covidx import COVIDxDataset
from cxrvlp.data.sample import collate_samples
from cxrvlp.data.transforms import ResizePad
from cxrvlp.errors import MissingFileError

SOURCES = ("ricord", "sirm", "rsna", "bimcv")


def _write_image(path: Path, value: int = 120, size: tuple[int, int] = (16, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Grey RGB for JPEG (as many sources ship), 8-bit grey for PNG.
    mode = "RGB" if path.suffix == ".jpg" else "L"
    colour = (value,) * 3 if mode == "RGB" else value
    Image.new(mode, size, colour).save(path)


def _write_split(root: Path, name: str, lines: list[str], folder: str | None = None) -> None:
    """The split file, and an image for every well-formed line under ``folder``."""
    (root / name).write_text("\n".join(lines) + "\n")
    if folder is None:
        return
    for line in lines:
        tokens = line.split()
        if len(tokens) >= 4:
            _write_image(root / folder / " ".join(tokens[1:-2]))


def _line(patient: str, image: int, cls: str, suffix: str = "png") -> str:
    source = SOURCES[image % len(SOURCES)]
    return f"{patient} {source}-{patient}-{image}.{suffix} {cls} {source}"


@pytest.fixture
def cxr2_root(tmp_path) -> Path:
    """CXR-2 layout: train.txt (40 patients, 60 images) and test.txt (6 images), no val.txt."""
    root = tmp_path / "covidx"
    root.mkdir()
    train = []
    for n in range(40):
        patient = f"P{n:04d}-{n * 7:06d}"
        for image in range(2 if n % 2 == 0 else 1):
            cls = "positive" if n % 3 == 0 else "negative"
            train.append(_line(patient, image, cls, "jpg" if n % 4 == 1 else "png"))
    test = [_line(f"T{n:03d}", 0, "positive" if n < 2 else "negative") for n in range(6)]
    _write_split(root, "train.txt", train, "train")
    _write_split(root, "test.txt", test, "test")
    return root


def _patients(dataset: COVIDxDataset, split: str) -> set[str]:
    return {r.patient_id for r in dataset.records if r.split == split}


def test_cxr2_without_val_txt_splits_10_percent_of_train_patients(cxr2_root):
    dataset = COVIDxDataset(cxr2_root)
    assert dataset.problems == [] and dataset.n_rows == 66 and len(dataset) == 66
    assert dataset.label_names == ("COVID-19",) and dataset.exclusive_labels is False
    train, validate, test = (_patients(dataset, s) for s in ("train", "validate", "test"))
    assert len(validate) == 4 and len(train) == 36 and len(test) == 6
    assert not (train & validate) and not (train & test) and not (validate & test)
    # Per split: the project names, split=None = all.
    sizes = {s: len(COVIDxDataset(cxr2_root, split=s)) for s in ("train", "validate", "test")}
    assert sizes["test"] == 6 and sizes["train"] + sizes["validate"] == 60
    assert sizes["validate"] == sum(1 for r in dataset.records if r.patient_id in validate)
    # Deterministic for a seed, and the seed matters.
    assert _patients(COVIDxDataset(cxr2_root, seed=0), "validate") == validate
    assert _patients(COVIDxDataset(cxr2_root, seed=1), "validate") != validate
    assert len(_patients(COVIDxDataset(cxr2_root, val_fraction=0.2), "validate")) == 8


def test_cxr2_records_carry_labels_ids_and_sources(cxr2_root):
    dataset = COVIDxDataset(cxr2_root)
    first = dataset.records[0]
    assert first.image_id == first.study_id == "ricord-P0000-000000-0.png"
    assert first.patient_id == "P0000-000000" and first.extra == {"data_source": "ricord"}
    assert first.image_path == cxr2_root / "train" / first.image_id
    assert first.labels.dtype == np.float32 and first.labels.tolist() == [1.0]
    test = [r for r in dataset.records if r.split == "test"]
    assert [r.labels.tolist() for r in test] == [[1.0], [1.0], [0.0], [0.0], [0.0], [0.0]]
    assert all(r.image_path.parent == cxr2_root / "test" for r in test)
    summary = dataset.summary()
    # Patients n % 3 == 0 are positive; even ones have two images: 0,6,..,36 (7 x 2) + 3,9,..,39
    # (7 x 1) = 21 in train, 2 in test.
    assert summary["per_class"] == {"positive": 23, "negative": 43}
    assert summary["per_label"]["COVID-19"]["positive"] == 23
    assert sum(summary["per_source"].values()) == 66 and set(summary["per_source"]) <= set(SOURCES)


def test_val_txt_is_the_validate_split_and_falls_back_to_train_folder(tmp_path):
    root = tmp_path / "covidx"
    root.mkdir()
    train = [_line("A1", 0, "positive"), _line("A2", 0, "negative")]
    _write_split(root, "train.txt", train, "train")
    _write_split(root, "test.txt", [_line("T1", 0, "negative")], "test")
    val = [_line("V1", 0, "positive"), _line("V2", 0, "negative"), _line("V3", 0, "negative")]
    (root / "val.txt").write_text("\n".join(val) + "\n")
    _write_image(root / "val" / "ricord-V1-0.png")
    _write_image(root / "train" / "ricord-V2-0.png")  # shipped among the training images
    dataset = COVIDxDataset(root)
    by_id = {r.image_id: r for r in dataset.records}
    assert {s: len(COVIDxDataset(root, split=s)) for s in ("train", "validate", "test")} == {
        "train": 2,
        "validate": 2,
        "test": 1,
    }
    # With val.txt no training patient is moved to validate.
    assert {r.split for r in dataset.records if r.patient_id.startswith("A")} == {"train"}
    assert by_id["ricord-V1-0.png"].image_path == root / "val" / "ricord-V1-0.png"
    assert by_id["ricord-V2-0.png"].image_path == root / "train" / "ricord-V2-0.png"
    assert "ricord-V3-0.png" not in by_id
    assert [str(p) for p in dataset.problems] == ["val/ricord-V3-0.png: image listed but missing"]
    assert dataset[list(by_id).index("ricord-V2-0.png")].image.shape == (1, 16, 16)


def test_bad_lines_are_counted_problems_with_line_numbers(tmp_path):
    root = tmp_path / "covidx"
    root.mkdir()
    lines = [
        _line("A1", 0, "positive"),
        "",  # blank lines are skipped but still numbered
        "A2 ricord-A2-0.png positive",  # line 3: three tokens
        _line("A3", 0, "maybe"),  # line 4: unknown class
        _line("A4", 0, "negative"),
        _line("A1", 0, "negative"),  # line 6: the image of line 1 again
        "   ",
        _line("A5", 0, "NEGATIVE"),  # case as some re-exports write it
    ]
    _write_split(root, "train.txt", lines, "train")
    _write_split(root, "test.txt", [_line("T1", 0, "positive"), _line("T1", 0, "positive")], "test")
    dataset = COVIDxDataset(root)
    assert [str(p) for p in dataset.problems] == [
        "train.txt line 3: 3 tokens, need 'patient_id filename class data_source'",
        "train.txt line 4: unknown class 'maybe' (expected one of positive, negative, normal, "
        "pneumonia, COVID-19)",
        "train.txt line 6: ricord-A1-0.png listed twice (first on line 1)",
        "test.txt line 2: ricord-T1-0.png listed twice (first on line 1)",
    ]
    assert dataset.n_rows == 8 and len(dataset) == 4
    by_id = {r.image_id: r for r in dataset.records}
    # The first listing stays.
    assert by_id["ricord-A1-0.png"].labels.tolist() == [1.0]
    assert by_id["ricord-A5-0.png"].labels.tolist() == [0.0]
    assert dataset.summary()["n_problems"] == 4


def test_missing_images_are_counted_and_labels_only_keeps_them(cxr2_root):
    (cxr2_root / "test" / "ricord-T001-0.png").unlink()
    (cxr2_root / "train" / "ricord-P0002-000014-0.png").unlink()
    dataset = COVIDxDataset(cxr2_root)
    assert sorted(str(p) for p in dataset.problems) == [
        "test/ricord-T001-0.png: image listed but missing",
        "train/ricord-P0002-000014-0.png: image listed but missing",
    ]
    assert len(dataset) == 64
    labels_only = COVIDxDataset(cxr2_root, labels_only=True, split="test")
    assert labels_only.problems == [] and len(labels_only) == 6
    sample = labels_only[1]
    assert sample.image_id == "ricord-T001-0.png" and sample.image is None
    assert sample.labels.tolist() == [1.0] and sample.split == "test"


def test_three_class_release_is_one_hot_and_exclusive(tmp_path):
    root = tmp_path / "covidx"
    root.mkdir()
    train = [
        "N1 n1.png normal rsna",
        "N2 n2.jpg pneumonia rsna",
        "C1 c1.png COVID-19 cohen",
        "C2 c2.jpeg COVID-19 actmed",
    ]
    _write_split(root, "train.txt", train, "train")
    _write_split(root, "test.txt", ["N3 n3.png pneumonia rsna", "C3 c3.png COVID-19 sirm"], "test")
    dataset = COVIDxDataset(root, split=None)
    assert dataset.problems == []
    assert dataset.label_names == ("Normal", "Pneumonia", "COVID-19")
    assert dataset.exclusive_labels is True
    assert [r.labels.tolist() for r in dataset.records] == [
        [1.0, 0.0, 0.0],
        [0.0, 1.0, 0.0],
        [0.0, 0.0, 1.0],
        [0.0, 0.0, 1.0],
        [0.0, 1.0, 0.0],
        [0.0, 0.0, 1.0],
    ]
    assert dataset[2].labels.tolist() == [0.0, 0.0, 1.0] and dataset[2].label_mask.all()
    assert dataset.summary()["per_class"] == {"Normal": 1, "Pneumonia": 2, "COVID-19": 3}
    # The class-level default is untouched by the instance.
    assert COVIDxDataset.label_names == ("COVID-19",) and COVIDxDataset.exclusive_labels is False


def test_mixed_class_vocabularies_are_refused_naming_the_file(tmp_path):
    root = tmp_path / "covidx"
    root.mkdir()
    _write_split(root, "train.txt", ["N1 n1.png normal rsna", "C1 c1.png COVID-19 cohen"])
    _write_split(root, "test.txt", ["T1 t1.png negative rsna", "T2 t2.png positive ricord"])
    with pytest.raises(ValueError, match=r"test\.txt line 1 has 'negative'.*train\.txt line 1"):
        COVIDxDataset(root, labels_only=True)


def test_filename_with_a_space(tmp_path):
    root = tmp_path / "covidx"
    root.mkdir()
    _write_split(root, "train.txt", ["S1 COVID (12).png positive cohen"], "train")
    _write_split(root, "test.txt", ["S2 plain.png negative cohen"], "test")
    dataset = COVIDxDataset(root)
    assert dataset.problems == []
    record = dataset.records[0]
    assert record.image_id == "COVID (12).png" and record.patient_id == "S1"
    assert record.image_path == root / "train" / "COVID (12).png"
    assert dataset[0].image.shape == (1, 16, 16)


def test_samples_load_png_and_jpeg_through_the_transform(cxr2_root):
    (cxr2_root / "test.txt").write_text(
        "T1 t1.png positive ricord\nT2 t2.jpg negative sirm\nT3 t3.jpeg negative rsna\n"
    )
    _write_image(cxr2_root / "test" / "t1.png", 200, (32, 16))  # 16 rows, 32 columns
    _write_image(cxr2_root / "test" / "t2.jpg", 100)
    _write_image(cxr2_root / "test" / "t3.jpeg", 50, (16, 24))
    dataset = COVIDxDataset(cxr2_root, split="test", transform=ResizePad(32, mean=0.0, std=1.0))
    batch = next(iter(DataLoader(dataset, batch_size=8, collate_fn=collate_samples)))
    assert batch["skipped"] == [] and batch["image"].shape == (3, 1, 32, 32)
    assert batch["labels"].flatten().tolist() == [1.0, 0.0, 0.0]
    assert batch["extra"][1] == {"data_source": "sirm"}
    # The PNG fills rows 8..23 at 200/255; the JPEGs come through near their grey levels.
    assert batch["image"][0, 0, 8:24].mean().item() == pytest.approx(200 / 255, abs=1e-3)
    assert batch["image"][1, 0].mean().item() == pytest.approx(100 / 255, abs=0.02)
    assert dataset[0].original_size == (16, 32)


def test_registered_and_errors_say_what_to_do(tmp_path):
    assert reader_class("covidx") is COVIDxDataset
    with pytest.raises(MissingFileError, match=r"train\.txt.*Unpack COVIDx.*at the root"):
        COVIDxDataset(tmp_path)
    (tmp_path / "test.txt").write_text("T1 t1.png positive ricord\n")
    with pytest.raises(ValueError, match="split must be one of"):
        COVIDxDataset(tmp_path, split="val")
    # test.txt alone is enough to read (labels only).
    assert len(COVIDxDataset(tmp_path, labels_only=True)) == 1
