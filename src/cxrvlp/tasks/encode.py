"""Encode a split of pre-training pairs once with a loaded bundle: image and report
embeddings, ECLS entity scores, GK attention, region boxes and the per-image truth the
evaluations compare against."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from cxrvlp.bundle import Pretrained
from cxrvlp.data.pretraining import pretraining_dataset
from cxrvlp.models.registry import collator
from cxrvlp.recipes.batch import entity_names as knowledge_base_entities
from cxrvlp.recipes.batch import tokenize
from cxrvlp.text.prompts import knowledge_prompt


@dataclass
class EncodedSplit:
    """Everything the pre-training evaluations need, in dataset order (N images)."""

    image_ids: list[str]
    study_keys: torch.Tensor  # (N,)
    image_embeddings: torch.Tensor  # (N, D)
    text_embeddings: torch.Tensor  # (N, D), each image's own report
    entity_names: list[str]
    entity_scores: torch.Tensor | None  # (N, E) ECLS scores
    entity_targets: torch.Tensor  # (N, E) 1 present / 0 absent (report parse)
    entity_valid: torch.Tensor  # (N, E) bool
    boxes: torch.Tensor  # (N, 29, 4) in model-input pixels
    attention: torch.Tensor | None  # (N, E, K) GK attention of the knowledge-base queries
    attends_to: str = ""
    finding_regions: list[dict[str, set[str]]] = field(default_factory=list)
    true_findings: list[set[str]] | None = None  # synthetic world only: what each image shows
    world_findings: list[str] | None = None  # the finding types the world renders
    images: torch.Tensor | None = None  # (N, C, S, S), kept only when asked
    # (N, E, R) GK attention of the finding prompts "<entity>: present" (region keys only)
    finding_attention: torch.Tensor | None = None
    # ASG: cosine of the finding prompts' sentence embeddings to each region (N, E, R) and
    # each patch (N, E, G*G); IRL tag logits (N, 40) and the report's tags
    region_sentence: torch.Tensor | None = None
    patch_sentence: torch.Tensor | None = None
    tag_scores: torch.Tensor | None = None
    tag_targets: torch.Tensor | None = None
    tag_valid: torch.Tensor | None = None
    tag_names: list[str] = field(default_factory=list)


@torch.no_grad()
def encode_split(
    pretrained: Pretrained,
    root: str,
    split: str = "test",
    boxes: str | None = "imagenome",
    batch_size: int = 32,
    keep_images: bool = False,
    progress: bool = True,
) -> EncodedSplit:
    model = pretrained.model
    dataset = pretraining_dataset(root, split=split, boxes=boxes, transform=pretrained.transform)
    if boxes == "imagenome":
        # The dataset parsed the scene graphs already for the boxes.
        regions_by_image = {r.image_id: r.extra["finding_regions"] for r in dataset.records}
    else:
        regions_by_image = _imagenome_findings(root)
    collate = collator(model, pretrained.tokenizer, training=False)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    device = next(model.parameters()).device
    entities, positions = model.prompt_embeddings()
    findings = _finding_prompt_embeddings(pretrained)
    sentences = _finding_sentence_embeddings(pretrained)
    parts: dict[str, list[torch.Tensor]] = {}
    image_ids: list[str] = []
    attends_to = ""
    for batch in tqdm(loader, desc=f"encode {split}", unit="batch", disable=not progress):
        if "image" not in batch:
            continue
        images = batch["image"].to(device)
        batch_boxes = batch["boxes"].to(device)
        features = model.encode_image(images, batch_boxes, entities, positions)
        text_mask = batch["attention_mask"].to(device)
        hidden = model.encode_text(batch["input_ids"].to(device), text_mask)
        values = {
            "image_embeddings": features.embedding,
            "text_embeddings": model.text_embedding(hidden, text_mask),
            "study_keys": batch["study_key"],
            "entity_targets": batch["entity_targets"],
            "entity_valid": batch["entity_valid"],
            "boxes": batch["boxes"],
        }
        if model.ecls_image_proj is not None:
            values["entity_scores"] = model.entity_scores(features, entities)
        if features.grounding is not None:
            values["attention"] = features.grounding.attention
            attends_to = features.grounding.attends_to
            if findings is not None:
                values["finding_attention"] = model.ground_prompts(features.grounding, findings)[1]
        if sentences is not None:
            values["region_sentence"], values["patch_sentence"] = model.sentence_maps(
                features.vit_tokens, batch_boxes, sentences
            )
            values["tag_scores"] = model.tag_logits(features.vit_tokens)
            values["tag_targets"], values["tag_valid"] = batch["tag_targets"], batch["tag_valid"]
        if keep_images:
            values["images"] = batch["image"]
        for key, value in values.items():
            parts.setdefault(key, []).append(value.detach().cpu())
        image_ids.extend(batch["image_id"])
    stacked = {key: torch.cat(value) for key, value in parts.items()}
    return EncodedSplit(
        image_ids=image_ids,
        study_keys=stacked["study_keys"],
        image_embeddings=stacked["image_embeddings"],
        text_embeddings=stacked["text_embeddings"],
        entity_names=list(model.entity_names or knowledge_base_entities()),
        entity_scores=stacked.get("entity_scores"),
        entity_targets=stacked["entity_targets"],
        entity_valid=stacked["entity_valid"],
        boxes=stacked["boxes"],
        attention=stacked.get("attention"),
        attends_to=attends_to,
        finding_regions=[regions_by_image.get(image_id, {}) for image_id in image_ids],
        images=stacked.get("images"),
        finding_attention=stacked.get("finding_attention"),
        region_sentence=stacked.get("region_sentence"),
        patch_sentence=stacked.get("patch_sentence"),
        tag_scores=stacked.get("tag_scores"),
        tag_targets=stacked.get("tag_targets"),
        tag_valid=stacked.get("tag_valid"),
        tag_names=list(getattr(model, "tag_names", [])),
        **_world_truth(root, image_ids),
    )


def _finding_prompt_embeddings(pretrained: Pretrained) -> torch.Tensor | None:
    """Knowledge-encoder states of "<entity>: present" for every entity: the prompt a report
    stating the finding without a position gives, asked of an image without a report. None
    when the model has no GK module on region features."""
    model = pretrained.model
    if model.gk is None or not model.gk.region_features:
        return None
    texts = [knowledge_prompt(name, None, "present") for name in model.entity_names]
    ids, mask = tokenize(pretrained.tokenizer, texts, int(pretrained.config.text.max_length))
    device = next(model.parameters()).device
    return model.encode_prompts(ids.to(device), mask.to(device))


def _finding_sentence_embeddings(pretrained: Pretrained) -> torch.Tensor | None:
    """ASG's sentence embeddings of "<entity>: present" for every knowledge-base entity (the
    same texts GK-MVLP's finding prompts are), or None for a model without them."""
    model = pretrained.model
    if not hasattr(model, "sentence_maps"):
        return None
    texts = [knowledge_prompt(name, None, "present") for name in knowledge_base_entities()]
    ids, mask = text_queries(pretrained, texts)
    return model.sentence_embeddings(ids, mask)


def _world_truth(root: str, image_ids: list[str]) -> dict:
    """The findings each image really shows, where ``root`` is a synthetic world (truth.jsonl):
    reports leave some out, so report labels understate what an image shows."""
    import json
    from pathlib import Path

    truth_file, world_file = Path(root) / "truth.jsonl", Path(root) / "world.json"
    if not truth_file.is_file() or not world_file.is_file():
        return {}
    shown = {}
    with truth_file.open(encoding="utf-8") as stream:
        for line in stream:
            row = json.loads(line)
            shown[row["image_id"]] = {finding["name"] for finding in row["findings"]}
    world = json.loads(world_file.read_text(encoding="utf-8"))
    return {
        "true_findings": [shown.get(image_id, set()) for image_id in image_ids],
        "world_findings": sorted(world.get("findings", {})),
    }


def _imagenome_findings(root: str) -> dict[str, dict[str, set[str]]]:
    """image_id -> finding -> positive regions, from Chest ImaGenome when it is there."""
    from pathlib import Path

    from cxrvlp.data.pretraining import IMAGENOME_FOLDER, read_imagenome

    if not (Path(root) / IMAGENOME_FOLDER).is_dir():
        return {}
    return read_imagenome(root)[1]


def text_queries(pretrained: Pretrained, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = tokenize(pretrained.tokenizer, texts, int(pretrained.config.text.max_length))
    device = next(pretrained.model.parameters()).device
    return ids.to(device), mask.to(device)
