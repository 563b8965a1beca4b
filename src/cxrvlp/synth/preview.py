"""Contact sheets of a synthetic world: images with their findings and region boxes drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
from cxrvlp.synth.study import RenderedStudy

FINDING_COLOUR = (255, 70, 60)
DEVICE_COLOUR = (80, 200, 255)
TILE = 320


def _region_colour(index: int) -> tuple[int, int, int]:
    hue = index / len(CHEST_IMAGENOME_REGIONS)
    r, g, b = (0.5 + 0.5 * np.cos(2 * np.pi * (hue + k / 3)) for k in range(3))
    return round(255 * r), round(255 * g), round(255 * b)


def _tile(study: RenderedStudy, regions: bool) -> Image.Image:
    image = Image.fromarray((study.frontal * 255).astype(np.uint8)).convert("RGB")
    scale = TILE / max(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)))
    canvas = Image.new("RGB", (TILE, TILE + 44), (16, 16, 16))
    canvas.paste(image, ((TILE - image.width) // 2, 0))
    offset_x = (TILE - image.width) // 2
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(11)

    def rect(box, colour, width=1):
        draw.rectangle(
            [offset_x + box.x1 * scale, box.y1 * scale, offset_x + box.x2 * scale, box.y2 * scale],
            outline=colour,
            width=width,
        )

    if regions:
        for index, (name, box) in enumerate(study.scene.region_boxes().items()):
            rect(box, _region_colour(index))
            draw.text(
                (offset_x + box.x1 * scale + 2, box.y1 * scale + 1),
                name[:14],
                font=font,
                fill=_region_colour(index),
            )
    for finding in study.scene.findings:
        colour = DEVICE_COLOUR if finding.is_device else FINDING_COLOUR
        for box in finding.boxes:
            rect(box, colour, 2)
    words = [
        f"{f.laterality + ' ' if f.laterality not in ('none',) else ''}"
        f"{f.severity + ' ' if f.severity else ''}{f.name}"
        for f in study.scene.findings
    ] or ["normal"]
    caption = "; ".join(words)
    lines = [caption[i : i + 52] for i in range(0, len(caption), 52)][:3]
    for row, text in enumerate(lines):
        draw.text((4, TILE + 2 + 13 * row), text, font=font, fill=(235, 235, 235))
    return canvas


def contact_sheet(
    studies: list[RenderedStudy], path: Path, columns: int = 4, regions: bool = False
) -> Path:
    """Write a grid of tiles: finding boxes (red: findings, blue: devices), optionally regions."""
    tiles = [_tile(study, regions) for study in studies]
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * TILE, rows * (TILE + 44)), (0, 0, 0))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * TILE, (i // columns) * (TILE + 44)))
    sheet.save(path)
    return path
