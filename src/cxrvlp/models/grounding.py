"""The grounded-knowledge (GK) module of GK-MVLP.

Each knowledge-base entity is a query (its entity-prompt embedding); each anatomical region is
a key: the RoIAlign feature of its box on the ViT patch grid plus the embedding of its position
prompt. Fusion layers let the entity queries attend to the regions (-> ``z_local``, one vector
per entity), then attend to all patch tokens (-> ``z_fused``), which the image-report encoder
and the decoder see beside the image tokens. The last fusion layer's entity-to-region attention
is the grounding map.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torchvision.ops import roi_align

from cxrvlp.models.outputs import GroundingOutput


class FusionLayer(nn.Module):
    """Pre-norm block: queries cross-attend to keys, then an MLP; returns the attention too."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm_queries = nn.LayerNorm(width)
        self.norm_keys = nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        normed_keys = self.norm_keys(keys)
        attended, weights = self.attention(
            self.norm_queries(queries),
            normed_keys,
            normed_keys,
            key_padding_mask=key_padding_mask,
            need_weights=True,
            average_attn_weights=True,
        )
        queries = queries + attended
        return queries + self.mlp(self.norm_mlp(queries)), weights


class GroundedKnowledge(nn.Module):
    """Entity queries grounded on anatomical regions; see the module docstring."""

    def __init__(
        self, cfg: Mapping[str, Any], vision_width: int, text_width: int, grid: int, image_size: int
    ):
        super().__init__()
        self.grid = grid
        self.image_size = image_size
        self.roi_size = int(cfg["roi_size"])
        self.region_features = bool(cfg["region_features"])
        self.with_position = bool(cfg["prompts_with_position"])
        self.region_proj = nn.Linear(vision_width * self.roi_size**2, vision_width)
        self.entity_proj = nn.Linear(text_width, vision_width)
        self.position_proj = nn.Linear(text_width, vision_width) if self.with_position else None
        heads = int(cfg["heads"])
        self.region_layers = nn.ModuleList(
            FusionLayer(vision_width, heads) for _ in range(int(cfg["layers"]))
        )
        self.patch_layer = FusionLayer(vision_width, heads)

    def region_keys(
        self, patch_grid: torch.Tensor, boxes: torch.Tensor, positions: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, R, width) region features (RoIAlign, projected), the keys (features plus the
        position-prompt embeddings) and the (B, R) padding mask of regions without a box."""
        batch = patch_grid.shape[0]
        missing = ~torch.isfinite(boxes).all(dim=-1)
        whole_image = boxes.new_tensor([0.0, 0.0, self.image_size, self.image_size])
        boxes = torch.where(missing[..., None], whole_image, boxes)
        # An image without any box attends to every (whole-image) region rather than to none.
        missing = missing & ~missing.all(dim=1, keepdim=True)
        pooled = roi_align(
            patch_grid,
            list(boxes.float()),
            output_size=self.roi_size,
            spatial_scale=self.grid / self.image_size,
            sampling_ratio=2,
            aligned=True,
        )
        features = self.region_proj(pooled.reshape(batch, boxes.shape[1], -1))
        keys = features
        if self.position_proj is not None and positions is not None:
            keys = features + self.position_proj(positions)[None]
        return features, keys, missing

    def attend(
        self,
        query_embeddings: torch.Tensor,
        keys: torch.Tensor,
        padding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries ((Q, text width) shared by the batch, or (B, Q, text width) per image)
        through the fusion layers over ``keys``: z_local (B, Q, width) and the last layer's
        attention (B, Q, K)."""
        queries = self.entity_proj(query_embeddings)
        if queries.dim() == 2:
            queries = queries[None].expand(keys.shape[0], -1, -1)
        attention = None
        for layer in self.region_layers:
            queries, attention = layer(queries, keys, padding)
        return queries, attention

    def forward(
        self,
        patch_grid: torch.Tensor,
        entity_embeddings: torch.Tensor,
        boxes: torch.Tensor | None = None,
        position_embeddings: torch.Tensor | None = None,
    ) -> GroundingOutput:
        """``patch_grid`` (B, D, G, G); ``entity_embeddings`` (E, text width); ``boxes``
        (B, R, 4) in input pixels (NaN rows: region not found); ``position_embeddings``
        (R, text width), the position prompts of the same R regions."""
        patches = patch_grid.flatten(2).transpose(1, 2)
        features = None
        if self.region_features:
            if boxes is None:
                raise ValueError(
                    "the GK module needs region boxes (Chest ImaGenome or the detector's "
                    "annotate output); set gk.region_features=false to attend to patches"
                )
            features, keys, padding = self.region_keys(patch_grid, boxes, position_embeddings)
        else:
            keys, padding = patches, None
        z_local, attention = self.attend(entity_embeddings, keys, padding)
        z_fused, _ = self.patch_layer(z_local, patches)
        return GroundingOutput(
            z_local=z_local,
            z_fused=z_fused,
            attention=attention,
            attends_to="regions" if self.region_features else "patches",
            keys=keys,
            key_padding=padding,
            region_features=features,
        )
