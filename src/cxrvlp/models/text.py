"""Report towers built from transformers' BERT: the report encoder E_T, the image-report
encoder E_I->T (self-attention + cross-attention to image tokens, ALBEF/BLIP style) and the
causal report decoder with cross-attention (generation through transformers' ``generate``,
which keeps a KV cache)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import BertConfig, BertLMHeadModel, BertModel
from transformers.models.bert.modeling_bert import BertAttention, BertIntermediate, BertOutput

EAGER = "eager"  # the attention implementation that returns attention weights


def pretrained_folder(cfg: Mapping[str, Any]) -> Path | None:
    """``text.pretrained`` as a folder: a path, or "minilm" for the packaged all-MiniLM-L6-v2."""
    value = cfg.get("pretrained")
    if not value:
        return None
    from cxrvlp.text.tokenizer import MINILM, minilm_folder

    if str(value) == MINILM:
        return minilm_folder()
    folder = Path(str(value))
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"text.pretrained={folder} is not a BERT folder (no config.json): pass a local "
            "folder saved by transformers, or 'minilm'"
        )
    return folder


def bert_config(cfg: Mapping[str, Any], vocab_size: int, layers: int | None = None) -> BertConfig:
    """A BERT config of the text section of a model config (``pretrained`` wins for sizes)."""
    folder = pretrained_folder(cfg)
    if folder is not None:
        base = BertConfig.from_pretrained(str(folder))
        base.vocab_size = vocab_size if vocab_size else base.vocab_size
    else:
        dropout = float(cfg.get("dropout", 0.1))
        base = BertConfig(
            vocab_size=vocab_size,
            hidden_size=int(cfg["width"]),
            num_hidden_layers=int(cfg["layers"]),
            num_attention_heads=int(cfg["heads"]),
            intermediate_size=int(cfg["intermediate"]),
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            max_position_embeddings=max(512, int(cfg["max_length"])),
        )
    if layers is not None:
        base.num_hidden_layers = int(layers)
    base._attn_implementation = "sdpa"
    return base


class TextEncoder(nn.Module):
    """E_T: BERT over token ids; (B, L, width) hidden states, [CLS] first."""

    def __init__(self, cfg: Mapping[str, Any], vocab_size: int):
        super().__init__()
        folder = pretrained_folder(cfg)
        if folder is not None:
            self.bert = BertModel.from_pretrained(
                str(folder), add_pooling_layer=False, attn_implementation="sdpa"
            )
            if self.bert.config.vocab_size != vocab_size:
                raise ValueError(
                    f"{folder} has a {self.bert.config.vocab_size}-token vocabulary but the "
                    f"tokenizer has {vocab_size}: use the folder's own tokenizer "
                    f"(text.tokenizer={folder})"
                )
        else:
            self.bert = BertModel(bert_config(cfg, vocab_size), add_pooling_layer=False)
        kept = cfg.get("pretrained_layers")
        if folder is not None and kept:
            # ASG keeps the first 6 layers of its clinical BERT.
            self.bert.encoder.layer = self.bert.encoder.layer[: int(kept)]
            self.bert.config.num_hidden_layers = int(kept)
        self.width = self.bert.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, D) mean of ``hidden`` (B, L, D) over the attended tokens of ``attention_mask``."""
    weights = attention_mask[..., None].to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def pool_word_pieces(hidden: torch.Tensor, word_ids: torch.Tensor, words: int) -> torch.Tensor:
    """Word vectors (B, W, D): the sum of each word's word-piece states.

    ``word_ids`` (B, L) gives each token's word index in its text (the tokenizer's
    ``word_ids()``), -1 for [CLS], [SEP] and padding; ``words`` is W.
    """
    # A (B, W, L) membership matrix product rather than scatter_add: the same sums in a
    # fixed order, so pre-training stays bit-reproducible on the CPU.
    word_range = torch.arange(words, device=word_ids.device)
    membership = (word_ids[:, None, :] == word_range[None, :, None]).to(hidden.dtype)
    return membership @ hidden


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) 1/0 -> (B, 1, 1, L) additive mask: 0 where attended, the dtype's min elsewhere."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class ImageReportLayer(nn.Module):
    """Bidirectional self-attention over the report, cross-attention to image tokens, FFN.

    Built from transformers' BERT blocks (``BertAttention`` etc.); BertLayer itself allows
    cross-attention only in causal (decoder) mode, which the ITM encoder must not be.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config, is_causal=False)
        self.crossattention = BertAttention(config, is_causal=False, is_cross_attention=True)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        image_tokens: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden, _ = self.attention(hidden, attention_mask)
        hidden, cross_weights = self.crossattention(
            hidden, encoder_hidden_states=image_tokens, encoder_attention_mask=None
        )
        return self.output(self.intermediate(hidden), hidden), cross_weights


class ImageReportEncoder(nn.Module):
    """E_I->T: report hidden states from E_T attend to the image tokens; [CLS] -> ITM head."""

    def __init__(self, text_cfg: Mapping[str, Any], layers: int):
        super().__init__()
        config = bert_config(text_cfg, vocab_size=1, layers=layers)
        self.config = config
        self.width = config.hidden_size
        self.layers = nn.ModuleList(ImageReportLayer(config) for _ in range(layers))
        self.itm_head = nn.Linear(self.width, 2)

    def forward(
        self,
        text_hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        image_tokens: torch.Tensor,
        return_attention: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Fused hidden states (B, L, width) and, if asked, each layer's cross-attention
        weights (B, heads, L, image tokens)."""
        implementation = self.config._attn_implementation
        if return_attention:
            self.config._attn_implementation = EAGER
        try:
            mask = _additive_mask(attention_mask, text_hidden.dtype)
            maps = []
            hidden = text_hidden
            for layer in self.layers:
                hidden, weights = layer(hidden, mask, image_tokens)
                if return_attention:
                    maps.append(weights)
        finally:
            self.config._attn_implementation = implementation
        return hidden, maps


class ReportDecoder(nn.Module):
    """Causal BERT with cross-attention to the image tokens and an LM head."""

    def __init__(self, text_cfg: Mapping[str, Any], layers: int, vocab_size: int):
        super().__init__()
        config = bert_config(text_cfg, vocab_size=vocab_size, layers=layers)
        config.is_decoder = True
        config.add_cross_attention = True
        self.lm = BertLMHeadModel(config)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_tokens: torch.Tensor
    ) -> torch.Tensor:
        """Next-token logits (B, L, vocab)."""
        return self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_tokens,
            use_cache=False,
        ).logits
