"""Binary segmentation scores: Dice and IoU per image (MONAI), over positive images, and
pooled over every pixel of the test set.

Per image, MONAI's ``ignore_empty=False`` rule is SIIM-ACR's: an image whose true mask is empty
scores 1 when the prediction is empty too and 0 otherwise, so empty images reward a model that
stays quiet on them (one that predicts nothing scores the share of empty images). Papers differ
on which average they print, so all three are reported; the pooled Dice is the headline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from monai.metrics import compute_dice, compute_iou

THRESHOLD = 0.5  # on the sigmoid probability of each pixel
DEFINITION = (
    "Predicted mask: sigmoid probability >= {threshold}, at the model's input resolution "
    "({size} px, letterboxed as the image). dice / iou: mean over all test images of the "
    "per-image score; an image with an empty true mask scores 1 if the predicted mask is empty "
    "and 0 otherwise (SIIM-ACR's rule; MONAI compute_dice/compute_iou, ignore_empty=False). "
    "dice_positive / iou_positive: the same mean over images with a non-empty true mask. "
    "dice_global: 2 TP / (2 TP + FP + FN) over the pixels of all test images together."
)


@dataclass
class SegmentationScores:
    """Accumulates per-image Dice and IoU and pooled pixel counts, batch by batch."""

    dice: list[torch.Tensor] = field(default_factory=list)
    iou: list[torch.Tensor] = field(default_factory=list)
    positive: list[torch.Tensor] = field(default_factory=list)
    true_positive: int = 0
    false_positive: int = 0
    false_negative: int = 0

    def update(self, predicted: torch.Tensor, truth: torch.Tensor) -> None:
        """``predicted`` and ``truth``: (N, H, W) masks (non-zero = inside)."""
        if predicted.shape != truth.shape or predicted.dim() != 3:
            raise ValueError(
                f"masks must both be (N, H, W), got {tuple(predicted.shape)} and "
                f"{tuple(truth.shape)}"
            )
        predicted, truth = predicted.bool(), truth.bool()
        channels = predicted[:, None].float(), truth[:, None].float()
        self.dice.append(compute_dice(*channels, include_background=True, ignore_empty=False)[:, 0])
        self.iou.append(compute_iou(*channels, include_background=True, ignore_empty=False)[:, 0])
        self.positive.append(truth.flatten(1).any(dim=1))
        self.true_positive += int((predicted & truth).sum())
        self.false_positive += int((predicted & ~truth).sum())
        self.false_negative += int((~predicted & truth).sum())

    def compute(self) -> dict[str, Any]:
        if not self.dice:
            raise ValueError("no mask was scored")
        dice, iou, positive = torch.cat(self.dice), torch.cat(self.iou), torch.cat(self.positive)

        def mean(values: torch.Tensor) -> float | None:
            return float(values.mean()) if len(values) else None

        pooled = 2 * self.true_positive + self.false_positive + self.false_negative
        return {
            "dice": mean(dice),
            "iou": mean(iou),
            "dice_positive": mean(dice[positive]),
            "iou_positive": mean(iou[positive]),
            "dice_global": 2 * self.true_positive / pooled if pooled else 1.0,
            "images_scored": len(dice),
            "positive_images": int(positive.sum()),
        }


def segmentation_metrics(predicted: torch.Tensor, truth: torch.Tensor) -> dict[str, Any]:
    """Scores of (N, H, W) predicted and true masks in one call."""
    scores = SegmentationScores()
    scores.update(predicted, truth)
    return scores.compute()
