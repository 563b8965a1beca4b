"""Zero-shot classification: each class is scored by how much closer an image's ITC embedding
is to a positive prompt ("there is <finding>") than to a negative one ("no <finding>"), with no
training; AUROC per class against the data set's labels (CLIP-style, as in CheXzero).

F1 and accuracy need a threshold per class. It is chosen on the data set's validation split
(`VALIDATION_SPLITS`), never on the test labels: the F1-maximising threshold over that split's
scores (ties: the lower threshold). A class with no validation positive, and every class of a
data set without a validation split apart from its test split (CheXpert: its ``valid`` split is
the test split), takes 0.5 on the softmax over the prompt pair: the image is closer to the
positive prompt than to the negative one. ``threshold_rule`` in the results says which applied."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from cxrvlp.bundle import Pretrained
from cxrvlp.data.sample import collate_samples
from cxrvlp.metrics.classification import (
    classification_metrics,
    f1_maximising_thresholds,
    roc_curves,
)
from cxrvlp.recipes.batch import tokenize

# Label names as reports word them (the rest: lower case, underscores as spaces).
REPORT_WORDING = {
    "effusion": "pleural effusion",
    "pleural effusion": "pleural effusion",
    "infiltration": "infiltrate",
    "edema": "pulmonary edema",
    "lung lesion": "nodule or mass",
    "pleural_thickening": "pleural thickening",
    "pleural other": "pleural abnormality",
    "support devices": "support devices",
    "lung opacity": "lung opacity",
}
POSITIVE_PROMPT = "there is {}."
NEGATIVE_PROMPT = "no {}."
# Classes a "there is / no" prompt cannot express.
UNPROMPTABLE = {"no finding"}

DATASETS = {"rsna": "test", "nih": "test", "chexpert": "valid"}
# The split each data set's thresholds are chosen on; None (or absent): none apart from the test
# split. NIH's is the 15 % of the patient split used without the official split lists (the
# official split has no validation part, so it is empty there).
VALIDATION_SPLITS: dict[str, str | None] = {"rsna": "validate", "nih": "validate", "chexpert": None}
FALLBACK_THRESHOLD = 0.5
FALLBACK_RULE = (
    f"{FALLBACK_THRESHOLD} on the softmax over the positive/negative prompt pair (the image "
    "is closer to the positive prompt)"
)


def finding_phrase(label: str) -> str:
    key = label.lower()
    return REPORT_WORDING.get(key, key.replace("_", " "))


@torch.no_grad()
def prompt_pair_embeddings(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, phrases: list[str], max_length: int
) -> torch.Tensor:
    """(F, 2, D) ITC embeddings of "there is <phrase>." and "no <phrase>." per phrase, read in
    eval mode (the model's mode is restored)."""
    prompts = [POSITIVE_PROMPT.format(phrase) for phrase in phrases]
    prompts += [NEGATIVE_PROMPT.format(phrase) for phrase in phrases]
    device = model.logit_scale.device
    was_training = model.training
    model.eval()
    ids, mask = tokenize(tokenizer, prompts, max_length)
    ids, mask = ids.to(device), mask.to(device)
    embeddings = model.text_embedding(model.encode_text(ids, mask), mask)
    model.train(was_training)
    return torch.stack([embeddings[: len(phrases)], embeddings[len(phrases) :]], dim=1)


@torch.no_grad()
def zero_shot_scores(
    pretrained: Pretrained, dataset: Any, batch_size: int = 32, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Scores (N, C) in [0, 1], labels, label masks and the promptable class names."""
    model = pretrained.model
    names = [n for n in dataset.label_names if n.lower() not in UNPROMPTABLE]
    columns = [list(dataset.label_names).index(n) for n in names]
    device = next(model.parameters()).device
    pairs = prompt_pair_embeddings(
        model,
        pretrained.tokenizer,
        [finding_phrase(n) for n in names],
        int(pretrained.config.text.max_length),
    )
    positive, negative = pairs[:, 0], pairs[:, 1]
    scale = model.logit_scale.exp()
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_samples)
    parts: dict[str, list[torch.Tensor]] = {"p": [], "y": [], "m": []}
    for batch in tqdm(loader, desc="zero-shot", unit="batch", disable=not progress):
        if "image" not in batch:
            continue
        # ITC embedding only: no region boxes are needed, so the GK module is not run.
        _, pooled = model.image_encoder(batch["image"].to(device))
        image = model.image_embedding(pooled)
        logits = scale * torch.stack([image @ positive.T, image @ negative.T], dim=-1)
        parts["p"].append(logits.softmax(dim=-1)[..., 0].cpu())
        parts["y"].append(batch["labels"][:, columns])
        parts["m"].append(batch["label_mask"][:, columns])
    if not parts["p"]:  # an empty split, or no image could be read
        empty = torch.zeros(0, len(names))
        return empty, empty.clone(), empty.bool(), names
    return torch.cat(parts["p"]), torch.cat(parts["y"]), torch.cat(parts["m"]), names


def zero_shot(
    pretrained: Pretrained,
    dataset_name: str,
    root: str,
    split: str | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    from cxrvlp.data.readers import reader_class

    if dataset_name not in DATASETS:
        raise ValueError(
            f"zero-shot runs on {', '.join(DATASETS)}; {dataset_name!r} has no class labels"
        )
    split = split or DATASETS[dataset_name]
    dataset = reader_class(dataset_name)(root, split=split, transform=pretrained.transform)
    scores, labels, masks, names = zero_shot_scores(pretrained, dataset, batch_size, progress)
    if len(scores) == 0:
        raise ValueError(f"the {split} split of {dataset_name} in {root} has no readable images")
    thresholds, chosen = validation_thresholds(
        pretrained, dataset_name, root, split, batch_size, progress
    )
    results = classification_metrics(scores, labels, masks, names, thresholds)
    results |= chosen
    results["roc"] = roc_curves(scores, labels, masks, names)
    results["prompts"] = {"positive": POSITIVE_PROMPT, "negative": NEGATIVE_PROMPT}
    results["dataset"] = dataset_name
    results["split"] = split
    results["test_samples"] = len(dataset)
    return results


def validation_thresholds(
    pretrained: Pretrained,
    dataset_name: str,
    root: str,
    test_split: str,
    batch_size: int = 32,
    progress: bool = True,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Thresholds (C,) for the promptable classes, chosen without the ``test_split`` labels,
    and what to record: ``threshold_rule`` (the rule in words), ``threshold_split`` (None when
    no split was used), ``threshold_samples`` (its images) and ``threshold_fallback_classes``
    (the classes at the fall-back threshold)."""
    from cxrvlp.data.readers import reader_class

    reader = reader_class(dataset_name)
    names = [n for n in reader.label_names if n.lower() not in UNPROMPTABLE]
    split = VALIDATION_SPLITS.get(dataset_name)
    if split is None:
        return _fallback(names, f"{dataset_name} has no validation split apart from its test split")
    if split == test_split:
        return _fallback(names, f"the validation split {split!r} is the split under test")
    dataset = reader(root, split=split, transform=pretrained.transform)
    if len(dataset) == 0:
        return _fallback(names, f"the {split} split of {dataset_name} is empty")
    scores, labels, masks, _ = zero_shot_scores(pretrained, dataset, batch_size, progress)
    if len(scores) == 0:
        return _fallback(names, f"no image of the {split} split could be read")
    chosen = f1_maximising_thresholds(scores, labels, masks)
    fallback = [name for name, threshold in zip(names, chosen, strict=True) if threshold.isnan()]
    rule = (
        f"per class, the F1-maximising threshold on the {split} split ({len(scores)} images; "
        "ties: the lower threshold); never the test labels"
    )
    if fallback:
        rule += f"; {FALLBACK_RULE} for the classes without a positive {split} label: "
        rule += ", ".join(fallback)
    return chosen.nan_to_num(FALLBACK_THRESHOLD), {
        "threshold_rule": rule,
        "threshold_split": split,
        "threshold_samples": len(scores),
        "threshold_fallback_classes": fallback,
    }


def _fallback(names: list[str], why: str) -> tuple[torch.Tensor, dict[str, Any]]:
    return torch.full((len(names),), FALLBACK_THRESHOLD), {
        "threshold_rule": f"{FALLBACK_RULE}, for every class ({why}); never the test labels",
        "threshold_split": None,
        "threshold_samples": 0,
        "threshold_fallback_classes": names,
    }
