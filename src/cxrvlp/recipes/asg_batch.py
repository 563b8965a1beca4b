"""The batch contract of ASG: the pre-training batch of GK-MVLP's collator plus each token's
word, the words of the sentences linked to each anatomical region, and the 40 ASG tags."""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from cxrvlp.constants import ASG_TAGS, CHEST_IMAGENOME_REGIONS
from cxrvlp.data.sample import Sample
from cxrvlp.recipes.batch import ABSENT, PRESENT, PretrainCollator
from cxrvlp.text.knowledge import load_knowledge_base

log = logging.getLogger(__name__)


def entity_tags() -> dict[str, tuple[str, ...]]:
    """Knowledge-base entity -> the ASG tags it answers to."""
    return {entity.name: entity.asg_tags for entity in load_knowledge_base().entities}


def tag_targets(entities: dict[str, str], tags_of: dict[str, tuple[str, ...]]) -> tuple:
    """(targets, valid) over ``ASG_TAGS`` from a report's entity existences: a tag is present
    when an entity it answers to is present, absent when the report states none present and
    none uncertain, left out (not valid) when only uncertain mentions give it."""
    index = {tag: column for column, tag in enumerate(ASG_TAGS)}
    targets = torch.zeros(len(ASG_TAGS))
    uncertain = torch.zeros(len(ASG_TAGS), dtype=torch.bool)
    for name, existence in entities.items():
        for tag in tags_of.get(name, ()):
            if existence == PRESENT:
                targets[index[tag]] = 1.0
            elif existence != ABSENT:
                uncertain[index[tag]] = True
    return targets, ~(uncertain & (targets < 0.5))


class WordLocator:
    """Words as the tokenizer's pre-tokenizer splits them (what ``word_ids()`` counts), and
    where a sentence's words first occur in a report's."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None or backend.pre_tokenizer is None:
            raise ValueError(
                "ASG needs a fast tokenizer with a pre-tokenizer (word ids): use "
                "text.tokenizer=train, minilm, or a folder holding tokenizer.json"
            )
        self.normalizer = backend.normalizer
        self.pre_tokenizer = backend.pre_tokenizer

    def words(self, text: str) -> list[str]:
        if self.normalizer is not None:
            text = self.normalizer.normalize_str(text)
        return [word for word, _ in self.pre_tokenizer.pre_tokenize_str(text)]

    def find(self, sentence: list[str], report: list[str], start: int = 0) -> int | None:
        """Index of the first occurrence of ``sentence`` in ``report`` at or after ``start``."""
        width = len(sentence)
        if not width:
            return None
        for position in range(start, len(report) - width + 1):
            if report[position : position + width] == sentence:
                return position
        return None


class ASGCollator(PretrainCollator):
    """Samples of :func:`cxrvlp.data.pretraining.pretraining_dataset` -> an ASG batch.

    Adds ``word_ids`` (B, L), ``region_words`` (B, 29, W) bool: the report words of the
    sentences ``links`` (``rules`` or ``imagenome``) ties to each region, ``tag_targets`` and
    ``tag_valid`` (B, 40). A linked sentence is found in its report by its words; one the
    report does not hold (a rephrased scene-graph phrase) or that truncation cut is counted
    in ``unplaced_sentences`` (the first one logged), and its region gets no sentence from it.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, links: str = "rules"):
        super().__init__(tokenizer, max_length)
        self.links = links
        self.locator = WordLocator(tokenizer)
        self.tags_of = entity_tags()
        self.placed_sentences = 0
        self.unplaced_sentences = 0

    def encode_reports(self, reports: list[str]) -> dict[str, torch.Tensor]:
        """The base's ``input_ids`` and ``attention_mask``, and from the same encoding each
        token's word (``word_ids``, -1 for [CLS], [SEP] and padding)."""
        encoded = self.tokenizer(
            reports, padding="longest", truncation=True, max_length=self.max_length,
            return_tensors="pt",
        )  # fmt: skip
        rows = [encoded.word_ids(row) for row in range(len(reports))]
        word_ids = [[-1 if word is None else word for word in row] for row in rows]
        return {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "word_ids": torch.tensor(word_ids, dtype=torch.long),
        }

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        batch = super().__call__(samples)
        if "input_ids" not in batch:
            return batch
        good = [sample for sample in samples if not sample.error]
        word_ids = batch["word_ids"]
        kept_words = [int(row.max()) + 1 for row in word_ids]
        width = max(1, max(kept_words))
        region_words = torch.zeros(len(good), len(CHEST_IMAGENOME_REGIONS), width, dtype=torch.bool)
        targets = torch.zeros(len(good), len(ASG_TAGS))
        valid = torch.ones(len(good), len(ASG_TAGS), dtype=torch.bool)
        for row, (sample, report) in enumerate(zip(good, batch["report"], strict=True)):
            report_words = self.locator.words(report)
            sources = sample.extra.get("region_sentences", {})
            if self.links not in sources and self.links == "imagenome":
                raise ValueError(
                    f"{sample.path}: no Chest ImaGenome region-phrase links (the boxes came "
                    "from elsewhere); pre-train with data.boxes=imagenome, or use "
                    "model.alignment.links=rules"
                )
            links = sources.get(self.links, {})
            for region, sentences in links.items():
                region_row = self.region_index.get(region)
                if region_row is None:
                    continue
                for sentence in sentences:
                    words = self.locator.words(sentence)
                    start = self.locator.find(words, report_words)
                    if start is None or start + len(words) > kept_words[row]:
                        if not self.unplaced_sentences:
                            log.warning(
                                "image %s (%s): linked sentence %r is not among the report's "
                                "first %d words; its region %r gets no sentence from it (such "
                                "sentences are counted in unplaced_sentences, not logged again)",
                                sample.image_id, sample.path, sentence, kept_words[row], region,
                            )  # fmt: skip
                        self.unplaced_sentences += 1
                        continue
                    self.placed_sentences += 1
                    region_words[row, region_row, start : start + len(words)] = True
            targets[row], valid[row] = tag_targets(sample.extra.get("entities", {}), self.tags_of)
        batch["region_words"] = region_words
        batch["tag_targets"], batch["tag_valid"] = targets, valid
        return batch
