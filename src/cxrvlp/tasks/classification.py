"""Disease classification: a linear head on the pre-trained image encoder's pooled vector,
trained as a linear probe (encoder frozen) or fine-tuned end to end, with masked BCE (labels a
data set leaves blank or uncertain take no part)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cxrvlp.data.sample import collate_samples
from cxrvlp.metrics.classification import classification_metrics, roc_curves
from cxrvlp.models.outputs import TaskOutput
from cxrvlp.tasks.task import DatasetSplits, EncoderTaskModel, TaskContext


class ClassificationModel(EncoderTaskModel):
    """Image encoder -> pooled vector -> one logit per label."""

    def __init__(self, image_encoder: nn.Module, num_labels: int, linear_probe: bool):
        super().__init__(linear_probe)
        self.image_encoder = image_encoder
        self.head = nn.Linear(image_encoder.width, num_labels)
        self.freeze_if_probe(image_encoder)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        _, pooled = self.image_encoder(images)
        return self.head(pooled)

    def forward(self, batch: dict[str, Any]) -> TaskOutput:
        logits = self.logits(batch["image"])
        mask = batch["label_mask"].float()
        per_label = F.binary_cross_entropy_with_logits(
            logits.float(), batch["labels"].float(), reduction="none"
        )
        loss = (per_label * mask).sum() / mask.sum().clamp(min=1.0)
        return TaskOutput(loss=loss, losses={"bce": loss.detach()}, logits=logits)


class ClassificationTask:
    name: ClassVar[str] = "classification"
    display_name: ClassVar[str] = "Classification"
    headline_metric: ClassVar[tuple[str, str]] = ("auroc", "AUROC")  # results key, label
    detail_metrics: ClassVar[tuple[str, ...]] = ("auroc", "f1", "accuracy")
    # COVIDx is published with accuracy (COVID-Net, ASG), the others with AUROC.
    dataset_headlines: ClassVar[dict[str, tuple[str, str]]] = {"covidx": ("accuracy", "ACC")}
    datasets: ClassVar[dict[str, DatasetSplits]] = {
        "rsna": DatasetSplits("rsna", "train", "test"),
        "nih": DatasetSplits("nih", "train", "test"),
        "chexpert": DatasetSplits("chexpert", "train", "valid"),
        "covidx": DatasetSplits("covidx", "train", "test"),
    }
    train_defaults: ClassVar[dict[str, Any]] = {
        "lr": 3e-4,
        "probe_lr": 1e-2,  # only a linear head learns: it needs a larger step to converge
        "batch_size": 32,
        "max_steps": 200,
        "warmup_steps": 20,
        "weight_decay": 0.01,
    }
    uses_text: ClassVar[bool] = False
    exports_bundle: ClassVar[bool] = False
    uses_region_boxes: ClassVar[bool] = False

    def build_model(self, ctx: TaskContext, train_set: Any) -> nn.Module:
        return ClassificationModel(
            ctx.backbone.model.image_encoder, len(train_set.label_names), ctx.linear_probe
        )

    def collate(self, ctx: TaskContext, model: nn.Module) -> Any:
        return collate_samples

    @torch.no_grad()
    def evaluate(self, ctx: TaskContext, model: nn.Module, test_set: Any) -> dict[str, Any]:
        probabilities, labels, masks = predict(model, test_set, ctx.batch_size, ctx.progress)
        names = list(test_set.label_names)
        results = classification_metrics(probabilities, labels, masks, names)
        results["roc"] = roc_curves(probabilities, labels, masks, names)
        if getattr(test_set, "exclusive_labels", False):
            # One class per image (COVIDx before CXR-2): accuracy is the argmax's, as published.
            hits = probabilities.argmax(dim=1) == labels.argmax(dim=1)
            results["accuracy"] = float(hits.float().mean())
            results["accuracy_rule"] = "argmax over the classes (one class per image)"
        else:
            results["accuracy_rule"] = "per class at probability 0.5, macro-averaged"
        return results


@torch.no_grad()
def predict(
    model: ClassificationModel, dataset: Any, batch_size: int = 32, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probabilities, labels and label masks (N, L) of every readable test sample."""
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_samples)
    device = next(model.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {"p": [], "y": [], "m": []}
    for batch in tqdm(loader, desc="classify", unit="batch", disable=not progress):
        if "image" not in batch:
            continue
        parts["p"].append(torch.sigmoid(model.logits(batch["image"].to(device)).float()).cpu())
        parts["y"].append(batch["labels"])
        parts["m"].append(batch["label_mask"])
    return torch.cat(parts["p"]), torch.cat(parts["y"]), torch.cat(parts["m"])
