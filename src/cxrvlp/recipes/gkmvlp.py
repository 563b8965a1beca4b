"""GK-MVLP: image encoder, report encoder, image-report encoder, report decoder and the
grounded-knowledge module, trained with ITC, ITM, LM and ECLS.

Batch contract (``GKMVLP.forward``; built by :class:`cxrvlp.recipes.batch.PretrainCollator`):

``image`` (B, C, S, S); ``boxes`` (B, 29, 4) region boxes in input pixels (NaN: not found);
``input_ids`` / ``attention_mask`` (B, L) report tokens, [CLS] first; ``entity_targets``
(B, E) 1 present / 0 absent and ``entity_valid`` (B, E) bool, in knowledge-base entity order;
``study_key`` and ``report_key`` (B,) int64 (equal keys: same study / same report text);
``step`` the optimiser step (seeds the ITM negative draw and the prompts' position dropout);
with ``gk.prompts: report``, the report's knowledge prompts (``prompt_*``, ``entity_regions``;
see :class:`cxrvlp.recipes.batch.PretrainCollator`).

Where the report's prompts go. The tokens ITM and LM attend to (image tokens + z_fused) come
from the report-independent knowledge-base queries only: were z_fused grounded from the
report's own prompts, ITM could match a report by reading its prompts back from the image
side, and LM could copy them. The report's prompts are grounded on the same region keys by the
same fusion layers, and reach the loss only through the grounding term, which teaches their
attention and z_local to sit on the region each names (and the knowledge-base query of each
present finding to sit there too). ECLS scores the knowledge-base queries' z_local (or v_cls,
``losses.ecls_on``), never a report prompt: a prompt says its finding's existence.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cxrvlp.engine import distributed
from cxrvlp.losses import (
    contrastive_loss_terms,
    ecls_loss_terms,
    lm_loss_terms,
    region_alignment_loss_terms,
    sample_hard_negatives,
)
from cxrvlp.models.grounding import GroundedKnowledge
from cxrvlp.models.outputs import GroundingOutput, ImageFeatures, PretrainOutput
from cxrvlp.models.registry import check_choice
from cxrvlp.models.text import ImageReportEncoder, ReportDecoder, TextEncoder, masked_mean
from cxrvlp.models.vision import image_encoder_from_config
from cxrvlp.recipes import batch as gkmvlp_batch

LOSS_NAMES = ("itc", "itm", "lm", "ecls", "grounding")
PROMPT_SOURCES = ("knowledge_base", "report")
ECLS_SIDES = ("z_local", "v_cls")
_MAX_LOGIT_SCALE = 100.0
_ITM_SEED_STRIDE = 1_000_003
_POSITION_DROPOUT_SALT = 7_919


class GKMVLP(nn.Module):
    """The GK-MVLP model; ``config`` is a resolved model config (see ``models/configs``)."""

    def __init__(self, config: DictConfig | dict, vocab_size: int | None = None):
        super().__init__()
        self.config = OmegaConf.create(OmegaConf.to_container(OmegaConf.create(config)))
        cfg = self.config
        vocab_size = int(vocab_size or cfg.text.vocab_size)
        self.vocab_size = vocab_size
        self.loss_weights = {name: float(cfg.losses.get(name, 0.0)) for name in LOSS_NAMES}
        self.seed = 0
        self.prompt_source = str(cfg.gk.get("prompts", "knowledge_base"))
        self.position_dropout = float(cfg.gk.get("position_dropout", 0.0))
        self.max_report_prompts = int(cfg.gk.get("max_report_prompts", 12))
        self.ecls_on = str(cfg.losses.get("ecls_on", "z_local"))
        check_choice("gk.prompts", self.prompt_source, PROMPT_SOURCES)
        check_choice("losses.ecls_on", self.ecls_on, ECLS_SIDES)
        if not (cfg.gk.enabled and cfg.gk.region_features):
            # The term grounds the GK module's attention on regions: the ablations without
            # the module or without region features have nothing it could train.
            self.loss_weights["grounding"] = 0.0

        self.image_encoder = image_encoder_from_config(cfg.image)
        self.text_encoder = TextEncoder(cfg.text, vocab_size)
        # The entity and knowledge encoders: the report encoder itself, or a tower of their own.
        self.own_knowledge_encoder = (
            None if cfg.gk.share_text_encoder else TextEncoder(cfg.text, vocab_size)
        )
        text_width, vision_width = self.text_encoder.width, self.image_encoder.width
        self.image_report_encoder = ImageReportEncoder(
            cfg.text, int(cfg.image_report_encoder.layers)
        )
        self.decoder = ReportDecoder(cfg.text, int(cfg.decoder.layers), vocab_size)
        self.image_to_text = nn.Linear(vision_width, text_width)
        embed_dim = int(cfg.embed_dim)
        self.image_proj = nn.Linear(vision_width, embed_dim)
        self.text_proj = nn.Linear(text_width, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.losses.temperature)))

        self.gk = None
        if cfg.gk.enabled:
            self.gk = GroundedKnowledge(
                cfg.gk,
                vision_width,
                text_width,
                self.image_encoder.grid,
                self.image_encoder.image_size,
            )
        self.ecls_image_proj = self.ecls_entity_proj = self.ecls_logit_scale = None
        if self.loss_weights["ecls"] > 0:
            self.ecls_image_proj = nn.Linear(vision_width, embed_dim)
            self.ecls_entity_proj = nn.Linear(text_width, embed_dim)
            self.ecls_logit_scale = nn.Parameter(
                torch.tensor(math.log(1.0 / cfg.losses.ecls_temperature))
            )
        # Knowledge prompts, tokenised by the recipe's tokenizer (set_knowledge_prompts).
        for name in ("entity_ids", "entity_mask", "position_ids", "position_mask"):
            self.register_buffer(name, torch.zeros(0, 0, dtype=torch.long), persistent=False)
        self.entity_names: list[str] = []

        self.queue_size = int(cfg.losses.queue_size)
        if self.queue_size > 0:
            self._build_momentum(embed_dim)

    # ---- setup ------------------------------------------------------------------------------
    def set_knowledge_prompts(
        self,
        entity_names: list[str],
        entity_tokens: tuple[torch.Tensor, torch.Tensor],
        position_tokens: tuple[torch.Tensor, torch.Tensor],
    ) -> None:
        """The entity prompts (queries, ECLS classes) and the region position prompts."""
        device = self.logit_scale.device
        self.entity_names = list(entity_names)
        self.entity_ids, self.entity_mask = (t.to(device) for t in entity_tokens)
        self.position_ids, self.position_mask = (t.to(device) for t in position_tokens)

    def _build_momentum(self, embed_dim: int) -> None:
        self.momentum = float(self.config.losses.momentum)
        self.image_encoder_m = copy.deepcopy(self.image_encoder)
        self.image_proj_m = copy.deepcopy(self.image_proj)
        self.text_encoder_m = copy.deepcopy(self.text_encoder)
        self.text_proj_m = copy.deepcopy(self.text_proj)
        for module in self._momentum_pairs():
            for parameter in module[1].parameters():
                parameter.requires_grad_(False)
        self.register_buffer(
            "image_queue", F.normalize(torch.randn(self.queue_size, embed_dim), dim=1)
        )
        self.register_buffer(
            "text_queue", F.normalize(torch.randn(self.queue_size, embed_dim), dim=1)
        )
        # Queue entries start with ids no study has, so they are negatives until replaced.
        self.register_buffer("id_queue", torch.full((self.queue_size,), -1, dtype=torch.long))
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))

    def _momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [
            (self.image_encoder, self.image_encoder_m),
            (self.image_proj, self.image_proj_m),
            (self.text_encoder, self.text_encoder_m),
            (self.text_proj, self.text_proj_m),
        ]

    # ---- encoders ---------------------------------------------------------------------------
    @property
    def knowledge_encoder(self) -> TextEncoder:
        """Encodes the entity and position prompts (see ``gk.share_text_encoder``)."""
        return self.own_knowledge_encoder or self.text_encoder

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L, text width) report hidden states."""
        return self.text_encoder(input_ids, attention_mask)

    def text_embedding(
        self, text_hidden: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """ITC embedding of a report: the masked mean of its hidden states, projected.

        A mean rather than [CLS]: a BERT trained from scratch starts with almost the same
        [CLS] state for every report, from which contrastive training does not escape.
        """
        return F.normalize(self.text_proj(masked_mean(text_hidden, attention_mask)).float(), dim=-1)

    def prompt_embeddings(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[CLS] states of the entity prompts (E, width) and position prompts (R, width)."""
        if self.entity_ids.numel() == 0:
            raise RuntimeError(
                "knowledge prompts are not set: call cxrvlp.recipes.batch.attach_prompts("
                "model, tokenizer) (pre-training and load_pretrained do this)"
            )
        if self.gk is None or not self.gk.with_position:
            return self.knowledge_encoder(self.entity_ids, self.entity_mask)[:, 0], None
        # One encoder pass for both sets: each pass costs a vocabulary-size gradient of the
        # word embeddings, and one larger batch runs the matmuls more efficiently. The prompts
        # do not attend to each other, so each gets the state it would get alone.
        length = max(self.entity_ids.shape[1], self.position_ids.shape[1])
        ids = torch.cat(
            [_pad_columns(self.entity_ids, length), _pad_columns(self.position_ids, length)]
        )
        mask = torch.cat(
            [_pad_columns(self.entity_mask, length), _pad_columns(self.position_mask, length)]
        )
        states = self.knowledge_encoder(ids, mask)[:, 0]
        return states[: len(self.entity_ids)], states[len(self.entity_ids) :]

    def image_embedding(self, pooled: torch.Tensor) -> torch.Tensor:
        """ITC embedding of images from the image encoder's pooled vector (no GK module)."""
        return F.normalize(self.image_proj(pooled).float(), dim=-1)

    def encode_image(
        self,
        images: torch.Tensor,
        boxes: torch.Tensor | None = None,
        entities: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> ImageFeatures:
        """ITC embedding, the tokens the report towers attend to, and the GK result."""
        vit_tokens, pooled = self.image_encoder(images)
        embedding = self.image_embedding(pooled)
        grounding = None
        tokens = vit_tokens
        if self.gk is not None:
            if entities is None:
                entities, positions = self.prompt_embeddings()
            grounding = self.gk(
                self.image_encoder.patch_grid(vit_tokens), entities, boxes, positions
            )
            tokens = torch.cat([vit_tokens, grounding.z_fused], dim=1)
        return ImageFeatures(
            embedding=embedding,
            pooled=pooled,
            tokens=self.image_to_text(tokens),
            vit_tokens=vit_tokens,
            grounding=grounding,
        )

    def entity_scores(self, features: ImageFeatures, entities: torch.Tensor) -> torch.Tensor:
        """ECLS scores (B, E): grounded entity vectors z_local (``losses.ecls_on: z_local``)
        or the image's global vector v_cls (``v_cls``, as the paper states ECLS; also without
        the GK module) against the entity-prompt embeddings."""
        if self.ecls_image_proj is None:
            raise RuntimeError("this model was built without ECLS (losses.ecls=0)")
        if features.grounding is not None and self.ecls_on == "z_local":
            image_side = F.normalize(
                self.ecls_image_proj(features.grounding.z_local).float(), dim=-1
            )
        else:
            global_side = self.ecls_image_proj(features.pooled)
            image_side = F.normalize(global_side.float(), dim=-1)[:, None]
        entity_side = F.normalize(self.ecls_entity_proj(entities).float(), dim=-1)
        scale = self.ecls_logit_scale.exp().clamp(max=_MAX_LOGIT_SCALE)
        return scale * (image_side * entity_side[None]).sum(dim=-1)

    def ground_prompts(
        self, grounding: GroundingOutput, prompt_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts ((P, width) or (B, P, width) knowledge-encoder states) grounded on the
        region keys of an encoded image batch: z_local (B, P, D) and attention (B, P, R)."""
        if self.gk is None:
            raise RuntimeError("this model has no GK module (gk.enabled=false)")
        return self.gk.attend(prompt_embeddings, grounding.keys, grounding.key_padding)

    def encode_prompts(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[CLS] states (N, width) of prompt sentences, by the knowledge encoder."""
        return self.knowledge_encoder(ids, mask)[:, 0]

    def itm_logits(
        self, text_hidden: torch.Tensor, attention_mask: torch.Tensor, image_tokens: torch.Tensor
    ) -> torch.Tensor:
        fused, _ = self.image_report_encoder(text_hidden, attention_mask, image_tokens)
        return self.image_report_encoder.itm_head(fused[:, 0])

    # ---- training ---------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> PretrainOutput:
        input_ids, attention_mask = _pad_to_global_length(
            batch["input_ids"], batch["attention_mask"]
        )
        # Only the GK module and ECLS read the knowledge prompts: without both, encoding them
        # would cost more report-encoder tokens than the reports themselves.
        entities, positions = None, None
        if self.gk is not None or self.loss_weights["ecls"] > 0:
            entities, positions = self.prompt_embeddings()
        image = self.encode_image(batch["image"], batch.get("boxes"), entities, positions)
        text_hidden = self.encode_text(input_ids, attention_mask)
        text_embedding = self.text_embedding(text_hidden, attention_mask)
        study_key = batch["study_key"]

        losses: dict[str, torch.Tensor] = {}
        image_all, offset = distributed.gather_with_grad(image.embedding)
        text_all, _ = distributed.gather_with_grad(text_embedding)
        study_all = distributed.gather_no_grad(study_key)
        if self.loss_weights["itc"] > 0:
            losses["itc"] = self._itc(image, text_embedding, image_all, text_all, batch, study_all)
        if self.loss_weights["itm"] > 0:
            losses["itm"] = self._itm(
                image, text_hidden, attention_mask, image_all, text_all, batch, study_all, offset
            )
        if self.loss_weights["lm"] > 0:
            logits = self.decoder(input_ids, attention_mask, image.tokens)
            total, count = lm_loss_terms(logits, input_ids, attention_mask)
            losses["lm"] = distributed.global_mean(total, count)
        if self.loss_weights["grounding"] > 0:
            losses["grounding"] = self._grounding(image.grounding, batch, offset, len(study_all))
        if self.loss_weights["ecls"] > 0:
            scores = self.entity_scores(image, entities)
            targets, valid = batch["entity_targets"], batch["entity_valid"]
            scores_all, _ = distributed.gather_with_grad(scores)
            negatives_all = distributed.gather_no_grad(valid & (targets < 0.5))
            total, count = ecls_loss_terms(scores, targets, valid, scores_all, negatives_all)
            losses["ecls"] = distributed.global_mean(total, count)
        loss = sum(self.loss_weights[name] * value for name, value in losses.items())
        return PretrainOutput(
            loss=loss, losses={name: value.detach() for name, value in losses.items()}
        )

    def _grounding(
        self, grounding: GroundingOutput, batch: dict[str, Any], offset: int, global_rows: int
    ) -> torch.Tensor:
        """The grounding term: the mean of (1) each present report prompt's attention over its
        image's regions against the regions it names, (2) its z_local against the region
        features, by cosine at ``losses.grounding_temperature``, and (3) the knowledge-base
        query of each present finding against the finding's regions. (1) and (2) need the
        report's prompts (``gk.prompts: report``); (3) only the regions the report states."""
        region_valid = ~grounding.key_padding
        terms = []
        attention_kb = grounding.attention.clamp(min=1e-12).log()
        terms.append(
            region_alignment_loss_terms(attention_kb, batch["entity_regions"], region_valid)
        )
        if self.prompt_source == "report":
            text = batch["prompt_text"]
            generator = torch.Generator().manual_seed(
                self.seed * _ITM_SEED_STRIDE + _POSITION_DROPOUT_SALT + int(batch.get("step", 0))
            )
            # Drawn for every prompt slot of the global batch, then each process keeps its
            # rows: the same prompts lose their position whatever the number of processes.
            slots = max(self.max_report_prompts, text.shape[1])
            draws = torch.rand(global_rows, slots, generator=generator)
            bare = draws[offset : offset + len(text), : text.shape[1]] < self.position_dropout
            chosen = torch.where(bare.to(text.device), text[..., 1], text[..., 0])
            needed = batch["prompt_valid"] & batch["prompt_present"]
            z_local, attention = self.ground_prompts(
                grounding, self._needed_prompt_queries(batch, chosen, needed)
            )
            targets = batch["prompt_regions"] & needed[..., None]
            terms.append(
                region_alignment_loss_terms(attention.clamp(min=1e-12).log(), targets, region_valid)
            )
            similarity = F.normalize(z_local.float(), dim=-1) @ F.normalize(
                grounding.region_features.float(), dim=-1
            ).transpose(1, 2)
            temperature = float(self.config.losses.get("grounding_temperature", 0.1))
            terms.append(
                region_alignment_loss_terms(similarity / temperature, targets, region_valid)
            )
        means = [distributed.global_mean(total, count) for total, count in terms]
        return torch.stack(means).mean()

    def _needed_prompt_queries(
        self, batch: dict[str, Any], chosen: torch.Tensor, needed: torch.Tensor
    ) -> torch.Tensor:
        """(B, P, width) the report prompts' query states: the knowledge encoder's [CLS] of each
        slot's chosen sentence where the slot is ``needed``, zeros elsewhere.

        Only present prompts have a target (an absent finding names no region to find), and
        each slot uses one of its two forms: the other sentences would cost encoder time (most
        of a batch's prompt sentences) without reaching the loss. Queries do not attend to each
        other, so the needed slots get the states they would get among all the others."""
        ids, mask = batch["prompt_ids"], batch["prompt_mask"]
        if not bool(needed.any()):
            return ids.new_zeros((*chosen.shape, self.knowledge_encoder.width), dtype=torch.float)
        used, slot_sentence = torch.unique(chosen[needed], return_inverse=True)
        mask = mask.index_select(0, used)
        length = int(mask.sum(dim=1).max())  # padding beyond the longest used sentence
        states = self.encode_prompts(ids.index_select(0, used)[:, :length], mask[:, :length])
        queries = states.new_zeros((*chosen.shape, states.shape[-1]))
        # index_select, not states[slot_sentence]: see _itm on summing gradients in order.
        return queries.index_put((needed,), states.index_select(0, slot_sentence))

    def _itc(self, image, text_embedding, image_all, text_all, batch, study_all) -> torch.Tensor:
        scale = self.logit_scale.exp().clamp(max=_MAX_LOGIT_SCALE)
        study_key = batch["study_key"]
        if self.queue_size > 0:
            image_keys, text_keys, key_ids = self._momentum_keys(batch, study_all)
        else:
            image_keys, text_keys, key_ids = image_all, text_all, study_all
        image_to_text = contrastive_loss_terms(
            image.embedding, text_keys, study_key, key_ids, scale
        )
        text_to_image = contrastive_loss_terms(
            text_embedding, image_keys, study_key, key_ids, scale
        )
        total = (image_to_text.sum() + text_to_image.sum()) / 2
        return distributed.global_mean(total, len(study_key))

    @torch.no_grad()
    def _momentum_keys(self, batch, study_all):
        """Momentum-encoder features of the global batch followed by the queue."""
        if self.training:
            for online, momentum in self._momentum_pairs():
                for p, p_m in zip(online.parameters(), momentum.parameters(), strict=True):
                    p_m.mul_(self.momentum).add_(p.detach(), alpha=1.0 - self.momentum)
        _, pooled_m = self.image_encoder_m(batch["image"])
        image_m = F.normalize(self.image_proj_m(pooled_m).float(), dim=-1)
        text_hidden_m = self.text_encoder_m(batch["input_ids"], batch["attention_mask"])
        pooled_m = masked_mean(text_hidden_m, batch["attention_mask"])
        text_m = F.normalize(self.text_proj_m(pooled_m).float(), dim=-1)
        image_m, text_m = distributed.gather_no_grad(image_m), distributed.gather_no_grad(text_m)
        image_keys = torch.cat([image_m, self.image_queue])
        text_keys = torch.cat([text_m, self.text_queue])
        key_ids = torch.cat([study_all, self.id_queue])
        if self.training:
            self._enqueue(image_m, text_m, study_all)
        return image_keys, text_keys, key_ids

    @torch.no_grad()
    def _enqueue(self, image_m, text_m, ids) -> None:
        count = min(len(ids), self.queue_size)
        start = int(self.queue_pointer)
        slots = (torch.arange(count, device=ids.device) + start) % self.queue_size
        self.image_queue[slots] = image_m[:count]
        self.text_queue[slots] = text_m[:count]
        self.id_queue[slots] = ids[:count]
        self.queue_pointer.fill_((start + count) % self.queue_size)

    def _itm(
        self, image, text_hidden, attention_mask, image_all, text_all, batch, study_all, offset
    ) -> torch.Tensor:
        local = len(text_hidden)
        report_all = distributed.gather_no_grad(batch["report_key"])
        with torch.no_grad():
            forbidden = (study_all[:, None] == study_all[None, :]) | (
                report_all[:, None] == report_all[None, :]
            )
            similarity = image_all.detach() @ text_all.detach().T
            generator = torch.Generator().manual_seed(
                self.seed * _ITM_SEED_STRIDE + int(batch.get("step", 0))
            )
            # Drawn for the whole global batch on every process: the same draws whatever the
            # number of processes, then each keeps its own rows.
            negative_text, valid_text = sample_hard_negatives(similarity, forbidden, generator)
            negative_image, valid_image = sample_hard_negatives(similarity.T, forbidden, generator)
        rows = slice(offset, offset + local)
        negative_text, valid_text = negative_text[rows], valid_text[rows]
        negative_image, valid_image = negative_image[rows], valid_image[rows]

        tokens_all, _ = distributed.gather_with_grad(image.tokens)
        hidden_all, _ = distributed.gather_with_grad(text_hidden)
        mask_all = distributed.gather_no_grad(attention_mask)
        # index_select, not x[indices]: a row drawn as the negative of several others gets
        # its gradients summed by index_add (a fixed order on the CPU); advanced indexing sums
        # them with index_put(accumulate=True), whose CPU order varies with the threads, and
        # made pre-training differ from run to run.
        negatives_text = hidden_all.index_select(0, negative_text)
        negatives_image = tokens_all.index_select(0, negative_image)
        text_batch = torch.cat([text_hidden, negatives_text, text_hidden])
        mask_batch = torch.cat([attention_mask, mask_all[negative_text], attention_mask])
        image_batch = torch.cat([image.tokens, image.tokens, negatives_image])
        keep = torch.cat([torch.ones_like(valid_text), valid_text, valid_image])
        labels = torch.cat(
            [torch.ones(local, dtype=torch.long), torch.zeros(2 * local, dtype=torch.long)]
        ).to(keep.device)
        logits = self.itm_logits(text_batch[keep], mask_batch[keep], image_batch[keep])
        total = F.cross_entropy(logits.float(), labels[keep], reduction="sum")
        return distributed.global_mean(total, int(keep.sum()))


MODEL = GKMVLP


def attach_prompts(model: GKMVLP, tokenizer: Any) -> None:
    gkmvlp_batch.attach_prompts(model, tokenizer)


def collator(model: GKMVLP, tokenizer: Any, training: bool = True) -> gkmvlp_batch.PretrainCollator:
    """GK-MVLP's batches; evaluations (``training=False``) need no report prompts."""
    limit = gkmvlp_batch.report_prompt_limit(model) if training else 0
    return gkmvlp_batch.PretrainCollator(tokenizer, int(model.config.text.max_length), limit)


def _pad_columns(tokens: torch.Tensor, length: int) -> torch.Tensor:
    """(N, L) token ids or mask padded with zeros on the right to ``length`` columns."""
    return F.pad(tokens, (0, length - tokens.shape[1]))


def _pad_to_global_length(
    input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad the reports to the longest of the global batch, so processes can gather them."""
    length = distributed.all_reduce_max(input_ids.shape[1], input_ids.device)
    if length == input_ids.shape[1]:
        return input_ids, attention_mask
    return _pad_columns(input_ids, length), _pad_columns(attention_mask, length)
