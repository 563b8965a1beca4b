"""The fine-tuning driver, classification, zero-shot and the metric code they share."""

import json

import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from cxrvlp.cli import main
from cxrvlp.metrics.classification import classification_metrics, roc_curves
from cxrvlp.tasks.zeroshot import finding_phrase


def test_classification_metrics_match_sklearn_and_skip_unscorable_classes():
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.rand(40, 3, generator=generator)
    labels = (torch.rand(40, 3, generator=generator) > 0.6).float()
    labels[:, 2] = 0.0  # no positive: no AUROC for this class
    mask = torch.ones(40, 3, dtype=torch.bool)
    mask[:5, 0] = False  # unlabelled rows take no part
    result = classification_metrics(probabilities, labels, mask, ["a", "b", "c"])
    for column, name in ((0, "a"), (1, "b")):
        keep = mask[:, column]
        truth, scores = labels[keep, column].numpy(), probabilities[keep, column].numpy()
        expected = result["per_class"][name]
        assert expected["auroc"] == pytest.approx(roc_auc_score(truth, scores), abs=1e-6)
        assert expected["f1"] == pytest.approx(f1_score(truth, scores >= 0.5), abs=1e-6)
        assert expected["accuracy"] == pytest.approx(accuracy_score(truth, scores >= 0.5))
    assert result["per_class"]["c"]["auroc"] is None
    assert result["classes_scored"] == 2
    aurocs = [result["per_class"][n]["auroc"] for n in "ab"]
    assert result["auroc"] == pytest.approx(sum(aurocs) / 2)
    assert set(roc_curves(probabilities, labels, mask, ["a", "b", "c"])) == {"a", "b"}


def test_label_names_become_report_wording():
    assert finding_phrase("Effusion") == "pleural effusion"
    assert finding_phrase("Pleural_Thickening") == "pleural thickening"
    assert finding_phrase("Cardiomegaly") == "cardiomegaly"


def _finetune(world, out, *extra):
    argv = ["finetune", "classification", "--pretrained", "none", "--dataset", "rsna"]
    argv += ["--root", str(world / "rsna"), "--out", str(out), "--max-steps", "3"]
    argv += ["--batch-size", "4", "--threads", "1", "--quiet", *extra]
    assert main(argv) == 0
    return json.loads((out / "results.json").read_text())


def test_classification_run_writes_results_and_rescoring_repeats_them(downstream_world, tmp_path):
    results = _finetune(downstream_world, tmp_path / "run")
    assert results["task"] == "classification" and results["init"] == "random"
    assert 0.0 <= results["auroc"] <= 1.0
    assert set(results["per_class"]) == {"Lung Opacity"}
    assert results["steps"] == 3 and results["test_samples"] > 0
    assert (tmp_path / "run" / "backbone" / "model.yaml").is_file()
    first = results["auroc"]
    assert main(["evaluate", "classification", "--run", str(tmp_path / "run"), "--quiet"]) == 0
    again = json.loads((tmp_path / "run" / "results.json").read_text())
    assert again["rescored"] is True
    assert again["auroc"] == pytest.approx(first, abs=1e-6)


def test_linear_probe_trains_the_head_only_and_fractions_are_nested(downstream_world, tmp_path):
    results = _finetune(downstream_world, tmp_path / "probe", "--linear-probe", "--fraction", "0.1")
    full = json.loads((tmp_path / "probe" / "finetune.json").read_text())
    assert full["linear_probe"] is True
    assert 1 <= results["train_samples"] < 10
    # The random encoder is rebuilt with the same seed, so a frozen one ends where it began.
    final = load_file(next((tmp_path / "probe" / "checkpoints").glob("step_*/model.safetensors")))
    from cxrvlp.engine.seeding import seed_everything
    from cxrvlp.models.registry import create_model

    seed_everything(0)
    initial = create_model("gkmvlp-tiny").image_encoder.state_dict()
    for name, tensor in initial.items():
        assert torch.equal(final[f"image_encoder.{name}"], tensor), name
    assert not torch.equal(final["head.weight"], torch.zeros_like(final["head.weight"]))


def test_unknown_dataset_for_a_task_says_which_ones_work(downstream_world, tmp_path):
    with pytest.raises(ValueError, match="rsna, nih, chexpert"):
        main(["finetune", "classification", "--pretrained", "none", "--dataset", "slake",
              "--root", str(downstream_world / "slake"), "--out", str(tmp_path / "x")])  # fmt: skip


def test_zero_shot_scores_every_promptable_class(downstream_world, tmp_path, pretrained_bundle):
    out = tmp_path / "zs"
    argv = ["evaluate", "zero-shot", "--pretrained", str(pretrained_bundle), "--dataset", "nih"]
    assert main([*argv, "--root", str(downstream_world / "nih"), "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert "No Finding" not in results["per_class"] and len(results["per_class"]) == 14
    assert results["classes_scored"] >= 1 and 0.0 <= results["auroc"] <= 1.0


def test_detector_annotates_each_image_of_a_vqa_set_once(downstream_world, tmp_path):
    from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
    from cxrvlp.data.pretraining import read_detector_boxes
    from cxrvlp.data.readers.vqa import SLAKEDataset
    from cxrvlp.detector.bundle import save_detector
    from cxrvlp.models.detector import DetectorConfig, RegionDetector

    config = DetectorConfig(image_size=64)
    config.relative_to_lungs = [[0.0, 0.0, 0.5, 0.5]] * len(CHEST_IMAGENOME_REGIONS)
    config.relative_to_image = [[0.1, 0.1, 0.4, 0.6]] * len(CHEST_IMAGENOME_REGIONS)
    detector = save_detector(RegionDetector(config), tmp_path / "detector")
    root, out = downstream_world / "slake", tmp_path / "boxes.jsonl"
    argv = ["detector", "annotate", "--model", str(detector), "--dataset", "slake"]
    assert main([*argv, "--root", str(root), "--out", str(out)]) == 0
    images = {record.image_id for record in SLAKEDataset(root).records}
    rows = out.read_text().splitlines()
    assert len(rows) == len(images) < len(SLAKEDataset(root).records)
    boxes = read_detector_boxes(out)
    assert set(boxes) == images and next(iter(boxes.values())).shape == (29, 4)
