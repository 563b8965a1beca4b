"""Transforms bound to the model config: aspect-preserving resize and pad, normalisation.

``transform_from_config`` builds the one transform a model expects from its config (image
size, mean/std, channels), so data and model cannot disagree. ``RangeCheck`` looks at the first
batch a model receives and warns when its values do not look like what that config produces.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cxrvlp.data.base import Transformed

log = logging.getLogger(__name__)


def _floats(value: Any) -> list[float]:
    # Config libraries hand over their own list types; the transforms want plain floats.
    return [float(value)] if isinstance(value, int | float) else [float(v) for v in value]


def _per_channel(value: float | Sequence[float], channels: int, name: str) -> torch.Tensor:
    values = _floats(value)
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(f"{name} has {len(values)} values for {channels} channels")
    return torch.tensor(values, dtype=torch.float32).view(channels, 1, 1)


class ResizePad:
    """Resize so the longer side is ``size``, pad to ``size`` x ``size``, normalise.

    Implements the ``ImageTransform`` protocol: pixels (H, W) in [0, 1] with optional boxes
    (N, 4) x1, y1, x2, y2 and a mask (H, W) in; a (channels, size, size) tensor, boxes in its
    pixels and a (size, size) uint8 mask out. The image is centred; ``pad_value`` is in pixel
    units (0 = black). With ``augment`` a small random affine (scale, shift, rotation) and a
    brightness/contrast jitter are applied, drawn from ``generator`` (or torch's global RNG,
    which a DataLoader seeds differently in every worker; a generator given here is copied
    into each worker, so leave it None for multi-worker loading).
    """

    def __init__(
        self,
        size: int,
        mean: float | Sequence[float] = 0.5,
        std: float | Sequence[float] = 0.5,
        channels: int = 1,
        *,
        pad_value: float = 0.0,
        augment: bool = False,
        max_scale: float = 0.1,
        max_shift: float = 0.05,
        max_rotation_degrees: float = 5.0,
        max_brightness: float = 0.1,
        max_contrast: float = 0.1,
        generator: torch.Generator | None = None,
    ):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.size = int(size)
        self.channels = channels
        self.mean = _per_channel(mean, channels, "mean")
        self.std = _per_channel(std, channels, "std")
        if bool((self.std <= 0).any()):
            raise ValueError(f"std must be positive, got {std}")
        self.pad_value = float(pad_value)
        self.augment = augment
        self.max_scale = max_scale
        self.max_shift = max_shift
        self.max_rotation_degrees = max_rotation_degrees
        self.max_brightness = max_brightness
        self.max_contrast = max_contrast
        self.generator = generator

    def __repr__(self) -> str:
        return (
            f"ResizePad(size={self.size}, mean={self.mean.flatten().tolist()}, "
            f"std={self.std.flatten().tolist()}, channels={self.channels}, "
            f"pad_value={self.pad_value}, augment={self.augment})"
        )

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray | None = None, mask: np.ndarray | None = None
    ) -> Transformed:
        pixels = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        if pixels.ndim != 2:
            raise ValueError(f"expected (H, W) pixels, got shape {tuple(pixels.shape)}")
        height, width = pixels.shape
        scale = self.size / max(height, width)
        new_height = max(1, min(self.size, round(height * scale)))
        new_width = max(1, min(self.size, round(width * scale)))
        top, left = (self.size - new_height) // 2, (self.size - new_width) // 2

        resized = F.interpolate(
            pixels[None, None],
            size=(new_height, new_width),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )[0, 0].clamp_(0.0, 1.0)
        if self.augment:
            resized = self._jitter(resized)
        canvas = torch.full((self.size, self.size), self.pad_value, dtype=torch.float32)
        canvas[top : top + new_height, left : left + new_width] = resized

        out_boxes = None
        if boxes is not None:
            out_boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
            out_boxes[:, [0, 2]] = out_boxes[:, [0, 2]] * (new_width / width) + left
            out_boxes[:, [1, 3]] = out_boxes[:, [1, 3]] * (new_height / height) + top

        out_mask = None
        if mask is not None:
            resized_mask = F.interpolate(
                torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None],
                size=(new_height, new_width),
                mode="nearest-exact",
            )[0, 0]
            out_mask = torch.zeros((self.size, self.size), dtype=torch.uint8)
            out_mask[top : top + new_height, left : left + new_width] = resized_mask.to(torch.uint8)

        if self.augment:
            canvas, out_boxes, out_mask = self._random_affine(canvas, out_boxes, out_mask)

        normalised = (canvas[None].expand(self.channels, -1, -1) - self.mean) / self.std
        return Transformed(normalised.contiguous(), out_boxes, out_mask)

    # ---- augmentation ------------------------------------------------------------------------
    def _uniform(self, bound: float) -> float:
        draw = torch.rand((), generator=self.generator).item()
        return (2.0 * draw - 1.0) * bound

    def _jitter(self, pixels: torch.Tensor) -> torch.Tensor:
        contrast = 1.0 + self._uniform(self.max_contrast)
        brightness = self._uniform(self.max_brightness)
        centre = pixels.mean()
        return ((pixels - centre) * contrast + centre + brightness).clamp_(0.0, 1.0)

    def _random_affine(
        self, canvas: torch.Tensor, boxes: np.ndarray | None, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, np.ndarray | None, torch.Tensor | None]:
        zoom = 1.0 + self._uniform(self.max_scale)
        angle = math.radians(self._uniform(self.max_rotation_degrees))
        shift_x = self._uniform(self.max_shift) * self.size
        shift_y = self._uniform(self.max_shift) * self.size
        cos, sin = math.cos(angle), math.sin(angle)
        # Forward map (pixel coordinates about the centre): p' = zoom * R p + shift.
        forward = torch.tensor([[zoom * cos, -zoom * sin], [zoom * sin, zoom * cos]])
        inverse = torch.linalg.inv(forward)
        # affine_grid works in [-1, 1] coordinates and needs the output -> input map.
        half = self.size / 2.0
        shift = torch.tensor([shift_x / half, shift_y / half])
        theta = torch.cat([inverse, (-inverse @ shift)[:, None]], dim=1)[None]
        grid = F.affine_grid(theta, [1, 1, self.size, self.size], align_corners=False)
        # Sample (image - pad) with zero fill, so the uncovered border gets the pad value.
        moved = F.grid_sample(
            (canvas - self.pad_value)[None, None], grid, mode="bilinear", align_corners=False
        )[0, 0]
        canvas = (moved + self.pad_value).clamp_(0.0, 1.0)
        if mask is not None:
            mask = F.grid_sample(
                mask.float()[None, None], grid, mode="nearest", align_corners=False
            )[0, 0].to(torch.uint8)
        if boxes is not None and len(boxes):
            boxes = self._move_boxes(boxes, forward.numpy(), (shift_x, shift_y))
        return canvas, boxes, mask

    def _move_boxes(
        self, boxes: np.ndarray, forward: np.ndarray, shift: tuple[float, float]
    ) -> np.ndarray:
        """The axis-aligned box around each moved box's corners, clipped to the image; a box
        the move pushed out of the image (under a pixel wide or high once clipped) becomes a
        NaN row, a region the image no longer shows."""
        half = self.size / 2.0
        corners = np.stack(
            [boxes[:, [0, 1]], boxes[:, [2, 1]], boxes[:, [0, 3]], boxes[:, [2, 3]]], axis=1
        )
        moved = (corners - half) @ forward.T + np.asarray(shift) + half
        out = np.clip(np.concatenate([moved.min(axis=1), moved.max(axis=1)], axis=1), 0, self.size)
        cut_away = (out[:, 2] - out[:, 0] < 1.0) | (out[:, 3] - out[:, 1] < 1.0)
        out[cut_away] = np.nan
        return out.astype(np.float32)


def transform_from_config(cfg: Mapping[str, Any], *, augment: bool | None = None) -> ResizePad:
    """The transform a model config asks for: keys ``image_size``, ``mean``, ``std``,
    ``channels`` and optionally ``augment`` and ``pad_value``; ``augment`` given here wins
    (train vs. evaluation from one config)."""
    missing = [key for key in ("image_size", "mean", "std", "channels") if key not in cfg]
    if missing:
        raise KeyError(f"model config lacks {', '.join(missing)} needed by the image transform")
    return ResizePad(
        int(cfg["image_size"]),
        mean=_floats(cfg["mean"]),
        std=_floats(cfg["std"]),
        channels=int(cfg["channels"]),
        pad_value=float(cfg.get("pad_value", 0.0)),
        augment=bool(cfg.get("augment", False)) if augment is None else augment,
    )


class RangeCheck:
    """Warns once, on the first batch it sees, when the values do not look normalised.

    Expected: pixels in [0, 1] normalised with ``mean``/``std``, i.e. values within
    [(0 - mean) / std, (1 - mean) / std] per channel and a mean not far from zero. Flags
    0-255 pixels, [0, 1] pixels that were never normalised, constant images and non-finite
    values. Call it on a (B, C, H, W) batch; it returns the batch unchanged.
    """

    def __init__(
        self,
        mean: float | Sequence[float] = 0.5,
        std: float | Sequence[float] = 0.5,
        *,
        max_abs_mean: float = 1.5,
    ):
        mean_values, std_values = torch.tensor(_floats(mean)), torch.tensor(_floats(std))
        self.low = float(((0.0 - mean_values) / std_values).min())
        self.high = float(((1.0 - mean_values) / std_values).max())
        self.max_abs_mean = max_abs_mean
        self.checked = False
        self.problems: list[str] = []

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> RangeCheck:
        return cls(_floats(cfg["mean"]), _floats(cfg["std"]))

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.checked:
            return batch
        self.checked = True
        self.problems = self.find_problems(batch)
        if self.problems:
            log.warning(
                "first batch does not look like the model's input (expected values in "
                "[%.2f, %.2f], mean near 0): %s",
                self.low,
                self.high,
                "; ".join(self.problems),
            )
        return batch

    def find_problems(self, batch: torch.Tensor) -> list[str]:
        values = batch.detach().float()
        if values.numel() == 0:
            return []
        problems = []
        finite = torch.isfinite(values)
        if not bool(finite.all()):
            problems.append(f"{int((~finite).sum())} values are NaN or infinite")
            values = torch.where(finite, values, torch.zeros_like(values))
        low, high = float(values.min()), float(values.max())
        span = self.high - self.low
        if high > 2.0 and high > self.high + span:
            problems.append(
                f"values reach {high:.1f}, far above {self.high:.2f}: pixels look 0-255 (or raw "
                "DICOM values), not [0, 1]; read images with cxrvlp.data.image_io.load_image "
                "and the transform_from_config transform"
            )
        elif low >= 0.0 and high <= 1.0 and self.low < -0.1:
            problems.append(
                f"values lie in [{low:.2f}, {high:.2f}]: these look like [0, 1] pixels that "
                "were never normalised with the model's mean/std"
            )
        mean = float(values.mean())
        if abs(mean) > self.max_abs_mean:
            problems.append(f"batch mean {mean:.2f} is far from the normalised zero")
        per_image = values.reshape(values.shape[0], -1) if values.ndim > 1 else values[None]
        constant = int((per_image.std(dim=1, correction=0) < 1e-6).sum())
        if constant:
            problems.append(f"{constant} of {per_image.shape[0]} images are constant")
        return problems
