"""Image encoders: a timm Vision Transformer (E_I of both recipes) or a timm ResNet-50 (ASG's
R50 variant), each returning its global vector and its patch grid as tokens."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from timm.layers import HybridEmbed
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn
from torchvision.models.resnet import BasicBlock

STEMS = ("patch", "conv", "resnet")


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics are those of the global batch on any backend.

    Under torch.distributed the per-channel sums are all-reduced (with autograd), so N
    processes normalise exactly as one process with the whole batch would; torch's
    SyncBatchNorm does this on GPUs only. One formula serves 1 and N processes alike.
    Batch statistics help a small ViT trained from scratch: with per-sample norms (GroupNorm,
    LayerNorm) it stayed at the label prior on synthetic chest films for hundreds of steps.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        channels = x.shape[1]
        sums = torch.cat([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))])
        count = torch.tensor(float(x.numel() // channels), device=x.device)
        if dist.is_available() and dist.is_initialized():
            sums = dist_fn.all_reduce(sums)
            count = count.clone()
            dist.all_reduce(count)
        mean = sums[:channels] / count
        variance = (sums[channels:] / count - mean * mean).clamp(min=0.0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            unbiased = variance * count / (count - 1).clamp(min=1.0)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(unbiased.detach(), self.momentum)
        scale = self.weight / torch.sqrt(variance + self.eps)
        shift = self.bias - mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


class GlobalBatchNorm1d(GlobalBatchNorm2d):
    """:class:`GlobalBatchNorm2d` over (B, C) vectors (projection heads)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x[:, :, None, None])[:, :, 0, 0]


def conv_stem(in_chans: int, width: int, stride: int) -> nn.Sequential:
    """3x3 stride-2 convolutions down to the patch grid (Xiao et al. 2021, "Early
    convolutions help transformers see better"): a ViT trained from scratch on a few thousand
    images learns with it, where the 16x16 patch projection barely moves from the prior."""
    steps = int(math.log2(stride))
    if 2**steps != stride:
        raise ValueError(f"a conv stem needs a power-of-two patch_size, got {stride}")
    layers: list[nn.Module] = []
    channels = in_chans
    for step in range(steps):
        out = max(16, width >> (steps - 1 - step))
        layers += [
            nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False),
            GlobalBatchNorm2d(out),
            nn.ReLU(inplace=True),
        ]
        channels = out
    return nn.Sequential(*layers)


def resnet_stem(in_chans: int, width: int, stride: int) -> nn.Sequential:
    """ResNet stages (torchvision's BasicBlock, two per stage) down to stride 16, ending at the
    ViT width: the hybrid ViT of Dosovitskiy et al. (timm's ``vit_*_r*`` models) at CPU size.
    The residual stages give the locality a ViT from scratch lacks on a few thousand images."""
    if stride != 16:
        raise ValueError(f"the resnet stem has stride 16; set image.patch_size=16, not {stride}")
    widths = (width // 4, width // 2, width)
    layers: list[nn.Module] = [
        nn.Conv2d(in_chans, widths[0], kernel_size=7, stride=2, padding=3, bias=False),
        GlobalBatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    ]
    channels = widths[0]
    for index, out in enumerate(widths):
        step = 1 if index == 0 else 2
        downsample = None
        if step != 1 or channels != out:
            downsample = nn.Sequential(
                nn.Conv2d(channels, out, 1, stride=step, bias=False), GlobalBatchNorm2d(out)
            )
        layers += [
            BasicBlock(channels, out, step, downsample, norm_layer=GlobalBatchNorm2d),
            BasicBlock(out, out, norm_layer=GlobalBatchNorm2d),
        ]
        channels = out
    return nn.Sequential(*layers)


def _stem_embed(stem: str, stride: int, width: int) -> Callable[..., nn.Module]:
    """An ``embed_layer`` for timm's ViT: a convolutional stem, then a 1x1 projection."""

    def build(img_size: int, patch_size: int, in_chans: int, embed_dim: int, **kwargs: Any):
        backbone = (
            conv_stem(in_chans, width, stride)
            if stem == "conv"
            else resnet_stem(in_chans, width, stride)
        )
        return HybridEmbed(
            backbone,
            img_size=img_size,
            patch_size=1,
            in_chans=in_chans,
            embed_dim=embed_dim,
            **kwargs,
        )

    return build


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
        stem = str(cfg.get("stem", "patch"))
        if stem not in STEMS:
            raise ValueError(f"image.stem must be one of {STEMS}, got {stem!r}")
        extra: dict[str, Any] = {}
        if stem != "patch":
            extra["embed_layer"] = _stem_embed(stem, self.patch_size, self.width)
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
            global_pool="avg" if self.pool == "avg" else "token",
            **extra,
        )
        # With average pooling timm normalises after pooling (fc_norm) and leaves the tokens
        # un-normalised; the towers that attend to the tokens get them normalised here.
        self.token_norm = nn.LayerNorm(self.width) if self.pool == "avg" else nn.Identity()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised tokens (B, 1 + G*G, width) and the global vector (B, width): the CLS
        token (``pool: token``) or the normalised mean of the patch tokens (``pool: avg``).

        Averaging before normalising matters: with a per-token norm first, a ViT trained from
        scratch on synthetic chest films stayed at the label prior for hundreds of steps.
        """
        raw = self.vit.forward_features(images)
        return self.token_norm(raw), self.vit.forward_head(raw, pre_logits=True)

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


class ResNetImageEncoder(nn.Module):
    """timm's ResNet-50 with the interface of :class:`ImageEncoder`: tokens (B, 1 + G*G,
    2048) are the average-pooled vector followed by the stride-32 feature map, so the tasks
    that read a patch grid (localisation, grounding maps) take either encoder."""

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__()
        import timm

        self.image_size = int(cfg["image_size"])
        self.patch_size = 32
        if self.image_size % self.patch_size:
            raise ValueError(f"ResNet-50 needs image_size a multiple of 32, not {self.image_size}")
        self.grid = self.image_size // self.patch_size
        self.resnet = timm.create_model(
            "resnet50", pretrained=False, in_chans=int(cfg["channels"]), num_classes=0,
            global_pool="",
        )  # fmt: skip
        self.width = int(self.resnet.num_features)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grid = self.resnet.forward_features(images)
        pooled = grid.mean(dim=(2, 3))
        return torch.cat([pooled[:, None], grid.flatten(2).transpose(1, 2)], dim=1), pooled

    def patch_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, 1:]
        return patches.transpose(1, 2).reshape(len(tokens), self.width, self.grid, self.grid)

    def load_initial_weights(self, state_dict: dict[str, torch.Tensor]) -> list[str]:
        """Load timm/torchvision ResNet-50 weights; a 3-channel first convolution is summed
        into this one's channels. Returns the keys kept at their initial values."""
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
        weight = state_dict.get("conv1.weight")
        channels = self.resnet.conv1.weight.shape[1]
        if weight is not None and weight.shape[1] != channels:
            summed = weight.sum(dim=1, keepdim=True)
            state_dict["conv1.weight"] = summed.expand(-1, channels, -1, -1) / channels
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        result = self.resnet.load_state_dict(state_dict, strict=False)
        if result.unexpected_keys:
            raise ValueError(
                f"initial ResNet weights hold keys a ResNet-50 lacks: {result.unexpected_keys[:10]}"
            )
        return list(result.missing_keys)


IMAGE_ARCHITECTURES = {"vit": ImageEncoder, "resnet50": ResNetImageEncoder}


def image_encoder_from_config(cfg: Mapping[str, Any]) -> ImageEncoder | ResNetImageEncoder:
    """The image encoder ``image.arch`` names: ``vit`` (default) or ``resnet50``."""
    arch = str(cfg.get("arch", "vit"))
    if arch not in IMAGE_ARCHITECTURES:
        raise ValueError(f"image.arch must be one of {sorted(IMAGE_ARCHITECTURES)}, got {arch!r}")
    return IMAGE_ARCHITECTURES[arch](cfg)
