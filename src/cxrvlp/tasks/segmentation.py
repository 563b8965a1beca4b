"""Segmentation: a progressive-upsampling decoder on the pre-trained image encoder's patch map,
trained with Dice + BCE (MONAI) with the encoder frozen or end to end, scored with Dice and IoU.

SIIM-ACR pneumothorax masks come from the run-length-encoded label file (images without
pneumothorax train and score as empty masks); RSNA pneumonia masks are the opacity boxes filled
in, as MGCA's protocol does. Masks travel through the same transform as the pixels, so they are
scored at the model's input resolution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from monai.losses import DiceCELoss
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from cxrvlp.data.sample import collate_samples
from cxrvlp.metrics.segmentation import DEFINITION, THRESHOLD, SegmentationScores
from cxrvlp.models.outputs import TaskOutput
from cxrvlp.tasks.task import DatasetSplits, EncoderTaskModel, TaskContext

DECODER_WIDTH = 256  # channels after the first projection; each upsampling stage halves them
# The decoder's features stop at a quarter of the image size and the logits are resized from
# there (as SegFormer and DeepLab predict): the two full-size stages of SETR's decoder cost two
# thirds of a CPU training step.
OUTPUT_STRIDE = 4
MIN_DECODER_WIDTH = 16
NORM_GROUPS = 8  # GroupNorm: the batches of a CPU fine-tuning run are too small for BatchNorm
EXAMPLES = 6
PICTURE_FILE = "predictions.png"


class ProgressiveUpsamplingDecoder(nn.Module):
    """SETR's progressive upsampling decoder (Zheng et al. 2021): the patch map is projected,
    then doubled in resolution by (bilinear x2, 3x3 conv, GroupNorm, ReLU) stages until it
    reaches ``output_stride``, a 1x1 convolution gives one logit per pixel there, and the
    logits are resized bilinearly to the image.

    With the default output stride 4 a ViT with 16-pixel patches has 2 stages and a ResNet's
    stride 32 has 3; a stride that is not a power of two is covered by the final resize.
    """

    def __init__(
        self,
        in_channels: int,
        stride: int,
        width: int = DECODER_WIDTH,
        output_stride: int = OUTPUT_STRIDE,
    ):
        super().__init__()
        stages = max(0, (stride // output_stride).bit_length() - 1)  # floor(log2(ratio))
        widths = [max(MIN_DECODER_WIDTH, width >> i) for i in range(stages + 1)]
        self.project = nn.Conv2d(in_channels, widths[0], kernel_size=1)
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(widths[i], widths[i + 1], kernel_size=3, padding=1, bias=False),
                nn.GroupNorm(NORM_GROUPS, widths[i + 1]),
                nn.ReLU(inplace=True),
            )
            for i in range(stages)
        )
        self.classify = nn.Conv2d(widths[-1], 1, kernel_size=1)

    def forward(self, grid: torch.Tensor, size: int) -> torch.Tensor:
        """(B, C, g, g) patch map -> (B, 1, size, size) logits."""
        features = self.project(grid)
        for stage in self.stages:
            features = stage(features)
        logits = self.classify(features)
        if logits.shape[-1] != size:
            logits = F.interpolate(logits, size=(size, size), mode="bilinear")
        return logits


class SegmentationModel(EncoderTaskModel):
    """Image encoder -> patch map -> :class:`ProgressiveUpsamplingDecoder` -> mask logits."""

    def __init__(self, image_encoder: nn.Module, linear_probe: bool):
        super().__init__(linear_probe)
        self.image_encoder = image_encoder
        self.image_size = int(image_encoder.image_size)
        stride = self.image_size // int(image_encoder.grid)
        self.decoder = ProgressiveUpsamplingDecoder(int(image_encoder.width), stride)
        # batch=True: one Dice over the batch's pixels, so a batch of empty masks (most SIIM
        # images) still gives a useful gradient instead of a per-image 0/1 cliff.
        self.loss = DiceCELoss(sigmoid=True, batch=True)
        self.freeze_if_probe(image_encoder)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.image_encoder(images)
        return self.decoder(self.image_encoder.patch_grid(tokens), self.image_size)

    def forward(self, batch: dict[str, Any]) -> TaskOutput:
        if "mask" not in batch:
            raise KeyError("the batch has no 'mask': segmentation needs a reader with masks")
        logits = self.logits(batch["image"])
        loss = self.loss(logits.float(), batch["mask"][:, None].float())
        return TaskOutput(loss=loss, losses={"dice_bce": loss.detach()}, logits=logits)


class SegmentationTask:
    name: ClassVar[str] = "segmentation"
    display_name: ClassVar[str] = "Segmentation"
    # Pooled Dice, as MGCA's segmentation code computes it over its batches: the per-image
    # mean rewards a model that predicts nothing with the share of empty images (SIIM: ~0.7).
    headline_metric: ClassVar[tuple[str, str]] = ("dice_global", "Dice")  # results key, label
    detail_metrics: ClassVar[tuple[str, ...]] = ("dice_global", "dice_positive", "dice", "iou")
    datasets: ClassVar[dict[str, DatasetSplits]] = {
        "siim": DatasetSplits("siim", "train", "test"),
        "rsna": DatasetSplits("rsna", "train", "test", {"masks_from_boxes": True}),
    }
    # The augmentation's affine moves the mask with the pixels, so it stays on.
    train_defaults: ClassVar[dict[str, Any]] = {
        "lr": 3e-4,
        "probe_lr": 1e-3,  # the decoder alone learns: a larger step
        "batch_size": 16,
        "max_steps": 200,
        "warmup_steps": 20,
        "weight_decay": 0.01,
    }
    uses_text: ClassVar[bool] = False
    exports_bundle: ClassVar[bool] = False
    uses_region_boxes: ClassVar[bool] = False

    def build_model(self, ctx: TaskContext, train_set: Any) -> nn.Module:
        return SegmentationModel(ctx.backbone.model.image_encoder, ctx.linear_probe)

    def collate(self, ctx: TaskContext, model: nn.Module) -> Any:
        return collate_samples

    @torch.no_grad()
    def evaluate(self, ctx: TaskContext, model: nn.Module, test_set: Any) -> dict[str, Any]:
        wanted = set(example_indices(test_set))
        scores = SegmentationScores()
        examples: dict[int, tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        loader = DataLoader(test_set, batch_size=ctx.batch_size, collate_fn=collate_samples)
        device = next(model.parameters()).device
        for batch in tqdm(loader, desc="segment", unit="batch", disable=not ctx.progress):
            if "image" not in batch:
                continue
            if "mask" not in batch:
                raise KeyError(f"{ctx.dataset} test samples carry no mask")
            probabilities = torch.sigmoid(model.logits(batch["image"].to(device)).float()).cpu()
            predicted = probabilities[:, 0] >= THRESHOLD
            scores.update(predicted, batch["mask"])
            for row, index in enumerate(batch["index"].tolist()):
                if index in wanted:
                    examples[index] = (
                        batch["image_id"][row],
                        batch["image"][row, 0],
                        batch["mask"][row].bool(),
                        predicted[row],
                    )
        results = scores.compute()
        results["threshold"] = THRESHOLD
        results["dice_definition"] = DEFINITION.format(threshold=THRESHOLD, size=model.image_size)
        results["image_size"] = model.image_size
        ordered = [examples[i] for i in example_indices(test_set) if i in examples]
        results["examples"] = [image_id for image_id, *_ in ordered]
        draw_predictions(ordered, ctx.out / PICTURE_FILE)
        return results


def example_indices(dataset: Any, count: int = EXAMPLES) -> list[int]:
    """The first ``count`` test images, positive ones (a non-empty mask) first."""
    records = dataset.records

    def empty(index: int) -> bool:
        labels = records[index].labels
        return labels is None or not bool(np.asarray(labels).any())

    return sorted(range(len(records)), key=empty)[:count]


def draw_predictions(
    examples: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]], out: Path
) -> Path:
    """Each example as two panels side by side: the true mask (green) and the predicted
    mask (red) over the test image."""
    pairs_per_row = 2
    rows = max(1, -(-len(examples) // pairs_per_row))
    figure, axes = plt.subplots(
        rows, 2 * pairs_per_row, figsize=(3 * 2 * pairs_per_row, 3.2 * rows), squeeze=False
    )
    for axis in axes.flat:
        axis.axis("off")
    for number, (image_id, image, truth, predicted) in enumerate(examples):
        row, column = divmod(number, pairs_per_row)
        for axis, mask, colour, what in (
            (axes[row, 2 * column], truth, (0.0, 1.0, 0.0), "true"),
            (axes[row, 2 * column + 1], predicted, (1.0, 0.0, 0.0), "predicted"),
        ):
            axis.imshow(image.float().numpy(), cmap="gray")
            overlay = np.zeros((*mask.shape, 4), dtype=np.float32)
            overlay[mask.numpy()] = (*colour, 0.45)
            axis.imshow(overlay)
            # UIDs share their roots: the end of a long id tells the images apart.
            name = image_id if len(image_id) <= 16 else "…" + image_id[-15:]
            axis.set_title(f"{name} {what} ({int(mask.sum())} px)", fontsize=7)
    figure.suptitle("green: true mask; red: predicted mask (p >= 0.5)", fontsize=9)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
