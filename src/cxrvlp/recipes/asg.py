"""ASG (anatomical structure-guided pre-training, arXiv 2403.09294): an image encoder and a
report encoder aligned globally (IRA), region by region against the report sentences linked
to each anatomical region (ARSA), through an image-tag decoder (IRL) and a soft-label
contrast that lets studies with similar tags be less negative (ERL).

Batch contract (``ASG.forward``; built by :class:`cxrvlp.recipes.asg_batch.ASGCollator`):
``image`` (B, C, S, S); ``boxes`` (B, 29, 4) in input pixels (NaN: not shown);
``input_ids`` / ``attention_mask`` (B, L); ``word_ids`` (B, L) each token's word (-1: special
or padding); ``region_words`` (B, 29, W) the words of the sentences linked to each region;
``tag_targets`` (B, 40) and ``tag_valid`` (B, 40); ``study_key`` (B,).

Choices where the paper and its released code are silent: the global heads are
Linear-BN-ReLU-Linear-BN with batch statistics of the global batch (so N processes train as
one); the local heads are Linear-ReLU-Linear per token (no batch norm over padded tokens);
the temperature is fixed at ``losses.temperature``; the tag queries start from the tag names
as the report encoder reads them at initialisation (the mean of their word-piece states; a
clinical BERT's when ``text.pretrained`` is given), then stay fixed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchvision.ops import roi_align

from cxrvlp.constants import ASG_TAGS
from cxrvlp.engine import distributed
from cxrvlp.losses import (
    contrastive_loss_terms,
    region_sentence_loss_terms,
    soft_label_targets,
    symmetric_kl_loss_terms,
    tag_loss_terms,
)
from cxrvlp.models.outputs import ImageFeatures, PretrainOutput
from cxrvlp.models.registry import check_choice
from cxrvlp.models.tag_decoder import ImageTagDecoder
from cxrvlp.models.text import TextEncoder, masked_mean, pool_word_pieces
from cxrvlp.models.vision import GlobalBatchNorm1d, image_encoder_from_config

LOSS_NAMES = ("ira", "arsa", "irl", "erl")
LINK_SOURCES = ("rules", "imagenome")
TEXT_POOLS = ("cls", "mean")


def global_head(width: int, hidden: int, dim: int) -> nn.Sequential:
    """ASG's global projection: Linear -> BN -> ReLU -> Linear -> BN."""
    return nn.Sequential(
        nn.Linear(width, hidden),
        GlobalBatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, dim),
        GlobalBatchNorm1d(dim),
    )


def local_head(width: int, dim: int) -> nn.Sequential:
    """Per-token projection (a 1x1 MLP) of patch or word states to the shared space."""
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, dim))


def word_piece_mean(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, D) mean of each text's states (N, L, D) over its word pieces: [CLS], [SEP] (the
    last attended token) and padding left out."""
    inside = attention_mask.clone()
    inside[:, 0] = 0
    inside[torch.arange(len(inside)), attention_mask.sum(dim=1) - 1] = 0
    return masked_mean(states, inside)


class ASG(nn.Module):
    """The ASG model; ``config`` is a resolved model config (see ``models/configs/asg-*``)."""

    # Downstream tasks read these: ASG has no GK module, no ECLS head and no report towers
    # that attend to the image (report generation and VQA need GK-MVLP).
    gk = None
    ecls_image_proj = None
    decoder = None

    def __init__(self, config: DictConfig | dict, vocab_size: int | None = None):
        super().__init__()
        self.config = OmegaConf.create(OmegaConf.to_container(OmegaConf.create(config)))
        cfg = self.config
        self.vocab_size = int(vocab_size or cfg.text.vocab_size)
        self.seed = 0
        self.loss_weights = {name: float(cfg.losses.get(name, 0.0)) for name in LOSS_NAMES}
        self.links = str(cfg.alignment.links)
        self.text_pool = str(cfg.text.get("pool", "cls"))
        self.local_negatives = bool(cfg.losses.get("local_negatives", False))
        self.temperature = float(cfg.losses.temperature)
        self.erl_identity = float(cfg.losses.get("erl_identity", 0.8))
        check_choice("alignment.links", self.links, LINK_SOURCES)
        check_choice("text.pool", self.text_pool, TEXT_POOLS)

        self.image_encoder = image_encoder_from_config(cfg.image)
        self.text_encoder = TextEncoder(cfg.text, self.vocab_size)
        vision_width, text_width = self.image_encoder.width, self.text_encoder.width
        dim, hidden = int(cfg.embed_dim), int(cfg.projection_hidden)
        self.image_global = global_head(vision_width, hidden, dim)
        self.text_global = global_head(text_width, hidden, dim)
        self.image_local = local_head(vision_width, dim)
        self.text_local = local_head(text_width, dim)
        self.tag_decoder = ImageTagDecoder(
            len(ASG_TAGS),
            text_width,
            vision_width,
            int(cfg.tags.get("width") or vision_width),
            int(cfg.tags.decoder_layers),
            int(cfg.tags.heads),
        )
        # Zero-shot and retrieval read the scale of the (fixed) temperature.
        self.register_buffer(
            "logit_scale", torch.tensor(math.log(1.0 / self.temperature)), persistent=False
        )
        self.tag_names = list(ASG_TAGS)
        self.entity_names: list[str] = []

    # ---- setup ------------------------------------------------------------------------------
    @torch.no_grad()
    def set_tag_prompts(self, ids: torch.Tensor, mask: torch.Tensor) -> None:
        """Encode the tag names (token ids (T, L)) once, as the fixed start of the queries:
        the mean of each name's word-piece states (a BERT trained from scratch gives almost
        one [CLS] state to every text, which would make the 40 queries one)."""
        was_training = self.training
        self.eval()
        device = self.logit_scale.device
        ids, mask = ids.to(device), mask.to(device)
        embeddings = word_piece_mean(self.text_encoder(ids, mask), mask)
        self.train(was_training)
        self.tag_decoder.set_tag_embeddings(embeddings)

    # ---- encoders (the interface downstream tasks share with GK-MVLP) ----------------------
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, attention_mask)

    def text_embedding(
        self, text_hidden: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Global report embedding: [CLS] (``text.pool: cls``, the paper) or the masked mean
        (``mean``: a BERT trained from scratch starts with one [CLS] state for every report)
        through the global head, L2-normalised."""
        if self.text_pool == "cls":
            pooled = text_hidden[:, 0]
        else:
            pooled = masked_mean(text_hidden, attention_mask)
        return F.normalize(self.text_global(pooled).float(), dim=-1)

    def image_embedding(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_global(pooled).float(), dim=-1)

    def prompt_embeddings(self) -> tuple[None, None]:
        """ASG has no knowledge prompts (the GK-MVLP interface's answer)."""
        return None, None

    def encode_image(
        self, images: torch.Tensor, boxes: torch.Tensor | None = None, *_: Any
    ) -> ImageFeatures:
        vit_tokens, pooled = self.image_encoder(images)
        return ImageFeatures(
            embedding=self.image_embedding(pooled),
            pooled=pooled,
            tokens=vit_tokens,
            vit_tokens=vit_tokens,
        )

    def patch_embeddings(self, vit_tokens: torch.Tensor) -> torch.Tensor:
        """(B, D, G, G) local embedding map of the patch tokens (not normalised)."""
        local = self.image_local(vit_tokens[:, 1:])
        grid = self.image_encoder.grid
        return local.transpose(1, 2).reshape(len(local), -1, grid, grid)

    def region_embeddings(self, patch_map: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """(B, R, D) RoIAlign (1x1) of each box (input pixels; NaN boxes give zeros) on the
        local embedding map."""
        batch, regions = boxes.shape[:2]
        finite = torch.isfinite(boxes).all(dim=-1, keepdim=True)
        safe = torch.where(finite, boxes, torch.zeros_like(boxes))
        pooled = roi_align(
            patch_map,
            list(safe.to(patch_map.dtype)),
            output_size=1,
            spatial_scale=self.image_encoder.grid / self.image_encoder.image_size,
            sampling_ratio=2,
            aligned=True,
        )
        return pooled.reshape(batch, regions, -1) * finite

    def word_embeddings(
        self, text_hidden: torch.Tensor, word_ids: torch.Tensor, words: int
    ) -> torch.Tensor:
        """(B, W, D) L2-normalised local embeddings of the words (word pieces summed)."""
        return F.normalize(self.text_local(pool_word_pieces(text_hidden, word_ids, words)), dim=-1)

    def sentence_embeddings(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """(N, D) one embedding per text: the mean of its normalised word-piece embeddings
        ([CLS] and [SEP] left out), L2-normalised; what a region's sentence is scored as."""
        hidden = self.encode_text(input_ids, attention_mask)
        tokens = F.normalize(self.text_local(hidden), dim=-1)
        return F.normalize(word_piece_mean(tokens, attention_mask), dim=-1)

    def sentence_maps(
        self, vit_tokens: torch.Tensor, boxes: torch.Tensor, sentences: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Where each of ``sentences`` ((E, D), :meth:`sentence_embeddings`) sits in each image:
        cosine similarity to the image's regions (B, E, R) and to its patches (B, E, G*G)."""
        patch_map = self.patch_embeddings(vit_tokens)
        regions = F.normalize(self.region_embeddings(patch_map, boxes), dim=-1)
        patches = F.normalize(patch_map.flatten(2).transpose(1, 2), dim=-1)
        return (
            torch.einsum("brd,ed->ber", regions, sentences),
            torch.einsum("bpd,ed->bep", patches, sentences),
        )

    def tag_logits(self, vit_tokens: torch.Tensor) -> torch.Tensor:
        """(B, 40) IRL tag logits from the raw patch tokens."""
        return self.tag_decoder(vit_tokens[:, 1:])

    # ---- training ---------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> PretrainOutput:
        vit_tokens, pooled = self.image_encoder(batch["image"])
        image_embedding = self.image_embedding(pooled)
        text_hidden = self.encode_text(batch["input_ids"], batch["attention_mask"])
        text_embedding = self.text_embedding(text_hidden, batch["attention_mask"])
        study_key = batch["study_key"]
        if self.local_negatives:
            image_all, text_all, keys_all = image_embedding, text_embedding, study_key
        else:
            image_all, _ = distributed.gather_with_grad(image_embedding)
            text_all, _ = distributed.gather_with_grad(text_embedding)
            keys_all = distributed.gather_no_grad(study_key)
        scale = 1.0 / self.temperature

        losses: dict[str, torch.Tensor] = {}
        if self.loss_weights["ira"] > 0:
            image_to_text = contrastive_loss_terms(
                image_embedding, text_all, study_key, keys_all, scale
            )
            text_to_image = contrastive_loss_terms(
                text_embedding, image_all, study_key, keys_all, scale
            )
            losses["ira"] = self._mean(image_to_text.sum() + text_to_image.sum(), len(study_key))
        if self.loss_weights["arsa"] > 0:
            losses["arsa"] = self._arsa(vit_tokens, text_hidden, batch)
        if self.loss_weights["irl"] > 0:
            logits = self.tag_logits(vit_tokens)
            total, count = tag_loss_terms(logits, batch["tag_targets"], batch["tag_valid"])
            losses["irl"] = self._mean(total, count)
        if self.loss_weights["erl"] > 0:
            tags = batch["tag_targets"] * batch["tag_valid"]
            tags_all = tags if self.local_negatives else distributed.gather_no_grad(tags)
            positives = study_key[:, None] == keys_all[None, :]
            targets = soft_label_targets(tags, tags_all, positives, self.erl_identity)
            image_side, rows = symmetric_kl_loss_terms(
                scale * image_embedding @ text_all.T, targets
            )
            text_side, _ = symmetric_kl_loss_terms(scale * text_embedding @ image_all.T, targets)
            losses["erl"] = self._mean((image_side + text_side) / 2, rows)
        loss = sum(self.loss_weights[name] * value for name, value in losses.items())
        return PretrainOutput(
            loss=loss, losses={name: value.detach() for name, value in losses.items()}
        )

    def _mean(self, total: torch.Tensor, count: int | torch.Tensor) -> torch.Tensor:
        """The loss over the global batch (the local one with ``losses.local_negatives``)."""
        if self.local_negatives:
            return total / max(float(count), 1.0)
        return distributed.global_mean(total, count)

    def _arsa(
        self, vit_tokens: torch.Tensor, text_hidden: torch.Tensor, batch: dict[str, Any]
    ) -> torch.Tensor:
        region_words = batch["region_words"].to(text_hidden.dtype)
        words = self.word_embeddings(text_hidden, batch["word_ids"], region_words.shape[-1])
        counts = region_words.sum(dim=-1)
        sentences = (region_words @ words) / counts.clamp(min=1.0)[..., None]
        regions = self.region_embeddings(self.patch_embeddings(vit_tokens), batch["boxes"])
        valid = torch.isfinite(batch["boxes"]).all(dim=-1) & (counts > 0)
        total, count = region_sentence_loss_terms(regions, sentences, valid, self.temperature)
        return self._mean(total, count)


MODEL = ASG
TAG_PROMPT_LENGTH = 16


def attach_prompts(model: ASG, tokenizer: Any) -> None:
    """Encode the 40 tag names once (kept when the weights already hold them)."""
    from cxrvlp.recipes.batch import tokenize

    model.set_tag_prompts(*tokenize(tokenizer, list(ASG_TAGS), TAG_PROMPT_LENGTH))


def collator(model: ASG, tokenizer: Any, training: bool = True) -> Any:
    from cxrvlp.recipes.asg_batch import ASGCollator

    return ASGCollator(tokenizer, int(model.config.text.max_length), model.links)
