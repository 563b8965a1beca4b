import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrvlp.cli import main
from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
from cxrvlp.synth.world import COHORTS


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    argv = ["synth", "--out", str(out), "--studies", "12", "--seed", "3", "--image-size", "128"]
    assert main([*argv, "--preview", "--quiet", "--workers", "2"]) == 0
    return out


def test_same_seed_same_bytes_whatever_the_worker_count(world, tmp_path):
    again = tmp_path / "again"
    argv = ["synth", "--out", str(again), "--studies", "12", "--seed", "3", "--image-size", "128"]
    assert main([*argv, "--preview", "--quiet", "--workers", "1"]) == 0
    first, second = _tree_digest(world), _tree_digest(again)
    assert len(first) > 100
    assert first == second


def test_another_seed_gives_another_world(world, tmp_path):
    other = tmp_path / "other"
    argv = ["synth", "--out", str(other), "--studies", "12", "--seed", "4", "--image-size", "128"]
    assert main([*argv, "--quiet", "--cohorts", "mimic"]) == 0
    mine = _tree_digest(world)
    theirs = _tree_digest(other)
    shared = [name for name in theirs if name in mine and name.endswith(".csv.gz")]
    assert shared and all(mine[name] != theirs[name] for name in shared)


def test_every_export_is_present(world):
    expected = [
        "mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv.gz",
        "mimic-cxr-jpg/mimic-cxr-2.0.0-split.csv.gz",
        "mimic-cxr-jpg/mimic-cxr-2.0.0-chexpert.csv.gz",
        "mimic-cxr-jpg/mimic-cxr-2.0.0-negbio.csv.gz",
        "chest-imagenome/silver_dataset/splits/train.csv",
        "chest-imagenome/silver_dataset/splits/valid.csv",
        "chest-imagenome/silver_dataset/splits/test.csv",
        "chest-imagenome/silver_dataset/splits/images_to_avoid.csv",
        "rsna/stage_2_train_labels.csv",
        "rsna/stage_2_detailed_class_info.csv",
        "nih/Data_Entry_2017.csv",
        "nih/BBox_List_2017.csv",
        "nih/train_val_list.txt",
        "nih/test_list.txt",
        "chexpert/CheXpert-v1.0-small/train.csv",
        "chexpert/CheXpert-v1.0-small/valid.csv",
        "iu_xray/annotation.json",
        "vqa_rad/trainset.json",
        "vqa_rad/testset.json",
        "slake/train.json",
        "slake/validate.json",
        "slake/test.json",
        "truth.jsonl",
        "world.json",
        "preview.png",
        "preview_regions.png",
    ]
    missing = [name for name in expected if not (world / name).is_file()]
    assert not missing
    assert list((world / "mimic-cxr-reports/files").rglob("s*.txt"))
    assert list((world / "chest-imagenome/silver_dataset/scene_graph").glob("*_SceneGraph.json"))
    assert list((world / "rsna/stage_2_train_images").glob("*.dcm"))


def test_truth_rows_point_at_real_images_with_boxes_inside(world):
    rows = [json.loads(line) for line in (world / "truth.jsonl").read_text().splitlines()]
    summary = json.loads((world / "world.json").read_text())
    assert len(rows) == summary["total_images"]
    assert {row["dataset"] for row in rows} >= {"mimic-cxr-jpg", "rsna", "nih", "iu_xray"}
    for row in rows:
        path = world / row["path"]
        assert path.is_file(), row["path"]
        if path.suffix in (".jpg", ".png"):
            with Image.open(path) as image:
                assert image.size == (row["width"], row["height"])
        if row["regions"] is None:
            continue
        assert list(row["regions"]) == list(CHEST_IMAGENOME_REGIONS)
        for box in [*row["regions"].values(), *(b for f in row["findings"] for b in f["boxes"])]:
            x1, y1, x2, y2 = box
            assert 0 <= x1 < x2 <= row["width"] and 0 <= y1 < y2 <= row["height"]


def test_mimic_labels_follow_the_reports_and_the_truth(world):
    labels = pd.read_csv(world / "mimic-cxr-jpg/mimic-cxr-2.0.0-chexpert.csv.gz")
    rows = [json.loads(line) for line in (world / "truth.jsonl").read_text().splitlines()]
    mimic = [row for row in rows if row["dataset"] == "mimic-cxr-jpg" and row["regions"]]
    assert len(labels) == len({row["study_id"] for row in mimic})
    values = set(np.unique(labels.drop(columns=["subject_id", "study_id"]).fillna(9).to_numpy()))
    assert values <= {1.0, 0.0, -1.0, 9.0}
    by_study = labels.set_index("study_id")
    effusions = [
        row for row in mimic if any(f["name"] == "pleural effusion" for f in row["findings"])
    ]
    # Reports mention present findings unless the noise omitted them: most are labelled.
    if effusions:
        positive = [
            by_study.loc[int(row["study_id"]), "Pleural Effusion"] in (1.0, -1.0)
            for row in effusions
        ]
        assert np.mean(positive) >= 0.5


def test_cohort_sizes_and_splits(world):
    summary = json.loads((world / "world.json").read_text())
    assert set(summary["cohorts"]) == set(COHORTS)
    assert summary["cohorts"]["mimic"]["studies"] == 12
    for cohort, counts in summary["cohorts"].items():
        assert counts["studies"] == (12 if cohort == "mimic" else 8), cohort
        assert counts.get("train", 0) > 0
    assert summary["cohorts"]["iu_xray"]["images"] == 2 * summary["cohorts"]["iu_xray"]["studies"]


def test_cohort_studies_override_the_downstream_fraction(tmp_path):
    argv = ["synth", "--out", str(tmp_path), "--studies", "4", "--image-size", "64", "--quiet"]
    assert main([*argv, "--cohorts", "mimic,rsna,nih", "--cohort-studies", "rsna=20"]) == 0
    cohorts = json.loads((tmp_path / "world.json").read_text())["cohorts"]
    assert (cohorts["mimic"]["studies"], cohorts["rsna"]["studies"]) == (4, 20)
    assert cohorts["nih"]["studies"] == 8  # the downstream fraction's minimum


def test_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as help_exit:
        main(["synth", "--help"])
    assert help_exit.value.code == 0
    assert "--studies" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown cohort"):
        main(["synth", "--out", "x", "--cohorts", "padchest"])
    for bad in ("rsna", "rsna=many", "mimic=30", "padchest=30"):
        with pytest.raises(SystemExit, match="write COHORT=N"):
            main(["synth", "--out", "x", "--cohort-studies", bad])
