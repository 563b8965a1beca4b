"""Evaluating, running and bulk-annotating the region detector."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
from cxrvlp.data.image_io import load_image, read_image_size
from cxrvlp.data.sample import collate_samples
from cxrvlp.detector.train import detector_transform, to_targets
from cxrvlp.models.detector import RegionBoxes, RegionDetector, region_ious


def evaluate_detector(
    model: RegionDetector, dataset, batch_size: int = 8, progress: bool = True
) -> dict:
    """Per-region IoU of the top-1 box, mean IoU, mAP@0.5 and COCO mAP (torchmetrics)."""
    from torchmetrics.detection import MeanAveragePrecision

    average_precision = MeanAveragePrecision(iou_type="bbox", backend="pycocotools")
    ious, fallbacks = [], []
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_samples)
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
        if "image" not in batch:
            continue
        images = list(batch["image"])
        with torch.no_grad():
            raw = model(images)
        predictions = [
            model.one_box_per_region(d, image.shape[-2:])
            for d, image in zip(raw, images, strict=True)
        ]
        for prediction, truth in zip(predictions, batch["boxes"], strict=True):
            ious.append(region_ious(prediction.boxes, truth))
            fallbacks.append(prediction.fallback)
        average_precision.update(
            [{k: d[k] for k in ("boxes", "scores", "labels")} for d in raw], to_targets(batch)
        )
    if not ious:
        raise ValueError("no evaluable images")
    per_image = torch.stack(ious)
    per_region = torch.nanmean(per_image, dim=0)
    coco = average_precision.compute()
    return {
        "n_images": len(ious),
        "mean_iou": round(float(torch.nanmean(per_region)), 4),
        "min_region_iou": round(float(per_region.min()), 4),
        "per_region": {
            name: round(float(v), 4)
            for name, v in zip(CHEST_IMAGENOME_REGIONS, per_region, strict=True)
        },
        "map50": round(float(coco["map_50"]), 4),
        "map": round(float(coco["map"]), 4),
        "fallback_rate": round(float(torch.stack(fallbacks).float().mean()), 4),
    }


def _to_original(boxes: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """Undo ResizePad: boxes from the padded square back to the file's pixels."""
    scale = size / max(height, width)
    offset = torch.tensor([(size - width * scale) / 2, (size - height * scale) / 2]).repeat(2)
    original = (boxes - offset) / scale
    limit = torch.tensor([width, height, width, height], dtype=original.dtype)
    return torch.minimum(original.clamp(min=0), limit)


def predict_files(model: RegionDetector, paths: list[Path]) -> list[dict]:
    """Boxes of the 29 regions for each image file (DICOM accepted), in the file's pixels."""
    return [{"image": str(path), **predict_pixels(model, [load_image(path)])[0]} for path in paths]


def predict_pixels(model: RegionDetector, images: list[np.ndarray]) -> list[dict]:
    """Boxes of the 29 regions for each (H, W) image in [0, 1], in its own pixels: one
    detector pass over the batch."""
    size = model.config.image_size
    transform = detector_transform(size, augment=False)
    predictions = model.predict([transform(pixels).image for pixels in images])
    results = []
    for pixels, prediction in zip(images, predictions, strict=True):
        height, width = pixels.shape
        boxes = _to_original(prediction.boxes, size, height, width)
        results.append(
            {"width": width, "height": height, "regions": _regions_json(boxes, prediction)}
        )
    return results


def _regions_json(boxes: torch.Tensor, prediction: RegionBoxes) -> dict:
    return {
        name: {
            "box": [round(float(v), 1) for v in box],
            "score": round(float(score), 4),
            "fallback": bool(fallback),
        }
        for name, box, score, fallback in zip(
            CHEST_IMAGENOME_REGIONS, boxes, prediction.scores, prediction.fallback, strict=True
        )
    }


def draw_overlay(path: Path, result: dict, out: Path) -> Path:
    """The image with its 29 region boxes (dashed look for fallbacks: thinner, grey)."""
    pixels = load_image(path)
    image = Image.fromarray((pixels * 255).astype(np.uint8)).convert("RGB")
    scale = 768 / max(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)))
    else:
        scale = 1.0
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(max(9, image.width // 70))
    for index, (name, region) in enumerate(result["regions"].items()):
        hue = index / len(CHEST_IMAGENOME_REGIONS)
        colour = tuple(
            round(255 * (0.5 + 0.5 * np.cos(2 * np.pi * (hue + k / 3)))) for k in range(3)
        )
        if region["fallback"]:
            colour = (150, 150, 150)
        box = [v * scale for v in region["box"]]
        draw.rectangle(box, outline=colour, width=1 if region["fallback"] else 2)
        draw.text((box[0] + 2, box[1] + 1), name, fill=colour, font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return out


def annotate_dataset(model: RegionDetector, dataset, out: Path, progress: bool = True) -> dict:
    """Write every image's 29 boxes (file pixels) to JSONL once, for pre-training to read.

    Records that share an image (VQA questions about one film) are annotated once.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    written = skipped = 0
    first_of_image: dict[str, int] = {}
    for index, record in enumerate(dataset.records):
        first_of_image.setdefault(record.image_id, index)
    images = Subset(dataset, sorted(first_of_image.values()))
    loader = DataLoader(images, batch_size=8, collate_fn=collate_samples)
    size = model.config.image_size
    with out.open("w") as stream:
        for batch in tqdm(loader, desc="annotate", unit="batch", disable=not progress):
            skipped += len(batch["skipped"])
            if "image" not in batch:
                continue
            predictions = model.predict(list(batch["image"]))
            for index, prediction in zip(batch["index"].tolist(), predictions, strict=True):
                record = dataset.records[index]
                height, width = read_image_size(record.image_path)
                boxes = _to_original(prediction.boxes, size, height, width)
                row = {
                    "image_id": record.image_id,
                    "study_id": record.study_id,
                    "path": str(record.image_path),
                    "width": width,
                    "height": height,
                    "regions": _regions_json(boxes, prediction),
                }
                stream.write(json.dumps(row) + "\n")
                written += 1
    return {"written": written, "skipped": skipped, "out": str(out)}
