"""Splits, label fractions, uncertainty policies, the base reader, collate and the cache."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from cxrvlp.data.base import CXRDataset
from cxrvlp.data.cache import ImageCache, prepare_cache
from cxrvlp.data.labels import CHEXPERT_COMMON_POLICY, apply_uncertainty
from cxrvlp.data.sample import Record, collate_samples
from cxrvlp.data.splits import label_fraction, patient_split
from cxrvlp.errors import MissingFileError, Problem

PATIENTS = [f"p{i:05d}" for i in range(2000)]


def test_patient_split_is_70_15_15_deterministic_and_order_free():
    split = patient_split(PATIENTS, seed=0)
    counts = {name: list(split.values()).count(name) for name in ("train", "validate", "test")}
    assert counts == {"train": 1400, "validate": 300, "test": 300}
    assert patient_split(reversed(PATIENTS), seed=0) == split
    assert patient_split(PATIENTS, seed=1) != split
    with pytest.raises(ValueError, match="sum"):
        patient_split(PATIENTS, fractions=(0.5, 0.2, 0.2))


def test_label_fractions_are_nested_and_deterministic():
    one, ten, full = (label_fraction(PATIENTS, f, seed=3) for f in (0.01, 0.1, 1.0))
    assert (len(one), len(ten), len(full)) == (20, 200, 2000)
    assert one < ten < full
    assert label_fraction(PATIENTS * 2, 0.01, seed=3) == one
    assert label_fraction(PATIENTS[:10], 0.01) and len(label_fraction(PATIENTS[:10], 0.01)) == 1


def test_uncertainty_policies():
    names = ("Atelectasis", "Cardiomegaly", "Edema")
    raw = np.array([[-1.0, -1.0, np.nan], [1.0, 0.0, -1.0]])
    values, mask = apply_uncertainty(raw, names, "ones")
    assert values.tolist() == [[1, 1, 0], [1, 0, 1]] and mask.all()
    values, mask = apply_uncertainty(raw, names, "zeros", blank="ignore")
    assert values.tolist() == [[0, 0, 0], [1, 0, 0]]
    assert mask.tolist() == [[True, True, False], [True, True, True]]
    values, mask = apply_uncertainty(raw, names, "ignore")
    assert mask.tolist() == [[False, False, True], [True, True, False]]
    values, mask = apply_uncertainty(raw, names, CHEXPERT_COMMON_POLICY)
    assert values[0].tolist() == [1, 0, 0] and mask[0].tolist() == [True, True, True]
    with pytest.raises(ValueError, match="unknown uncertainty policy"):
        apply_uncertainty(raw, names, "maybe")


class FolderDataset(CXRDataset):
    """A minimal reader: every PNG listed in ``list.txt`` (a line may name a missing file)."""

    name = "folder"
    label_names = ("Finding",)

    def _read(self):
        listing = self.require("list.txt", "Write one image name a line.")
        records, problems = [], []
        for row, line in enumerate(listing.read_text().splitlines()):
            if not line.strip():
                problems.append(Problem(f"list.txt:{row + 1}", "empty row"))
                continue
            records.append(
                Record(
                    image_id=line,
                    patient_id=line.split("_")[0],
                    image_path=self.root / line,
                    labels=np.array([row % 2], np.float32),
                    boxes=np.array([[4.0, 8.0, 20.0, 24.0]], np.float32),
                    box_labels=("lesion",),
                )
            )
        self.n_rows = row + 1
        return records, problems


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    names = []
    for i in range(10):
        name = f"p{i}_img.png"
        # Smooth content, as radiographs are: resampling filters then agree closely.
        y, x = np.mgrid[0:48, 0:64]
        phase = rng.uniform(0, 6)
        pixels = 127 + 100 * np.sin(x / 9 + phase) * np.cos(y / 7)
        Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / name)
        names.append(name)
    (tmp_path / "p10_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    names += ["p10_corrupt.png", "p11_missing.png", ""]
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")
    return tmp_path


def test_base_counts_missing_files_and_bad_rows(folder):
    dataset = FolderDataset(folder)
    assert len(dataset) == 11 and dataset.n_rows == 13
    reasons = sorted(p.reason for p in dataset.problems)
    assert reasons == ["empty row", "image listed but missing"]
    summary = dataset.summary()
    assert summary["n_problems"] == 2 and summary["n_patients"] == 11
    assert summary["per_label"]["Finding"]["positive"] == 5
    with pytest.raises(MissingFileError, match="nowhere"):
        FolderDataset(folder / "nowhere")
    (folder / "empty").mkdir()
    with pytest.raises(MissingFileError, match=r"list\.txt.*one image name a line"):
        FolderDataset(folder / "empty")


def test_a_dataloader_over_bad_samples_finishes_its_epoch(folder):
    dataset = FolderDataset(folder)
    loader = DataLoader(dataset, batch_size=4, collate_fn=collate_samples, num_workers=2)
    seen, skipped = 0, []
    for batch in loader:
        seen += len(batch["image_id"])
        skipped += batch["skipped"]
        assert batch["image"].shape[1:] == (1, 48, 64)
        assert batch["labels"].shape == (len(batch["image_id"]), 1)
    assert seen == 10
    assert [path for path, _ in skipped] == ["p10_corrupt.png"]
    assert "p10_corrupt.png" in skipped[0][1]


def test_labels_only_needs_no_images(folder):
    for name in ("p0_img.png", "p1_img.png"):
        (folder / name).unlink()
    dataset = FolderDataset(folder, labels_only=True)
    assert len(dataset) == 12
    sample = dataset[0]
    assert sample.image is None and sample.labels.tolist() == [0.0]


def test_split_and_fraction_filters(folder):
    dataset = FolderDataset(folder, fraction=0.2, seed=0)
    assert len({s.patient_id for s in dataset.records}) == 3  # ceil(0.2 x 11 patients)


def test_cache_is_transparent(folder, tmp_path):
    dataset = FolderDataset(folder)
    stats = prepare_cache(dataset, tmp_path / "cache", size=32, progress=False)
    assert stats["cached"] == 10 and [p["source"] for p in stats["problems"]] == ["p10_corrupt.png"]
    cache = ImageCache(tmp_path / "cache")
    cached = FolderDataset(folder, cache=tmp_path / "cache")
    raw, fast = dataset[0], cached[0]
    assert fast.image.shape == (1, 24, 32) and fast.original_size == raw.original_size == (48, 64)
    assert torch.allclose(fast.boxes, raw.boxes * 0.5)
    # Down-sampled pixels match the raw image averaged over 2x2 blocks, up to 8-bit rounding.
    pooled = raw.image[0].reshape(24, 2, 32, 2).mean(dim=(1, 3))
    assert (fast.image[0] - pooled).abs().mean() < 0.02
    assert "p0_img.png" in cache and len(cache) == 10
    # The corrupt image is not cached: reading it falls back to the file and is skipped.
    assert cached[
        dataset.records.index(next(r for r in dataset.records if "corrupt" in r.image_id))
    ].error


def test_collate_keeps_optional_fields_aligned(folder):
    dataset = FolderDataset(folder)
    batch = collate_samples([dataset[i] for i in range(3)])
    assert len(batch["boxes"]) == 3 and batch["box_labels"][0] == ("lesion",)
    assert batch["index"].tolist() == [0, 1, 2]
