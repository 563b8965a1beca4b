"""Training the anatomical region detector on Chest ImaGenome boxes (real or synthetic)."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from cxrvlp.data.image_io import read_image_size
from cxrvlp.data.readers.imagenome import ChestImaGenomeDataset
from cxrvlp.data.sample import collate_samples
from cxrvlp.data.transforms import ResizePad
from cxrvlp.detector.export import save_detector
from cxrvlp.engine.checkpoint import CheckpointManager
from cxrvlp.engine.seeding import seed_everything
from cxrvlp.models.detector import LUNG_REGIONS, DetectorConfig, RegionDetector

log = logging.getLogger(__name__)


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
    max_steps: int | None = None
    epochs: int = 1
    max_minutes: float | None = None  # stop (and save) when this much time has passed
    checkpoint_every: int = 200
    resume: str | None = None  # "latest" or a checkpoint folder
    init_weights: Path | None = None
    seed: int = 0
    workers: int = 0
    progress: bool = True


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
        valid = (kept[:, 2] > kept[:, 0] + 1) & (kept[:, 3] > kept[:, 1] + 1)
        targets.append({"boxes": kept[valid], "labels": labels[valid]})
    return targets


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


def _schedule(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_detector(options: TrainOptions) -> dict:
    """Train, checkpoint (resumable), and export the detector to ``options.out``."""
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
    config = DetectorConfig(
        backbone=options.backbone,
        image_size=options.image_size,
        relative_to_lungs=to_lungs,
        relative_to_image=to_image,
    )
    model = RegionDetector(config)
    if options.init_weights is not None:
        from cxrvlp.detector.export import load_initial_backbone

        load_initial_backbone(model, options.init_weights)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=options.lr, weight_decay=options.weight_decay
    )
    steps_per_epoch = math.ceil(len(dataset) / options.batch_size)
    total_steps = options.max_steps or steps_per_epoch * options.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _schedule(step, options.warmup_steps, total_steps)
    )
    checkpoints = CheckpointManager(out)
    step = 0
    if options.resume:
        state = checkpoints.load(options.resume, model, optimizer, scheduler)
        step = state["step"]
        log.info("resumed from step %d", step)
    (out / "detector_train.json").write_text(
        json.dumps({**vars(options), "total_steps": total_steps}, default=str, indent=2)
    )
    generator = torch.Generator().manual_seed(options.seed)
    loader = DataLoader(
        dataset,
        batch_size=options.batch_size,
        shuffle=True,
        generator=generator,
        collate_fn=collate_samples,
        num_workers=options.workers,
        drop_last=True,
    )
    start = time.perf_counter()
    skipped = 0
    model.train()
    bar = tqdm(
        total=total_steps, initial=step, desc="detector", unit="step", disable=not options.progress
    )
    with (out / "metrics.jsonl").open("a") as metrics:
        while step < total_steps:
            for batch in loader:
                skipped += len(batch["skipped"])
                if "image" not in batch:
                    continue
                losses = model(list(batch["image"]), to_targets(batch))
                loss = sum(losses.values())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                optimizer.step()
                scheduler.step()
                step += 1
                row = {
                    "step": step,
                    "loss": loss.item(),
                    **{k: v.item() for k, v in losses.items()},
                }
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.3f}")
                out_of_time = options.max_minutes is not None and (
                    time.perf_counter() - start > 60 * options.max_minutes
                )
                if step % options.checkpoint_every == 0 or step >= total_steps or out_of_time:
                    checkpoints.save(step, model, optimizer, scheduler)
                if step >= total_steps or out_of_time:
                    break
            if out_of_time:
                break
    bar.close()
    save_detector(model, out)
    seconds = time.perf_counter() - start
    summary = {
        "steps": step,
        "seconds": round(seconds, 1),
        "skipped_samples": skipped,
        "out": str(out),
    }
    log.info("detector training done: %s", summary)
    return summary
