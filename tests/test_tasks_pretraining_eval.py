"""Retrieval, entity AUROC and the pointing game on hand-made inputs."""

import pytest
import torch
from sklearn.metrics import roc_auc_score

from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
from cxrvlp.data.readers.imagenome import finding_regions_of
from cxrvlp.tasks.entities import entity_auroc
from cxrvlp.tasks.grounding import (
    label_entities,
    map_iou,
    peak_point,
    pointing_game,
    region_density_map,
)
from cxrvlp.tasks.retrieval import chance_recall_at_k, recall_at_k, retrieval_metrics


def test_recall_at_k_counts_any_relevant_key_in_the_top_k():
    similarity = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.7, 0.6, 0.1]])
    query_ids = torch.tensor([0, 1, 2])
    key_ids = torch.tensor([0, 1, 2])
    # Row 0: key 0 first (hit@1). Row 1: order 2, 1, 0 -> hit at rank 2. Row 2: 0, 1, 2 -> rank 3.
    result = recall_at_k(similarity, query_ids, key_ids, ks=(1, 2, 3))
    assert result == {"r@1": pytest.approx(1 / 3), "r@2": pytest.approx(2 / 3), "r@3": 1.0}


def test_chance_recall_is_k_over_n_with_one_relevant_key():
    ids = torch.arange(10)
    assert chance_recall_at_k(ids, ids, 5) == pytest.approx(0.5)
    assert chance_recall_at_k(torch.tensor([0]), torch.tensor([0, 0, 1, 2]), 1) == pytest.approx(
        0.5
    )


def test_retrieval_uses_one_report_per_study():
    texts = torch.eye(3)
    images = torch.eye(3)[[0, 2, 2]]  # image 1 (study 5) looks like study 6's report
    studies = torch.tensor([5, 5, 6])  # two images of study 5 share its report (text row 0)
    result = retrieval_metrics(images, texts, studies)
    assert result["reports"] == 2 and result["images"] == 3
    assert result["image_to_report_r@1"] == pytest.approx(2 / 3)
    assert result["image_to_report_r@5"] == 1.0


def test_entity_auroc_matches_sklearn_and_skips_rare_entities():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(40, 2, generator=generator)
    targets = torch.zeros(40, 2)
    targets[:12, 0] = 1
    scores[:12, 0] += 1.0
    targets[0, 1] = 1  # one positive only
    valid = torch.ones(40, 2, dtype=torch.bool)
    valid[39, 0] = False
    result = entity_auroc(scores, targets, valid, ["a", "b"])
    expected = roc_auc_score(targets[:39, 0].numpy(), scores[:39, 0].numpy())
    assert result["per_entity"]["a"]["auroc"] == pytest.approx(expected, rel=1e-5)
    assert result["per_entity"]["b"]["auroc"] is None
    assert result["auroc_macro"] == pytest.approx(expected, rel=1e-5)


def test_density_map_peaks_in_the_attended_small_box():
    boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0], [40.0, 8.0, 56.0, 24.0], [float("nan")] * 4])
    heat = region_density_map(torch.tensor([0.5, 0.3, 0.2]), boxes, size=64, cell=4)
    x, y = peak_point(heat, 4)
    assert 40 <= x <= 56 and 8 <= y <= 24
    assert heat.sum().item() == pytest.approx(0.8, rel=1e-5)  # the NaN box holds nothing


def test_pointing_game_counts_hits_over_present_findings_only():
    regions = len(CHEST_IMAGENOME_REGIONS)
    boxes = torch.full((2, regions, 4), float("nan"))
    left = CHEST_IMAGENOME_REGIONS.index("left lung")
    right = CHEST_IMAGENOME_REGIONS.index("right lung")
    boxes[:, right] = torch.tensor([0.0, 0.0, 32.0, 64.0])
    boxes[:, left] = torch.tensor([32.0, 0.0, 64.0, 64.0])
    findings = [{"pleural effusion": {"left lung"}}, {"pleural effusion": {"right lung"}}]
    left_peak = torch.zeros(4, 4)
    left_peak[2, 3] = 1.0  # the cell at x 48..64: inside the left lung (image right)

    result = pointing_game(lambda image, label: (left_peak, 16.0), findings, boxes, 64)
    assert result["pairs"] == 2 and result["pointing_game"] == pytest.approx(0.5)
    assert result["chance"] == pytest.approx(0.5, abs=0.05)
    assert result["per_entity"] == {"pleural effusion": {"hits": 1, "pairs": 2}}
    examples: list = []
    pointing_game(
        lambda image, label: (left_peak, 16.0), findings, boxes, 64, examples,
        one_per_finding=True,
    )  # fmt: skip
    assert [(image, finding, hit) for image, finding, _, _, hit in examples] == [
        (0, "pleural effusion", True)
    ]


def test_imagenome_attributes_give_the_positive_regions_of_each_finding():
    phrases = {
        "left lower lung zone": [
            ("Small left effusion.", ["anatomicalfinding|yes|pleural effusion"])
        ],
        "right lung": [("No pneumothorax.", ["anatomicalfinding|no|pneumothorax"])],
        "left costophrenic angle": [("Effusion.", ["anatomicalfinding|yes|pleural effusion"])],
    }
    assert finding_regions_of(phrases) == {
        "pleural effusion": {"left lower lung zone", "left costophrenic angle"}
    }


def test_map_iou_compares_the_cells_above_half_the_peak_with_the_box_cells():
    heat = torch.zeros(8, 8)
    heat[0:2, 0:4] = 1.0  # 8 cells attended (cells of 4 px: pixels 0..16 x 0..8)
    heat[7, 7] = 0.4  # below half the peak: not attended
    box = torch.tensor([0.0, 0.0, 8.0, 8.0])  # covers cells (0..1, 0..1): 4 cells
    assert map_iou(heat, 4.0, [box]) == pytest.approx(4 / 8)
    assert map_iou(heat, 4.0, [torch.tensor([16.0, 16.0, 24.0, 24.0])]) == 0.0
    assert map_iou(heat, 4.0, [torch.tensor([0.0, 0.0, 16.0, 8.0])]) == pytest.approx(1.0)


def test_a_finding_without_a_map_is_not_scored_and_labels_map_to_the_reports_entities():
    regions = len(CHEST_IMAGENOME_REGIONS)
    boxes = torch.zeros(1, regions, 4)
    boxes[0, :] = torch.tensor([0.0, 0.0, 64.0, 64.0])
    findings = [{"pleural effusion": {"left lung"}, "normal": {"left lung"}}]
    heat = torch.ones(4, 4)
    result = pointing_game(
        lambda image, label: (heat, 16.0) if label == "pleural effusion" else None,
        findings, boxes, 64,
    )  # fmt: skip
    assert result["pairs"] == 1 and set(result["per_entity"]) == {"pleural effusion"}
    names = ["pleural effusion", "nodule", "mass", "cardiomegaly"]
    assert label_entities("lung lesion", names) == [1, 2]
    assert label_entities("enlarged cardiac silhouette", names) == [3]
    assert label_entities("pleural effusion", names) == [0]
    assert label_entities("normal", names) == []
