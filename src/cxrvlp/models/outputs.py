"""Typed outputs of the models (hi-ml style): what each forward pass hands back."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class GroundingOutput:
    """The GK module's result for a batch of B images and E entities.

    ``attention`` (B, E, K) is the last fusion layer's entity-to-key attention, heads
    averaged; the K keys are the anatomical regions (``attends_to == "regions"``) or the patch
    grid (``"patches"``, the no-region-features ablation).
    """

    z_local: torch.Tensor  # (B, E, D)
    z_fused: torch.Tensor  # (B, E, D)
    attention: torch.Tensor  # (B, E, K)
    attends_to: str
    keys: torch.Tensor | None = None  # (B, K, D) what the queries attended to
    key_padding: torch.Tensor | None = None  # (B, K) bool: keys without a box
    region_features: torch.Tensor | None = None  # (B, R, D) RoI features, without positions


@dataclass
class ImageFeatures:
    """An image batch encoded: ITC embedding, the tokens the report towers attend to, GK."""

    embedding: torch.Tensor  # (B, embed_dim), L2-normalised
    pooled: torch.Tensor  # (B, vision width): the image encoder's global vector
    tokens: torch.Tensor  # (B, T, text width): ViT tokens (+ z_fused) in the towers' width
    vit_tokens: torch.Tensor  # (B, 1 + G*G, vision width)
    grounding: GroundingOutput | None = None


@dataclass
class PretrainOutput:
    """The weighted total loss and each term (unweighted, detached for logging)."""

    loss: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class TaskOutput:
    """A downstream task model's training output: total loss, named terms, and predictions."""

    loss: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None
