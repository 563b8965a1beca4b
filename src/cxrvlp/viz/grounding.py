"""Grounding heat maps drawn over the image, one panel per (image, finding)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class GroundingPanel:
    """One picture: the image, a heat map on any grid, the true boxes and a title."""

    image: torch.Tensor  # (H, W) model input, any normalisation
    heat: torch.Tensor  # (h, w), resized to the image
    true_boxes: list[torch.Tensor]
    title: str
    hit: bool


def draw_panels(panels: list[GroundingPanel], out: Path, columns: int = 4) -> Path:
    """A grid of panels: grey image, heat map in colour, true regions in green (hit) or red."""
    rows = max(1, -(-len(panels) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, panel in zip(axes.flat, panels, strict=False):
        image = panel.image.float()
        image = (image - image.min()) / (image.max() - image.min()).clamp(min=1e-6)
        heat = F.interpolate(
            panel.heat[None, None].float(), size=image.shape, mode="bilinear", align_corners=False
        )[0, 0]
        heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp(min=1e-12)
        axis.imshow(image.numpy(), cmap="gray")
        axis.imshow(heat.numpy(), cmap="jet", alpha=0.35)
        colour = "lime" if panel.hit else "red"
        for box in panel.true_boxes:
            if bool(torch.isfinite(box).all()):
                x1, y1, x2, y2 = box.tolist()
                axis.add_patch(
                    plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=colour, lw=1.5)
                )
        peak = np.unravel_index(int(heat.argmax()), heat.shape)
        axis.plot(peak[1], peak[0], marker="+", color="white", markersize=12, mew=2)
        axis.set_title(panel.title, fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
