"""`cxrvlp finetune TASK`: one downstream task on one data set from a pre-trained bundle (or
from random initialisation), trained with the engine's Trainer, then scored on the test split.

A task is a class with the contract of :class:`cxrvlp.tasks.task.FinetuneTask`: the data sets
it reads, its training defaults, the model it builds on the backbone, its collate function and its
evaluation. RUN receives ``finetune.json`` (what was asked), ``backbone/`` (the starting
architecture and tokenizer, so the run can be re-scored), the Trainer's checkpoints, metrics
and loss curve, ``results.json``, and for report generation ``model/``, the fine-tuned model
as a bundle that `cxrvlp generate --model` reads.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from cxrvlp.bundle import (
    Pretrained,
    write_bundle,
)
from cxrvlp.tasks.task import (
    BACKBONE_DIR,
    BUNDLE_DIR,
    FINETUNE_FILE,
    RANDOM_INIT,
    RESULTS_FILE,
    TASK_MODULES,
    TaskContext,
    task_class,
)

log = logging.getLogger(__name__)

DESCRIPTION = """Fine-tune a pre-trained model bundle on a downstream task and score it.

  classification  rsna, nih, chexpert: AUROC (macro, per class), F1, accuracy
  localization    rsna: detection head on the image encoder, mAP@0.5 and COCO mAP
  segmentation    siim, rsna (masks = boxes): upsampling decoder on the patch map, Dice, IoU
  generation      iu-xray, mimic-cxr: BLEU-1..4, METEOR, ROUGE-L, CIDEr, clinical efficacy
  vqa             vqa-rad, slake: closed, open and overall accuracy

  cxrvlp finetune classification --pretrained MODEL --dataset rsna --root WORLD/rsna --out RUN
  cxrvlp finetune classification --pretrained none --dataset nih --root R --out RUN \\
      --fraction 0.1 --linear-probe
RUN/results.json holds the scores; `cxrvlp evaluate TASK --run RUN` re-scores a run.
"""


# ---- starting point -----------------------------------------------------------------------
def random_backbone(model_name: str, tokenizer_dir: Path | None, texts: list[str] | None) -> Any:
    """A freshly initialised model of ``model_name`` with a tokenizer: ``tokenizer_dir``, or a
    WordPiece vocabulary trained on ``texts`` (the task's training texts), or none."""
    from cxrvlp.data.transforms import transform_from_config
    from cxrvlp.models.registry import attach_prompts, create_model
    from cxrvlp.text.tokenizer import load_tokenizer, train_wordpiece

    tokenizer = None
    if tokenizer_dir is not None:
        tokenizer = load_tokenizer(tokenizer_dir)
    elif texts:
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            tokenizer = load_tokenizer(train_wordpiece(texts, folder, vocab_size=2000))
    model = create_model(model_name, vocab_size=len(tokenizer) if tokenizer else None)
    if tokenizer is not None:
        attach_prompts(model, tokenizer)
    image = OmegaConf.to_container(model.config.image)
    return Pretrained(
        model=model,
        tokenizer=tokenizer,
        transform=transform_from_config(image, augment=False),
        config=model.config,
        info={"model_name": model_name, "init": "random"},
    )


def check_backbone_serves(task: Any, model_config: Any) -> None:
    """A task whose model runs the report towers that attend to the image (generation, VQA)
    cannot start from a recipe without them (ASG: two encoders): say so before any work."""
    recipe = str(model_config.recipe)
    if task.uses_region_boxes and recipe != "gkmvlp":
        raise ValueError(
            f"{task.name} needs an image-report encoder and a report decoder, which the "
            f"{recipe!r} recipe does not build (its bundles have image and report encoders: "
            "classification, localization, zero-shot and retrieval take them). Fine-tune a "
            "GK-MVLP bundle for it."
        )


# ---- data ---------------------------------------------------------------------------------
def open_split(ctx: TaskContext, task: Any, split: str, train: bool) -> Any:
    """The reader of ``ctx.dataset`` for ``split``: training transform and label fraction for
    the training split; region boxes attached where the task runs the GK module."""
    from cxrvlp.data.readers import reader_class
    from cxrvlp.data.transforms import transform_from_config

    spec = task.datasets[ctx.dataset]
    image = OmegaConf.to_container(ctx.backbone.config.image)
    transform = transform_from_config(
        image, augment=train and task.train_defaults.get("augment", True)
    )
    dataset = reader_class(spec.reader)(
        ctx.root,
        split=split,
        transform=transform,
        fraction=ctx.fraction if train else 1.0,
        **spec.reader_options,
    )
    if len(dataset) == 0:
        raise ValueError(
            f"{ctx.dataset} at {ctx.root} has no usable {split} samples: check the root "
            "(`cxrvlp data inspect`)"
        )
    if task.uses_region_boxes and ctx.backbone.model.gk is not None:
        attach_region_boxes(dataset, ctx.region_boxes)
    return dataset


def attach_region_boxes(dataset: Any, boxes_by_image: dict[str, np.ndarray] | None) -> int:
    """Give every record its 29 region boxes (file pixels) as ``record.boxes``, so the image
    transform moves them with the pixels; returns how many records had none.

    Records without boxes (no ``--boxes`` file, or an image it lacks) get NaN boxes, which the
    GK module reads as the whole image; each is counted and logged, never silently dropped.
    """
    from cxrvlp.constants import CHEST_IMAGENOME_REGIONS

    missing = 0
    whole = np.full((len(CHEST_IMAGENOME_REGIONS), 4), np.nan, np.float32)
    for record in dataset.records:
        boxes = None if boxes_by_image is None else boxes_by_image.get(record.image_id)
        if boxes is None:
            missing += 1
        record.boxes = whole if boxes is None else boxes
        record.box_labels = tuple(CHEST_IMAGENOME_REGIONS)
    if missing:
        log.warning(
            "%s: %d of %d images have no detector region boxes; the GK module sees the whole "
            "image for them (write boxes with `cxrvlp detector annotate --dataset ...`)",
            dataset.name,
            missing,
            len(dataset.records),
        )
    return missing


def training_texts(dataset: Any) -> list[str]:
    """Reports, or questions and answers, of a training split (for a random-init tokenizer)."""
    texts = []
    for record in dataset.records:
        if record.report is not None and not record.report.is_empty:
            texts.append(record.report.findings_and_impression)
        if record.question:
            texts.append(f"{record.question} {record.answer}")
    return texts


# ---- the command --------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=tuple(TASK_MODULES))
    parser.add_argument(
        "--pretrained", required=True, help=f"model bundle folder, or '{RANDOM_INIT}' (random)"
    )
    parser.add_argument("--dataset", required=True, help="data set name, e.g. rsna, iu-xray")
    parser.add_argument("--root", type=Path, required=True, help="the data set's root folder")
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument("--fraction", type=float, default=1.0, help="label fraction (by patient)")
    parser.add_argument("--linear-probe", action="store_true", help="freeze the image encoder")
    parser.add_argument("--max-steps", type=int, help="optimiser steps (task default otherwise)")
    parser.add_argument("--batch-size", type=int, help="training batch (task default otherwise)")
    parser.add_argument("--lr", type=float, help="peak learning rate (task default otherwise)")
    parser.add_argument("--model", default="gkmvlp-tiny", help="architecture for --pretrained none")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder for --pretrained none")
    parser.add_argument("--boxes", type=Path, help="`cxrvlp detector annotate` JSONL (GK tasks)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def finetune(
    task_name: str,
    pretrained: str | Path,
    dataset: str,
    root: Path,
    out: Path,
    *,
    fraction: float = 1.0,
    linear_probe: bool = False,
    max_steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    model_name: str = "gkmvlp-tiny",
    tokenizer: Path | None = None,
    boxes: Path | None = None,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``task_name`` on ``dataset`` and score it; returns (and writes) the results."""
    from cxrvlp.bundle import load_pretrained
    from cxrvlp.data.pretraining import read_detector_boxes
    from cxrvlp.engine.seeding import seed_everything
    from cxrvlp.engine.train import TrainConfig, Trainer
    from cxrvlp.viz.curves import plot_run_losses

    task = task_class(task_name)()
    if dataset not in task.datasets:
        raise ValueError(
            f"{task_name} does not run on {dataset!r}; choose from {', '.join(task.datasets)}"
        )
    if threads:
        torch.set_num_threads(threads)
    seed_everything(seed)
    started = time.monotonic()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    request = {
        "task": task_name,
        "pretrained": str(pretrained),
        "dataset": dataset,
        "root": str(root),
        "fraction": fraction,
        "linear_probe": linear_probe,
        "max_steps": max_steps,
        "batch_size": batch_size,
        "lr": lr,
        "model": model_name,
        "tokenizer": None if tokenizer is None else str(tokenizer),
        "boxes": None if boxes is None else str(boxes),
        "seed": seed,
    }
    (out / FINETUNE_FILE).write_text(json.dumps(request, indent=2) + "\n")

    random_init = str(pretrained) == RANDOM_INIT
    if random_init:
        spec = task.datasets[dataset]
        texts = None
        if task.uses_text and tokenizer is None:
            from cxrvlp.data.readers import reader_class

            probe = reader_class(spec.reader)(
                root, split=spec.train, labels_only=True, **spec.reader_options
            )
            texts = training_texts(probe)
        backbone = random_backbone(model_name, tokenizer, texts)
    else:
        backbone = load_pretrained(pretrained)
    check_backbone_serves(task, backbone.config)
    defaults = dict(task.train_defaults)
    ctx = TaskContext(
        task=task_name,
        dataset=dataset,
        root=Path(root),
        out=out,
        backbone=backbone,
        init="random" if random_init else "pretrained",
        fraction=fraction,
        linear_probe=linear_probe,
        region_boxes=read_detector_boxes(boxes) if boxes else None,
        progress=progress,
        batch_size=int(batch_size or defaults.get("batch_size", 16)),
    )
    write_bundle(out / BACKBONE_DIR, backbone.config, backbone.tokenizer, backbone.info)
    spec = task.datasets[dataset]
    train_set = open_split(ctx, task, spec.train, train=True)
    test_set = open_split(ctx, task, spec.test, train=False)
    model = task.build_model(ctx, train_set)
    prepare = getattr(task, "prepare_training", None)
    prepared = {} if prepare is None else prepare(ctx, model, train_set)
    steps = int(max_steps or defaults.get("max_steps", 200))
    config = TrainConfig(
        batch_size=min(ctx.batch_size, len(train_set)),
        lr=float(
            lr or defaults.get("probe_lr" if linear_probe else "lr", defaults.get("lr", 1e-4))
        ),
        weight_decay=float(defaults.get("weight_decay", 0.01)),
        warmup_steps=min(int(defaults.get("warmup_steps", 20)), max(1, steps // 5)),
        max_steps=steps,
        checkpoint_every=steps,
        keep_last=1,
        log_every=max(1, min(20, steps // 10)),
        seed=seed,
        threads=threads,
        augment=bool(defaults.get("augment", True)),
    )
    trainer = Trainer(
        model, train_set, task.collate(ctx, model), out, config, progress=progress, desc=task_name
    )
    summary = trainer.run()
    plot_run_losses(out)
    model.eval()
    if task.exports_bundle:
        info = {**backbone.info, "finetuned": task_name, "dataset": dataset, "run": str(out)}
        write_bundle(out / BUNDLE_DIR, backbone.config, backbone.tokenizer, info, backbone.model)
    results = task.evaluate(ctx, model, test_set)
    results = {
        "task": task_name,
        "dataset": dataset,
        "init": ctx.init,
        "pretrained": str(pretrained),
        "fraction": fraction,
        "linear_probe": linear_probe,
        "train_samples": len(train_set),
        "test_samples": len(test_set),
        "steps": summary["steps"],
        "skipped_samples": summary["skipped_samples"] + getattr(test_set, "load_failures", 0),
        "minutes": round((time.monotonic() - started) / 60, 2),
        **prepared,
        **results,
    }
    write_results(out, results)
    return results


def rescore(task_name: str, run_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Score a fine-tuning RUN again from its latest checkpoint (`cxrvlp evaluate TASK --run`)."""
    from cxrvlp.bundle import load_pretrained
    from cxrvlp.data.pretraining import read_detector_boxes
    from cxrvlp.engine.checkpoint import LATEST, CheckpointManager

    request_path = Path(run_dir) / FINETUNE_FILE
    if not request_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a `cxrvlp finetune` run (no {FINETUNE_FILE})")
    request = json.loads(request_path.read_text())
    if request["task"] != task_name:
        raise ValueError(f"{run_dir} is a {request['task']} run, not {task_name}")
    task = task_class(task_name)()
    backbone = load_pretrained(Path(run_dir) / BACKBONE_DIR, weights=False)
    boxes = request.get("boxes")
    ctx = TaskContext(
        task=task_name,
        dataset=request["dataset"],
        root=Path(request["root"]),
        out=Path(run_dir),
        backbone=backbone,
        init="random" if request["pretrained"] == RANDOM_INIT else "pretrained",
        fraction=request["fraction"],
        linear_probe=request["linear_probe"],
        region_boxes=read_detector_boxes(Path(boxes)) if boxes else None,
        progress=progress,
    )
    spec = task.datasets[ctx.dataset]
    train_set = open_split(ctx, task, spec.train, train=True)
    test_set = open_split(ctx, task, spec.test, train=False)
    model = task.build_model(ctx, train_set)
    CheckpointManager(run_dir).load(LATEST, model, restore_rng=False)
    model.eval()
    previous = json.loads((Path(run_dir) / RESULTS_FILE).read_text())
    results = {**previous, **task.evaluate(ctx, model, test_set), "rescored": True}
    write_results(Path(run_dir), results)
    return results


def write_results(out: Path, results: dict[str, Any]) -> None:
    text = json.dumps(results, indent=2, default=_json_default) + "\n"
    (Path(out) / RESULTS_FILE).write_text(text)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic | torch.Tensor):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def headline(results: dict[str, Any]) -> str:
    keys = [k for k, v in results.items() if isinstance(v, float) and k not in ("fraction",)]
    return ", ".join(f"{k} {results[k]:.4g}" for k in keys if k != "minutes")


def run(args: argparse.Namespace) -> int:
    results = finetune(
        args.task,
        args.pretrained,
        args.dataset,
        args.root,
        args.out,
        fraction=args.fraction,
        linear_probe=args.linear_probe,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        model_name=args.model,
        tokenizer=args.tokenizer,
        boxes=args.boxes,
        seed=args.seed,
        threads=args.threads,
        progress=not args.quiet,
    )
    print(
        f"finetune {args.task} on {args.dataset} ({results['init']}, fraction {args.fraction}, "
        f"{results['train_samples']} training samples, {results['minutes']} min): "
        f"{headline(results)}"
    )
    print(f"results: {args.out / RESULTS_FILE}")
    return 0
