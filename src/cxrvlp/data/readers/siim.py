"""SIIM-ACR Pneumothorax Segmentation: run-length-encoded masks over DICOM images.

``train-rle.csv`` has the header ``ImageId, EncodedPixels`` (with the leading space, as
shipped) and one row per mask: ``-1`` for an image without pneumothorax, several rows for an
image with several masks (their union is the image's mask). The encoding is Kaggle's
*relative* RLE on the column-major pixel grid: pairs ``gap length``, where each gap counts
from the end of the previous run (the first from pixel 0), and pixel k is (row k % H,
column k // H). The DICOMs sit at ``dicom-images-train/<study>/<series>/<ImageId>.dcm``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrvlp.data.base import CXRDataset
from cxrvlp.data.readers.csv_tables import is_blank, read_csv_table, require_columns
from cxrvlp.data.sample import Record
from cxrvlp.data.splits import SPLIT_NAMES, patient_split
from cxrvlp.errors import Problem

LABEL_FILES = ("train-rle.csv", "train-rle.csv.gz")
IMAGE_FOLDER = "dicom-images-train"
EMPTY_RLE = "-1"


def parse_rle(rle: str) -> np.ndarray:
    """(runs, 2) array of (gap, length) pairs; ValueError naming what is wrong."""
    text = rle.strip()
    if text == EMPTY_RLE:
        return np.zeros((0, 2), dtype=np.int64)
    try:
        values = np.array(text.split(), dtype=np.int64)
    except ValueError as error:
        raise ValueError(f"RLE holds a value that is not an integer ({error})") from None
    if values.size == 0 or values.size % 2:
        raise ValueError(f"RLE needs (gap, length) pairs, got {values.size} values")
    pairs = values.reshape(-1, 2)
    if (pairs[:, 0] < 0).any() or (pairs[:, 1] <= 0).any():
        raise ValueError("RLE gaps must be >= 0 and run lengths > 0")
    return pairs


def decode_rle(rle: str, height: int, width: int) -> np.ndarray:
    """The (height, width) uint8 0/1 mask of one SIIM RLE string (``-1``: empty)."""
    pairs = parse_rle(rle)
    ends = np.cumsum(pairs[:, 0] + pairs[:, 1])
    starts = ends - pairs[:, 1]
    if ends.size and ends[-1] > height * width:
        raise ValueError(f"RLE runs to pixel {ends[-1]}, past the {height}x{width} grid")
    flat = np.zeros(height * width, dtype=np.uint8)
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        flat[start:end] = 1
    # Column-major: the flat grid is (width, height); its transpose is the image.
    return flat.reshape(width, height).T


def encode_rle(mask: np.ndarray) -> str:
    """SIIM's RLE of a (height, width) mask (non-zero = inside); ``-1`` for an empty mask."""
    flat = np.asarray(mask).astype(bool).ravel(order="F")
    if not flat.any():
        return EMPTY_RLE
    edges = np.flatnonzero(np.diff(np.concatenate([[False], flat, [False]]).astype(np.int8)))
    starts, ends = edges[0::2], edges[1::2]
    gaps = starts - np.concatenate([[0], ends[:-1]])
    return " ".join(f"{gap} {length}" for gap, length in zip(gaps, ends - starts, strict=True))


class SIIMPneumothoraxDataset(CXRDataset):
    """One record per image: label Pneumothorax (any non-empty RLE), mask = union of its RLEs.

    ``images_dir`` (default ``dicom-images-train`` under the root; an absolute path, a folder
    that exists as given, or a path relative to the root) is walked for ``{ImageId}.dcm``.
    SIIM names no patients and ships no labelled test set: each image is its own patient, and
    ``split`` (train / validate / test) is a seeded split with ``fractions``, as for RSNA.
    The non-empty RLE strings are in ``extra["rle"]``.
    """

    name = "siim"
    label_names = ("Pneumothorax",)

    def __init__(
        self,
        root: str | Path,
        images_dir: str | Path | None = None,
        split: str | None = None,
        seed: int = 0,
        fractions: Sequence[float] = (0.7, 0.15, 0.15),
        **kwargs: Any,
    ):
        if split is not None and split not in SPLIT_NAMES:
            raise ValueError(f"SIIM split must be one of {SPLIT_NAMES} or None, got {split!r}")
        self.images_dir_option = images_dir
        self.fractions = tuple(fractions)
        self.split_seed = seed
        super().__init__(root, split=split, seed=seed, **kwargs)

    def _read(self) -> tuple[list[Record], list[Problem]]:
        path = self._labels_path()
        what = "SIIM RLE file"
        frame = read_csv_table(path, what, dtype=str)
        frame.columns = [column.strip() for column in frame.columns]  # " EncodedPixels"
        require_columns(frame, ("ImageId", "EncodedPixels"), path, what)
        self.n_rows = len(frame)
        problems: list[Problem] = []
        masks_of: dict[str, list[str]] = {}  # insertion order = first appearance
        broken: set[str] = set()
        for row_number, (image_id, rle) in enumerate(
            zip(frame["ImageId"], frame["EncodedPixels"], strict=True), start=2
        ):
            source = f"{path.name} row {row_number}"
            if is_blank(image_id):
                problems.append(Problem(source, "no ImageId"))
                continue
            image_id = image_id.strip()
            masks = masks_of.setdefault(image_id, [])
            if is_blank(rle):
                problems.append(Problem(source, f"empty EncodedPixels for {image_id} (-1 = none)"))
                broken.add(image_id)
                continue
            try:
                empty = len(parse_rle(rle)) == 0
            except ValueError as error:
                problems.append(Problem(source, f"{image_id}: {error}"))
                broken.add(image_id)
                continue
            if not empty:
                masks.append(rle.strip())
        for image_id in [i for i in masks_of if i in broken]:  # file order, not set order
            # A partial union would be a silently wrong mask: the whole image goes.
            problems.append(Problem(image_id, "image skipped: one of its masks is unreadable"))
            del masks_of[image_id]

        image_paths = self._find_images()
        splits = patient_split(masks_of, self.fractions, self.split_seed)
        records = []
        for image_id, masks in masks_of.items():
            image_path = image_paths.get(image_id)
            if image_path is None and not self.labels_only:
                problems.append(
                    Problem(f"{self.images_dir.name}/**/{image_id}.dcm", "image listed but missing")
                )
                continue
            records.append(
                Record(
                    image_id=image_id,
                    patient_id=image_id,
                    image_path=image_path,
                    study_id=image_id,
                    split=splits[image_id],
                    labels=np.array([1.0 if masks else 0.0], dtype=np.float32),
                    extra={"rle": tuple(masks)},
                )
            )
        return records, problems

    def _labels_path(self) -> Path:
        return self.require_one_of(
            LABEL_FILES,
            "Download the SIIM-ACR Pneumothorax Segmentation data and unpack it into the root "
            f"({LABEL_FILES[1]} is read as well).",
        )

    @property
    def images_dir(self) -> Path:
        option = self.images_dir_option
        if option is None:
            return self.root / IMAGE_FOLDER
        # A path that exists as given (e.g. from the command line) wins over root-relative.
        option = Path(option)
        return option if option.is_absolute() or option.is_dir() else self.root / option

    def _find_images(self) -> dict[str, Path]:
        """ImageId -> DICOM path, by walking the images folder (it nests study/series)."""
        folder = self.images_dir
        if not folder.is_dir():
            if self.labels_only:
                return {}
            # require() joins to the root; an absolute path stays as it is.
            named = folder.relative_to(self.root) if folder.is_relative_to(self.root) else folder
            self.require(
                str(named),
                f"Unpack the SIIM DICOMs into {IMAGE_FOLDER}/ under the root, pass images_dir, "
                "or read the labels alone (labels_only=True; --labels-only on the command line).",
            )
        return {path.stem: path for path in sorted(folder.rglob("*.dcm"))}

    def _mask(self, record: Record, height: int, width: int) -> np.ndarray | None:
        mask = np.zeros((height, width), dtype=np.uint8)
        for rle in record.extra["rle"]:
            mask |= decode_rle(rle, height, width)
        return mask
