"""`cxrvlp data inspect | prepare | sections` on every synthetic export."""

import json
from pathlib import Path

import pytest

from cxrvlp.cli import main
from cxrvlp.data.readers import READERS, reader_class

EXPORT_FOLDERS = {
    "mimic-cxr": "mimic-cxr-jpg",
    "chest-imagenome": "chest-imagenome",
    "chexpert": "chexpert",
    "nih": "nih",
    "rsna": "rsna",
    "iu-xray": "iu_xray",
    "vqa-rad": "vqa_rad",
    "slake": "slake",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    argv = ["synth", "--out", str(out), "--studies", "10", "--image-size", "96", "--quiet"]
    assert main([*argv, "--workers", "1"]) == 0
    return out


def _truth(world: Path) -> list[dict]:
    return [json.loads(line) for line in (world / "truth.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("dataset", sorted(EXPORT_FOLDERS))
def test_inspect_json_on_every_synthetic_export(dataset, world, capsys):
    root = world / EXPORT_FOLDERS[dataset]
    assert main(["data", "inspect", dataset, "--root", str(root), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    for key in ("n_rows", "n_images", "n_patients", "problems"):
        assert key in summary
    assert summary["problems"] == []
    folder = {"mimic-cxr": "mimic-cxr-jpg", "chest-imagenome": "mimic-cxr-jpg"}.get(
        dataset, EXPORT_FOLDERS[dataset]
    )
    frontal = [
        row
        for row in _truth(world)
        if row["dataset"] == folder and (row["view"] != "LATERAL" or dataset == "iu-xray")
    ]
    # Questions name one image each; every other export has one record per frontal image.
    assert summary["n_images"] == len(frontal)
    assert summary["n_patients"] == len({row["patient_id"] for row in frontal})


def test_inspect_reports_problems_and_still_exits_zero(world, tmp_path, capsys):
    nih = tmp_path / "nih"
    nih.mkdir()
    for path in (world / "nih").iterdir():
        if path.is_file():
            (nih / path.name).write_bytes(path.read_bytes())
    (nih / "images").mkdir()  # the label files name images that are not there
    assert main(["data", "inspect", "nih", "--root", str(nih), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_images"] == 0
    assert summary["n_problems"] == summary["n_rows"] > 0
    assert {p["reason"] for p in summary["problems"]} == {"image listed but missing"}
    assert main(["data", "inspect", "nih", "--root", str(nih), "--labels-only", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_problems"] == 0


def test_inspect_unusable_root_exits_nonzero(tmp_path, capsys):
    assert main(["data", "inspect", "rsna", "--root", str(tmp_path / "absent")]) == 2
    assert "absent" in capsys.readouterr().err
    assert main(["data", "inspect", "rsna", "--root", str(tmp_path)]) == 2
    assert "stage_2_train_labels.csv" in capsys.readouterr().err


def test_prepare_writes_a_cache_the_reader_uses(world, tmp_path, capsys):
    cache = tmp_path / "cache"
    argv = ["data", "prepare", "rsna", "--root", str(world / "rsna"), "--out", str(cache)]
    assert main([*argv, "--size", "48", "--workers", "1"]) == 0
    assert "cached" in capsys.readouterr().out
    reader = reader_class("rsna")
    raw, cached = reader(world / "rsna"), reader(world / "rsna", cache=cache)
    sample_raw, sample_cached = raw[0], cached[0]
    assert sample_cached.image.shape == (1, 48, 48) and sample_raw.image.shape == (1, 96, 96)
    assert sample_cached.original_size == sample_raw.original_size
    if sample_raw.boxes is not None and len(sample_raw.boxes):
        assert (sample_cached.boxes - sample_raw.boxes * 0.5).abs().max() < 1e-4


def test_sections_command(world, tmp_path, capsys):
    out = tmp_path / "mimic_cxr_sectioned.csv.gz"
    argv = ["data", "sections", "--reports", str(world / "mimic-cxr-reports"), "--out", str(out)]
    assert main(argv) == 0
    assert "reports sectioned" in capsys.readouterr().out
    mimic = reader_class("mimic-cxr")(world / "mimic-cxr-jpg", sectioned=out, labels_only=True)
    assert mimic.records and all(r.report and not r.report.is_empty for r in mimic.records)


def test_every_registered_reader_imports():
    for name in READERS:
        assert reader_class(name).name == name
