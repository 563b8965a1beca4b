"""The base class of every reader: records, filtering, loading, bad-sample handling, summary.

A reader subclass only parses its publisher's files into :class:`Record` objects (``_read``);
the base class checks image files, applies split and label-fraction filters, loads and
transforms pixels (from the preprocessing cache when one is given), applies the uncertainty
policy and turns any unreadable sample into a counted, logged skip instead of a crash.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from cxrvlp.data.labels import apply_uncertainty
from cxrvlp.data.sample import Record, Sample, relative_or_absolute
from cxrvlp.data.splits import label_fraction
from cxrvlp.errors import DataError, MissingFileError, Problem

log = logging.getLogger(__name__)


class Transformed(NamedTuple):
    image: torch.Tensor  # (C, h, w) float32
    boxes: np.ndarray | None  # (N, 4) in the output image's pixels
    mask: torch.Tensor | None  # (h, w) uint8, moved exactly like the image


class ImageTransform(Protocol):
    """Pixels (H, W) float32 in [0, 1], with boxes (N, 4) and a mask (H, W), in; same out."""

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray | None = None, mask: np.ndarray | None = None
    ) -> Transformed: ...


class CXRDataset(Dataset):
    """Common behaviour of all readers; see the module docstring."""

    name: ClassVar[str] = ""
    label_names: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        root: str | Path,
        *,
        split: str | None = None,
        transform: ImageTransform | None = None,
        labels_only: bool = False,
        fraction: float = 1.0,
        seed: int = 0,
        label_policy: str | Mapping[str, str] = "ignore",
        blank: str = "zeros",
        cache: str | Path | Any = None,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise MissingFileError(
                self.root,
                f"{self.name} root folder",
                "Pass the folder the publisher's files unpack into.",
            )
        self.transform = transform
        self.labels_only = labels_only
        self.label_policy = label_policy
        self.blank = blank
        if isinstance(cache, str | Path):
            from cxrvlp.data.cache import ImageCache

            cache = ImageCache(cache)
        self.cache = cache  # an ImageCache (or a folder holding one): pixels read from it first
        self.n_rows = 0  # data rows read from the label files (set by _read)
        records, problems = self._read()
        self.problems: list[Problem] = list(problems)
        if not labels_only:
            records = self._drop_missing_images(records)
        if split is not None:
            records = [r for r in records if r.split == split]
        if fraction < 1.0:
            kept = label_fraction((r.patient_id for r in records), fraction, seed)
            records = [r for r in records if r.patient_id in kept]
        self.records: list[Record] = records
        self.load_failures = 0
        for problem in self.problems[:20]:
            log.warning("%s: skipped %s", self.name, problem)
        if len(self.problems) > 20:
            log.warning(
                "%s: %d more problems skipped (see .problems)", self.name, len(self.problems) - 20
            )

    # ---- for subclasses ---------------------------------------------------------------
    def _read(self) -> tuple[list[Record], list[Problem]]:
        raise NotImplementedError

    def _mask(self, record: Record, height: int, width: int) -> np.ndarray | None:
        """A segmentation mask (H, W) uint8 at the file's size, for readers that have one."""
        return None

    def require_one_of(self, names: tuple[str, ...], fix: str = "") -> Path:
        """The first of the publisher's alternative file names present (e.g. .csv or .csv.zip)."""
        for name in names:
            if (self.root / name).is_file():
                return self.root / name
        return self.require(names[0], fix)

    def require(self, relative: str, fix: str = "") -> Path:
        """A file of the publisher's layout, or an error naming it and how to get it."""
        path = self.root / relative
        if not path.exists():
            raise MissingFileError(
                path,
                f"{self.name} file {relative!r}",
                fix or "The root must hold the files exactly as the publisher ships them.",
            )
        return path

    # ---- Dataset -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        sample = Sample(
            dataset=self.name,
            index=index,
            image_id=record.image_id,
            patient_id=record.patient_id,
            study_id=record.study_id,
            view=record.view,
            split=record.split,
            box_labels=record.box_labels,
            report=record.report,
            question=record.question,
            answer=record.answer,
            answer_type=record.answer_type,
            path=relative_or_absolute(record.image_path, self.root) if record.image_path else "",
            extra=record.extra,
        )
        if record.labels is not None:
            values, mask = apply_uncertainty(
                record.labels, self.label_names, self.label_policy, self.blank
            )
            sample.labels = torch.from_numpy(values)
            sample.label_mask = torch.from_numpy(mask)
        boxes = record.boxes
        if self.labels_only or record.image_path is None:
            sample.boxes = None if boxes is None else torch.as_tensor(boxes, dtype=torch.float32)
            return sample
        try:
            pixels, scale = self._load(record.image_path)
            height, width = round(pixels.shape[0] / scale), round(pixels.shape[1] / scale)
            sample.original_size = (height, width)
            scaled = None if boxes is None else np.asarray(boxes, np.float32) * scale
            mask = self._mask(record, height, width)
            if mask is not None and scale != 1.0:
                mask = _resize_nearest(mask, pixels.shape)
            result = self._transform(pixels, scaled, mask)
            sample.image, sample.mask = result.image, result.mask
            sample.boxes = (
                None if result.boxes is None else torch.as_tensor(result.boxes, dtype=torch.float32)
            )
            sample.extra_images = tuple(
                self._transform(self._load(p)[0]).image for p in record.extra_paths
            )
        except (DataError, OSError, ValueError) as error:
            # One bad file must not end an epoch: the sample is skipped by collate and logged.
            self.load_failures += 1
            sample.error = str(error)
            log.warning("%s: skipping sample %d: %s", self.name, index, error)
        return sample

    def _load(self, path: Path) -> tuple[np.ndarray, float]:
        """Pixels in [0, 1] (bright = dense) and the scale from the file's pixel grid."""
        from cxrvlp.data.image_io import load_image

        if self.cache is not None:
            cached = self.cache.get(relative_or_absolute(path, self.root))
            if cached is not None:
                return cached
        return load_image(path), 1.0

    def _transform(
        self, pixels: np.ndarray, boxes: np.ndarray | None = None, mask: np.ndarray | None = None
    ) -> Transformed:
        if self.transform is None:
            image = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None]
            return Transformed(image, boxes, None if mask is None else torch.from_numpy(mask))
        return self.transform(pixels, boxes, mask)

    def _drop_missing_images(self, records: list[Record]) -> list[Record]:
        kept = []
        for record in records:
            missing = [
                p
                for p in (record.image_path, *record.extra_paths)
                if p is not None and not p.is_file()
            ]
            if missing:
                self.problems.append(
                    Problem(relative_or_absolute(missing[0], self.root), "image listed but missing")
                )
            else:
                kept.append(record)
        return kept

    # ---- inspection -----------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Counts a person checks a root with (``cxrvlp data inspect``)."""
        records = self.records
        images = {r.image_path for r in records if r.image_path is not None}
        images.update(p for r in records for p in r.extra_paths)
        summary: dict[str, Any] = {
            "dataset": self.name,
            "root": str(self.root),
            "n_rows": self.n_rows,
            "n_records": len(records),
            "n_images": len(images),
            "n_patients": len({r.patient_id for r in records}),
            "n_studies": len({r.study_id for r in records if r.study_id}),
            "n_boxes": int(sum(0 if r.boxes is None else len(r.boxes) for r in records)),
            "per_split": dict(sorted(Counter(r.split or "unsplit" for r in records).items())),
        }
        if self.label_names:
            labelled = [r.labels for r in records if r.labels is not None]
            if labelled:
                matrix = np.stack(labelled)
                summary["per_label"] = {
                    name: {
                        "positive": int((matrix[:, i] == 1).sum()),
                        "negative": int((matrix[:, i] == 0).sum()),
                        "uncertain": int((matrix[:, i] == -1).sum()),
                        "blank": int(np.isnan(matrix[:, i]).sum()),
                    }
                    for i, name in enumerate(self.label_names)
                }
        summary["n_problems"] = len(self.problems)
        summary["problems"] = [{"source": p.source, "reason": p.reason} for p in self.problems]
        return summary


def _resize_nearest(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    rows = np.minimum((np.arange(shape[0]) + 0.5) * mask.shape[0] / shape[0], mask.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * mask.shape[1] / shape[1], mask.shape[1] - 1)
    return mask[rows.astype(int)][:, cols.astype(int)]
