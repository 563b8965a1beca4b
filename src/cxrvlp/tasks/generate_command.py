"""`cxrvlp generate IMAGE... --model MODEL_DIR`: a report for each chest X-ray image."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrvlp.tasks.generation import DEFAULT_BEAMS, generate_reports, whole_image_boxes

DESCRIPTION = """Write a report for each chest X-ray image (JPEG, PNG or DICOM) with the report
decoder of a model bundle (`cxrvlp export`).

  cxrvlp generate scan.dcm other.png --model runs/demo/model --beams 3
  cxrvlp generate scan.dcm --model runs/demo/model --boxes-from runs/demo/detector
Each report is printed as "IMAGE: REPORT". A model with the GK module grounds its knowledge on
29 anatomical regions: --boxes-from finds them with a region detector (`cxrvlp detector
train`); without it the GK module uses the whole image for every region. An image that cannot
be read is named on stderr, the others still get reports, and the exit status is 1.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    parser.add_argument("--model", type=Path, required=True, help="model bundle folder")
    parser.add_argument("--beams", type=int, default=DEFAULT_BEAMS, help="beam size (1: greedy)")
    parser.add_argument(
        "--max-new-tokens", type=int, help="longest report in tokens (the model's text.max_length)"
    )
    parser.add_argument(
        "--boxes-from", type=Path, metavar="DETECTOR_DIR", help="region detector folder"
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="images detected and decoded as one batch"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, help="torch CPU threads")


def model_inputs(
    bundle: Any, detector: Any, pixels: list[np.ndarray]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's input images (B, C, S, S) and region boxes (B, 29, 4) of decoded images.

    The detector sees the whole batch in one pass, at its own input size; ``predict_pixels``
    maps its boxes back to each image's pixels, and the model's transform moves them with the
    pixels from there. Without a detector every region is the whole image (NaN boxes).
    """
    if detector is None:
        images = [bundle.transform(image).image for image in pixels]
        return torch.stack(images), whole_image_boxes(len(pixels))
    from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
    from cxrvlp.detector.evaluate import predict_pixels

    images, boxes = [], []
    for image, prediction in zip(pixels, predict_pixels(detector, pixels), strict=True):
        regions = prediction["regions"]
        file_boxes = np.array(
            [regions[name]["box"] for name in CHEST_IMAGENOME_REGIONS], np.float32
        )
        transformed = bundle.transform(image, file_boxes)
        images.append(transformed.image)
        boxes.append(torch.as_tensor(transformed.boxes, dtype=torch.float32))
    return torch.stack(images), torch.stack(boxes)


def generate_for_images(
    bundle: Any,
    detector: Any,
    pixels: list[np.ndarray],
    beams: int = DEFAULT_BEAMS,
    max_new_tokens: int | None = None,
    prompts: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> list[str]:
    """One report per decoded (H, W) image in [0, 1], all of them decoded as one batch;
    ``prompts``: the model's ``prompt_embeddings()``, computed once for every batch."""
    images, boxes = model_inputs(bundle, detector, pixels)
    device = next(bundle.model.parameters()).device
    return generate_reports(
        bundle.model,
        bundle.tokenizer,
        images.to(device),
        boxes.to(device),
        beams=beams,
        max_new_tokens=max_new_tokens,
        prompts=prompts,
    )


def _chunks(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run(args: argparse.Namespace) -> int:
    from cxrvlp.bundle import load_pretrained
    from cxrvlp.data.image_io import load_image
    from cxrvlp.errors import DataError

    if args.beams < 1 or args.batch_size < 1:
        raise ValueError("--beams and --batch-size must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = load_pretrained(args.model, device=args.device)
    model = bundle.model
    detector = None
    if model.gk is None and args.boxes_from is not None:
        print(f"note: {args.model} has no GK module; --boxes-from is not used", file=sys.stderr)
    elif model.gk is not None and args.boxes_from is not None:
        from cxrvlp.detector.bundle import load_detector

        detector = load_detector(args.boxes_from)
    elif model.gk is not None:
        print(
            f"note: {args.model} has the GK module but no region detector was given: it uses "
            "the whole image for every anatomical region (pass --boxes-from DETECTOR_DIR)",
            file=sys.stderr,
        )

    prompts = None
    if model.gk is not None:
        with torch.no_grad():
            prompts = model.prompt_embeddings()
    failures = 0
    for paths in _chunks(list(args.images), args.batch_size):
        readable, pixels = [], []
        for path in paths:
            try:
                pixels.append(load_image(path))
            except DataError as error:
                failures += 1
                print(f"error: {error}", file=sys.stderr)
                continue
            readable.append(path)
        if not readable:
            continue
        reports = generate_for_images(
            bundle, detector, pixels, args.beams, args.max_new_tokens, prompts
        )
        for path, report in zip(readable, reports, strict=True):
            print(f"{path}: {report}")
    return 1 if failures else 0
