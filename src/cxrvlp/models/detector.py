"""Anatomical region detector: torchvision Faster R-CNN over the 29 Chest ImaGenome regions.

The output contract the GK module and ASG rely on: exactly one box per region per image
(the top-scoring detection of each class). A region the detector misses gets a fallback box
placed from the region's mean position relative to the detected lungs (or to the image when
the lungs are missed too), flagged as a fallback.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import box_iou

from cxrvlp.constants import CHEST_IMAGENOME_REGIONS

N_REGIONS = len(CHEST_IMAGENOME_REGIONS)
LUNG_REGIONS = (
    CHEST_IMAGENOME_REGIONS.index("right lung"),
    CHEST_IMAGENOME_REGIONS.index("left lung"),
)
# name -> (torchvision ResNet constructor, FPN channels); all start from random weights here.
BACKBONES = {
    "resnet50-fpn": ("resnet50", 256),  # the paper setting
    "resnet18-fpn": ("resnet18", 128),  # light: trains on a laptop CPU
}


@dataclass
class DetectorConfig:
    backbone: str = "resnet18-fpn"
    image_size: int = 224  # images arrive resized and padded to this square (ResizePad)
    box_head_size: int = 512  # the ROI head's hidden width (torchvision's default is 1024)
    # One anchor size per FPN level, smaller than torchvision's (32..512): at 224 px the carina
    # and the cavoatrial junction are 10-20 px boxes.
    anchor_sizes: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])
    image_mean: float = 0.5
    image_std: float = 0.25
    # Mean box of each region relative to the union of the two lung boxes (x1, y1, x2, y2 in
    # lung-box units) and relative to the image: the fallback for missed regions.
    relative_to_lungs: list[list[float]] = field(default_factory=list)
    relative_to_image: list[list[float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _backbone(name: str) -> BackboneWithFPN:
    if name not in BACKBONES:
        raise ValueError(f"unknown detector backbone {name!r}; choose from {', '.join(BACKBONES)}")
    constructor, channels = BACKBONES[name]
    resnet = getattr(torchvision.models, constructor)(weights=None)
    # Radiographs are grayscale: one input channel instead of three.
    resnet.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    stage_channels = [64, 128, 256, 512] if constructor == "resnet18" else [256, 512, 1024, 2048]
    return BackboneWithFPN(
        resnet,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=stage_channels,
        out_channels=channels,
    )


@dataclass
class RegionBoxes:
    """One image's 29 region boxes (in the input image's pixels), scores and fallback flags."""

    boxes: torch.Tensor  # (29, 4)
    scores: torch.Tensor  # (29,), 0 for fallbacks
    fallback: torch.Tensor  # (29,) bool


class RegionDetector(nn.Module):
    """Faster R-CNN with 29 region classes + background and the one-box-per-region contract."""

    def __init__(self, config: DetectorConfig | None = None):
        super().__init__()
        self.config = config or DetectorConfig()
        backbone = _backbone(self.config.backbone)
        hidden = self.config.box_head_size
        anchors = AnchorGenerator(
            sizes=tuple((size,) for size in self.config.anchor_sizes),
            aspect_ratios=((0.5, 1.0, 2.0),) * len(self.config.anchor_sizes),
        )
        self.model = FasterRCNN(
            backbone,
            rpn_anchor_generator=anchors,
            box_head=TwoMLPHead(backbone.out_channels * 7 * 7, hidden),
            box_predictor=FastRCNNPredictor(hidden, N_REGIONS + 1),
            min_size=self.config.image_size,
            max_size=self.config.image_size,
            image_mean=[self.config.image_mean],
            image_std=[self.config.image_std],
            # Keep every candidate: the contract picks the best box of each class itself.
            box_score_thresh=0.0,
            box_detections_per_img=N_REGIONS * 8,
            # Fewer proposals than for natural images: 29 large, well-separated objects.
            rpn_pre_nms_top_n_train=300,
            rpn_post_nms_top_n_train=150,
            rpn_pre_nms_top_n_test=300,
            rpn_post_nms_top_n_test=150,
            box_batch_size_per_image=128,
        )

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        """Training: images + targets → dict of losses. Inference: images → raw detections."""
        return self.model(images, targets)

    @torch.no_grad()
    def predict(self, images: list[torch.Tensor]) -> list[RegionBoxes]:
        was_training = self.training
        self.eval()
        detections = self.model(images)
        self.train(was_training)
        return [
            self.one_box_per_region(d, image.shape[-2:])
            for d, image in zip(detections, images, strict=True)
        ]

    def one_box_per_region(self, detection: dict, size: tuple[int, int]) -> RegionBoxes:
        """The contract applied to one image's raw detections (``forward`` in eval mode)."""
        boxes = torch.zeros(N_REGIONS, 4)
        scores = torch.zeros(N_REGIONS)
        found = torch.zeros(N_REGIONS, dtype=torch.bool)
        # Detections come sorted by score per image, so the first of each class is its best.
        for box, label, score in zip(
            detection["boxes"], detection["labels"], detection["scores"], strict=True
        ):
            region = int(label) - 1
            if not found[region]:
                boxes[region], scores[region], found[region] = box, score, True
        fallback = ~found
        if fallback.any():
            boxes[fallback] = self._fallback_boxes(boxes, found, size)[fallback]
        return RegionBoxes(boxes, scores, fallback)

    def _fallback_boxes(
        self, boxes: torch.Tensor, found: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        height, width = size
        if all(found[i] for i in LUNG_REGIONS) and self.config.relative_to_lungs:
            lungs = boxes[list(LUNG_REGIONS)]
            frame = torch.stack(
                [lungs[:, 0].min(), lungs[:, 1].min(), lungs[:, 2].max(), lungs[:, 3].max()]
            )
            relative = torch.tensor(self.config.relative_to_lungs)
        else:
            frame = torch.tensor([0.0, 0.0, float(width), float(height)])
            relative = torch.tensor(
                self.config.relative_to_image or [[0.25, 0.25, 0.75, 0.75]] * N_REGIONS
            )
        extent = (frame[2:] - frame[:2]).repeat(2)
        return frame[:2].repeat(2) + relative * extent


def region_ious(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """IoU of each predicted region box with its true box (NaN where the truth is absent)."""
    ious = box_iou(predicted, torch.nan_to_num(truth)).diagonal()
    return torch.where(torch.isnan(truth).any(dim=1), torch.nan, ious)
