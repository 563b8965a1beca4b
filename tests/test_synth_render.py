import zlib

import numpy as np
import pytest

from cxrvlp.synth.anatomy import Box, sample_anatomy
from cxrvlp.synth.render import render_frontal, render_lateral, render_without
from cxrvlp.synth.scene import FINDING_TYPES, SEVERITIES, Scene, place_finding


def _scene_with(name: str, severity: str | None, seed: int) -> Scene:
    """A scene holding one finding of the wanted severity (placement re-drawn until it fits)."""
    rng = np.random.default_rng(seed)
    anatomy = sample_anatomy(rng, 256, 288, "PA", "M")
    for _ in range(200):
        finding = place_finding(rng, anatomy, name, anatomy.region_boxes())
        if finding.severity == severity:
            return Scene(anatomy, (finding,))
    raise AssertionError(f"no {severity} {name} placed")


def _mask(shape, boxes: tuple[Box, ...], margin: float = 0.0) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for box in boxes:
        x1, y1 = int(max(box.x1 - margin, 0)), int(max(box.y1 - margin, 0))
        mask[y1 : int(np.ceil(box.y2 + margin)), x1 : int(np.ceil(box.x2 + margin))] = True
    return mask


CASES = [
    (name, severity)
    for name, kind in sorted(FINDING_TYPES.items())
    for severity in (
        (None,)
        if name in ("endotracheal tube", "enteric tube", "central venous catheter", "pacemaker")
        else SEVERITIES
    )
]


@pytest.mark.parametrize(("name", "severity"), CASES)
def test_each_finding_changes_the_pixels_inside_its_box(name, severity):
    scene = _scene_with(name, severity, seed=zlib.crc32(f"{name}-{severity}".encode()) % 1000)
    with_it, without = render_without(scene, name, seed=5)
    diff = np.abs(with_it - without)
    finding = scene.findings[0]
    inside = _mask(diff.shape, finding.boxes)
    # Near: the box and a margin, since blur and soft edges spill a little.
    near = _mask(diff.shape, finding.boxes, margin=0.05 * scene.anatomy.width)
    # A rib break is only as visible as the rib itself: subtle by nature, as on real films.
    visible = 0.01 if name == "fracture" else 0.02
    assert np.percentile(diff[inside], 99) > visible, "finding invisible"
    assert diff[near].sum() > 0.8 * diff.sum(), "finding not where its box says"


def test_severity_makes_findings_more_visible():
    for name in ("pleural effusion", "consolidation", "nodule", "pneumothorax"):
        strengths = []
        for severity in SEVERITIES:
            values = []
            for seed in range(3):
                scene = _scene_with(name, severity, seed)
                with_it, without = render_without(scene, name, seed=1)
                values.append(
                    np.abs(with_it - without)[_mask(with_it.shape, scene.findings[0].boxes)].mean()
                )
            strengths.append(np.mean(values))
        assert strengths[0] < strengths[2], (name, strengths)


def test_rendering_is_deterministic_and_radiograph_like():
    scene = _scene_with("pleural effusion", "large", 3)
    first = render_frontal(scene, np.random.default_rng(9))
    again = render_frontal(scene, np.random.default_rng(9))
    assert first.dtype == np.float32 and first.shape == (288, 256)
    assert np.array_equal(first, again)
    assert first.min() >= 0.0 and first.max() <= 1.0
    boxes = scene.region_boxes()
    lung = _mask(first.shape, (boxes["left upper lung zone"],))
    spine = _mask(first.shape, (boxes["spine"],))
    heart = _mask(first.shape, (boxes["cardiac silhouette"],))
    # Aerated lung is darker than the heart and spine; air outside the body is darkest.
    assert first[lung].mean() + 0.15 < first[heart].mean()
    assert first[lung].mean() + 0.15 < first[spine].mean()
    assert first[:, :3].mean() < first[lung].mean()
    lateral = render_lateral(scene, np.random.default_rng(9))
    assert lateral.shape == first.shape and 0.05 < lateral.mean() < 0.9
