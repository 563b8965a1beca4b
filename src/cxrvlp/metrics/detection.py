"""Single-class box detection scored the COCO way: pycocotools' COCOeval on ground truth and
detections built in memory. ``map50`` is AP at IoU 0.5, ``map`` the mean AP over IoU 0.5,
0.55, ..., 0.95 (101-point interpolated precision, at most 100 detections per image)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

CATEGORY_ID = 1
# Positions of the two figures in COCOeval.stats after summarize().
STATS_MAP, STATS_MAP50 = 0, 1


def _xywh(boxes: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, 4) x1, y1, x2, y2 -> x, y, width, height (COCO's box format)."""
    corners = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([corners[:, :2], corners[:, 2:] - corners[:, :2]], axis=1)


def detection_map(
    predicted_boxes: Sequence[torch.Tensor | np.ndarray],
    scores: Sequence[torch.Tensor | np.ndarray],
    true_boxes: Sequence[torch.Tensor | np.ndarray],
    category: str = "object",
) -> dict[str, Any]:
    """COCO ``map50`` and ``map`` of one class over a list of images.

    Entry ``i`` of each sequence belongs to image ``i``: predicted boxes (N_i, 4) x1, y1, x2, y2
    with their scores (N_i,), and the true boxes (M_i, 4) in the same pixels. Images without
    true boxes count: every detection on them is a false positive. Both figures are None when
    there is no true box at all (AP is undefined), and 0.0 when nothing was detected.
    """
    if not len(predicted_boxes) == len(scores) == len(true_boxes):
        raise ValueError(
            f"one entry per image expected: {len(predicted_boxes)} predicted box sets, "
            f"{len(scores)} score sets, {len(true_boxes)} true box sets"
        )
    annotations = []
    for image_id, boxes in enumerate(true_boxes):
        for box in _xywh(boxes):
            annotations.append(
                {
                    "id": len(annotations) + 1,  # COCOeval treats id 0 as "unmatched"
                    "image_id": image_id,
                    "category_id": CATEGORY_ID,
                    "bbox": box.tolist(),
                    "area": float(box[2] * box[3]),
                    "iscrowd": 0,
                }
            )
    detections = []
    for image_id, (boxes, image_scores) in enumerate(zip(predicted_boxes, scores, strict=True)):
        image_scores = np.asarray(image_scores, dtype=np.float64).reshape(-1)
        for box, score in zip(_xywh(boxes), image_scores, strict=True):
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": CATEGORY_ID,
                    "bbox": box.tolist(),
                    "score": float(score),
                }
            )
    counts = {"images": len(true_boxes), "boxes": len(annotations), "detections": len(detections)}
    if not annotations:
        return {"map50": None, "map": None, **counts}
    if not detections:
        return {"map50": 0.0, "map": 0.0, **counts}

    # pycocotools reports every stage on stdout; the figures are returned instead.
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = {
            "images": [{"id": image_id} for image_id in range(len(true_boxes))],
            "annotations": annotations,
            "categories": [{"id": CATEGORY_ID, "name": category}],
        }
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(detections), iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = evaluation.stats
    return {"map50": float(stats[STATS_MAP50]), "map": float(stats[STATS_MAP]), **counts}
