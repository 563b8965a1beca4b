"""Lung-opacity localisation on RSNA: torchvision's Faster R-CNN on the pre-trained image
encoder, its patch map turned into a three-level feature pyramid, trained as a linear probe
(encoder frozen) or end to end, scored with COCO mAP@0.5 and mAP@[.5:.95].

Images arrive already resized, padded and normalised by the model's transform, so the
detector's own transform neither resizes, pads nor normalises them again; the boxes are in
those model-input pixels, and images without opacity train the detector as negatives.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign
from tqdm import tqdm

from cxrvlp.data.readers.rsna import BOX_LABEL
from cxrvlp.data.sample import collate_samples
from cxrvlp.metrics.detection import detection_map
from cxrvlp.models.outputs import TaskOutput
from cxrvlp.tasks.task import DatasetSplits, EncoderTaskModel, TaskContext

CLASS_NAMES = ("background", BOX_LABEL)
PYRAMID_LEVELS = ("0", "1", "2")  # half, once and twice the patch stride
PYRAMID_CHANNELS = 256  # at most; a narrower encoder keeps its own width
# Anchor sides as fractions of the image side, two per pyramid level (finest first): RSNA
# opacity boxes span roughly a tenth to two thirds of the film.
ANCHOR_FRACTIONS = ((0.1, 0.14), (0.2, 0.28), (0.4, 0.57))
ANCHOR_ASPECT_RATIOS = (0.75, 1.25, 2.0)  # height / width: opacities are mostly tall
# A box a fifth of the image side pools from the patch-stride level; each doubling of its
# side moves one level coarser (the FPN paper's level rule, rescaled to the anchors above).
POOL_CANONICAL_FRACTION = 0.2
EVAL_SCORE_THRESHOLD = 0.001  # low, as COCO evaluation expects: AP ranks every detection
MIN_BOX_SIDE = 1.0  # pixels; augmentation can clip a border box to nothing
EXAMPLES = 8
DRAW_THRESHOLD = 0.3
EXAMPLE_BOXES = 10  # top-scoring predictions kept per example in results.json
PICTURE_FILE = "detections.png"
ROI_SIZE = 7
BOX_HEAD_WIDTH = 256


class SimplePyramid(nn.Module):
    """The feature pyramid of ViTDet (Li et al. 2022, "Exploring plain vision transformer
    backbones for object detection"): the encoder's single patch map upsampled, kept and
    pooled to three resolutions, each projected to ``out_channels`` (which FasterRCNN reads).
    """

    def __init__(self, image_encoder: nn.Module, out_channels: int):
        super().__init__()
        self.image_encoder = image_encoder
        self.out_channels = out_channels
        width = image_encoder.width

        def project(resample: nn.Module, channels: int) -> nn.Sequential:
            return nn.Sequential(
                resample,
                nn.Conv2d(channels, out_channels, kernel_size=1),
                nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            )

        self.finer = project(nn.ConvTranspose2d(width, width, kernel_size=2, stride=2), width)
        self.same = project(nn.Identity(), width)
        self.coarser = project(nn.MaxPool2d(kernel_size=2), width)

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        tokens, _ = self.image_encoder(images)
        grid = self.image_encoder.patch_grid(tokens)
        maps = (self.finer(grid), self.same(grid), self.coarser(grid))
        return OrderedDict(zip(PYRAMID_LEVELS, maps, strict=True))


class LocalizationModel(EncoderTaskModel):
    """Faster R-CNN (background + Lung Opacity) over a :class:`SimplePyramid` of the encoder."""

    def __init__(self, image_encoder: nn.Module, linear_probe: bool):
        super().__init__(linear_probe)
        size = int(image_encoder.image_size)
        self.freeze_if_probe(image_encoder)
        backbone = SimplePyramid(image_encoder, min(PYRAMID_CHANNELS, image_encoder.width))
        anchors = AnchorGenerator(
            sizes=tuple(tuple(round(f * size) for f in level) for level in ANCHOR_FRACTIONS),
            aspect_ratios=(ANCHOR_ASPECT_RATIOS,) * len(ANCHOR_FRACTIONS),
        )
        patch_stride = size / image_encoder.grid
        pooler = MultiScaleRoIAlign(
            list(PYRAMID_LEVELS),
            output_size=ROI_SIZE,
            # One bilinear sample per bin: torchvision's CPU RoIAlign backward runs on one
            # thread and was 40 % of a training step with 2x2 samples and 64 RoIs per image.
            sampling_ratio=1,
            canonical_scale=round(POOL_CANONICAL_FRACTION * size),
            canonical_level=round(math.log2(patch_stride)),
        )
        self.detector = FasterRCNN(
            backbone,
            num_classes=None,  # the box predictor below has the two classes
            # The images come normalised at the encoder's size: no resizing (min = max = the
            # size), no padding (size_divisible = the size) and an identity normalisation
            # (mean 0, std 1 broadcast over any channel count).
            min_size=size,
            max_size=size,
            size_divisible=size,
            image_mean=[0.0],
            image_std=[1.0],
            rpn_anchor_generator=anchors,
            box_roi_pool=pooler,
            # A radiograph holds a few opacities at most: far fewer proposals and RoIs than COCO.
            rpn_pre_nms_top_n_train=600,
            rpn_post_nms_top_n_train=300,
            rpn_pre_nms_top_n_test=600,
            rpn_post_nms_top_n_test=300,
            box_batch_size_per_image=32,  # a film holds at most a few opacities
            # A 256-wide box head instead of COCO's 1024: two classes, and its first layer
            # (pooled map -> representation) was most of a CPU step.
            box_head=TwoMLPHead(backbone.out_channels * ROI_SIZE**2, BOX_HEAD_WIDTH),
            box_predictor=FastRCNNPredictor(BOX_HEAD_WIDTH, len(CLASS_NAMES)),
            box_score_thresh=EVAL_SCORE_THRESHOLD,
        )

    @property
    def image_encoder(self) -> nn.Module:
        return self.detector.backbone.image_encoder

    def forward(self, batch: dict[str, Any]) -> TaskOutput:
        """Training losses of a batch (torchvision computes them in train mode only)."""
        if not self.training:
            raise RuntimeError("LocalizationModel computes losses in train mode; use detect()")
        if "boxes" not in batch:
            raise KeyError("the batch has no 'boxes': localisation needs a reader with boxes")
        images = batch["image"]
        targets = [detection_target(boxes.to(images.device)) for boxes in batch["boxes"]]
        losses = self.detector(list(images), targets)
        return TaskOutput(
            loss=sum(losses.values()),
            losses={name.removeprefix("loss_"): value.detach() for name, value in losses.items()},
        )

    @torch.no_grad()
    def detect(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Boxes (x1, y1, x2, y2 in input pixels), scores and labels of each image."""
        was_training = self.training
        self.eval()
        detections = self.detector(list(images))
        self.train(was_training)
        return detections


def detection_target(boxes: torch.Tensor) -> dict[str, torch.Tensor]:
    """torchvision's target of one image: its boxes (possibly none) labelled Lung Opacity."""
    sides = boxes[:, 2:] - boxes[:, :2]
    boxes = boxes[(sides >= MIN_BOX_SIDE).all(dim=1)]
    labels = torch.full((len(boxes),), CLASS_NAMES.index(BOX_LABEL), dtype=torch.int64)
    return {"boxes": boxes, "labels": labels.to(boxes.device)}


class LocalizationTask:
    name: ClassVar[str] = "localization"
    display_name: ClassVar[str] = "Localisation"
    headline_metric: ClassVar[tuple[str, str]] = ("map50", "mAP@0.5")  # results key, label
    detail_metrics: ClassVar[tuple[str, ...]] = ("map50", "map")
    datasets: ClassVar[dict[str, DatasetSplits]] = {
        "rsna": DatasetSplits("rsna", "train", "test"),
    }
    # The augmentation's affine moves the boxes with the pixels, so it stays on.
    train_defaults: ClassVar[dict[str, Any]] = {
        "lr": 1e-4,
        "batch_size": 8,
        "max_steps": 300,
        "warmup_steps": 30,
        "weight_decay": 0.01,
    }
    uses_text: ClassVar[bool] = False
    exports_bundle: ClassVar[bool] = False
    uses_region_boxes: ClassVar[bool] = False

    def build_model(self, ctx: TaskContext, train_set: Any) -> nn.Module:
        return LocalizationModel(ctx.backbone.model.image_encoder, ctx.linear_probe)

    def collate(self, ctx: TaskContext, model: nn.Module) -> Any:
        return collate_samples

    @torch.no_grad()
    def evaluate(self, ctx: TaskContext, model: nn.Module, test_set: Any) -> dict[str, Any]:
        wanted = example_indices(test_set)
        predicted, scores, truth = [], [], []
        examples: dict[int, dict[str, Any]] = {}
        pictures: dict[int, torch.Tensor] = {}
        loader = DataLoader(test_set, batch_size=ctx.batch_size, collate_fn=collate_samples)
        device = next(model.parameters()).device
        for batch in tqdm(loader, desc="detect", unit="batch", disable=not ctx.progress):
            if "image" not in batch:
                continue
            detections = model.detect(batch["image"].to(device))
            for index, image_id, image, true_boxes, detection in zip(
                batch["index"].tolist(),
                batch["image_id"],
                batch["image"],
                batch["boxes"],
                detections,
                strict=True,
            ):
                boxes, box_scores = detection["boxes"].cpu(), detection["scores"].cpu()
                predicted.append(boxes)
                scores.append(box_scores)
                truth.append(true_boxes)
                if index in wanted:
                    examples[index] = {
                        "image_id": image_id,
                        "boxes": _rounded(boxes[:EXAMPLE_BOXES], 1),
                        "scores": _rounded(box_scores[:EXAMPLE_BOXES], 3),
                        "truth": _rounded(true_boxes, 1),
                    }
                    pictures[index] = image[0]
        if not predicted:
            raise ValueError(f"no readable test image in {ctx.dataset} at {ctx.root}")
        results = detection_map(predicted, scores, truth, category=BOX_LABEL)
        ordered = [index for index in wanted if index in examples]
        results["image_size"] = int(model.image_encoder.image_size)
        results["examples"] = [examples[index] for index in ordered]
        draw_detections(
            [pictures[index] for index in ordered], results["examples"], ctx.out / PICTURE_FILE
        )
        return results


def example_indices(dataset: Any, count: int = EXAMPLES) -> list[int]:
    """The first ``count`` test images, those with opacity boxes first (they show the most)."""
    records = dataset.records
    order = sorted(
        range(len(records)), key=lambda i: records[i].boxes is None or len(records[i].boxes) == 0
    )
    return order[:count]


def _rounded(values: torch.Tensor, digits: int) -> list:
    # Rounded in float64, so the JSON shows 112.9 rather than float32's 112.9000015258789.
    return torch.round(values.double(), decimals=digits).tolist()


def draw_detections(images: list[torch.Tensor], examples: list[dict], out: Path) -> Path:
    """A grid of test images: true boxes in green, predictions above ``DRAW_THRESHOLD`` in
    red with their scores."""
    columns = min(4, max(1, len(images)))
    rows = max(1, -(-len(images) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.2 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, example in zip(axes.flat, images, examples, strict=False):
        axis.imshow(image.float().numpy(), cmap="gray")
        for x1, y1, x2, y2 in example["truth"]:
            axis.add_patch(
                plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", lw=1.5)
            )
        for (x1, y1, x2, y2), score in zip(example["boxes"], example["scores"], strict=True):
            if score < DRAW_THRESHOLD:
                continue
            axis.add_patch(
                plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="red", lw=1.2)
            )
            axis.text(x1, y1, f"{score:.2f}", color="red", fontsize=7, va="bottom")
        axis.set_title(example["image_id"][:18], fontsize=8)
    figure.suptitle(f"green: truth; red: predicted, score >= {DRAW_THRESHOLD}", fontsize=9)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
