"""Resize-and-pad transform, its config binding, augmentation and the first-batch range check."""

import json
import logging

import numpy as np
import pytest
import torch

from cxrvlp.data.base import CXRDataset
from cxrvlp.data.image_io import load_image, write_png
from cxrvlp.data.sample import Record
from cxrvlp.data.transforms import RangeCheck, ResizePad, transform_from_config
from cxrvlp.synth.world import WorldConfig, generate_world

REGIONS = ("spine", "right lung", "left lung", "cardiac silhouette", "right hemidiaphragm")


@pytest.fixture(scope="module")
def chexpert_images(tmp_path_factory):
    """(pixels, {region: box}) of the synthetic world's CheXpert JPEGs (128 x 111, landscape)."""
    out = tmp_path_factory.mktemp("world")
    config = WorldConfig(out=out, studies=1, image_size=128, downstream_fraction=0.0)
    generate_world(config, cohorts=("chexpert",), progress=False)
    rows = [json.loads(line) for line in (out / "truth.jsonl").read_text().splitlines()]
    frontal = [row for row in rows if row["regions"]][:4]
    images = [(load_image(out / row["path"]), row["regions"]) for row in frontal]
    assert all(pixels.shape[0] != pixels.shape[1] for pixels, _ in images)
    return images


def pixels_of(result, transform: ResizePad) -> np.ndarray:
    """The transformed image back in [0, 1] pixel units (first channel)."""
    return (result.image[0] * transform.std[0] + transform.mean[0]).numpy()


def inner_mean(image: np.ndarray, box, shrink: float = 0.2) -> float:
    """Mean inside the box minus a margin, so resampled edges do not count."""
    x1, y1, x2, y2 = (float(v) for v in box)
    dx, dy = (x2 - x1) * shrink, (y2 - y1) * shrink
    rows = slice(round(y1 + dy), round(y2 - dy))
    cols = slice(round(x1 + dx), round(x2 - dx))
    return float(image[rows, cols].mean())


def box_mask(shape: tuple[int, int], box) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    mask[y1:y2, x1:x2] = 1
    return mask


def mask_bounds(mask: torch.Tensor) -> np.ndarray:
    rows, cols = np.nonzero(mask.numpy())
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float32)


# ---- geometry --------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(200, 100), (100, 200), (64, 64), (30, 50)])
def test_output_is_a_centred_square_with_padding(height, width):
    transform = ResizePad(64, mean=0.5, std=0.5, pad_value=0.0)
    result = transform(np.full((height, width), 0.75, dtype=np.float32))
    assert result.image.shape == (1, 64, 64) and result.image.dtype == torch.float32
    assert result.boxes is None and result.mask is None
    content = pixels_of(result, transform) > 0.5
    rows, cols = np.nonzero(content)
    scale = 64 / max(height, width)
    assert rows.max() - rows.min() + 1 == round(height * scale)
    assert cols.max() - cols.min() + 1 == round(width * scale)
    # Centred: the padding on both sides differs by at most one pixel.
    assert abs(rows.min() - (63 - rows.max())) <= 1 and abs(cols.min() - (63 - cols.max())) <= 1
    assert np.allclose(pixels_of(result, transform)[~content], 0.0)


@pytest.mark.parametrize("size", [64, 224])
@pytest.mark.parametrize("portrait", [False, True])
def test_boxes_land_on_the_same_anatomy(chexpert_images, size, portrait):
    transform = ResizePad(size, mean=0.5, std=0.25)
    for pixels, regions in chexpert_images:
        boxes = np.array([regions[name] for name in REGIONS], dtype=np.float32)
        if portrait:  # the same picture turned on its side, boxes turned with it
            pixels, boxes = pixels.T.copy(), boxes[:, [1, 0, 3, 2]]
        result = transform(pixels, boxes)
        out = pixels_of(result, transform)
        assert result.boxes.shape == (len(REGIONS), 4) and result.boxes.dtype == np.float32
        before = [inner_mean(pixels, box) for box in boxes]
        after = [inner_mean(out, box) for box in result.boxes]
        np.testing.assert_allclose(after, before, atol=0.03)
        spine, right_lung, left_lung = after[:3]
        assert spine > right_lung + 0.05 and spine > left_lung + 0.05


def test_masks_move_exactly_like_boxes(chexpert_images):
    pixels, regions = chexpert_images[0]
    transform = ResizePad(96)
    for name in ("cardiac silhouette", "left lung", "spine"):
        box = np.array([regions[name]], dtype=np.float32)
        box = np.round(box)  # the mask covers whole pixels
        result = transform(pixels, box, box_mask(pixels.shape, box[0]))
        assert result.mask.shape == (96, 96) and result.mask.dtype == torch.uint8
        assert set(result.mask.unique().tolist()) == {0, 1}
        np.testing.assert_allclose(mask_bounds(result.mask), result.boxes[0], atol=1.0)


# ---- values ----------------------------------------------------------------------------------


def test_normalisation_and_pad_value():
    transform = ResizePad(32, mean=0.5, std=0.25, pad_value=0.0)
    image = transform(np.full((32, 16), 0.25, dtype=np.float32)).image
    assert torch.allclose(image[0, :, 8:24], torch.tensor(-1.0))
    assert torch.allclose(image[0, :, :8], torch.tensor(-2.0))  # black padding
    grey_pad = ResizePad(32, mean=0.5, std=0.25, pad_value=0.5)
    assert torch.allclose(
        grey_pad(np.zeros((32, 16), np.float32)).image[0, :, :8], torch.tensor(0.0)
    )


def test_three_channels_replicate_gray_with_per_channel_statistics():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    transform = ResizePad(16, mean=mean, std=std, channels=3)
    pixels = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    image = transform(pixels).image
    assert image.shape == (3, 16, 16)
    for channel in range(3):
        expected = (torch.from_numpy(pixels) - mean[channel]) / std[channel]
        assert torch.allclose(image[channel], expected, atol=1e-5)
    gray = image * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    assert torch.allclose(gray[0], gray[1], atol=1e-6) and torch.allclose(
        gray[0], gray[2], atol=1e-6
    )


def test_transform_from_config_binds_the_model_settings():
    config = {"image_size": 48, "mean": [0.5], "std": [0.5], "channels": 3}
    transform = transform_from_config(config)
    assert transform.size == 48 and transform.channels == 3 and not transform.augment
    assert transform(np.zeros((60, 30), np.float32)).image.shape == (3, 48, 48)
    assert transform_from_config({**config, "augment": True}).augment
    assert not transform_from_config({**config, "augment": True}, augment=False).augment
    with pytest.raises(KeyError, match="std"):
        transform_from_config({"image_size": 48, "mean": 0.5, "channels": 1})
    with pytest.raises(ValueError, match="channels"):
        transform_from_config({**config, "channels": 2})


# ---- augmentation ----------------------------------------------------------------------------


def test_augmentation_is_seeded_and_keeps_boxes_masks_and_pixels_together(chexpert_images):
    pixels, regions = chexpert_images[1]
    plain_transform = ResizePad(96)

    def augmented(seed: int, name: str):
        # A larger rotation than the default, so a box turned the wrong way would show.
        transform = ResizePad(
            96, augment=True, max_rotation_degrees=15, generator=torch.Generator().manual_seed(seed)
        )
        box = np.round(np.array([regions[name]], dtype=np.float32))
        return transform(pixels, box, box_mask(pixels.shape, box[0]))

    first, again = augmented(0, "left lung"), augmented(0, "left lung")
    assert torch.equal(first.image, again.image) and np.array_equal(first.boxes, again.boxes)
    assert not torch.equal(first.image, augmented(1, "left lung").image)
    for seed in range(4):
        for name in ("left lung", "right lung", "cardiac silhouette"):
            result = augmented(seed, name)
            box = np.round(np.array([regions[name]], dtype=np.float32))
            plain = plain_transform(pixels, box, box_mask(pixels.shape, box[0]))
            assert not np.allclose(result.boxes, plain.boxes)  # it did move
            np.testing.assert_allclose(mask_bounds(result.mask), result.boxes[0], atol=1.5)
            # The moved mask still covers the same anatomy: its mean is that of the unmoved
            # region up to the brightness/contrast jitter (at most 0.1 each).
            moved = pixels_of(result, plain_transform)[result.mask.numpy() == 1].mean()
            still = pixels_of(plain, plain_transform)[plain.mask.numpy() == 1].mean()
            assert abs(moved - still) < 0.15


def test_a_region_the_move_pushes_out_of_the_image_becomes_nan():
    # A large shift moves a box at the image's edge out of it; the box beside it stays.
    transform = ResizePad(
        64, augment=True, max_shift=0.5, max_scale=0.0, max_rotation_degrees=0.0,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    pixels = np.full((64, 64), 0.5, dtype=np.float32)
    boxes = np.array([[0, 0, 2, 2], [62, 0, 64, 2], [0, 62, 2, 64], [62, 62, 64, 64]], np.float32)
    moved = None
    for _ in range(8):
        moved = transform(pixels, boxes).boxes
        if np.isnan(moved).any():
            break
    gone = np.isnan(moved).any(axis=1)
    assert gone.any() and not gone.all()  # a corner box left the image, the opposite one not
    assert np.isnan(moved[gone]).all()  # a whole NaN row: the region is not in the image
    kept = moved[~gone]
    assert (kept[:, 2] - kept[:, 0] >= 1).all() and (kept[:, 3] - kept[:, 1] >= 1).all()


# ---- range check -----------------------------------------------------------------------------


def test_range_check_warns_once_for_a_0_255_batch(caplog):
    check = RangeCheck(mean=0.5, std=0.5)
    batch = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 255
    with caplog.at_level(logging.WARNING, logger="cxrvlp.data.transforms"):
        assert check(batch) is batch
        check(batch)
    records = [r for r in caplog.records if r.name == "cxrvlp.data.transforms"]
    assert len(records) == 1 and "0-255" in records[0].getMessage()


def test_range_check_is_quiet_for_the_transform_output(caplog, chexpert_images):
    config = {
        "image_size": 64,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "channels": 3,
    }
    transform = transform_from_config(config)
    batch = torch.stack([transform(pixels).image for pixels, _ in chexpert_images])
    with caplog.at_level(logging.WARNING, logger="cxrvlp.data.transforms"):
        check = RangeCheck.from_config(config)
        check(batch)
    assert check.checked and not check.problems
    assert not caplog.records


@pytest.mark.parametrize(
    ("batch", "complaint"),
    [
        (torch.rand(2, 1, 8, 8), "never normalised"),
        (torch.full((2, 1, 8, 8), -1.0), "constant"),
        (torch.full((2, 1, 8, 8), float("nan")), "NaN"),
        (torch.rand(2, 1, 8, 8) * 2 + 1.6, "far from the normalised zero"),
    ],
)
def test_range_check_names_what_looks_wrong(batch, complaint):
    assert any(complaint in problem for problem in RangeCheck(0.5, 0.5).find_problems(batch))


# ---- as a reader's transform -----------------------------------------------------------------


class OneImageReader(CXRDataset):
    """A reader of one PNG with one box and a mask of that box."""

    name = "one"

    def _read(self):
        box = np.array([[10.0, 20.0, 30.0, 50.0]], dtype=np.float32)
        return [Record("img", "p1", self.root / "img.png", boxes=box)], []

    def _mask(self, record, height, width):
        return box_mask((height, width), record.boxes[0])


def test_a_reader_returns_transformed_pixels_boxes_and_masks(tmp_path):
    picture = np.full((80, 40), 0.2, dtype=np.float32)
    picture[20:50, 10:30] = 0.9
    write_png(tmp_path / "img.png", picture)
    config = {"image_size": 32, "mean": 0.5, "std": 0.5, "channels": 3}
    sample = OneImageReader(tmp_path, transform=transform_from_config(config))[0]
    assert not sample.error and sample.original_size == (80, 40)
    assert sample.image.shape == (3, 32, 32) and sample.mask.shape == (32, 32)
    # Scale 0.4, centred: x shifted by (32 - 16) / 2 = 8.
    assert torch.allclose(sample.boxes, torch.tensor([[12.0, 8.0, 20.0, 20.0]]))
    assert np.array_equal(mask_bounds(sample.mask), sample.boxes[0].numpy())
    inside = sample.image[0, 9:19, 13:19] * 0.5 + 0.5
    assert torch.allclose(inside, torch.tensor(0.9), atol=0.01)
