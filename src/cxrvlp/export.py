"""Inference bundles: `cxrvlp export RUN --out MODEL_DIR` and ``load_pretrained(MODEL_DIR)``.

A bundle holds ``model.safetensors`` (weights), ``model.yaml`` (the architecture config),
``tokenizer/``, ``preprocessing.json`` (what an image must go through before the model) and
``export.json`` (where it came from). Nothing in it is unpickled when it is loaded.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cxrvlp import __version__
from cxrvlp.engine.checkpoint import (
    LATEST,
    CheckpointManager,
    atomic_write,
    load_weights,
    save_weights,
)

DESCRIPTION = """Write the inference bundle of a pre-training run (weights, config, tokenizer,
preprocessing), loadable with cxrvlp.load_pretrained(MODEL_DIR).

  cxrvlp export runs/demo/pretrain --out runs/demo/model
"""

WEIGHTS_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "model.yaml"
TOKENIZER_DIR = "tokenizer"
PREPROCESSING_FILE = "preprocessing.json"
EXPORT_FILE = "export.json"
PREPROCESSING_KEYS = ("image_size", "channels", "mean", "std")


@dataclass
class Pretrained:
    """A loaded bundle: the model (eval mode, knowledge prompts attached), its tokenizer, the
    image transform, the architecture config and the export record."""

    model: Any
    tokenizer: Any
    transform: Any
    config: DictConfig
    info: dict[str, Any]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN", help="pre-training run folder")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    parser.add_argument("--checkpoint", default=LATEST, help="'latest' or a checkpoint folder")


def export(run_dir: Path, out: Path, checkpoint: str | Path = LATEST) -> Path:
    """Write the bundle of ``run_dir``'s checkpoint into ``out``; returns ``out``."""
    from cxrvlp.models.registry import model_from_config
    from cxrvlp.pretrain import read_config
    from cxrvlp.text.tokenizer import load_tokenizer

    config = read_config(run_dir)
    tokenizer = load_tokenizer(run_dir / TOKENIZER_DIR)
    model = model_from_config(config.model, vocab_size=len(tokenizer))
    state = CheckpointManager(run_dir).load(checkpoint, model, restore_rng=False)
    info = {
        "cxrvlp_version": __version__,
        "model_name": str(config.get("model_name", "")),
        "recipe": str(config.model.recipe),
        "run": str(run_dir),
        "checkpoint": state["path"].name,
        "step": state["step"],
        "vocab_size": len(tokenizer),
    }
    return write_bundle(out, config.model, tokenizer, info, model)


def write_bundle(
    out: Path, model_config: DictConfig, tokenizer: Any, info: dict[str, Any], model: Any = None
) -> Path:
    """Write a bundle folder; without ``model`` only the architecture, tokenizer and
    preprocessing (what a fine-tuning run keeps to rebuild itself)."""
    out.mkdir(parents=True, exist_ok=True)
    if model is not None:
        save_weights(model, out / WEIGHTS_FILE)
    model_yaml = OmegaConf.to_yaml(model_config)
    atomic_write(out / MODEL_CONFIG_FILE, lambda path: path.write_text(model_yaml))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
    image = OmegaConf.to_container(model_config.image)
    _write_json(out / PREPROCESSING_FILE, {key: image[key] for key in PREPROCESSING_KEYS})
    _write_json(out / EXPORT_FILE, info)
    return out


def _write_json(path: Path, document: dict) -> None:
    text = json.dumps(document, indent=2) + "\n"
    atomic_write(path, lambda target: target.write_text(text))


def load_pretrained(model_dir: str | Path, device: str = "cpu", weights: bool = True) -> Pretrained:
    """Load a bundle written by ``cxrvlp export``; with ``weights=False`` only its architecture
    (freshly initialised), tokenizer if any, and preprocessing, as a fine-tuning run keeps them
    (``write_bundle`` without a model)."""
    from cxrvlp.data.transforms import transform_from_config
    from cxrvlp.models.registry import attach_prompts, model_from_config
    from cxrvlp.text.tokenizer import load_tokenizer

    folder = Path(model_dir)
    required = (MODEL_CONFIG_FILE, PREPROCESSING_FILE, EXPORT_FILE)
    missing = [
        name for name in (WEIGHTS_FILE,) * weights + required if not (folder / name).is_file()
    ]
    if missing:
        raise FileNotFoundError(
            f"{folder} is not a cxrvlp model bundle (missing {', '.join(missing)}): write one "
            "with `cxrvlp export RUN --out MODEL_DIR`"
        )
    config = OmegaConf.load(folder / MODEL_CONFIG_FILE)
    info = json.loads((folder / EXPORT_FILE).read_text(encoding="utf-8"))
    # Image-only fine-tuning runs of a random model keep no tokenizer; bundles always do.
    tokenizer = None
    if weights or (folder / TOKENIZER_DIR).is_dir():
        tokenizer = load_tokenizer(folder / TOKENIZER_DIR)
    model = model_from_config(config, vocab_size=len(tokenizer) if tokenizer else None)
    if weights:
        load_weights(model, folder / WEIGHTS_FILE, strict=True)
    if tokenizer is not None:
        attach_prompts(model, tokenizer)
    model.to(device).eval()
    preprocessing = json.loads((folder / PREPROCESSING_FILE).read_text(encoding="utf-8"))
    return Pretrained(
        model=model,
        tokenizer=tokenizer,
        transform=transform_from_config(preprocessing, augment=False),
        config=config,
        info=info,
    )


def run(args: argparse.Namespace) -> int:
    out = export(args.run_dir, args.out, args.checkpoint)
    info = json.loads((out / EXPORT_FILE).read_text(encoding="utf-8"))
    print(f"export: step {info['step']} of {args.run_dir} -> {out}")
    return 0
