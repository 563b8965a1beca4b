"""Image encoder E_I: a timm Vision Transformer returning the CLS token and the patch grid."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn


class ImageEncoder(nn.Module):
    """ViT over (B, channels, S, S) images; ``forward`` gives (B, 1 + G*G, width) tokens."""

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__()
        if cfg["image_size"] % cfg["patch_size"]:
            raise ValueError(
                f"image_size {cfg['image_size']} must be a multiple of patch_size "
                f"{cfg['patch_size']}"
            )
        self.image_size = int(cfg["image_size"])
        self.patch_size = int(cfg["patch_size"])
        self.grid = self.image_size // self.patch_size
        self.width = int(cfg["width"])
        self.pool = str(cfg.get("pool", "token"))
        if self.pool not in ("token", "avg"):
            raise ValueError(f"image.pool must be 'token' or 'avg', got {self.pool!r}")
        self.vit = VisionTransformer(
            img_size=self.image_size,
            patch_size=self.patch_size,
            in_chans=int(cfg["channels"]),
            num_classes=0,
            embed_dim=self.width,
            depth=int(cfg["depth"]),
            num_heads=int(cfg["heads"]),
            mlp_ratio=float(cfg["mlp_ratio"]),
            drop_path_rate=float(cfg.get("drop_path", 0.0)),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_features(images)

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """The global image vector: the CLS token, or the mean patch token (``pool: avg``)."""
        return tokens[:, 1:].mean(dim=1) if self.pool == "avg" else tokens[:, 0]

    def patch_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, 1 + G*G, D) as a (B, D, G, G) feature map."""
        patches = tokens[:, 1:]
        return patches.transpose(1, 2).reshape(len(tokens), self.width, self.grid, self.grid)

    def load_initial_weights(self, state_dict: dict[str, torch.Tensor]) -> list[str]:
        """Load timm ViT weights of another resolution or channel count.

        timm's filter resamples the position embeddings to this grid (bicubic) and folds a
        3-channel patch embedding into one channel. Returns the keys this model kept at
        their initial values (the classification head of the file is dropped).
        """
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
        weight = state_dict.get("patch_embed.proj.weight")
        channels = self.vit.patch_embed.proj.weight.shape[1]
        if weight is not None and weight.shape[1] != channels:
            # Summing the RGB filters keeps the response to a grey image unchanged.
            summed = weight.sum(dim=1, keepdim=True)
            state_dict["patch_embed.proj.weight"] = summed.expand(-1, channels, -1, -1) / channels
        filtered = checkpoint_filter_fn(state_dict, self.vit)
        filtered = {k: v for k, v in filtered.items() if not k.startswith("head.")}
        result = self.vit.load_state_dict(filtered, strict=False)
        if result.unexpected_keys:
            raise ValueError(
                f"initial ViT weights hold keys this ViT lacks: {result.unexpected_keys[:10]}; "
                "is the file a timm VisionTransformer state dict of the same depth and width?"
            )
        return list(result.missing_keys)
