"""ASG's image-tag decoder (internal relation learning): one query per finding tag attends to
the image's patch tokens through pre-norm transformer decoder layers (torch's), and a linear
head reads one logit per tag. The queries start from the tag names' text embeddings, kept
fixed (``tag_embeddings``, set once from the report encoder), through a learned projection."""

from __future__ import annotations

import torch
from torch import nn


class ImageTagDecoder(nn.Module):
    def __init__(
        self, tags: int, text_width: int, patch_width: int, width: int, layers: int, heads: int
    ):
        super().__init__()
        # Patch tokens wider than the decoder (a ResNet-50's 2048 channels) are projected
        # down, so the decoder's size follows ``width`` rather than the backbone's.
        self.patch_proj = nn.Linear(patch_width, width) if patch_width != width else nn.Identity()
        self.register_buffer("tag_embeddings", torch.zeros(tags, text_width))
        # 1 once tag_embeddings hold the tag names' embeddings (saved with the weights).
        self.register_buffer("tag_embeddings_set", torch.zeros((), dtype=torch.long))
        self.query_proj = nn.Linear(text_width, width)
        layer = nn.TransformerDecoderLayer(
            d_model=width,
            nhead=heads,
            dim_feedforward=4 * width,
            dropout=0.0,
            batch_first=True,
            norm_first=True,
        )
        self.decoder = nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(width))
        self.head = nn.Linear(width, 1)

    @torch.no_grad()
    def set_tag_embeddings(self, embeddings: torch.Tensor) -> bool:
        """Keep ``embeddings`` (T, text width) unless a checkpoint's are already loaded;
        returns whether they were taken."""
        if int(self.tag_embeddings_set):
            return False
        self.tag_embeddings.copy_(embeddings)
        self.tag_embeddings_set.fill_(1)
        return True

    def forward(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) tag logits from ``patch_tokens`` (B, N, width)."""
        queries = self.query_proj(self.tag_embeddings)[None].expand(len(patch_tokens), -1, -1)
        memory = self.patch_proj(patch_tokens)
        return self.head(self.decoder(queries, memory)).squeeze(-1)
