"""RSNA Pneumonia and SIIM-ACR readers: synthetic exports, real label files, bad input.

The real label files ship with torchxrayvision (no pixels): they are read in labels-only mode
from a temporary root holding a symlink under the publisher's file name.
"""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from torch.utils.data import DataLoader

from cxrvlp.cli import main
from cxrvlp.data.readers.rsna import RSNAPneumoniaDataset
from cxrvlp.data.readers.siim import (
    SIIMPneumothoraxDataset,
    decode_rle,
    encode_rle,
    parse_rle,
)
from cxrvlp.data.sample import collate_samples
from cxrvlp.data.transforms import ResizePad
from cxrvlp.errors import DataError, MissingFileError
from cxrvlp.synth.scene import FINDING_TYPES


def _real_file(name: str) -> Path:
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None:
        pytest.skip("torchxrayvision (the real label files) is not installed")
    path = Path(spec.submodule_search_locations[0]) / "data" / name
    if not path.is_file():
        pytest.skip(f"{name} is not in this torchxrayvision install")
    return path


def _root_with(tmp_path: Path, real_name: str, expected_name: str) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / expected_name).symlink_to(_real_file(real_name))
    return root


# ---- RSNA on the synthetic world -----------------------------------------------------------


@pytest.fixture(scope="session")
def rsna_world(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("world_rsna")
    argv = ["synth", "--out", str(out), "--studies", "12", "--image-size", "96"]
    assert main([*argv, "--cohorts", "rsna", "--quiet"]) == 0
    truth = [json.loads(line) for line in (out / "truth.jsonl").read_text().splitlines()]
    return out / "rsna", [row for row in truth if row["dataset"] == "rsna"]


def _opacity_boxes(truth_row: dict) -> np.ndarray:
    boxes = [
        box
        for finding in truth_row["findings"]
        if FINDING_TYPES[finding["name"]].rsna_opacity
        for box in finding["boxes"]
    ]
    return np.array(boxes, dtype=np.float32).reshape(-1, 4)


def _sorted_rows(boxes: np.ndarray) -> np.ndarray:
    return boxes[np.lexsort(boxes.T[::-1])]


def test_rsna_records_match_the_synthetic_truth(rsna_world):
    root, truth = rsna_world
    dataset = RSNAPneumoniaDataset(root)
    assert dataset.problems == []
    by_id = {record.image_id: record for record in dataset.records}
    assert set(by_id) == {row["image_id"] for row in truth}
    n_positive = 0
    for row in truth:
        record = by_id[row["image_id"]]
        expected = _opacity_boxes(row)
        assert record.patient_id == row["patient_id"]
        assert record.image_path == root.parent / row["path"]
        # The CSV holds x, y, width, height rounded to 0.01: x2 = x + width is within 0.02.
        np.testing.assert_allclose(_sorted_rows(record.boxes), _sorted_rows(expected), atol=0.02)
        assert record.box_labels == ("Lung Opacity",) * len(expected)
        assert record.labels.tolist() == [float(len(expected) > 0)]
        n_positive += len(expected) > 0
    assert 0 < n_positive < len(truth), "the world needs positive and negative patients"
    labels = pd.read_csv(root / "stage_2_train_labels.csv")
    classes = pd.read_csv(root / "stage_2_detailed_class_info.csv").drop_duplicates("patientId")
    for patient, kind in zip(classes["patientId"], classes["class"], strict=True):
        assert by_id[patient].extra["class"] == kind
    summary = dataset.summary()
    assert summary["n_rows"] == len(labels)
    assert summary["n_positive_patients"] == n_positive
    assert summary["n_boxes"] == int(labels["Target"].sum())


def test_rsna_patient_split_partitions_the_patients(rsna_world):
    root, truth = rsna_world
    full = RSNAPneumoniaDataset(root)
    parts = {name: RSNAPneumoniaDataset(root, split=name) for name in ("train", "validate", "test")}
    ids = [{r.patient_id for r in part.records} for part in parts.values()]
    assert sum(len(i) for i in ids) == len(truth) and set().union(*ids) == {
        r.patient_id for r in full.records
    }
    assert len(parts["train"]) > len(parts["test"])
    assert [r.split for r in RSNAPneumoniaDataset(root).records] == [r.split for r in full.records]
    with pytest.raises(ValueError, match="split"):
        RSNAPneumoniaDataset(root, split="val")


def test_rsna_samples_load_dicom_pixels_boxes_and_box_masks(rsna_world):
    root, truth = rsna_world
    dataset = RSNAPneumoniaDataset(root, masks_from_boxes=True)
    positive = next(i for i, r in enumerate(dataset.records) if len(r.boxes))
    sample = dataset[positive]
    row = next(t for t in truth if t["image_id"] == sample.image_id)
    assert sample.error == ""
    assert sample.image.shape == (1, row["height"], row["width"])
    assert sample.original_size == (row["height"], row["width"])
    np.testing.assert_allclose(sample.boxes.numpy(), dataset.records[positive].boxes)
    assert sample.labels.tolist() == [1.0] and sample.label_mask.tolist() == [True]
    x1, y1, x2, y2 = dataset.records[positive].boxes[0]
    assert sample.mask[int(y1 + y2) // 2, int(x1 + x2) // 2] == 1
    union_area = sum((b[2] - b[0]) * (b[3] - b[1]) for b in dataset.records[positive].boxes)
    assert 0 < sample.mask.sum() <= union_area + 2 * (row["height"] + row["width"])


def test_rsna_bad_input_is_counted_or_named(rsna_world, tmp_path):
    source, truth = rsna_world
    root = tmp_path / "rsna"
    shutil.copytree(source, root)
    gone = truth[0]["image_id"]
    (root / "stage_2_train_images" / f"{gone}.dcm").unlink()
    with (root / "stage_2_train_labels.csv").open("a") as labels:
        labels.write("extra-patient-1,,,,,1\nextra-patient-2,1,2,3,4,7\n")
    dataset = RSNAPneumoniaDataset(root)
    assert len(dataset) == len(truth) - 1 and gone not in {r.image_id for r in dataset.records}
    reasons = {p.source: p.reason for p in dataset.problems}
    assert reasons[f"stage_2_train_images/{gone}.dcm"] == "image listed but missing"
    n_rows = dataset.n_rows
    assert "without a complete" in reasons[f"stage_2_train_labels.csv row {n_rows}"]
    assert "not 0 or 1" in reasons[f"stage_2_train_labels.csv row {n_rows + 1}"]
    assert dataset.summary()["n_problems"] == 3

    (root / "stage_2_train_labels.csv").write_text("not,the\nrsna,file\n")
    with pytest.raises(DataError, match=r"stage_2_train_labels\.csv lacks column"):
        RSNAPneumoniaDataset(root)
    (root / "stage_2_train_labels.csv").unlink()
    with pytest.raises(MissingFileError, match=r"stage_2_train_labels\.csv.*Kaggle"):
        RSNAPneumoniaDataset(root)


# ---- RSNA on the real label file -------------------------------------------------------------


def test_rsna_real_label_file_matches_the_published_counts(tmp_path):
    root = _root_with(
        tmp_path, "kaggle_stage_2_train_labels.csv.zip", "stage_2_train_labels.csv.zip"
    )
    dataset = RSNAPneumoniaDataset(root, labels_only=True)
    summary = dataset.summary()
    assert summary["n_rows"] == 30_227
    assert summary["n_patients"] == summary["n_records"] == 26_684
    assert summary["n_positive_patients"] == 6_012
    assert summary["n_boxes"] == 9_555
    assert summary["n_problems"] == 0
    split = summary["per_split"]
    assert split["train"] == round(0.7 * 26_684) and split["validate"] == round(0.15 * 26_684)
    boxes = np.concatenate([r.boxes for r in dataset.records])
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert boxes.min() >= 0 and boxes.max() <= 1024  # the stage 2 images are 1024 x 1024
    assert all(len(r.boxes) == len(r.box_labels) for r in dataset.records)
    test = RSNAPneumoniaDataset(root, split="test", labels_only=True)
    assert {r.patient_id for r in test.records} == {
        r.patient_id for r in dataset.records if r.split == "test"
    }


def test_rsna_real_counts_through_data_inspect(tmp_path, capsys):
    root = _root_with(
        tmp_path, "kaggle_stage_2_train_labels.csv.zip", "stage_2_train_labels.csv.zip"
    )
    assert main(["data", "inspect", "rsna", "--root", str(root), "--labels-only", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["n_rows"], summary["n_patients"]) == (30_227, 26_684)
    assert (summary["n_positive_patients"], summary["n_boxes"]) == (6_012, 9_555)
    assert summary["problems"] == []


# ---- SIIM run-length encoding -----------------------------------------------------------------


def test_rle_is_relative_and_column_major():
    mask = np.array([[0, 1], [1, 1], [0, 0]], dtype=np.uint8)  # (height 3, width 2)
    # Column-major pixels: 0 1 0 | 1 1 0 -> runs (1, 1) and (3, 2); gaps count from run ends.
    assert encode_rle(mask) == "1 1 1 2"
    np.testing.assert_array_equal(decode_rle("1 1 1 2", 3, 2), mask)
    assert encode_rle(np.zeros((4, 5))) == "-1"
    assert decode_rle("-1", 4, 5).sum() == 0 and decode_rle(" -1", 4, 5).shape == (4, 5)


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (32, 40), (64, 64)])
def test_rle_round_trips(shape):
    generator = np.random.default_rng(sum(shape))
    for density in (0.0, 0.1, 0.5, 1.0):
        mask = (generator.random(shape) < density).astype(np.uint8)
        np.testing.assert_array_equal(decode_rle(encode_rle(mask), *shape), mask)


@pytest.mark.parametrize(
    ("rle", "message"),
    [("5 2 3", "pairs"), ("5 x", "integer"), ("-3 2", ">= 0"), ("1 0", "> 0"), ("10 11", "past")],
)
def test_rle_errors_say_what_is_wrong(rle, message):
    with pytest.raises(ValueError, match=message):
        decode_rle(rle, 4, 5)


# ---- SIIM on the real RLE file ----------------------------------------------------------------


def test_siim_real_rle_file_counts_and_masks(tmp_path):
    root = _root_with(tmp_path, "siim-pneumothorax-train-rle.csv.gz", "train-rle.csv.gz")
    dataset = SIIMPneumothoraxDataset(root, labels_only=True)
    summary = dataset.summary()
    assert summary["n_rows"] == 12_954
    assert summary["n_records"] == 12_047
    assert summary["per_label"]["Pneumothorax"]["positive"] == 2_669
    assert summary["n_problems"] == 0
    # Several rows per image: 3,576 non-empty masks over the 2,669 positive images.
    assert sum(len(r.extra["rle"]) for r in dataset.records) == 3_576
    positive = [r for r in dataset.records if r.extra["rle"]][:5]
    for record in positive:
        mask = dataset._mask(record, 1024, 1024)
        assert 0 < mask.sum() < 1024 * 1024 // 4
        for rle in record.extra["rle"]:
            decoded = decode_rle(rle, 1024, 1024)
            # The runs of one mask never overlap: its pixels are the run lengths' sum.
            assert decoded.sum() == parse_rle(rle)[:, 1].sum()
            assert encode_rle(decoded) == rle
    with pytest.raises(MissingFileError, match=r"dicom-images-train.*labels_only"):
        SIIMPneumothoraxDataset(root)


# ---- SIIM on a tiny fixture with DICOMs ------------------------------------------------------

HEIGHT, WIDTH = 32, 40  # not square: a transposed mask would not fit


def _write_dicom(path: Path, pixels: np.ndarray) -> None:
    """An uncompressed 8-bit MONOCHROME2 DICOM, like SIIM's (which are JPEG-compressed)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CR"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = dataset.BitsStored = 8
    dataset.HighBit = 7
    dataset.PixelRepresentation = 0
    dataset.PixelData = pixels.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)


@pytest.fixture()
def siim_root(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    """Four images (two masks on one, none on one, a triangle, one broken RLE) + a lost one."""
    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    first, second = np.zeros((HEIGHT, WIDTH), np.uint8), np.zeros((HEIGHT, WIDTH), np.uint8)
    first[5:13, 3:21] = 1
    second[20:26, 30:39] = 1
    triangle = ((rows > 10) & (cols < rows) & (cols > 4)).astype(np.uint8)
    ids = [f"1.2.276.0.7230010.3.1.4.8323329.{n}.1517875165.87802{n}" for n in range(5)]
    masks = {ids[0]: first | second, ids[1]: np.zeros_like(first), ids[2]: triangle}
    lines = [f"{ids[0]},{encode_rle(first)}", f"{ids[1]},-1", f"{ids[0]}, {encode_rle(second)}"]
    lines += [f"{ids[2]},{encode_rle(triangle)}", f"{ids[3]},5 2 3", f"{ids[4]},-1"]
    root = tmp_path / "siim"
    root.mkdir()
    # The header as shipped, with its leading space.
    (root / "train-rle.csv").write_text("ImageId, EncodedPixels\n" + "\n".join(lines) + "\n")
    for n, image_id in enumerate(ids[:4]):
        # Bright exactly where the mask is: a misplaced mask cannot line up with the pixels.
        pixels = np.where(masks.get(image_id, first) == 1, 200, 40)
        _write_dicom(
            root / "dicom-images-train" / f"1.2.{n}" / f"1.3.{n}" / f"{image_id}.dcm", pixels
        )
    return root, masks


def test_siim_masks_line_up_with_the_drawn_pixels(siim_root):
    root, masks = siim_root
    dataset = SIIMPneumothoraxDataset(root)
    assert [r.image_id for r in dataset.records] == list(masks)
    assert [r.labels.tolist() for r in dataset.records] == [[1.0], [0.0], [1.0]]
    reasons = [p.reason for p in dataset.problems]
    assert len(reasons) == 3 and dataset.n_rows == 6
    assert any("pairs" in r for r in reasons) and "image listed but missing" in reasons
    assert any("unreadable" in r for r in reasons)
    for index, record in enumerate(dataset.records):
        sample = dataset[index]
        expected = masks[record.image_id]
        assert sample.error == "" and sample.image.shape == (1, HEIGHT, WIDTH)
        np.testing.assert_array_equal(sample.mask.numpy(), expected)
        image = sample.image[0].numpy()
        if expected.any():
            assert image[expected == 1].min() > image[expected == 0].max()
    outside = SIIMPneumothoraxDataset(root, images_dir=(root / "dicom-images-train").resolve())
    assert [r.image_path for r in outside.records] == [r.image_path for r in dataset.records]


def test_siim_batches_carry_masks_through_the_transform(siim_root):
    root, masks = siim_root
    dataset = SIIMPneumothoraxDataset(root, transform=ResizePad(80))
    batch = next(iter(DataLoader(dataset, batch_size=8, collate_fn=collate_samples)))
    assert batch["image"].shape == (3, 1, 80, 80) and batch["mask"].shape == (3, 80, 80)
    assert batch["labels"].flatten().tolist() == [1.0, 0.0, 1.0]
    # Twice the size: each drawn pixel becomes four.
    assert batch["mask"].sum(dim=(1, 2)).tolist() == [4 * int(m.sum()) for m in masks.values()]
    # 32 x 40 scaled by 2 is 64 x 80, centred: rows 8..71 hold the image, the rest is padding.
    content, mask = batch["image"][0, 0, 8:72], batch["mask"][0, 8:72]
    assert content[mask == 1].min() > content[mask == 0].max()


def test_siim_labels_only_without_images(siim_root):
    root, _ = siim_root
    shutil.rmtree(root / "dicom-images-train")
    dataset = SIIMPneumothoraxDataset(root, labels_only=True)
    # Labels only: the image without a DICOM is kept, the broken RLE is still a problem.
    assert len(dataset) == 4 and all(r.image_path is None for r in dataset.records)
    assert len(dataset.problems) == 2
    assert dataset[0].labels.tolist() == [1.0] and dataset[0].image is None
