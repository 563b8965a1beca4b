"""The pre-training index: loading it gives the parsed data set exactly; a changed source, a
version bump or a damaged file makes it rebuild."""

import logging
import os
import shutil

import numpy as np
import pytest

from cxrvlp.data import pretraining_index
from cxrvlp.data.pretraining import pretraining_dataset


@pytest.fixture(scope="module")
def world(make_mimic_world):
    return make_mimic_world(24, image_size=64)


@pytest.fixture
def index(tmp_path):
    return tmp_path / "index"


def same_records(parsed, loaded):
    assert len(parsed.records) == len(loaded.records) > 0
    for one, other in zip(parsed.records, loaded.records, strict=True):
        for name in ("image_id", "patient_id", "study_id", "view", "split", "image_path"):
            assert getattr(one, name) == getattr(other, name), name
        assert (one.report, one.box_labels, one.extra) == (
            other.report,
            other.box_labels,
            other.extra,
        )
        np.testing.assert_array_equal(one.labels, other.labels)
        np.testing.assert_array_equal(one.boxes, other.boxes)
        assert (one.labels.dtype, one.boxes.dtype) == (other.labels.dtype, other.boxes.dtype)
    assert parsed.problems == loaded.problems
    assert (parsed.n_rows, parsed.n_filtered_views, parsed.n_missing_boxes) == (
        loaded.n_rows,
        loaded.n_filtered_views,
        loaded.n_missing_boxes,
    )


def built_or_loaded(caplog, root, index, **options):
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cxrvlp.data.pretraining_index"):
        dataset = pretraining_dataset(root, index=index, **options)
    messages = " ".join(record.getMessage() for record in caplog.records)
    return (
        dataset,
        "built" if "index built" in messages else "loaded" if "loaded" in messages else "",
    )


@pytest.mark.parametrize("split, boxes", [("train", "imagenome"), ("validate", None)])
def test_loaded_index_equals_parsing(world, index, caplog, split, boxes):
    parsed = pretraining_dataset(world, split=split, boxes=boxes, index=None)
    built, how = built_or_loaded(caplog, world, index, split=split, boxes=boxes)
    assert how == "built"
    loaded, how = built_or_loaded(caplog, world, index, split=split, boxes=boxes)
    assert how == "loaded"
    same_records(parsed, built)
    same_records(parsed, loaded)
    assert loaded[0].extra == parsed[0].extra and loaded[0].image.shape == parsed[0].image.shape


def test_default_index_lives_in_the_root(world, caplog):
    folder = world / pretraining_index.INDEX_FOLDER
    try:
        pretraining_dataset(world)
        assert (folder / "pretraining-train-imagenome.npz").is_file()
        assert built_or_loaded(caplog, world, "auto")[1] == "loaded"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def own_world(world, tmp_path):
    """A copy of the world whose files a test may change."""
    copy = tmp_path / "world"
    shutil.copytree(world, copy, ignore=shutil.ignore_patterns(pretraining_index.INDEX_FOLDER))
    return copy


def test_a_changed_report_rebuilds_with_its_new_text(own_world, index, caplog):
    first, _ = built_or_loaded(caplog, own_world, index)
    record = first.records[0]
    report = (
        own_world
        / "mimic-cxr-reports/files"
        / f"p{record.patient_id[:2]}/p{record.patient_id}/s{record.study_id}.txt"
    )
    report.write_text("FINDINGS: Large right pleural effusion.\n\nIMPRESSION: Effusion.\n")
    again, how = built_or_loaded(caplog, own_world, index)
    assert how == "built"
    assert again.records[0].report.findings == "Large right pleural effusion."
    assert again.records[0].extra["entities"] == {"pleural effusion": "present"}
    same_records(pretraining_dataset(own_world, index=None), again)


def test_a_touched_split_csv_rebuilds(own_world, index, caplog):
    built_or_loaded(caplog, own_world, index)
    split_csv = own_world / "mimic-cxr-jpg/mimic-cxr-2.0.0-split.csv.gz"
    stat = split_csv.stat()
    os.utime(split_csv, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert built_or_loaded(caplog, own_world, index)[1] == "built"
    assert built_or_loaded(caplog, own_world, index)[1] == "loaded"


def test_a_version_bump_rebuilds(world, index, caplog, monkeypatch):
    built_or_loaded(caplog, world, index)
    monkeypatch.setattr("cxrvlp.data.pretraining.PARSER_VERSION", 10**6)
    assert built_or_loaded(caplog, world, index)[1] == "built"
    monkeypatch.setattr("cxrvlp.data.pretraining.INDEX_FORMAT", 10**6)
    assert built_or_loaded(caplog, world, index)[1] == "built"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_damaged_index_is_rebuilt_with_a_warning(world, index, caplog, damage):
    parsed, _ = built_or_loaded(caplog, world, index)
    (path,) = index.glob("*.npz")
    data = path.read_bytes()
    path.write_bytes(
        {
            "truncate": data[: len(data) // 2],
            "garbage": data[:100] + os.urandom(len(data)),
            "empty": b"",
        }[damage]
    )
    rebuilt, how = built_or_loaded(caplog, world, index)
    assert how == "built"
    assert any(
        r.levelno == logging.WARNING and "unreadable" in r.getMessage() for r in caplog.records
    )
    same_records(parsed, rebuilt)
    assert built_or_loaded(caplog, world, index)[1] == "loaded"


def test_an_unwritable_index_folder_only_warns(world, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    dataset, how = built_or_loaded(caplog, world, blocker / "index")
    assert how == "" and len(dataset) > 0
    assert any("not written" in r.getMessage() for r in caplog.records)
