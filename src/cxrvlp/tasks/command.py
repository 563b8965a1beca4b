"""`cxrvlp evaluate`: evaluations of a pre-trained bundle (on held-out pre-training pairs, or
zero-shot on a labelled data set) and re-scoring of a fine-tuning run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

DESCRIPTION = """Evaluate a pre-trained bundle (`cxrvlp export`), or re-score a fine-tuning run.

  retrieval  image<->report Recall@1/5/10 (reports of the same study count as hits), + chance
  entities   entity presence from the ECLS scores: AUROC per entity against the report labels
  grounding  pointing game and IoU of the GK attention (and of the image-report
             cross-attention) against the regions Chest ImaGenome links each finding to
  zero-shot  "there is X" vs "no X" prompts on rsna / nih / chexpert: AUROC, F1, accuracy
  classification | localization | generation | vqa   re-score a `cxrvlp finetune` RUN

  cxrvlp evaluate retrieval --pretrained MODEL --root WORLD --out OUT
  cxrvlp evaluate zero-shot --pretrained MODEL --dataset nih --root WORLD/nih --out OUT
  cxrvlp evaluate classification --run RUN
Each writes results.json (into OUT, or RUN) and prints a summary.
"""

PRETRAINING_TASKS = ("retrieval", "entities", "grounding")
ZERO_SHOT = "zero-shot"
FINETUNE_TASKS = ("classification", "localization", "generation", "vqa")
TASKS = (*PRETRAINING_TASKS, ZERO_SHOT, *FINETUNE_TASKS)
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


def evaluate(
    task: str,
    pretrained_dir: Path,
    root: Path,
    split: str = "test",
    batch_size: int = 32,
    progress: bool = True,
    out: Path | None = None,
) -> dict[str, Any]:
    """Run one evaluation; with ``out``, pictures (grounding heat maps) are written there."""
    from cxrvlp.export import load_pretrained
    from cxrvlp.tasks.encode import encode_split

    pretrained = load_pretrained(pretrained_dir)
    encoded = encode_split(
        pretrained,
        str(root),
        split=split,
        batch_size=batch_size,
        keep_images=task == "grounding",
        progress=progress,
    )
    results: dict[str, Any] = {"task": task, "split": split, "model": str(pretrained_dir)}
    if task == "retrieval":
        from cxrvlp.tasks.retrieval import retrieval_metrics

        results |= retrieval_metrics(
            encoded.image_embeddings, encoded.text_embeddings, encoded.study_keys
        )
    elif task == "entities":
        from cxrvlp.tasks.entities import entity_auroc

        if encoded.entity_scores is None:
            raise SystemExit(f"{pretrained_dir} was pre-trained without ECLS: no entity scores")
        results |= entity_auroc(
            encoded.entity_scores, encoded.entity_targets, encoded.entity_valid,
            encoded.entity_names,
        )  # fmt: skip
        if encoded.true_findings is not None:
            # Against what the synthetic images really show, for the types the world renders.
            columns = [encoded.entity_names.index(n) for n in encoded.world_findings
                       if n in encoded.entity_names]  # fmt: skip
            names = [encoded.entity_names[c] for c in columns]
            truth = torch.tensor(
                [[name in shown for name in names] for shown in encoded.true_findings],
                dtype=torch.float32,
            )
            results["world_truth"] = entity_auroc(
                encoded.entity_scores[:, columns], truth, torch.ones_like(truth, dtype=torch.bool),
                names,
            )  # fmt: skip
    else:
        results |= grounding_results(pretrained, encoded, batch_size, progress, out)
    return results


def grounding_results(
    pretrained, encoded, batch_size: int, progress: bool, out: Path | None = None
) -> dict[str, Any]:
    from cxrvlp.recipes.batch import tokenize
    from cxrvlp.tasks.grounding import itm_attention_map, pointing_game, region_density_map

    model = pretrained.model
    size = model.image_encoder.image_size
    patch = model.image_encoder.patch_size
    results: dict[str, Any] = {}
    if encoded.attention is not None:
        if encoded.attends_to == "regions":

            def gk_heat(image: int, entity: int):
                attention = encoded.attention[image, entity]
                return region_density_map(attention, encoded.boxes[image], size, 4), 4

        else:

            def gk_heat(image: int, entity: int):
                grid = model.image_encoder.grid
                return encoded.attention[image, entity].reshape(grid, grid), patch

        examples: list = []
        results["gk_attention"] = pointing_game(
            gk_heat, encoded.finding_regions, encoded.boxes, encoded.entity_names, size, examples
        )
        _draw(encoded, examples, "GK attention", out, "grounding_gk.png")
    # Cross-attention of the image-report encoder from each present finding's name.
    wanted = sorted({f for regions in encoded.finding_regions for f in regions})
    wanted = [name for name in wanted if name in encoded.entity_names]
    maps: dict[tuple[int, str], torch.Tensor] = {}
    max_length = int(pretrained.config.text.max_length)
    for name in tqdm(wanted, desc="cross-attention maps", disable=not progress):
        rows = [i for i, regions in enumerate(encoded.finding_regions) if name in regions]
        ids, mask = tokenize(pretrained.tokenizer, [name], max_length)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            heat = itm_attention_map(model, encoded.images[chunk], encoded.boxes[chunk], ids, mask)
            for row, image_heat in zip(chunk, heat, strict=True):
                maps[(row, name)] = image_heat
    names = encoded.entity_names
    examples = []
    results["itm_cross_attention"] = pointing_game(
        lambda image, entity: (maps[(image, names[entity])], patch),
        encoded.finding_regions,
        encoded.boxes,
        names,
        size,
        examples,
    )
    _draw(encoded, examples, "image-report cross-attention", out, "grounding_itm.png")
    primary = results.get("gk_attention", results["itm_cross_attention"])
    results["pointing_game"] = primary["pointing_game"]
    return results


def _draw(encoded, examples: list, what: str, out: Path | None, name: str) -> None:
    if out is None or not examples:
        return
    from cxrvlp.viz.grounding import GroundingPanel, draw_panels

    panels = [
        GroundingPanel(
            image=encoded.images[image][0],
            heat=heat,
            true_boxes=boxes,
            title=f"{encoded.image_ids[image][:8]}: {finding} ({'hit' if hit else 'miss'})",
            hit=hit,
        )
        for image, finding, heat, boxes, hit in examples
    ]
    draw_panels(panels, out / name)


def _require(args: argparse.Namespace, *names: str) -> None:
    missing = [
        "--run" if name == "run_dir" else f"--{name}"
        for name in names
        if getattr(args, name) is None
    ]
    if missing:
        raise SystemExit(f"cxrvlp evaluate {args.task} needs {' and '.join(missing)}")


def run(args: argparse.Namespace) -> int:
    if args.task in FINETUNE_TASKS:
        from cxrvlp.tasks.finetune import headline, rescore

        _require(args, "run_dir")
        results = rescore(args.task, args.run_dir, progress=not args.quiet)
        print(f"evaluate {args.task} (re-scored): {headline(results)}")
        print(f"results: {args.run_dir / RESULTS_FILE}")
        return 0
    _require(args, "pretrained", "root", "out")
    if args.task == ZERO_SHOT:
        from cxrvlp.export import load_pretrained
        from cxrvlp.tasks.zeroshot import zero_shot

        _require(args, "dataset")
        results = {"task": args.task, "model": str(args.pretrained)} | zero_shot(
            load_pretrained(args.pretrained),
            args.dataset,
            str(args.root),
            args.split,
            args.batch_size,
            not args.quiet,
        )
    else:
        results = evaluate(
            args.task,
            args.pretrained,
            args.root,
            args.split or "test",
            args.batch_size,
            not args.quiet,
            out=args.out,
        )
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
