"""`cxrvlp evaluate`: evaluations of a pre-trained bundle (on held-out pre-training pairs, or
zero-shot on a labelled data set) and re-scoring of a fine-tuning run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cxrvlp.tasks.evaluation import EVALUATIONS, ZERO_SHOT, evaluate_pretrained
from cxrvlp.tasks.task import TASK_MODULES

DESCRIPTION = """Evaluate a pre-trained bundle (`cxrvlp export`), or re-score a fine-tuning run.

  retrieval  image<->report Recall@1/5/10 (reports of the same study count as hits), + chance
  entities   entity presence from the ECLS scores: AUROC per entity against the report labels
  grounding  pointing game and IoU of the GK attention (and of the image-report
             cross-attention) against the regions Chest ImaGenome links each finding to
  zero-shot  "there is X" vs "no X" prompts on rsna / nih / chexpert: AUROC, F1, accuracy
  classification | localization | segmentation | generation | vqa
             re-score a `cxrvlp finetune` RUN

  cxrvlp evaluate retrieval --pretrained MODEL --root WORLD --out OUT
  cxrvlp evaluate zero-shot --pretrained MODEL --dataset nih --root WORLD/nih --out OUT
  cxrvlp evaluate classification --run RUN
Each writes results.json (into OUT, or RUN) and prints a summary.
"""

TASKS = (*EVALUATIONS, *TASK_MODULES)
RESULTS_FILE = "results.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("--pretrained", type=Path, help="model bundle folder")
    parser.add_argument("--root", type=Path, help="pre-training root, or the zero-shot data set's")
    parser.add_argument("--dataset", help="zero-shot data set: rsna, nih or chexpert")
    parser.add_argument("--split", help="default: test (chexpert: valid)")
    parser.add_argument(
        "--run", dest="run_dir", type=Path, help="fine-tuning run folder to re-score"
    )
    parser.add_argument("--out", type=Path, help="folder for results.json")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--quiet", action="store_true")


def _require(args: argparse.Namespace, *names: str) -> None:
    missing = [
        "--run" if name == "run_dir" else f"--{name}"
        for name in names
        if getattr(args, name) is None
    ]
    if missing:
        raise SystemExit(f"cxrvlp evaluate {args.task} needs {' and '.join(missing)}")


def run(args: argparse.Namespace) -> int:
    if args.task in TASK_MODULES:
        from cxrvlp.tasks.finetune import headline, rescore

        _require(args, "run_dir")
        results = rescore(args.task, args.run_dir, progress=not args.quiet)
        print(f"evaluate {args.task} (re-scored): {headline(results)}")
        print(f"results: {args.run_dir / RESULTS_FILE}")
        return 0
    _require(args, "pretrained", "root", "out")
    if args.task == ZERO_SHOT:
        _require(args, "dataset")
    try:
        results = evaluate_pretrained(
            args.task,
            args.pretrained,
            args.root,
            dataset=args.dataset,
            split=args.split,
            batch_size=args.batch_size,
            progress=not args.quiet,
            out=args.out,
        )
    except ValueError as error:
        raise SystemExit(f"cxrvlp evaluate {args.task}: {error}") from error
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    headline = {
        key: value
        for key, value in results.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    print(f"evaluate {args.task}: " + ", ".join(f"{k} {v:.4g}" for k, v in headline.items()))
    print(f"results: {args.out / RESULTS_FILE}")
    return 0
