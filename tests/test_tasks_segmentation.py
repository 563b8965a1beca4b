"""Segmentation: Dice and IoU against a direct computation (empty masks included), the
upsampling decoder on ViT and ResNet strides, and `cxrvlp finetune segmentation` on a synthetic
RSNA (masks from boxes), fine-tuned and with the encoder frozen."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrvlp.cli import main
from cxrvlp.data.readers.rsna import RSNAPneumoniaDataset
from cxrvlp.engine.checkpoint import WEIGHTS_FILE, CheckpointManager, read_state_dict
from cxrvlp.engine.seeding import seed_everything
from cxrvlp.metrics.segmentation import SegmentationScores, segmentation_metrics
from cxrvlp.models.vision import ImageEncoder, ResNetImageEncoder
from cxrvlp.tasks.finetune import random_backbone
from cxrvlp.tasks.segmentation import (
    PICTURE_FILE,
    ProgressiveUpsamplingDecoder,
    SegmentationModel,
)


# ---- metrics ------------------------------------------------------------------------------
def direct_scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice and IoU written out from their definitions, one image at a time."""
    dice, iou, positive = [], [], []
    for p, t in zip(predicted.astype(bool), truth.astype(bool), strict=True):
        overlap, p_sum, t_sum = (p & t).sum(), p.sum(), t.sum()
        if t_sum == 0:  # SIIM-ACR: an empty truth scores 1 for an empty prediction, else 0
            dice.append(float(p_sum == 0))
            iou.append(float(p_sum == 0))
        else:
            dice.append(2 * overlap / (p_sum + t_sum))
            iou.append(overlap / (p | t).sum())
        positive.append(t_sum > 0)
    dice, iou, positive = np.array(dice), np.array(iou), np.array(positive)
    tp = (predicted.astype(bool) & truth.astype(bool)).sum()
    fp = (predicted.astype(bool) & ~truth.astype(bool)).sum()
    fn = (~predicted.astype(bool) & truth.astype(bool)).sum()
    return {
        "dice": dice.mean(),
        "iou": iou.mean(),
        "dice_positive": dice[positive].mean(),
        "iou_positive": iou[positive].mean(),
        "dice_global": 2 * tp / (2 * tp + fp + fn),
    }


def test_dice_and_iou_match_a_direct_computation_with_empty_masks():
    truth = np.zeros((5, 8, 8), np.uint8)
    predicted = np.zeros((5, 8, 8), np.uint8)
    truth[0, 2:6, 2:6] = 1
    predicted[0, 3:7, 2:6] = 1  # overlap 12 of 16 and 16: Dice 0.75, IoU 0.6
    # image 1: empty truth, empty prediction -> 1; image 2: empty truth, a false alarm -> 0
    predicted[2, 0, 0] = 1
    truth[3, :, :4] = 1  # image 3: missed entirely -> 0
    truth[4, 1:3, 1:3] = 1
    predicted[4, 1:3, 1:3] = 1  # image 4: perfect -> 1
    ours = segmentation_metrics(torch.from_numpy(predicted), torch.from_numpy(truth))
    expected = direct_scores(predicted, truth)
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value), key
    assert ours["dice"] == pytest.approx((0.75 + 1 + 0 + 0 + 1) / 5)
    assert ours["iou_positive"] == pytest.approx((0.6 + 0 + 1) / 3)
    assert ours["images_scored"] == 5 and ours["positive_images"] == 3


def test_scores_accumulate_over_batches_like_one_call():
    generator = torch.Generator().manual_seed(0)
    truth = torch.rand(7, 16, 16, generator=generator) > 0.8
    truth[2] = False
    predicted = torch.rand(7, 16, 16, generator=generator) > 0.7
    scores = SegmentationScores()
    scores.update(predicted[:3], truth[:3])
    scores.update(predicted[3:], truth[3:])
    together = segmentation_metrics(predicted, truth)
    assert scores.compute() == pytest.approx(together)
    expected = direct_scores(predicted.numpy(), truth.numpy())
    assert together["dice_global"] == pytest.approx(expected["dice_global"])
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        segmentation_metrics(predicted[0], truth[0])


# ---- masks from RSNA boxes ----------------------------------------------------------------
def test_rsna_masks_fill_the_pixels_whose_centres_lie_in_a_box(tmp_path):
    # Two overlapping boxes with fractional corners on one patient, none on the other.
    rows = ["patientId,x,y,width,height,Target", "p1,10.3,5.7,20.4,12.0,1"]
    rows += ["p1,25.0,10.0,30.0,40.0,1", "p2,,,,,0"]
    (tmp_path / "stage_2_train_labels.csv").write_text("\n".join(rows) + "\n")
    dataset = RSNAPneumoniaDataset(tmp_path, labels_only=True, masks_from_boxes=True)
    positive, negative = dataset.records
    mask = dataset._mask(positive, 64, 80)
    rows_c, cols_c = np.mgrid[:64, :80] + 0.5
    inside = np.zeros((64, 80), bool)
    for x1, y1, x2, y2 in positive.boxes:
        inside |= (cols_c >= x1) & (cols_c < x2) & (rows_c >= y1) & (rows_c < y2)
    np.testing.assert_array_equal(mask.astype(bool), inside)
    assert mask.dtype == np.uint8 and mask.sum() == inside.sum() < 20.4 * 12 + 30 * 40
    assert dataset._mask(negative, 64, 80).sum() == 0
    assert RSNAPneumoniaDataset(tmp_path, labels_only=True)._mask(positive, 64, 80) is None


# ---- the model ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("stride", "output_stride", "stages"), [(16, 4, 2), (32, 4, 3), (12, 4, 1), (16, 1, 4)]
)
def test_decoder_upsamples_any_stride_to_the_image(stride, output_stride, stages):
    decoder = ProgressiveUpsamplingDecoder(48, stride, width=64, output_stride=output_stride)
    assert len(decoder.stages) == stages
    logits = decoder(torch.randn(2, 48, 4, 4), size=4 * stride)
    assert logits.shape == (2, 1, 4 * stride, 4 * stride)


def small_encoder() -> ImageEncoder:
    config = {"image_size": 64, "patch_size": 16, "channels": 1, "width": 32, "depth": 1}
    return ImageEncoder({**config, "heads": 2, "mlp_ratio": 2.0})


def test_the_loss_learns_a_fixed_mask_and_empty_masks_push_predictions_down():
    torch.manual_seed(0)
    model = SegmentationModel(small_encoder(), linear_probe=False).train()
    images = torch.randn(4, 1, 64, 64)
    masks = torch.zeros(4, 64, 64, dtype=torch.uint8)
    masks[:2, 16:40, 8:30] = 1  # two images with a region, two empty
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        output = model({"image": images, "mask": masks})
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        first = first if first is not None else output.loss.item()
    assert output.loss.item() < 0.5 * first
    model.eval()
    with torch.no_grad():
        predicted = torch.sigmoid(model.logits(images))[:, 0] >= 0.5
    scores = segmentation_metrics(predicted, masks)
    assert scores["dice_positive"] > 0.8 and scores["dice"] > 0.8
    with pytest.raises(KeyError, match="mask"):
        model({"image": images})


def test_the_resnet_encoder_gets_a_mask_of_its_input_size():
    encoder = ResNetImageEncoder({"image_size": 64, "channels": 1})
    model = SegmentationModel(encoder, linear_probe=True).eval()
    assert len(model.decoder.stages) == 3  # stride 32 up to the output stride 4
    with torch.no_grad():
        assert model.logits(torch.randn(1, 1, 64, 64)).shape == (1, 1, 64, 64)


def test_frozen_encoder_mode_trains_only_the_decoder():
    model = SegmentationModel(small_encoder(), linear_probe=True).train()
    assert not model.image_encoder.training and model.decoder.training
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())


# ---- the command --------------------------------------------------------------------------
def finetune(world: Path, run: Path, *extra: str) -> dict:
    argv = ["finetune", "segmentation", "--pretrained", "none", "--dataset", "rsna"]
    argv += ["--root", str(world / "rsna"), "--out", str(run), "--batch-size", "4"]
    assert main([*argv, "--threads", "1", "--quiet", *extra]) == 0
    return json.loads((run / "results.json").read_text())


def test_finetune_segmentation_on_rsna_masks_from_boxes(downstream_world, tmp_path):
    run = tmp_path / "run"
    results = finetune(downstream_world, run, "--max-steps", "3")
    test_set = RSNAPneumoniaDataset(downstream_world / "rsna", split="test")
    positives = sum(int(record.labels[0]) for record in test_set.records)
    assert positives > 0  # the world must hold opacities, or Dice on positives is undefined
    assert results["task"] == "segmentation" and results["steps"] == 3
    assert results["images_scored"] == len(test_set) and results["positive_images"] == positives
    for key in ("dice", "iou", "dice_positive", "iou_positive", "dice_global"):
        assert 0.0 <= results[key] <= 1.0, key
    assert results["iou"] <= results["dice"] + 1e-9  # IoU <= Dice image by image
    assert "empty true mask scores 1" in results["dice_definition"]
    assert results["threshold"] == 0.5 and results["image_size"] == 128
    # Positive images come first among the examples drawn.
    positive_ids = {r.image_id for r in test_set.records if r.labels[0] == 1}
    assert results["examples"][0] in positive_ids
    assert (run / PICTURE_FILE).stat().st_size > 10_000
    logged = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert "loss_dice_bce" in logged
    assert main(["evaluate", "segmentation", "--run", str(run), "--quiet"]) == 0
    again = json.loads((run / "results.json").read_text())
    assert again["rescored"] and again["dice"] == pytest.approx(results["dice"])


def test_frozen_encoder_run_leaves_the_encoder_weights_unchanged(downstream_world, tmp_path):
    run = tmp_path / "probe"
    results = finetune(downstream_world, run, "--max-steps", "2", "--linear-probe")
    assert results["linear_probe"] and results["steps"] == 2
    # The run's random start, rebuilt: finetune seeds (--seed 0) right before building it.
    seed_everything(0)
    start = random_backbone("gkmvlp-tiny", None, None).model.image_encoder.state_dict()
    trained = read_state_dict(CheckpointManager(run).latest() / WEIGHTS_FILE)
    encoder = {
        k.removeprefix("image_encoder."): v
        for k, v in trained.items()
        if k.startswith("image_encoder.")
    }
    assert encoder.keys() == start.keys()
    for name, value in start.items():
        assert torch.equal(encoder[name], value), name
