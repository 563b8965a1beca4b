"""Training the anatomical region detector on Chest ImaGenome boxes (real or synthetic).

The detector trains on the engine's :class:`~cxrvlp.engine.train.Trainer`: this module builds
the model, the data set and the collate function, and exports the trained detector. The run
folder (``options.out``) receives ``detector_train.json`` (the options), the Trainer's
``checkpoints/``, ``metrics.jsonl``, ``tensorboard/`` and ``summary.json``, and the exported
detector (``model.safetensors`` + ``config.json``, see :mod:`cxrvlp.detector.bundle`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrvlp.data.image_io import read_image_size
from cxrvlp.data.readers.imagenome import ChestImaGenomeDataset
from cxrvlp.data.sample import Sample, collate_samples
from cxrvlp.data.transforms import ResizePad
from cxrvlp.detector.bundle import load_initial_backbone, save_detector
from cxrvlp.engine.seeding import seed_everything
from cxrvlp.engine.train import TrainConfig, Trainer
from cxrvlp.models.detector import LUNG_REGIONS, DetectorConfig, RegionDetector
from cxrvlp.models.outputs import TaskOutput

log = logging.getLogger(__name__)

OPTIONS_FILE = "detector_train.json"
# Faster R-CNN's four summed losses have far larger gradient norms than the engine's default
# clip expects: clip only the outliers.
GRAD_CLIP = 10.0
ADAM_BETA2 = 0.999  # torch's default, with which the detector's results were measured
LOG_EVERY = 1  # a metrics row per step
# bf16 autocast has not been validated for the box regression: fp32 on every device.
PRECISION = "fp32"
MIN_BOX_SIDE = 1.0  # pixels; a thinner true box (degenerate, or clipped away) is not a target
_PATH_OPTIONS = ("imagenome", "images", "out", "init_weights")


@dataclass
class TrainOptions:
    imagenome: Path
    images: Path
    out: Path
    backbone: str = "resnet18-fpn"
    image_size: int = 224
    batch_size: int = 4
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05  # the cosine decay ends at this fraction of the peak lr
    max_steps: int | None = None
    epochs: int = 1  # sets the number of steps when max_steps is not given
    max_minutes: float | None = None  # stop (and save) when this much time has passed
    checkpoint_every: int = 200
    resume: str | None = None  # "latest" or a checkpoint folder
    init_weights: Path | None = None
    seed: int = 0
    workers: int = 0
    threads: int | None = None
    progress: bool = True


def write_options(options: TrainOptions) -> None:
    text = json.dumps(asdict(options), default=str, indent=2) + "\n"
    (Path(options.out) / OPTIONS_FILE).write_text(text)


def read_options(out: Path) -> TrainOptions:
    """The options a run in ``out`` was started with (its ``detector_train.json``)."""
    saved = json.loads((Path(out) / OPTIONS_FILE).read_text())
    names = {field.name for field in fields(TrainOptions)}
    values = {name: value for name, value in saved.items() if name in names}
    for name in _PATH_OPTIONS:
        if values.get(name) is not None:
            values[name] = Path(values[name])
    return TrainOptions(**values)


def detector_transform(image_size: int, augment: bool) -> ResizePad:
    """Pixels in [0, 1], resized and padded; the detector normalises them itself."""
    return ResizePad(image_size, mean=0.0, std=1.0, channels=1, augment=augment)


def to_targets(batch: dict) -> list[dict]:
    """torchvision targets from a collated batch: regions with a box, labelled 1..29."""
    targets = []
    for boxes in batch["boxes"]:
        present = ~torch.isnan(boxes).any(dim=1)
        labels = torch.nonzero(present).flatten() + 1
        kept = boxes[present]
        valid = (kept[:, 2] > kept[:, 0] + MIN_BOX_SIDE) & (kept[:, 3] > kept[:, 1] + MIN_BOX_SIDE)
        targets.append({"boxes": kept[valid], "labels": labels[valid]})
    return targets


def collate_with_targets(samples: list[Sample]) -> dict[str, Any]:
    """``collate_samples`` plus the batch's torchvision ``targets`` (one dict per image)."""
    batch = collate_samples(samples)
    if "boxes" in batch:
        batch["targets"] = to_targets(batch)
    return batch


class DetectorTraining(nn.Module):
    """The engine's model contract over a :class:`RegionDetector`: a batch's images and
    targets in, torchvision's training losses out, summed into ``loss``."""

    def __init__(self, detector: RegionDetector):
        super().__init__()
        self.detector = detector

    def forward(self, batch: dict[str, Any]) -> TaskOutput:
        losses = self.detector(list(batch["image"]), batch["targets"])
        return TaskOutput(
            loss=sum(losses.values()),
            losses={name.removeprefix("loss_"): value.detach() for name, value in losses.items()},
        )


def fallback_positions(dataset: ChestImaGenomeDataset, image_size: int) -> tuple[list, list]:
    """Mean region boxes relative to the lungs and to the padded input frame (training set)."""
    to_lungs, to_image = [], []
    for record in dataset.records:
        boxes = np.asarray(record.boxes, np.float64)
        lungs = boxes[list(LUNG_REGIONS)]
        if np.isnan(lungs).any():
            continue
        frame = np.array(
            [lungs[:, 0].min(), lungs[:, 1].min(), lungs[:, 2].max(), lungs[:, 3].max()]
        )
        extent = np.tile(frame[2:] - frame[:2], 2)
        to_lungs.append((boxes - np.tile(frame[:2], 2)) / extent)
        height, width = read_image_size(record.image_path)
        scale = image_size / max(height, width)
        offset = np.tile([(image_size - width * scale) / 2, (image_size - height * scale) / 2], 2)
        to_image.append((boxes * scale + offset) / image_size)
    if not to_lungs:
        raise ValueError("no training image has both lung boxes: cannot place fallback boxes")
    return np.nanmean(to_lungs, axis=0).tolist(), np.nanmean(to_image, axis=0).tolist()


def train_config(options: TrainOptions, dataset_size: int) -> TrainConfig:
    """The engine's settings for ``options``; ``epochs`` counts whole batches (the engine
    drops an epoch's last, incomplete batch)."""
    batches_per_epoch = dataset_size // options.batch_size
    return TrainConfig(
        batch_size=options.batch_size,
        lr=options.lr,
        weight_decay=options.weight_decay,
        warmup_steps=options.warmup_steps,
        min_lr_ratio=options.min_lr_ratio,
        max_steps=options.max_steps or batches_per_epoch * options.epochs,
        max_minutes=options.max_minutes,
        grad_clip=GRAD_CLIP,
        adam_beta2=ADAM_BETA2,
        checkpoint_every=options.checkpoint_every,
        log_every=LOG_EVERY,
        seed=options.seed,
        workers=options.workers,
        threads=options.threads,
        precision=PRECISION,
    )


def train_detector(options: TrainOptions) -> dict:
    """Train (resumable with ``options.resume``) and export the detector to ``options.out``;
    returns the engine's run summary."""
    if options.threads:
        torch.set_num_threads(options.threads)
    seed_everything(options.seed)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = ChestImaGenomeDataset(
        options.imagenome,
        images=options.images,
        split="train",
        transform=detector_transform(options.image_size, augment=True),
    )
    if len(dataset) == 0:
        raise ValueError(f"no training images in {options.imagenome} joined to {options.images}")
    to_lungs, to_image = fallback_positions(dataset, options.image_size)
    detector = RegionDetector(
        DetectorConfig(
            backbone=options.backbone,
            image_size=options.image_size,
            relative_to_lungs=to_lungs,
            relative_to_image=to_image,
        )
    )
    if options.init_weights is not None and not options.resume:
        load_initial_backbone(detector, options.init_weights)
    write_options(options)
    trainer = Trainer(
        DetectorTraining(detector),
        dataset,
        collate_with_targets,
        out,
        train_config(options, len(dataset)),
        progress=options.progress,
        desc="detector",
    )
    if options.resume:
        trainer.resume(options.resume)
    summary = trainer.run()
    save_detector(detector, out)
    summary["images"] = len(dataset)
    summary["out"] = str(out)
    log.info("detector training done: %d steps, exported to %s", summary["steps"], out)
    return summary
