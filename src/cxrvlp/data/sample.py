"""The one sample structure every reader returns, and the collate function for batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrvlp.text.sections import ReportSections

# torch is imported only where a batch is stacked: a reader's records must not load it.
if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass
class Record:
    """What a reader knows about one sample before any pixel is read.

    ``labels`` holds one float per the reader's ``label_names`` (NaN = not labelled) in the
    publisher's coding; ``boxes`` are (N, 4) x1, y1, x2, y2 in the original image's pixels.
    """

    image_id: str
    patient_id: str
    image_path: Path | None  # None: no image (labels-only) or text-only sample
    study_id: str = ""
    view: str = ""
    split: str = ""
    labels: np.ndarray | None = None
    boxes: np.ndarray | None = None
    box_labels: tuple[str, ...] = ()
    report: ReportSections | None = None
    question: str = ""
    answer: str = ""
    answer_type: str = ""
    extra_paths: tuple[Path, ...] = ()  # further views of the same study (e.g. IU lateral)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    """One sample as a model sees it; fields a data set does not have stay empty."""

    dataset: str
    index: int
    image_id: str
    patient_id: str
    study_id: str = ""
    view: str = ""
    split: str = ""
    image: torch.Tensor | None = None  # (C, H, W) float32 after the transform
    extra_images: tuple[torch.Tensor, ...] = ()  # further views, same transform
    original_size: tuple[int, int] | None = None  # (height, width) of the file
    labels: torch.Tensor | None = None  # (L,) float32, policy applied
    label_mask: torch.Tensor | None = None  # (L,) bool: False = not labelled
    boxes: torch.Tensor | None = None  # (N, 4) float32 in ``image`` coordinates
    box_labels: tuple[str, ...] = ()
    mask: torch.Tensor | None = None  # (H, W) uint8 segmentation, same grid as ``image``
    report: ReportSections | None = None
    question: str = ""
    answer: str = ""
    answer_type: str = ""
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # reader-specific (e.g. region phrases)
    error: str = ""  # set when the sample could not be loaded: collate skips it


def collate_samples(samples: list[Sample]) -> dict[str, Any]:
    """Stack a batch; samples that failed to load are left out and reported in ``skipped``."""
    import torch

    good = [s for s in samples if not s.error]
    batch: dict[str, Any] = {
        "skipped": [(s.path, s.error) for s in samples if s.error],
        "index": torch.tensor([s.index for s in good], dtype=torch.long),
        "image_id": [s.image_id for s in good],
        "patient_id": [s.patient_id for s in good],
        "study_id": [s.study_id for s in good],
        "view": [s.view for s in good],
        "dataset": [s.dataset for s in good],
    }
    if good and good[0].image is not None:
        batch["image"] = torch.stack([s.image for s in good])
        if good[0].extra_images:
            batch["extra_images"] = [
                torch.stack(views) for views in zip(*(s.extra_images for s in good), strict=True)
            ]
    if good and good[0].labels is not None:
        batch["labels"] = torch.stack([s.labels for s in good])
        batch["label_mask"] = torch.stack([s.label_mask for s in good])
    if any(s.boxes is not None for s in good):
        batch["boxes"] = [s.boxes if s.boxes is not None else torch.zeros(0, 4) for s in good]
        batch["box_labels"] = [s.box_labels for s in good]
    if any(s.mask is not None for s in good):
        batch["mask"] = torch.stack([s.mask for s in good])
    if any(s.report is not None for s in good):
        batch["report"] = [s.report.findings_and_impression if s.report else "" for s in good]
    if any(s.extra for s in good):
        batch["extra"] = [s.extra for s in good]
    if any(s.question for s in good):
        batch["question"] = [s.question for s in good]
        batch["answer"] = [s.answer for s in good]
        batch["answer_type"] = [s.answer_type for s in good]
    return batch


def relative_or_absolute(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
