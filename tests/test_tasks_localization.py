"""Localisation: COCO mAP on hand-made boxes, Faster R-CNN on images without boxes, and a tiny
`cxrvlp finetune localization` run (fine-tuned and linear probe) on a synthetic RSNA."""

import json
from pathlib import Path

import pytest
import torch

from cxrvlp.cli import main
from cxrvlp.data.readers.rsna import RSNAPneumoniaDataset
from cxrvlp.engine.checkpoint import WEIGHTS_FILE, CheckpointManager, read_state_dict
from cxrvlp.engine.seeding import seed_everything
from cxrvlp.metrics.detection import detection_map
from cxrvlp.models.vision import ImageEncoder
from cxrvlp.tasks.finetune import random_backbone
from cxrvlp.tasks.localization import (
    EXAMPLES,
    PICTURE_FILE,
    LocalizationModel,
    detection_target,
)

BOX = [0.0, 0.0, 10.0, 10.0]
NO_BOXES = torch.zeros(0, 4)
NO_SCORES = torch.zeros(0)


# ---- mAP ----------------------------------------------------------------------------------
def test_perfect_predictions_score_one():
    truth = [torch.tensor([BOX, [20.0, 20.0, 40.0, 50.0]]), NO_BOXES]
    result = detection_map(truth, [torch.tensor([0.9, 0.8]), NO_SCORES], truth)
    assert result["map50"] == pytest.approx(1.0)
    assert result["map"] == pytest.approx(1.0)
    assert (result["images"], result["boxes"], result["detections"]) == (2, 2, 2)


def test_a_shifted_box_passes_only_the_iou_thresholds_below_its_iou():
    # Shifted 2 px: IoU 80 / 120 = 0.667 clears 0.50, 0.55, 0.60, 0.65 of the ten thresholds.
    shifted = torch.tensor([[2.0, 0.0, 12.0, 10.0]])
    result = detection_map([shifted], [torch.tensor([0.9])], [torch.tensor([BOX])])
    assert result["map50"] == pytest.approx(1.0)
    assert result["map"] == pytest.approx(0.4)


def test_a_false_positive_ranked_first_halves_precision():
    truth = [torch.tensor([BOX]), NO_BOXES]
    hit, false_positive = torch.tensor([BOX]), torch.tensor([[20.0, 20.0, 30.0, 30.0]])
    # Ranked first, the false positive (on the negative image) makes precision 1/2 at the
    # only recall level reached: AP 0.5. Ranked after the hit it costs nothing.
    first = detection_map([hit, false_positive], [torch.tensor([0.9]), torch.tensor([0.95])], truth)
    last = detection_map([hit, false_positive], [torch.tensor([0.9]), torch.tensor([0.5])], truth)
    assert first["map50"] == pytest.approx(0.5) and first["map"] == pytest.approx(0.5)
    assert last["map50"] == pytest.approx(1.0)


def test_no_detections_score_zero_and_no_truth_is_undefined():
    missed = detection_map([NO_BOXES], [NO_SCORES], [torch.tensor([BOX])])
    assert missed["map50"] == 0.0 and missed["map"] == 0.0
    undefined = detection_map([torch.tensor([BOX])], [torch.tensor([0.9])], [NO_BOXES])
    assert undefined["map50"] is None and undefined["map"] is None
    with pytest.raises(ValueError, match="one entry per image"):
        detection_map([NO_BOXES], [], [NO_BOXES])


def test_map_agrees_with_torchmetrics():
    from torchmetrics.detection import MeanAveragePrecision

    generator = torch.Generator().manual_seed(3)
    predicted, scores, truth = [], [], []
    for image in range(8):
        corners = torch.rand(image % 3, 2, generator=generator) * 60
        sides = 10 + torch.rand(len(corners), 2, generator=generator) * 30
        boxes = torch.cat([corners, corners + sides], dim=1)
        noise = (torch.rand(boxes.shape, generator=generator) - 0.5) * 8
        spurious = torch.tensor([[0.0, 0.0, 15.0, 15.0]]) + image * 5
        truth.append(boxes)
        predicted.append(torch.cat([boxes + noise, spurious]))
        scores.append(torch.rand(len(boxes) + 1, generator=generator))
    ours = detection_map(predicted, scores, truth)
    reference = MeanAveragePrecision(iou_type="bbox", backend="pycocotools")
    reference.update(
        [
            {"boxes": b, "scores": s, "labels": torch.ones(len(b), dtype=torch.long)}
            for b, s in zip(predicted, scores, strict=True)
        ],
        [{"boxes": b, "labels": torch.ones(len(b), dtype=torch.long)} for b in truth],
    )
    expected = reference.compute()
    assert 0.0 < ours["map"] < ours["map50"] < 1.0  # the input is neither perfect nor hopeless
    assert ours["map50"] == pytest.approx(float(expected["map_50"]), abs=1e-6)
    assert ours["map"] == pytest.approx(float(expected["map"]), abs=1e-6)


# ---- the model ----------------------------------------------------------------------------
def small_encoder() -> ImageEncoder:
    config = {"image_size": 64, "patch_size": 16, "channels": 1, "width": 32, "depth": 1}
    return ImageEncoder({**config, "heads": 2, "mlp_ratio": 2.0})


def test_images_without_boxes_train_the_detector():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = LocalizationModel(small_encoder(), linear_probe=False).train()
    images = torch.randn(2, 1, 64, 64)
    negatives = model({"image": images, "boxes": [NO_BOXES, NO_BOXES]})
    # Nothing to regress, but every proposal is a background example to classify.
    assert negatives.losses["box_reg"] == 0 and negatives.losses["rpn_box_reg"] == 0
    assert negatives.losses["classifier"] > 0 and negatives.losses["objectness"] > 0
    negatives.loss.backward()
    assert model.detector.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0
    mixed = model({"image": images, "boxes": [torch.tensor([[8.0, 8.0, 40.0, 50.0]]), NO_BOXES]})
    assert torch.isfinite(mixed.loss) and mixed.losses["rpn_box_reg"] > 0
    with pytest.raises(RuntimeError, match="train mode"):
        model.eval()({"image": images, "boxes": [NO_BOXES, NO_BOXES]})


def test_detections_are_boxes_in_input_pixels():
    torch.manual_seed(0)
    model = LocalizationModel(small_encoder(), linear_probe=False)
    detections = model.detect(torch.randn(3, 1, 64, 64))
    assert model.training  # detect() leaves the mode as it found it
    assert len(detections) == 3
    for detection in detections:
        boxes = detection["boxes"]
        assert boxes.shape[1] == 4 and len(boxes) == len(detection["scores"]) <= 100
        assert (boxes >= 0).all() and (boxes <= 64).all()
        assert (detection["labels"] == 1).all()


def test_degenerate_boxes_are_left_out_of_the_target():
    target = detection_target(torch.tensor([[5.0, 5.0, 20.0, 30.0], [64.0, 10.0, 64.0, 30.0]]))
    assert target["boxes"].tolist() == [[5.0, 5.0, 20.0, 30.0]]
    assert target["labels"].tolist() == [1]


def test_linear_probe_keeps_the_encoder_frozen_and_in_eval_mode():
    model = LocalizationModel(small_encoder(), linear_probe=True).train()
    assert not model.image_encoder.training and model.detector.rpn.training
    assert not any(p.requires_grad for p in model.image_encoder.parameters())


# ---- the command --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(downstream_world) -> Path:
    return downstream_world


def finetune(world: Path, run: Path, *extra: str) -> dict:
    argv = ["finetune", "localization", "--pretrained", "none", "--dataset", "rsna"]
    argv += ["--root", str(world / "rsna"), "--out", str(run), "--batch-size", "2"]
    assert main([*argv, "--threads", "1", "--quiet", *extra]) == 0
    return json.loads((run / "results.json").read_text())


def test_finetune_localization_end_to_end(world, tmp_path):
    run = tmp_path / "run"
    results = finetune(world, run, "--max-steps", "3")
    test_set = RSNAPneumoniaDataset(world / "rsna", split="test")
    true_boxes = sum(len(record.boxes) for record in test_set.records)
    assert true_boxes > 0  # the world must hold opacities, or mAP would be undefined
    assert results["steps"] == 3 and results["task"] == "localization"
    assert 0.0 <= results["map50"] <= 1.0 and 0.0 <= results["map"] <= results["map50"]
    assert results["images"] == len(test_set) and results["boxes"] == true_boxes
    examples = results["examples"]
    assert len(examples) == min(EXAMPLES, len(test_set))
    # Images with opacity come first, their true boxes in the model's input pixels.
    assert examples[0]["truth"] and len(examples[0]["truth"][0]) == 4
    assert all(len(e["boxes"]) == len(e["scores"]) for e in examples)
    assert all(0 <= v <= results["image_size"] for e in examples for b in e["truth"] for v in b)
    assert (run / PICTURE_FILE).stat().st_size > 10_000
    logged = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    for term in ("classifier", "box_reg", "objectness", "rpn_box_reg"):
        assert f"loss_{term}" in logged


def test_linear_probe_leaves_the_encoder_weights_unchanged(world, tmp_path):
    run = tmp_path / "probe"
    results = finetune(world, run, "--max-steps", "2", "--linear-probe", "--lr", "1e-2")
    assert results["linear_probe"] and results["steps"] == 2
    # The run's random start, rebuilt: finetune seeds (--seed 0) right before building it.
    seed_everything(0)
    start = random_backbone("gkmvlp-tiny", None, None).model.image_encoder.state_dict()
    trained = read_state_dict(CheckpointManager(run).latest() / WEIGHTS_FILE)
    prefix = "detector.backbone.image_encoder."
    encoder = {k.removeprefix(prefix): v for k, v in trained.items() if k.startswith(prefix)}
    assert encoder.keys() == start.keys()
    for name, value in start.items():
        assert torch.equal(encoder[name], value), name
    # The head did train: the logged gradient norm covers the trainable parameters only.
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(row["grad_norm"] > 0 for row in logged)
