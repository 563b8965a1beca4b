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
    parser.add_argument("--batch-size", type=int, default=8, help="images decoded together")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, help="torch CPU threads")


def detector_region_boxes(
    detector: Any, path: Path, pixels: np.ndarray, transform: Any
) -> torch.Tensor:
    """The detector's 29 region boxes (29, 4) of ``path`` in the model's input pixels.

    The detector sees the image at its own input size; ``predict_files`` maps its boxes back
    to the file's pixels, and the model's transform moves them with the pixels from there.
    """
    from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
    from cxrvlp.detector.evaluate import predict_files

    regions = predict_files(detector, [path])[0]["regions"]
    file_boxes = np.array([regions[name]["box"] for name in CHEST_IMAGENOME_REGIONS], np.float32)
    return torch.as_tensor(transform(pixels, file_boxes).boxes, dtype=torch.float32)


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

    failures = 0
    for paths in _chunks(list(args.images), args.batch_size):
        readable, images, boxes = [], [], []
        for path in paths:
            try:
                pixels = load_image(path)
                images.append(bundle.transform(pixels).image)
                boxes.append(
                    whole_image_boxes(1)[0]
                    if detector is None
                    else detector_region_boxes(detector, path, pixels, bundle.transform)
                )
            except DataError as error:
                failures += 1
                print(f"error: {error}", file=sys.stderr)
                continue
            readable.append(path)
        if not readable:
            continue
        reports = generate_reports(
            model,
            bundle.tokenizer,
            torch.stack(images).to(args.device),
            torch.stack(boxes).to(args.device),
            beams=args.beams,
            max_new_tokens=args.max_new_tokens,
        )
        for path, report in zip(readable, reports, strict=True):
            print(f"{path}: {report}")
    return 1 if failures else 0
