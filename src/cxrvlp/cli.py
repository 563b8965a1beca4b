"""`cxrvlp <command>`: the command line. Every command is also callable as main(argv)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from cxrvlp import __version__
from cxrvlp import demo as demo_command
from cxrvlp import export as export_command
from cxrvlp import pretrain as pretrain_command
from cxrvlp.data import command as data_command
from cxrvlp.detector import command as detector_command
from cxrvlp.models import command as models_command
from cxrvlp.synth import command as synth_command
from cxrvlp.tasks import command as evaluate_command
from cxrvlp.tasks import finetune as finetune_command
from cxrvlp.tasks import generate_command
from cxrvlp.text import command as text_command

COMMANDS = {
    "synth": synth_command,
    "data": data_command,
    "text": text_command,
    "detector": detector_command,
    "models": models_command,
    "pretrain": pretrain_command,
    "export": export_command,
    "evaluate": evaluate_command,
    "finetune": finetune_command,
    "generate": generate_command,
    "demo": demo_command,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxrvlp", description="Chest X-ray vision-language pre-training (GK-MVLP, ASG)."
    )
    parser.add_argument("--version", action="version", version=f"cxrvlp {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        sub = subparsers.add_parser(
            name,
            help=module.DESCRIPTION.splitlines()[0],
            description=module.DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
