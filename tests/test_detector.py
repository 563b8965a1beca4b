"""The region detector at micro scale: loss falls, one box per region, export round trip,
SIGKILL + --resume latest == uninterrupted."""

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cxrvlp.cli import main
from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
from cxrvlp.data.readers.imagenome import ChestImaGenomeDataset
from cxrvlp.detector.bundle import load_detector, save_detector
from cxrvlp.detector.evaluate import evaluate_detector, predict_files
from cxrvlp.detector.train import TrainOptions, detector_transform, train_detector
from cxrvlp.engine.checkpoint import CheckpointManager, step_dir_name
from cxrvlp.models.detector import DetectorConfig, RegionDetector, region_ious
from pretrain_runs import cli, environment, metrics

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


@pytest.fixture
def restore_threads():
    """Runs here train on one thread, as the subprocess does; later tests get theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _train_argv(world: Path, out: Path, steps: int) -> list[str]:
    return [
        "detector", "train", "--imagenome", str(world / "chest-imagenome"),
        "--images", str(world / "mimic-cxr-jpg"), "--out", str(out), "--image-size", "64",
        "--batch-size", "2", "--lr", "5e-4", "--max-steps", str(steps),
        "--checkpoint-every", "4", "--threads", "1",
    ]  # fmt: skip


@pytest.mark.slow
def test_sigkill_then_resume_latest_ends_with_the_uninterrupted_weights(
    world, tmp_path, restore_threads
):
    # 13 training images in batches of 2: 6 steps an epoch, so the step-8 checkpoint is in
    # the middle of the second epoch and the run crosses two more epoch ends after it.
    steps = 20
    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    assert main(_train_argv(world, uninterrupted, steps)) == 0

    process = subprocess.Popen(
        cli(_train_argv(world, killed, steps)),
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker = killed / "checkpoints" / step_dir_name(8) / "meta.json"
    deadline = time.monotonic() + 240
    while not marker.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert marker.is_file(), "the run ended before its step-8 checkpoint"
    assert CheckpointManager(killed).latest().name != step_dir_name(steps), "killed too late"

    assert main(["detector", "train", "--out", str(killed), "--resume", "latest"]) == 0
    expected = load_file(uninterrupted / "model.safetensors")
    resumed = load_file(killed / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, resumed[name]), name
    rows = metrics(killed)
    assert [row["step"] for row in rows] == list(range(1, steps + 1))
    assert [row["loss"] for row in rows] == [row["loss"] for row in metrics(uninterrupted)]


def test_a_finished_run_is_not_overwritten(trained, world):
    with pytest.raises(SystemExit, match="--resume latest"):
        main(_train_argv(world, trained, 2))
