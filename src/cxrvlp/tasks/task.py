"""The downstream task contract: the registry of task classes, what a task receives
(:class:`TaskContext`), what it must provide (:class:`FinetuneTask`), the shared base of models
on the pre-trained image encoder, and the names of a fine-tuning run's files.

The `cxrvlp finetune` command and its orchestration live in :mod:`cxrvlp.tasks.finetune`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from cxrvlp.bundle import Pretrained

TASK_MODULES = {
    "classification": "cxrvlp.tasks.classification:ClassificationTask",
    "localization": "cxrvlp.tasks.localization:LocalizationTask",
    "segmentation": "cxrvlp.tasks.segmentation:SegmentationTask",
    "generation": "cxrvlp.tasks.generation:GenerationTask",
    "vqa": "cxrvlp.tasks.vqa:VQATask",
}
FINETUNE_FILE = "finetune.json"
BACKBONE_DIR = "backbone"
BUNDLE_DIR = "model"
RESULTS_FILE = "results.json"
RANDOM_INIT = "none"


@dataclass(frozen=True)
class DatasetSplits:
    """Which reader serves a data set and the split names it trains and tests on."""

    reader: str
    train: str
    test: str
    reader_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskContext:
    """Everything a task needs to build, train and score its model."""

    task: str
    dataset: str
    root: Path
    out: Path
    backbone: Pretrained  # the GK-MVLP model (pre-trained or random), tokenizer, transforms
    init: str  # "pretrained" or "random"
    fraction: float = 1.0
    linear_probe: bool = False
    region_boxes: dict[str, np.ndarray] | None = None  # image_id -> (29, 4) file pixels
    progress: bool = True
    batch_size: int = 16

    @property
    def device(self) -> torch.device:
        return next(self.backbone.model.parameters()).device


class FinetuneTask(Protocol):
    """The contract every downstream task class meets. A task may also define
    ``prepare_training(ctx, model, train_set)``, run once before the first optimiser step of a
    fine-tuning run (not when a run is re-scored); the dict it returns goes into results.json;
    and ``dataset_headlines`` {data set: (results key, label)} where a data set is judged by
    another metric than the task's headline (COVIDx classification: accuracy)."""

    name: ClassVar[str]
    display_name: ClassVar[str]  # how reports and tables name the task
    headline_metric: ClassVar[tuple[str, str]]  # (results.json key, label) a run is judged by
    detail_metrics: ClassVar[tuple[str, ...]]  # further results.json keys of its detail table
    datasets: ClassVar[dict[str, DatasetSplits]]
    train_defaults: ClassVar[dict[str, Any]]  # TrainConfig fields
    uses_text: ClassVar[bool]  # needs the tokenizer (generation, VQA)
    uses_region_boxes: ClassVar[bool]  # its model runs the GK module
    exports_bundle: ClassVar[bool]  # RUN/model: the fine-tuned GK-MVLP as a model bundle

    def build_model(self, ctx: TaskContext, train_set: Any) -> nn.Module: ...

    def collate(self, ctx: TaskContext, model: nn.Module) -> Any: ...

    def evaluate(self, ctx: TaskContext, model: nn.Module, test_set: Any) -> dict[str, Any]: ...


class EncoderTaskModel(nn.Module):
    """Base of a task model on the pre-trained image encoder (``self.image_encoder``, an
    attribute or a property). With ``linear_probe`` the encoder is frozen: no gradients, and
    eval mode even while the model trains, so its normalisation statistics stay as well."""

    def __init__(self, linear_probe: bool):
        super().__init__()
        self.linear_probe = linear_probe

    def freeze_if_probe(self, image_encoder: nn.Module) -> None:
        if self.linear_probe:
            image_encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> EncoderTaskModel:
        super().train(mode)
        if self.linear_probe:
            self.image_encoder.eval()
        return self


def task_class(name: str) -> type:
    """The class registered for task ``name``, imported on first use."""
    if name not in TASK_MODULES:
        raise KeyError(f"unknown task {name!r}; choose from {', '.join(TASK_MODULES)}")
    module, cls = TASK_MODULES[name].split(":")
    return getattr(importlib.import_module(module), cls)
