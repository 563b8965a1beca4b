"""The synthetic world's SIIM-ACR and COVIDx cohorts and its COVID-19-like finding."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation

from cxrvlp.data.readers.siim import SIIMPneumothoraxDataset, decode_rle
from cxrvlp.synth.anatomy import Anatomy, sample_anatomy
from cxrvlp.synth.questions import write_questions
from cxrvlp.synth.render import pneumothorax_mask, render_without
from cxrvlp.synth.report import ReportNoise, write_report
from cxrvlp.synth.scene import (
    COVID_NAME,
    FINDING_TYPES,
    SAMPLED_FINDINGS,
    SEVERITIES,
    Scene,
    place_finding,
    sample_scene,
)
from cxrvlp.synth.world import (
    COHORTS,
    DATA_FOLDERS,
    WorldConfig,
    _evolve,
    _patient_tasks,
    generate_world,
    render_patient,
)
from cxrvlp.synth.writers import EXPORTERS
from cxrvlp.synth.writers.covidx import COVIDX_SOURCES
from cxrvlp.synth.writers.siim import SIIM_RLE_HEADER

COVIDX_SPLITS = {"train": "train", "validate": "val", "test": "test"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list]]:
    """A tiny world of the two cohorts; per cohort its truth rows and re-rendered studies."""
    out = tmp_path_factory.mktemp("siim_covidx")
    config = WorldConfig(
        out=out,
        studies=1,
        seed=11,
        image_size=96,
        downstream_fraction=0.0,
        cohort_sizes=(("covidx", 16), ("siim", 16)),
    )
    generate_world(config, cohorts=("siim", "covidx"), progress=False)
    rows = [json.loads(line) for line in (out / "truth.jsonl").read_text().splitlines()]
    cohorts = {}
    for cohort in ("siim", "covidx"):
        tasks = _patient_tasks(config, list(COHORTS).index(cohort), cohort)
        studies = [study for task in tasks for study in render_patient(task)]
        cohort_rows = [row for row in rows if row["dataset"] == cohort]
        assert len(cohort_rows) == len(studies) == 16
        for row, study in zip(cohort_rows, studies, strict=True):
            # Truth rows come in study order: each row's findings are its study's scene.
            assert row["findings"] == [f.to_json() for f in study.scene.findings]
        cohorts[cohort] = list(zip(cohort_rows, studies, strict=True))
    return out, cohorts


def _pixel_grid(anatomy: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Canonical (u, v) of every pixel centre, in the renderer's float32."""
    grid = np.arange(anatomy.width, dtype=np.float32), np.arange(anatomy.height, dtype=np.float32)
    u, v = anatomy.to_canonical(*np.meshgrid(grid[0] + 0.5, grid[1] + 0.5))
    return u.astype(np.float32), v.astype(np.float32)


def _other_side(scene: Scene) -> Scene:
    """The scene with its pneumothorax moved to the other lung (the mirrored mask)."""
    finding = scene.finding("pneumothorax")
    other = "left" if finding.laterality == "right" else "right"
    return Scene(scene.base_anatomy, (replace(finding, laterality=other),))


# ---- registration --------------------------------------------------------------------------------


def test_cohorts_are_registered_after_the_existing_ones() -> None:
    assert list(COHORTS)[-2:] == ["siim", "covidx"]
    assert DATA_FOLDERS["siim"] == {"siim": "siim"}
    assert DATA_FOLDERS["covidx"] == {"covidx": "covidx"}
    assert (EXPORTERS["siim"].folder, EXPORTERS["covidx"].folder) == ("siim", "covidx")
    assert COHORTS["siim"].enriched[0][0] == "pneumothorax"
    assert COHORTS["covidx"].enriched[0][0] == COVID_NAME
    assert all(not COHORTS[c].enriched for c in list(COHORTS)[:-2])
    assert COVID_NAME in FINDING_TYPES and COVID_NAME not in SAMPLED_FINDINGS


# ---- SIIM-ACR ------------------------------------------------------------------------------------


def test_siim_files_have_the_kaggle_layout(world) -> None:
    out, cohorts = world
    lines = (out / "siim" / "train-rle.csv").read_text().splitlines()
    assert lines[0] == SIIM_RLE_HEADER == "ImageId, EncodedPixels"
    assert len(lines) == 1 + len(cohorts["siim"])  # one row per image
    for (row, _), line in zip(cohorts["siim"], lines[1:], strict=True):
        image_id, rle = line.split(",")
        assert image_id == row["image_id"]
        path = out / row["path"]
        assert path.parts[-4:-3] == ("dicom-images-train",) and path.stem == image_id
        ds = pydicom.dcmread(path)
        assert str(ds.SOPInstanceUID) == image_id
        assert path.parent.name == str(ds.SeriesInstanceUID)
        assert path.parent.parent.name == str(ds.StudyInstanceUID)
        assert (ds.BitsAllocated, ds.BitsStored, ds.PhotometricInterpretation) == (
            8,
            8,
            "MONOCHROME2",
        )
        assert (rle == "-1") == (row["pneumothorax_pixels"] == 0)


def test_siim_masks_are_the_drawn_pneumothorax(world) -> None:
    out, cohorts = world
    reader = SIIMPneumothoraxDataset(out / "siim")
    assert not reader.problems
    samples = {sample.image_id: sample for sample in map(reader.__getitem__, range(len(reader)))}
    assert len(samples) == len(cohorts["siim"])
    contrasts = []
    for row, study in cohorts["siim"]:
        sample = samples[row["image_id"]]
        mask = sample.mask.numpy().astype(bool)
        expected = pneumothorax_mask(study.scene)
        assert mask.shape == expected.shape == study.frontal.shape
        assert np.array_equal(mask, expected)
        has_it = study.scene.finding("pneumothorax") is not None
        assert mask.any() == has_it == (sample.labels.item() == 1.0)
        assert row["pneumothorax_pixels"] == int(expected.sum())
        # The DICOM holds the rendered image (8-bit).
        pixels = np.round(sample.image[0].numpy() * 255)
        assert np.array_equal(pixels, np.round(np.clip(study.frontal, 0, 1) * 255))
        if not has_it:
            continue
        anatomy = study.scene.anatomy
        u, v = _pixel_grid(anatomy)
        assert not (mask & ~anatomy.lung_mask(u, v)).any(), "mask outside the lungs"
        sign = -1.0 if study.scene.finding("pneumothorax").laterality == "right" else 1.0
        assert (sign * u[mask] > 0).all(), "mask in the wrong lung"
        # The exported image is darker inside the mask than at the same place in the other lung.
        mirrored = pneumothorax_mask(_other_side(study.scene))
        image = sample.image[0].numpy()
        contrasts.append(image[mask].mean() - image[mirrored].mean())
        # Rendered with and without it (same noise): the darkening is the mask, give or take
        # the blur of a radiograph (two pixels).
        with_it, without = render_without(study.scene, "pneumothorax", seed=3)
        darkening = np.clip(without - with_it, 0.0, None)
        assert (with_it - without)[mask].mean() < -0.01
        assert darkening[binary_dilation(mask, iterations=2)].sum() > 0.75 * darkening.sum()
    assert 0 < len(contrasts) < len(cohorts["siim"])
    assert max(contrasts) < 0.0 and np.mean(contrasts) < -0.02


def test_siim_mask_round_trips_through_the_rle(world) -> None:
    out, cohorts = world
    lines = (out / "siim" / "train-rle.csv").read_text().splitlines()[1:]
    for line, (_, study) in zip(lines, cohorts["siim"], strict=True):
        height, width = study.frontal.shape
        decoded = decode_rle(line.split(",")[1], height, width).astype(bool)
        assert np.array_equal(decoded, pneumothorax_mask(study.scene))


# ---- COVIDx --------------------------------------------------------------------------------------


def test_covidx_split_files_have_the_published_format(world) -> None:
    out, cohorts = world
    listed = {}
    for split in ("train", "val", "test"):
        for line in (out / "covidx" / f"{split}.txt").read_text().splitlines():
            tokens = line.split(" ")
            assert len(tokens) == 4, line
            patient_id, filename, label, source = tokens
            assert label in ("positive", "negative") and source in COVIDX_SOURCES
            assert (out / "covidx" / split / filename).is_file()
            listed[filename] = (split, patient_id, label)
    assert len(listed) == len(cohorts["covidx"])
    suffixes = set()
    for row, study in cohorts["covidx"]:
        split, patient_id, label = listed[row["image_id"]]
        assert split == COVIDX_SPLITS[study.split] == row["split"]
        assert patient_id == row["patient_id"]
        assert (label == "positive") == (study.scene.finding(COVID_NAME) is not None)
        path = out / "covidx" / split / row["image_id"]
        with Image.open(path) as image:
            assert image.size == (96, 96)
            assert image.format == ("PNG" if path.suffix == ".png" else "JPEG")
        suffixes.add(path.suffix)
    labels = [label for _, _, label in listed.values()]
    assert {"positive", "negative"} <= set(labels)
    assert ".png" in suffixes and suffixes - {".png"}  # PNG and JPEG mixed


# ---- the COVID-19-like finding -------------------------------------------------------------------


def test_covid_finding_is_bilateral_peripheral_and_basal() -> None:
    rng = np.random.default_rng(4)
    for index in range(24):
        view = "AP" if index % 3 == 0 else "PA"
        anatomy = sample_anatomy(rng, 256, 288, view, "F" if index % 2 else "M")
        boxes = anatomy.region_boxes()
        finding = place_finding(rng, anatomy, COVID_NAME, boxes)
        assert finding.laterality == "bilateral" and finding.severity in SEVERITIES
        assert {"right lower lung zone", "left lower lung zone"} <= set(finding.regions)
        assert set(finding.regions) <= {
            f"{s} {z} lung zone" for s in ("right", "left") for z in ("mid", "lower")
        }
        for box, side in zip(finding.boxes, ("right", "left"), strict=True):
            lung = boxes[f"{side} lung"]
            centre_x, centre_y = (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2
            assert lung.x1 - 1 <= box.x1 and box.x2 <= lung.x2 + 1  # in its own lung
            assert centre_y > (lung.y1 + lung.y2) / 2, "not in the lower half of the lung"
            lateral = (centre_x - (lung.x1 + lung.x2) / 2) * (-1 if side == "right" else 1)
            assert lateral > 0, "not peripheral"
        for patch in finding.shape["patches"]:
            edge = float(anatomy.lateral_edge(np.array(patch["v"])))
            assert abs(patch["u"]) >= edge - 0.2 and patch["v"] >= 0.5


def test_covid_finding_is_reported_and_asked_about() -> None:
    for seed in range(12):
        rng = np.random.default_rng(seed)
        anatomy = sample_anatomy(rng, 128, 128, "PA", "F")
        finding = place_finding(rng, anatomy, COVID_NAME, anatomy.region_boxes())
        scene = Scene(anatomy, (finding,))
        report = write_report(scene, rng, noise=ReportNoise(0.0, 0.0))
        mentions = {(m.finding, m.existence) for m in report.mentions}
        assert (COVID_NAME, "present") in mentions
        assert "ground-glass" in report.findings or "COVID-19" in report.findings
        # COVID-19 pneumonia is a pneumonia and an opacity: neither is ever denied beside it.
        assert not mentions & {("pneumonia", "absent"), ("lung opacity", "absent")}
        labels = report.chexpert_labels()
        assert labels["Pneumonia"] == labels["Lung Opacity"] == 1.0
        questions = write_questions(scene, rng, max_questions=100)
        named = [q for q in questions if "pneumonia" in q.question or "opacity" in q.question]
        assert any(COVID_NAME in q.question for q in named)
        assert all(q.answer in ("yes", "mild", "moderate", "severe") for q in named), named


# ---- the existing cohorts are unchanged ----------------------------------------------------------

# From the code before the new finding and cohorts: (seed, first scene's findings, follow-up's
# findings, digest of the follow-up's report and questions).
BEFORE = (
    (1, [("atelectasis", "right", "moderate")], [], "991e70c0fca3d548"),
    (
        4,
        [
            ("consolidation", "left", "moderate"),
            ("atelectasis", "left", "large"),
            ("central venous catheter", "left", None),
            ("pacemaker", "left", None),
        ],
        ["atelectasis", "pacemaker"],
        "6c7e9353aac1e913",
    ),
    (
        5,
        [
            ("atelectasis", "left", "small"),
            ("pulmonary edema", "bilateral", "small"),
            ("endotracheal tube", "none", None),
        ],
        ["pulmonary edema", "endotracheal tube"],
        "7f3edfc91ad3b5d5",
    ),
    (
        7,
        [("pneumothorax", "left", "moderate"), ("pacemaker", "left", None)],
        ["pneumothorax", "pacemaker"],
        "d39b4e39735dd4bf",
    ),
    (11, [], ["pulmonary edema"], "857c60941fe35fa9"),
)


@pytest.mark.parametrize(("seed", "first", "follow_up", "digest"), BEFORE)
def test_scenes_reports_and_questions_are_as_before(seed, first, follow_up, digest) -> None:
    rng = np.random.default_rng(seed)
    anatomy = sample_anatomy(rng, 128, 128, "AP" if seed % 2 else "PA", "M")
    scene = sample_scene(rng, anatomy)
    later = _evolve(rng, scene)
    text = write_report(later, rng, previous=scene).text()
    questions = "\n".join(f"{q.question}|{q.answer}" for q in write_questions(later, rng))
    assert [(f.name, f.laterality, f.severity) for f in scene.findings] == first
    assert [f.name for f in later.findings] == follow_up
    assert hashlib.sha256((text + questions).encode()).hexdigest()[:16] == digest
