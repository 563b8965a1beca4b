"""Evaluations of a pre-trained bundle: on held-out pre-training pairs (retrieval, entity
presence, grounding) or zero-shot on a labelled data set. `cxrvlp evaluate` and
`cxrvlp benchmark` both call :func:`evaluate_pretrained`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

ZERO_SHOT = "zero-shot"


@dataclass(frozen=True)
class EvaluationInfo:
    """What an evaluation reads and how reports show it."""

    display_name: str
    reads: str  # "pretraining": held-out pre-training pairs; "dataset": a labelled data set
    metrics: tuple[tuple[str, str], ...]  # (results.json key, label); the first is the headline


EVALUATIONS = {
    "retrieval": EvaluationInfo(
        "Image-report retrieval",
        "pretraining",
        (
            ("image_to_report_r@5", "I->R R@5"),
            ("image_to_report_r@1", "I->R R@1"),
            ("report_to_image_r@5", "R->I R@5"),
        ),
    ),
    "grounding": EvaluationInfo(
        "Grounding", "pretraining", (("pointing_game", "pointing game"), ("iou", "IoU"))
    ),
    "entities": EvaluationInfo(
        "Entity presence (ECLS)", "pretraining", (("auroc_macro", "AUROC"),)
    ),
    "tags": EvaluationInfo("Image tags (ASG's IRL)", "pretraining", (("auroc_macro", "AUROC"),)),
    ZERO_SHOT: EvaluationInfo(
        "Zero-shot classification",
        "dataset",
        (("auroc", "AUROC"), ("f1", "F1"), ("accuracy", "accuracy")),
    ),
}
PRETRAINING_TASKS = tuple(name for name, info in EVALUATIONS.items() if info.reads == "pretraining")


def evaluate_pretrained(
    task: str,
    pretrained_dir: Path,
    root: Path,
    dataset: str | None = None,
    split: str | None = None,
    batch_size: int = 32,
    progress: bool = True,
    out: Path | None = None,
) -> dict[str, Any]:
    """One evaluation of the bundle in ``pretrained_dir``: ``root`` is the pre-training root,
    or for zero-shot the root of ``dataset``. With ``out``, pictures are written there."""
    if task == ZERO_SHOT:
        from cxrvlp.bundle import load_pretrained
        from cxrvlp.tasks.zeroshot import zero_shot

        if dataset is None:
            raise ValueError("zero-shot needs the data set's name (rsna, nih or chexpert)")
        scores = zero_shot(
            load_pretrained(pretrained_dir), dataset, str(root), split, batch_size, progress
        )
        return {"task": task, "model": str(pretrained_dir)} | scores
    if task not in PRETRAINING_TASKS:
        raise ValueError(f"unknown evaluation {task!r}; choose from {', '.join(EVALUATIONS)}")
    return evaluate(task, pretrained_dir, root, split or "test", batch_size, progress, out)


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
    import torch

    from cxrvlp.bundle import load_pretrained
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
            raise ValueError(f"{pretrained_dir} was pre-trained without ECLS: no entity scores")
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
    elif task == "tags":
        from cxrvlp.tasks.entities import entity_auroc

        if encoded.tag_scores is None:
            raise ValueError(f"{pretrained_dir} has no image-tag decoder (an ASG model has)")
        results |= entity_auroc(
            encoded.tag_scores, encoded.tag_targets, encoded.tag_valid, encoded.tag_names
        )
    else:
        from cxrvlp.tasks.prompt_leakage import prompt_leakage

        results |= grounding_results(pretrained, encoded, batch_size, progress, out)
        leakage = prompt_leakage(pretrained, str(root), split, batch_size, progress)
        if leakage is not None:
            results["report_prompts"] = leakage
    return results


def grounding_results(
    pretrained, encoded, batch_size: int, progress: bool, out: Path | None = None
) -> dict[str, Any]:
    from cxrvlp.tasks.grounding import label_entities, pointing_game, region_density_map

    model = pretrained.model
    size = model.image_encoder.image_size
    patch = model.image_encoder.patch_size
    results: dict[str, Any] = {}
    grid = model.image_encoder.grid
    gk_maps = {
        "gk_attention": (encoded.attention, "GK attention, knowledge-base prompts",
                         "grounding_gk.png"),
        "gk_finding_prompts": (encoded.finding_attention,
                               'GK attention, prompts "<finding>: present"',
                               "grounding_gk_findings.png"),
    }  # fmt: skip
    for key, (attention, what, picture) in gk_maps.items():
        if attention is None:
            continue

        def gk_heat(image: int, label: str, attention=attention):
            columns = label_entities(label, encoded.entity_names)
            if not columns:
                return None
            if encoded.attends_to == "regions":
                heat = sum(
                    region_density_map(attention[image, c], encoded.boxes[image], size, 4)
                    for c in columns
                )
                return heat, 4
            return sum(attention[image, c] for c in columns).reshape(grid, grid), patch

        examples: list = []
        results[key] = pointing_game(
            gk_heat, encoded.finding_regions, encoded.boxes, size, examples,
            one_per_finding=True,
        )  # fmt: skip
        _draw(encoded, examples, what, out, picture)
    if encoded.region_sentence is not None:
        results |= _sentence_map_results(encoded, size, patch, grid, out)
    if getattr(model, "image_report_encoder", None) is not None:
        results |= _cross_attention_results(pretrained, encoded, batch_size, progress, out)
    inference = str(pretrained.config.get("gk", {}).get("inference_prompts", "knowledge_base"))
    preferred = "gk_finding_prompts" if inference == "finding" else "gk_attention"
    order = (preferred, "gk_attention", "asg_region_sentence", "itm_cross_attention")
    results["primary_map"] = next(key for key in order if key in results)
    primary = results[results["primary_map"]]
    results["pointing_game"] = primary["pointing_game"]
    results["iou"] = primary.get("iou")
    return results


# Region-sentence scores become a distribution over the image's regions at ASG's temperature
# before they are spread over the boxes, as GK attention is.
SENTENCE_MAP_TEMPERATURE = 0.07


def _sentence_map_results(encoded, size: int, patch: int, grid: int, out: Path | None) -> dict:
    """ASG's maps of each finding prompt's sentence embedding: its region similarities
    (softmax over the image's regions, spread over their boxes) and its patch similarities."""
    import torch

    from cxrvlp.tasks.grounding import label_entities, pointing_game, region_density_map

    found = torch.isfinite(encoded.boxes).all(dim=-1)

    def region_heat(image: int, label: str):
        columns = label_entities(label, encoded.entity_names)
        if not columns:
            return None
        scores = encoded.region_sentence[image, columns] / SENTENCE_MAP_TEMPERATURE
        weights = scores.masked_fill(~found[image], float("-inf")).softmax(dim=-1).sum(dim=0)
        return region_density_map(weights, encoded.boxes[image], size, 4), 4

    def patch_heat(image: int, label: str):
        columns = label_entities(label, encoded.entity_names)
        if not columns:
            return None
        return encoded.patch_sentence[image, columns].amax(dim=0).reshape(grid, grid), patch

    results = {}
    maps = {
        "asg_region_sentence": (region_heat, "ASG region-sentence similarity",
                                "grounding_asg_regions.png"),
        "asg_patch_sentence": (patch_heat, "ASG patch-sentence similarity",
                               "grounding_asg_patches.png"),
    }  # fmt: skip
    for key, (heat_of, what, picture) in maps.items():
        examples: list = []
        results[key] = pointing_game(
            heat_of, encoded.finding_regions, encoded.boxes, size, examples, one_per_finding=True
        )
        _draw(encoded, examples, what, out, picture)
    return results


def _cross_attention_results(pretrained, encoded, batch_size: int, progress: bool, out) -> dict:
    """The image-report encoder's cross-attention from each present finding's label, for the
    labels the GK maps score too."""
    from tqdm import tqdm

    from cxrvlp.recipes.batch import tokenize
    from cxrvlp.tasks.grounding import itm_attention_map, label_entities, pointing_game

    model = pretrained.model
    size = model.image_encoder.image_size
    patch = model.image_encoder.patch_size
    wanted = sorted({f for regions in encoded.finding_regions for f in regions})
    wanted = [name for name in wanted if label_entities(name, encoded.entity_names)]
    maps: dict[tuple[int, str], Any] = {}
    max_length = int(pretrained.config.text.max_length)
    for name in tqdm(wanted, desc="cross-attention maps", disable=not progress):
        rows = [i for i, regions in enumerate(encoded.finding_regions) if name in regions]
        ids, mask = tokenize(pretrained.tokenizer, [name], max_length)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            heat = itm_attention_map(model, encoded.images[chunk], encoded.boxes[chunk], ids, mask)
            for row, image_heat in zip(chunk, heat, strict=True):
                maps[(row, name)] = image_heat
    examples: list = []
    result = pointing_game(
        lambda image, label: (maps[(image, label)], patch) if (image, label) in maps else None,
        encoded.finding_regions,
        encoded.boxes,
        size,
        examples,
        one_per_finding=True,
    )
    _draw(encoded, examples, "image-report cross-attention", out, "grounding_itm.png")
    return {"itm_cross_attention": result}


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
