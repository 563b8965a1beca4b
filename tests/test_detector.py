"""The region detector at micro scale: loss falls, one box per region, export round trip."""

import json
from pathlib import Path

import pytest
import torch

from cxrvlp.cli import main
from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
from cxrvlp.data.readers.imagenome import ChestImaGenomeDataset
from cxrvlp.detector.evaluate import evaluate_detector, predict_files
from cxrvlp.detector.export import load_detector, save_detector
from cxrvlp.detector.train import TrainOptions, detector_transform, train_detector
from cxrvlp.models.detector import DetectorConfig, RegionDetector, region_ious

SIZE = 96


@pytest.fixture(scope="module")
def world(make_mimic_world) -> Path:
    return make_mimic_world(16)


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("detector")
    options = TrainOptions(
        imagenome=world / "chest-imagenome",
        images=world / "mimic-cxr-jpg",
        out=out,
        image_size=SIZE,
        batch_size=2,
        lr=5e-4,
        warmup_steps=2,
        max_steps=12,
        checkpoint_every=6,
        progress=False,
    )
    torch.set_num_threads(2)
    summary = train_detector(options)
    assert summary["steps"] == 12
    return out


def test_training_steps_reduce_the_loss(trained):
    losses = [
        json.loads(line)["loss"] for line in (trained / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(losses) == 12
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4


def test_one_box_per_region_with_flagged_fallbacks(trained, world):
    model = load_detector(trained)
    dataset = ChestImaGenomeDataset(
        world / "chest-imagenome",
        images=world / "mimic-cxr-jpg",
        split="test",
        transform=detector_transform(SIZE, augment=False),
    )
    predictions = model.predict([dataset[i].image for i in range(len(dataset))])
    for prediction in predictions:
        assert prediction.boxes.shape == (29, 4) and prediction.fallback.shape == (29,)
        assert torch.isfinite(prediction.boxes).all()
        assert (prediction.boxes[:, 2] >= prediction.boxes[:, 0]).all()
        assert (prediction.scores[prediction.fallback] == 0).all()
    result = evaluate_detector(model, dataset, progress=False)
    assert set(result["per_region"]) == set(CHEST_IMAGENOME_REGIONS)
    assert 0.0 <= result["mean_iou"] <= 1.0 and 0.0 <= result["map50"] <= 1.0


def test_fallback_boxes_follow_the_lungs():
    config = DetectorConfig(image_size=SIZE)
    config.relative_to_lungs = [[0.0, 0.0, 0.5, 0.5]] * 29
    config.relative_to_image = [[0.1, 0.1, 0.2, 0.2]] * 29
    model = RegionDetector(config)
    lungs = {
        "boxes": torch.tensor([[10.0, 20.0, 40.0, 80.0], [50.0, 20.0, 90.0, 80.0]]),
        "labels": torch.tensor([1, 9]),
        "scores": torch.tensor([0.9, 0.8]),
    }
    result = model.one_box_per_region(lungs, (SIZE, SIZE))
    assert result.fallback.sum() == 27 and not result.fallback[[0, 8]].any()
    assert result.boxes[2].tolist() == [10.0, 20.0, 50.0, 50.0]  # half the lung frame
    nothing = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.long),
        "scores": torch.zeros(0),
    }
    result = model.one_box_per_region(nothing, (SIZE, SIZE))
    assert result.fallback.all()
    assert torch.allclose(result.boxes[0], torch.tensor([9.6, 9.6, 19.2, 19.2]))


def test_export_and_reload_give_the_same_predictions(trained, world, tmp_path):
    model = load_detector(trained)
    again = load_detector(save_detector(model, tmp_path / "copy"))
    image = next(iter((world / "mimic-cxr-jpg/files").rglob("*.jpg")))
    first, second = predict_files(model, [image]), predict_files(again, [image])
    assert first == second
    assert len(first[0]["regions"]) == 29


def test_resume_latest_continues_from_the_checkpoint(trained, world):
    options = TrainOptions(
        imagenome=world / "chest-imagenome",
        images=world / "mimic-cxr-jpg",
        out=trained,
        image_size=SIZE,
        batch_size=2,
        max_steps=14,
        warmup_steps=2,
        resume="latest",
        progress=False,
    )
    assert train_detector(options)["steps"] == 14
    steps = [
        json.loads(line)["step"] for line in (trained / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps[-2:] == [13, 14]


def test_predict_command_on_a_dicom(trained, tmp_path, capsys):
    from pydicom.data import get_testdata_file

    dicom = Path(get_testdata_file("RG1_UNCR.dcm"))
    assert (
        main(["detector", "predict", str(dicom), "--model", str(trained), "--out", str(tmp_path)])
        == 0
    )
    boxes = json.loads((tmp_path / "RG1_UNCR.json").read_text())
    assert (boxes["width"], boxes["height"]) == (1841, 1955)
    assert (tmp_path / "RG1_UNCR_regions.png").is_file()


def test_iou_of_absent_truth_is_nan():
    predicted = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    truth = torch.tensor([[0.0, 0.0, 10.0, 20.0], [float("nan")] * 4])
    ious = region_ious(predicted, truth)
    assert ious[0] == pytest.approx(0.5) and torch.isnan(ious[1])
