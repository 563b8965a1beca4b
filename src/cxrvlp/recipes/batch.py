"""The batch contract of GK-MVLP: samples -> tensors, and the knowledge prompts."""

from __future__ import annotations

import zlib
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
from cxrvlp.data.sample import Sample, collate_samples
from cxrvlp.text.knowledge import load_knowledge_base
from cxrvlp.text.prompts import entity_prompts, position_prompts

PRESENT, ABSENT, UNCERTAIN = "present", "absent", "uncertain"


def stable_key(text: str) -> int:
    """A process-independent integer key (``hash`` of a str differs between processes)."""
    return zlib.crc32(text.encode("utf-8"))


def tokenize(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = tokenizer(
        texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt"
    )
    return encoded["input_ids"], encoded["attention_mask"]


DEFAULT_PROMPT_LENGTH = 64


def attach_prompts(model: Any, tokenizer: PreTrainedTokenizerBase) -> None:
    """Tokenise the entity prompts and the 29 position prompts into ``model``, cut at the
    model's ``gk.prompt_max_length`` tokens (the prompts are re-encoded at every step)."""
    max_length = int(model.config.gk.get("prompt_max_length", DEFAULT_PROMPT_LENGTH))
    kb = load_knowledge_base()
    entities = entity_prompts(kb)
    positions = position_prompts(kb)
    model.set_knowledge_prompts(
        [prompt.entity for prompt in entities],
        tokenize(tokenizer, [prompt.text for prompt in entities], max_length),
        tokenize(tokenizer, [prompt.text for prompt in positions], max_length),
    )


def entity_names() -> list[str]:
    return list(load_knowledge_base().names)


def report_prompt_limit(model: Any) -> int:
    """Report prompts kept per sample: the model's ``max_report_prompts`` when its grounding
    term is on (the model turns it off without a GK module on regions), else 0: no prompts
    are built, as no loss would see them."""
    return model.max_report_prompts if model.loss_weights["grounding"] > 0 else 0


class PretrainCollator:
    """Samples of :func:`cxrvlp.data.pretraining.pretraining_dataset` -> a GK-MVLP batch.

    With ``report_prompts`` > 0 the batch also carries each report's knowledge prompts (present
    ones first, at most ``report_prompts``): ``prompt_ids`` / ``prompt_mask`` (U, L) the batch's
    distinct prompt sentences; ``prompt_text`` (B, P, 2) the row of each prompt's sentence with
    its position and of its bare form; ``prompt_valid`` (B, P); ``prompt_present`` (B, P);
    ``prompt_regions`` (B, P, 29) where the prompt's finding is; ``entity_regions`` (B, E, 29)
    the regions of each entity the report states present.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, max_length: int, report_prompts: int = 0
    ):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.report_prompts = report_prompts
        self.entities = entity_names()
        self.entity_index = {name: index for index, name in enumerate(self.entities)}
        self.region_index = {name: index for index, name in enumerate(CHEST_IMAGENOME_REGIONS)}

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        batch = collate_samples(samples)
        good = [sample for sample in samples if not sample.error]
        if not good:
            return batch
        reports = batch["report"]
        empty = [sample.path for sample, report in zip(good, reports, strict=True) if not report]
        if empty:
            raise ValueError(
                f"pre-training samples without report text: {empty[:5]}; the reader should "
                "have counted them as problems"
            )
        batch |= self.encode_reports(reports)
        regions = len(CHEST_IMAGENOME_REGIONS)
        batch["boxes"] = torch.stack(
            [
                sample.boxes if sample.boxes is not None else torch.full((regions, 4), float("nan"))
                for sample in good
            ]
        )
        targets = torch.zeros(len(good), len(self.entities))
        valid = torch.ones(len(good), len(self.entities), dtype=torch.bool)
        for row, sample in enumerate(good):
            for name, existence in sample.extra.get("entities", {}).items():
                column = self.entity_index.get(name)
                if column is None:
                    continue
                targets[row, column] = float(existence == PRESENT)
                valid[row, column] = existence != UNCERTAIN
        batch["entity_targets"], batch["entity_valid"] = targets, valid
        batch["study_key"] = torch.tensor(
            [stable_key(f"{s.patient_id}/{s.study_id}") for s in good], dtype=torch.long
        )
        batch["report_key"] = torch.tensor(
            [stable_key(" ".join(report.lower().split())) for report in reports], dtype=torch.long
        )
        if self.report_prompts > 0:
            batch |= self.prompt_tensors([sample.extra.get("prompts", []) for sample in good])
        return batch

    def encode_reports(self, reports: list[str]) -> dict[str, torch.Tensor]:
        """The reports' ``input_ids`` and ``attention_mask`` (B, L)."""
        ids, mask = tokenize(self.tokenizer, reports, self.max_length)
        return {"input_ids": ids, "attention_mask": mask}

    def prompt_tensors(self, prompts_per_sample: list[list[Any]]) -> dict[str, torch.Tensor]:
        """The report prompts of a batch as tensors (see the class docstring)."""
        kept = [
            sorted(prompts, key=lambda p: p.exist != PRESENT)[: self.report_prompts]
            for prompts in prompts_per_sample
        ]
        width = max(1, max(len(prompts) for prompts in kept))
        rows, regions = len(kept), len(CHEST_IMAGENOME_REGIONS)
        sentences: dict[str, int] = {}
        text = torch.zeros(rows, width, 2, dtype=torch.long)
        valid = torch.zeros(rows, width, dtype=torch.bool)
        present = torch.zeros(rows, width, dtype=torch.bool)
        prompt_regions = torch.zeros(rows, width, regions, dtype=torch.bool)
        entity_regions = torch.zeros(rows, len(self.entities), regions, dtype=torch.bool)
        for row, prompts in enumerate(kept):
            for column, prompt in enumerate(prompts):
                for form, sentence in enumerate((prompt.text, prompt.bare_text or prompt.text)):
                    text[row, column, form] = sentences.setdefault(sentence, len(sentences))
                valid[row, column] = True
                present[row, column] = prompt.exist == PRESENT
                where = [self.region_index[r] for r in prompt.regions if r in self.region_index]
                prompt_regions[row, column, where] = True
                entity = self.entity_index.get(prompt.entity)
                if prompt.exist == PRESENT and entity is not None:
                    entity_regions[row, entity, where] = True
        ids, mask = tokenize(self.tokenizer, list(sentences) or [""], self.max_length)
        return {
            "prompt_ids": ids,
            "prompt_mask": mask,
            "prompt_text": text,
            "prompt_valid": valid,
            "prompt_present": present,
            "prompt_regions": prompt_regions,
            "entity_regions": entity_regions,
        }
