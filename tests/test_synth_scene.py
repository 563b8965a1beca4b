import json

import numpy as np
import pytest

from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
from cxrvlp.synth.anatomy import sample_anatomy
from cxrvlp.synth.calibration import (
    LESION_SIZES_FILE,
    fit_lesion_sizes,
    sample_lesion_size,
    torchxrayvision_data_dir,
)
from cxrvlp.synth.scene import FINDING_TYPES, SAMPLED_FINDINGS, place_finding, sample_scene


def _anatomies(n, width=512, height=512):
    rng = np.random.default_rng(123)
    return [
        sample_anatomy(rng, width, height, "AP" if i % 3 == 0 else "PA", "F" if i % 2 else "M")
        for i in range(n)
    ]


def test_all_29_regions_inside_the_image_and_anatomically_ordered():
    for anatomy in _anatomies(40, 512, 590):
        boxes = anatomy.region_boxes()
        assert tuple(boxes) == CHEST_IMAGENOME_REGIONS
        for name, box in boxes.items():
            assert 0 <= box.x1 < box.x2 <= anatomy.width, name
            assert 0 <= box.y1 < box.y2 <= anatomy.height, name
        # PA convention: the patient's right lung is on the image's left.
        assert boxes["right lung"].x2 < boxes["left lung"].x2
        assert boxes["right lung"].x1 < boxes["left lung"].x1
        for side in ("right", "left"):
            lung = boxes[f"{side} lung"]
            upper, mid, lower = (boxes[f"{side} {z} lung zone"] for z in ("upper", "mid", "lower"))
            assert upper.y1 < mid.y1 < lower.y1
            for zone in (upper, mid, lower, boxes[f"{side} apical zone"]):
                assert zone.x1 >= lung.x1 - 1 and zone.x2 <= lung.x2 + 1
                assert zone.y1 >= lung.y1 - 1 and zone.y2 <= lung.y2 + 1
            assert boxes[f"{side} costophrenic angle"].y2 > lung.y2 - 0.1 * lung.height
        assert boxes["trachea"].y2 < boxes["cardiac silhouette"].y1 + 0.3 * boxes["trachea"].height
        assert boxes["abdomen"].y1 > boxes["carina"].y2


def test_cardiothoracic_ratio_drives_the_heart_box():
    anatomy = _anatomies(1)[0]
    thorax = anatomy.region_boxes()["left lung"].x2 - anatomy.region_boxes()["right lung"].x1
    for ratio in (0.42, 0.6):
        heart = anatomy.__class__(**{**anatomy.__dict__, "cardiothoracic_ratio": ratio})
        width = heart.region_boxes()["cardiac silhouette"].width
        assert width / thorax == pytest.approx(ratio, abs=0.06)


@pytest.mark.parametrize("name", sorted(FINDING_TYPES))
def test_every_finding_lies_in_valid_regions_and_inside_the_image(name):
    rng = np.random.default_rng(7)
    for anatomy in _anatomies(12, 512, 590):
        finding = place_finding(rng, anatomy, name, anatomy.region_boxes())
        assert finding.regions and set(finding.regions) <= set(CHEST_IMAGENOME_REGIONS)
        assert len(finding.boxes) == (2 if finding.laterality == "bilateral" else 1)
        for box in finding.boxes:
            assert 0 <= box.x1 < box.x2 <= anatomy.width
            assert 0 <= box.y1 < box.y2 <= anatomy.height
        if finding.laterality in ("left", "right") and not finding.is_device:
            sided = [r for r in finding.regions if r.startswith(("left ", "right "))]
            assert all(r.startswith(finding.laterality) for r in sided), finding.regions
        json.dumps(finding.to_json())


def test_about_a_third_of_scenes_are_normal_and_findings_are_distinct():
    rng = np.random.default_rng(0)
    anatomy = _anatomies(1)[0]
    scenes = [sample_scene(rng, anatomy) for _ in range(600)]
    normal = sum(s.is_normal for s in scenes) / len(scenes)
    assert 0.27 < normal < 0.4
    for scene in scenes:
        names = [f.name for f in scene.findings]
        assert len(names) == len(set(names)) <= 4
    seen = {f.name for s in scenes for f in s.findings}
    # Every finding drawn by chance; the cohort-only ones (weight 0) never.
    assert seen == set(SAMPLED_FINDINGS)


def test_lesion_sizes_follow_the_severity_bands_of_the_real_distribution():
    rng = np.random.default_rng(0)
    areas = {
        severity: np.median(
            [np.prod(sample_lesion_size(rng, "nodule", severity)) for _ in range(200)]
        )
        for severity in ("small", "moderate", "large")
    }
    assert areas["small"] < areas["moderate"] < areas["large"]
    # NIH nodules are about 7 % of the image width on a side.
    assert 0.04 < np.sqrt(areas["moderate"]) < 0.1


@pytest.mark.skipif(torchxrayvision_data_dir() is None, reason="torchxrayvision data not installed")
def test_stored_lesion_sizes_match_the_real_box_lists():
    stored = json.loads(LESION_SIZES_FILE.read_text())
    fitted = fit_lesion_sizes(torchxrayvision_data_dir())
    assert stored == json.loads(json.dumps(fitted))
    assert stored["airspace"]["n"] == 9555  # every RSNA box
