"""Report generation: the pre-trained GK-MVLP reused whole.

The image encoder's tokens (with the GK module's grounded entity vectors where the model has
one) are the memory the report decoder attends to; IU X-Ray's two views are encoded one after
the other and their token sequences concatenated. The decoder is trained with the LM loss
(teacher forcing) and decodes greedily or with beam search through transformers' ``generate``
with a KV cache; reports are scored with BLEU-1..4, METEOR, ROUGE-L, CIDEr and CheXpert
clinical efficacy.
"""

from __future__ import annotations

import json
import logging
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import DynamicCache, EncoderDecoderCache, GenerationConfig

from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
from cxrvlp.data.sample import Sample, collate_samples
from cxrvlp.losses.lm import lm_loss_terms
from cxrvlp.metrics.captioning import caption_metrics
from cxrvlp.metrics.clinical import clinical_efficacy
from cxrvlp.models.outputs import TaskOutput
from cxrvlp.recipes.batch import tokenize
from cxrvlp.tasks.task import DatasetSplits, TaskContext

log = logging.getLogger(__name__)

DEFAULT_BEAMS = 3
GENERATED_FILE = "generated.jsonl"
EXAMPLES = 8
EMPTY_REPORT = "empty report: nothing to learn or score against"


# ---- decoding -----------------------------------------------------------------------------
def whole_image_boxes(count: int, device: torch.device | None = None) -> torch.Tensor:
    """(count, 29, 4) NaN boxes: the GK module then pools the whole image for every region."""
    return torch.full((count, len(CHEST_IMAGENOME_REGIONS), 4), float("nan"), device=device)


def image_memory(
    model: nn.Module,
    images: torch.Tensor,
    boxes: torch.Tensor | None = None,
    extra_views: torch.Tensor | None = None,
    prompts: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """The decoder's memory (B, T, text width): the image tokens of each view, view after view.

    ``images`` (B, C, S, S) are the first (frontal) views, ``boxes`` (B, 29, 4) their region
    boxes in input pixels, ``extra_views`` (B, V, C, S, S) further views. The region boxes
    belong to the frontal view; further views get NaN boxes (whole image). All views go
    through the encoder as one batch. ``prompts``: the model's ``prompt_embeddings()``, when
    the caller has them already (they depend on the weights only, not on the images).
    """
    views = [images] if extra_views is None else [images, *extra_views.unbind(dim=1)]
    view_boxes = None
    if model.gk is not None:
        frontal = boxes if boxes is not None else whole_image_boxes(len(images), images.device)
        others = whole_image_boxes(len(images) * (len(views) - 1), images.device)
        view_boxes = torch.cat([frontal, others])
    entities, positions = prompts if prompts is not None else (None, None)
    tokens = model.encode_image(torch.cat(views), view_boxes, entities, positions).tokens
    return torch.cat(tokens.chunk(len(views)), dim=1)


class BeamSharedMemoryCache(EncoderDecoderCache):
    """transformers' encoder-decoder KV cache, whose beam reorder leaves the cross-attention
    keys and values alone: every beam of an image attends to the same image tokens, and beam
    search only ever reorders beams within an image, so those copies are equal already.
    Reordering them copied each layer's (beams x image tokens) keys and values at every new
    token: most of the cache's reorder time."""

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.self_attention_cache.reorder_cache(beam_idx)


def decode(
    decoder: nn.Module,
    memory: torch.Tensor,
    start_id: int,
    stop_id: int,
    pad_id: int,
    *,
    beams: int,
    max_new_tokens: int,
) -> list[list[int]]:
    """Token ids of each row's report after the start token, up to (without) the stop token.

    ``beams`` 1 is greedy decoding. transformers' ``generate`` keeps a KV cache; it would make
    a self-attention-only cache for a decoder-only model, which BERT's cross-attention layers
    cannot use (transformers 5.24), so an encoder-decoder cache is handed in.
    """
    if beams < 1:
        raise ValueError(f"beams must be at least 1, got {beams}")
    lm = decoder.lm
    cache = BeamSharedMemoryCache(DynamicCache(config=lm.config), DynamicCache(config=lm.config))
    start = torch.full((len(memory), 1), start_id, dtype=torch.long, device=memory.device)
    settings = GenerationConfig(
        max_new_tokens=max_new_tokens,
        num_beams=beams,
        do_sample=False,
        bos_token_id=start_id,
        eos_token_id=stop_id,
        pad_token_id=pad_id,
    )
    sequences = lm.generate(
        input_ids=start,
        attention_mask=torch.ones_like(start),
        encoder_hidden_states=memory,
        cache=cache,
        generation_config=settings,
    )
    reports = []
    for row in sequences[:, 1:].tolist():
        # Rows that stopped early are filled up after their stop token.
        reports.append(row[: row.index(stop_id)] if stop_id in row else row)
    return reports


def default_max_new_tokens(model: nn.Module) -> int:
    """Reports were cut at ``text.max_length`` tokens with [CLS] and [SEP]: as long again."""
    return int(model.config.text.max_length) - 1


@torch.no_grad()
def generate_reports(
    model: nn.Module,
    tokenizer: Any,
    images: torch.Tensor,
    boxes: torch.Tensor | None = None,
    beams: int = DEFAULT_BEAMS,
    max_new_tokens: int | None = None,
    extra_views: torch.Tensor | None = None,
    prompts: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> list[str]:
    """One report per image from a GK-MVLP ``model`` (in eval mode); see ``image_memory``
    for ``boxes``, ``extra_views`` and ``prompts``. Decoding starts at [CLS] and stops at
    [SEP]."""
    memory = image_memory(model, images, boxes, extra_views, prompts)
    ids = decode(
        model.decoder,
        memory,
        start_id=tokenizer.cls_token_id,
        stop_id=tokenizer.sep_token_id,
        pad_id=tokenizer.pad_token_id,
        beams=beams,
        max_new_tokens=max_new_tokens or default_max_new_tokens(model),
    )
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


# ---- training -----------------------------------------------------------------------------
class GenerationModel(nn.Module):
    """GK-MVLP image side -> memory -> report decoder, trained with the LM loss.

    Only the generation path learns: the decoder, and (unless ``linear_probe``) the image
    encoder, its projection to the text width and, with the GK module, the GK module and the
    knowledge encoder that embeds its prompts. The other towers are frozen, so that nothing
    without gradient is handed to the optimiser or to DistributedDataParallel.
    """

    def __init__(self, backbone: nn.Module, linear_probe: bool):
        super().__init__()
        self.backbone = backbone
        self.linear_probe = linear_probe
        backbone.requires_grad_(False)
        learning = [backbone.decoder]
        if not linear_probe:
            learning += [backbone.image_encoder, backbone.image_to_text]
            if backbone.gk is not None:
                learning += [backbone.gk, backbone.knowledge_encoder]
        for module in learning:
            module.requires_grad_(True)

    def train(self, mode: bool = True) -> GenerationModel:
        super().train(mode)
        if self.linear_probe:
            # A frozen image side keeps its normalisation and dropout in inference mode too.
            self.backbone.eval()
            self.backbone.decoder.train(mode)
        return self

    def memory(self, batch: dict[str, Any]) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.linear_probe):
            return image_memory(
                self.backbone, batch["image"], batch.get("boxes"), batch.get("extra_views")
            )

    def forward(self, batch: dict[str, Any]) -> TaskOutput:
        if "input_ids" not in batch:
            # Every sample of the batch was skipped: a step without gradient.
            loss = torch.zeros((), device=self.backbone.decoder.lm.device, requires_grad=True)
            return TaskOutput(loss=loss, losses={"lm": loss.detach()})
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        logits = self.backbone.decoder(input_ids, attention_mask, self.memory(batch))
        total, count = lm_loss_terms(logits, input_ids, attention_mask)
        loss = total / count.clamp(min=1)
        return TaskOutput(loss=loss, losses={"lm": loss.detach()}, logits=logits)


class GenerationCollator:
    """Samples -> a batch with the report tokens, the further views as one tensor
    ``extra_views`` (B, V, C, S, S) and, for the GK module, ``boxes`` (B, 29, 4).

    A sample whose report is empty is left out and listed in ``skipped`` (the Trainer counts
    and logs those) and counted in ``empty_reports``.
    """

    def __init__(self, tokenizer: Any, max_length: int, region_boxes: bool):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.region_boxes = region_boxes

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        is_empty = [not s.error and not report_text(s) for s in samples]
        kept = [s for s, empty in zip(samples, is_empty, strict=True) if not empty]
        empty = [s for s, empty in zip(samples, is_empty, strict=True) if empty]
        batch = collate_samples(kept)
        batch["skipped"] += [(s.path or s.image_id, EMPTY_REPORT) for s in empty]
        batch["empty_reports"] = len(empty)
        if "image" not in batch:
            return batch
        batch["input_ids"], batch["attention_mask"] = tokenize(
            self.tokenizer, batch["report"], self.max_length
        )
        if "extra_images" in batch:
            batch["extra_views"] = torch.stack(batch.pop("extra_images"), dim=1)
        if self.region_boxes:
            missing = whole_image_boxes(1)[0]
            batch["boxes"] = torch.stack(
                [missing if s.boxes is None else s.boxes for s in kept if not s.error]
            )
        return batch


def report_text(sample: Sample) -> str:
    return sample.report.findings_and_impression if sample.report is not None else ""


class GenerationTask:
    name: ClassVar[str] = "generation"
    display_name: ClassVar[str] = "Report generation"
    headline_metric: ClassVar[tuple[str, str]] = ("bleu4", "BLEU-4")  # results key, label
    detail_metrics: ClassVar[tuple[str, ...]] = (
        "bleu1",
        "bleu2",
        "bleu3",
        "bleu4",
        "meteor",
        "rouge_l",
        "cider",
        "ce_f1",
    )
    # The MIMIC-CXR reader finds the reports itself: a sectioned CSV in or beside the root, or
    # the unzipped reports as the sibling folder mimic-cxr-reports (else a MissingFileError
    # says what to pass).
    datasets: ClassVar[dict[str, DatasetSplits]] = {
        "iu-xray": DatasetSplits("iu-xray", "train", "test"),
        "mimic-cxr": DatasetSplits("mimic-cxr", "train", "test"),
    }
    train_defaults: ClassVar[dict[str, Any]] = {
        "lr": 1e-4,
        "batch_size": 16,
        "max_steps": 500,
        "warmup_steps": 50,
        "weight_decay": 0.01,
    }
    uses_text: ClassVar[bool] = True
    exports_bundle: ClassVar[bool] = True
    uses_region_boxes: ClassVar[bool] = True

    def __init__(self, beams: int = DEFAULT_BEAMS, max_new_tokens: int | None = None):
        self.beams = beams
        self.max_new_tokens = max_new_tokens

    def build_model(self, ctx: TaskContext, train_set: Any) -> nn.Module:
        if ctx.backbone.tokenizer is None:
            raise ValueError(
                "report generation needs the model's tokenizer: use a bundle with tokenizer/ "
                "or, with --pretrained none, pass --tokenizer"
            )
        return GenerationModel(ctx.backbone.model, ctx.linear_probe)

    def collate(self, ctx: TaskContext, model: nn.Module) -> GenerationCollator:
        return GenerationCollator(
            ctx.backbone.tokenizer,
            int(ctx.backbone.config.text.max_length),
            region_boxes=ctx.backbone.model.gk is not None,
        )

    @torch.no_grad()
    def evaluate(self, ctx: TaskContext, model: nn.Module, test_set: Any) -> dict[str, Any]:
        """Generate a report for every test image, write them to ``generated.jsonl`` and
        score them against the reference reports."""
        backbone = model.backbone
        max_new_tokens = self.max_new_tokens or default_max_new_tokens(backbone)
        loader = DataLoader(
            test_set, batch_size=ctx.batch_size, collate_fn=self.collate(ctx, model)
        )
        rows, empty_reports = [], 0
        for batch in tqdm(loader, desc="generate", unit="batch", disable=not ctx.progress):
            empty_reports += batch["empty_reports"]
            for path, reason in batch["skipped"]:
                log.warning("%s: not scored: %s: %s", ctx.dataset, path, reason)
            if "image" not in batch:
                continue
            generated = generate_reports(
                backbone,
                ctx.backbone.tokenizer,
                batch["image"].to(ctx.device),
                _to(batch.get("boxes"), ctx.device),
                beams=self.beams,
                max_new_tokens=max_new_tokens,
                extra_views=_to(batch.get("extra_views"), ctx.device),
            )
            for image_id, study_id, text, reference in zip(
                batch["image_id"], batch["study_id"], generated, batch["report"], strict=True
            ):
                rows.append(
                    {
                        "image_id": image_id,
                        "study_id": study_id,
                        "generated": text,
                        "reference": reference,
                    }
                )
        if not rows:
            raise ValueError(f"{ctx.dataset}: no test sample could be scored (see the warnings)")
        with (ctx.out / GENERATED_FILE).open("w", encoding="utf-8") as stream:
            for row in rows:
                stream.write(json.dumps(row) + "\n")
        generated = [row["generated"] for row in rows]
        references = [row["reference"] for row in rows]
        return {
            **caption_metrics(generated, references),
            **clinical_efficacy(generated, references),
            "decoding": {
                "method": "greedy" if self.beams == 1 else "beam",
                "beams": self.beams,
                "max_new_tokens": max_new_tokens,
            },
            "scored_samples": len(rows),
            "skipped_empty_reports": empty_reports,
            "generated_file": GENERATED_FILE,
            "examples": [
                {key: row[key] for key in ("image_id", "generated", "reference")}
                for row in rows[:EXAMPLES]
            ],
        }


def _to(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device)
