"""`cxrvlp pretrain`: pre-train a registered model (GK-MVLP) on MIMIC-CXR-style data.

The experiment config has three sections: ``model`` (the architecture, from ``--model`` and
``model.*`` overrides), ``train`` (:class:`cxrvlp.engine.train.TrainConfig`) and ``data``.
Later sources win: defaults, ``--config FILE``, ``key=value`` overrides, ``--max-steps``.
The same command runs under ``torchrun --nproc-per-node N``; ``train.batch_size`` is per
process, so the global batch is N times larger.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cxrvlp.data.transforms import RangeCheck, transform_from_config
from cxrvlp.engine import distributed
from cxrvlp.engine.checkpoint import LATEST
from cxrvlp.engine.seeding import seed_everything
from cxrvlp.engine.train import TrainConfig, Trainer, pick_device
from cxrvlp.models.registry import (
    apply_overrides,
    attach_prompts,
    collator,
    model_config,
    model_from_config,
)
from cxrvlp.viz.curves import plot_run_losses

log = logging.getLogger(__name__)

DESCRIPTION = """Pre-train GK-MVLP (ITC, ITM, LM, ECLS) on MIMIC-CXR + Chest ImaGenome.

ROOT is a `cxrvlp synth` output or the folder holding mimic-cxr-jpg/, mimic-cxr-reports/
and chest-imagenome/. RUN receives config.yaml, metrics.jsonl, TensorBoard events,
checkpoints/ and tokenizer/. Examples:

  cxrvlp pretrain --model gkmvlp-tiny --data runs/demo/world --out runs/demo/pretrain
  cxrvlp pretrain --model gkmvlp-tiny --data W --out RUN train.lr=3e-4 model.gk.enabled=false
  cxrvlp pretrain --data W --out RUN --resume latest
  torchrun --nproc-per-node 2 -m cxrvlp.cli pretrain --data W --out RUN
"""

CONFIG_FILE = "config.yaml"
TOKENIZER_DIR = "tokenizer"
# data.index: the pre-training index folder ("auto": ROOT/.cxrvlp-index; "none": parse each start).
DATA_DEFAULTS = {
    "root": None,
    "split": "train",
    "boxes": "imagenome",
    "cache": None,
    "index": "auto",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="gkmvlp-tiny", help="registered name or YAML file")
    parser.add_argument("--data", type=Path, help="pre-training root (see above)")
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument("--config", type=Path, help="experiment YAML (model/train/data)")
    parser.add_argument("--max-steps", type=int, help="optimiser steps (train.max_steps)")
    parser.add_argument("--resume", help="'latest' or a checkpoint folder of RUN")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="e.g. train.lr=1e-4 model.gk.layers=1"
    )


def build_config(
    model: str | Path,
    config_file: Path | None = None,
    overrides: list[str] | None = None,
    data_root: Path | None = None,
    max_steps: int | None = None,
) -> DictConfig:
    """The resolved experiment config (see the module docstring)."""
    experiment = OmegaConf.load(config_file) if config_file else OmegaConf.create({})
    unknown = set(experiment.keys()) - {"model_name", "model", "train", "data"}
    if unknown:
        raise KeyError(f"{config_file}: unknown sections {sorted(unknown)}; use model/train/data")
    name = experiment.get("model_name", model)
    model_section = experiment.get("model")
    model_overrides = OmegaConf.to_container(model_section) if model_section else {}
    config = OmegaConf.create(
        {
            "model_name": str(name),
            "model": apply_overrides(model_config(name), model_overrides),
            "train": OmegaConf.merge(
                OmegaConf.structured(TrainConfig), experiment.get("train", {})
            ),
            "data": OmegaConf.merge(DATA_DEFAULTS, experiment.get("data", {})),
        }
    )
    config = apply_overrides(config, overrides)
    if data_root is not None:
        config.data.root = str(data_root)
    if max_steps is not None:
        config.train.max_steps = max_steps
    if not config.data.root:
        raise ValueError("no data root: pass --data ROOT (or data.root in the config file)")
    return config


def _tokenizer(config: DictConfig, run_dir: Path, dataset: Any):
    from cxrvlp.text.tokenizer import load_tokenizer, train_wordpiece

    saved = run_dir / TOKENIZER_DIR
    choice = str(config.model.text.tokenizer)
    if distributed.is_main_process() and not (saved / "tokenizer.json").is_file():
        if choice == "train":
            reports = (r.report.findings_and_impression for r in dataset.records if r.report)
            train_wordpiece(reports, saved, vocab_size=int(config.model.text.vocab_size))
        else:
            load_tokenizer(choice).save_pretrained(str(saved))
    distributed.barrier()
    return load_tokenizer(saved)


def pretrain(
    config: DictConfig, run_dir: Path, resume: str | None = None, progress: bool = True
) -> dict[str, Any]:
    """Pre-train as ``config`` says into ``run_dir``; returns the run summary."""
    from cxrvlp.data.pretraining import pretraining_dataset

    train_config = TrainConfig(**OmegaConf.to_container(config.train))
    if train_config.threads:
        torch.set_num_threads(train_config.threads)
    device = pick_device(train_config.device)
    distributed.init_from_environment(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    run_dir.mkdir(parents=True, exist_ok=True)
    if distributed.is_main_process():
        (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(config), encoding="utf-8")

    transform = transform_from_config(config.model.image, augment=train_config.augment)
    boxes = None if str(config.data.boxes) == "none" else config.data.boxes
    index = str(config.data.get("index", "auto"))  # configs of older runs have no data.index
    dataset = pretraining_dataset(
        config.data.root,
        split=str(config.data.split),
        boxes=boxes,
        transform=transform,
        cache=config.data.cache,
        index=None if index == "none" else index,
    )
    tokenizer = _tokenizer(config, run_dir, dataset)
    seed_everything(train_config.seed)
    model = model_from_config(config.model, vocab_size=len(tokenizer))
    model.seed = train_config.seed
    _load_initial_vit(model, config.model.image.get("init_weights"))
    attach_prompts(model, tokenizer)
    range_check = RangeCheck.from_config(config.model.image)
    trainer = Trainer(
        model,
        dataset,
        collator(model, tokenizer),
        run_dir,
        train_config,
        first_batch_check=lambda batch: range_check(batch["image"]) if "image" in batch else None,
        progress=progress,
        desc="pretrain",
    )
    if resume:
        trainer.resume(resume)
    summary = trainer.run()
    plot_run_losses(run_dir)
    summary["images"] = len(dataset)
    summary["images_without_boxes"] = getattr(dataset, "n_missing_boxes", 0)
    summary["dataset_problems"] = len(dataset.problems)
    return summary


def _load_initial_vit(model: Any, path: str | None) -> None:
    if not path:
        return
    from cxrvlp.engine.checkpoint import read_state_dict

    kept = model.image_encoder.load_initial_weights(read_state_dict(Path(path)))
    log.info("initial image weights from %s (%d tensors left at their init)", path, len(kept))


def run(args: argparse.Namespace) -> int:
    run_dir = args.out
    if args.resume:
        saved = run_dir / CONFIG_FILE
        if not saved.is_file():
            raise SystemExit(
                f"cannot resume: {saved} does not exist. Start the run without --resume."
            )
        config = apply_overrides(OmegaConf.load(saved), args.overrides)
        if args.max_steps is not None:
            config.train.max_steps = args.max_steps
    else:
        if (run_dir / CONFIG_FILE).is_file() and (run_dir / "checkpoints").is_dir():
            raise SystemExit(
                f"{run_dir} already holds a run: continue it with --resume {LATEST}, or pass "
                "another --out."
            )
        config = build_config(args.model, args.config, args.overrides, args.data, args.max_steps)
    try:
        summary = pretrain(config, run_dir, resume=args.resume, progress=not args.quiet)
    finally:
        distributed.shutdown()
    if distributed.is_main_process():
        last = ", ".join(f"{k} {v:.4f}" for k, v in summary["last"].items())
        print(
            f"pretrain: {summary['steps']} steps in {summary['minutes']} min on "
            f"{summary['world_size']} x {summary['device']} ({summary['precision']}); "
            f"last step: {last}; skipped samples: {summary['skipped_samples']}; run: {run_dir}"
        )
    return 0


def read_config(run_dir: Path) -> DictConfig:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a `cxrvlp pretrain` run folder?")
    config = OmegaConf.load(path)
    json.dumps(OmegaConf.to_container(config))  # fails early on a hand-edited, broken config
    return config  # type: ignore[return-value]
