"""`cxrvlp export RUN --out MODEL_DIR`: the inference bundle of a pre-training run
(`cxrvlp.bundle` writes and reads bundles)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cxrvlp import __version__
from cxrvlp.bundle import EXPORT_FILE, TOKENIZER_DIR, write_bundle
from cxrvlp.engine.checkpoint import LATEST, CheckpointManager

DESCRIPTION = """Write the inference bundle of a pre-training run (weights, config, tokenizer,
preprocessing), loadable with cxrvlp.load_pretrained(MODEL_DIR).

  cxrvlp export runs/demo/pretrain --out runs/demo/model
"""


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


def run(args: argparse.Namespace) -> int:
    out = export(args.run_dir, args.out, args.checkpoint)
    info = json.loads((out / EXPORT_FILE).read_text(encoding="utf-8"))
    print(f"export: step {info['step']} of {args.run_dir} -> {out}")
    return 0
