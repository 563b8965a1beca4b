"""Inference bundles: written by `cxrvlp export RUN --out MODEL_DIR` (or ``write_bundle``), read
by ``load_pretrained(MODEL_DIR)``.

A bundle holds ``model.safetensors`` (weights), ``model.yaml`` (the architecture config),
``tokenizer/``, ``preprocessing.json`` (what an image must go through before the model) and
``export.json`` (where it came from). Nothing in it is unpickled when it is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cxrvlp.engine.checkpoint import (
    atomic_write,
    load_weights,
    save_weights,
)

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
