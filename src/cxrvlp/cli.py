"""`cxrvlp <command>`: the command line. Every command is also callable as main(argv).

A command is a module with DESCRIPTION, add_arguments(parser) and run(args). Only the chosen
command's module is imported, so `cxrvlp --help` answers without loading torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from cxrvlp import __version__

# name -> (module, one-line help); the help is written here so that listing needs no import.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": (
        "cxrvlp.synth.command",
        "Render a synthetic chest X-ray world with known truth, in the real data sets' formats.",
    ),
    "data": (
        "cxrvlp.data.command",
        "Data set tools: inspect a root, prepare the resized cache, build the sectioned reports.",
    ),
    "text": (
        "cxrvlp.text.command",
        "Report understanding: triplets and CheXpert-14 labels of reports, WordPiece training.",
    ),
    "detector": (
        "cxrvlp.detector.command",
        "Anatomical region detector: train, evaluate, predict on images, annotate a data set.",
    ),
    "models": ("cxrvlp.models.command", "List the registered model architectures."),
    "pretrain": (
        "cxrvlp.pretrain",
        "Pre-train GK-MVLP (ITC, ITM, LM, ECLS) on MIMIC-CXR + Chest ImaGenome.",
    ),
    "export": (
        "cxrvlp.export",
        "Write the inference bundle of a pre-training run, loadable with load_pretrained.",
    ),
    "evaluate": (
        "cxrvlp.tasks.evaluate_command",
        "Evaluate a pre-trained bundle (`cxrvlp export`), or re-score a fine-tuning run.",
    ),
    "finetune": (
        "cxrvlp.tasks.finetune",
        "Fine-tune a pre-trained model bundle on a downstream task and score it.",
    ),
    "generate": (
        "cxrvlp.tasks.generate_command",
        "Write a report for each chest X-ray image with the report decoder of a model bundle.",
    ),
    "benchmark": (
        "cxrvlp.benchmark.command",
        "Run an evaluation protocol (fine-tuning and evaluation runs) on any data and write "
        "the tables.",
    ),
    "demo": ("cxrvlp.demo", "Run the whole pipeline on a synthetic world and write a report."),
    "serve": (
        "cxrvlp.serve.command",
        "Serve a model bundle over HTTP: JSON API, web page, Prometheus metrics.",
    ),
}


def command_module(name: str) -> ModuleType:
    """The module of command ``name``, imported now."""
    return importlib.import_module(COMMANDS[name][0])


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser listing every command; only ``command`` gets its arguments (and its import)."""
    parser = argparse.ArgumentParser(
        prog="cxrvlp", description="Chest X-ray vision-language pre-training (GK-MVLP, ASG)."
    )
    parser.add_argument("--version", action="version", version=f"cxrvlp {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_line) in COMMANDS.items():
        sub = subparsers.add_parser(
            name, help=help_line, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        if name == command:
            module = command_module(name)
            sub.description = module.DESCRIPTION
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    return parser


def chosen_command(argv: Sequence[str]) -> str | None:
    """The command named in ``argv``: its first word, as the top level takes no option values."""
    first_word = next((arg for arg in argv if not arg.startswith("-")), None)
    return first_word if first_word in COMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(chosen_command(argv)).parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
