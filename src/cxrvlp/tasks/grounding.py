"""Grounding: where a model looks for a finding against the regions the finding is in.

Pointing game: a finding of an image counts as a hit when the peak of the model's map lies
inside one of the true regions' boxes. IoU: the map's cells at or above half its peak against
the cells the true regions' boxes cover. Maps: the GK module's entity-to-region attention
(each region's attention spread uniformly over its box), the GK attention over patches (no
region features), or, for any model, the image-report encoder's cross-attention from the
entity name to the patch tokens (the only map a model without the GK module has).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cxrvlp.constants import CHEST_IMAGENOME_REGIONS

REGION_INDEX = {name: index for index, name in enumerate(CHEST_IMAGENOME_REGIONS)}

# Chest ImaGenome attribute labels that are not knowledge-base entity names -> the entities a
# report states them as (a "lung lesion" of the scene graph is a nodule or a mass in the
# report). A label that is an entity name maps to itself; one in neither is not scored.
IMAGENOME_LABEL_ENTITIES: dict[str, tuple[str, ...]] = {
    "lung lesion": ("nodule", "mass", "lung lesion"),
    "enlarged cardiac silhouette": ("cardiomegaly",),
    "mediastinal widening": ("enlarged cardiomediastinum",),
    "rib fracture": ("fracture",),
    "cardiac pacer and wires": ("pacemaker",),
    "ij line": ("central venous catheter",),
    "picc": ("central venous catheter",),
    "subclavian line": ("central venous catheter",),
    "swan-ganz catheter": ("central venous catheter",),
    "pulmonary edema/hazy opacity": ("pulmonary edema",),
    "costophrenic angle blunting": ("costophrenic blunting",),
    "hyperaeration": ("hyperinflation",),
    "linear/patchy atelectasis": ("atelectasis",),
    "lobar/segmental collapse": ("collapse",),
    "increased reticular markings/ild pattern": ("interstitial markings",),
    "calcified nodule": ("calcification", "nodule"),
}


def label_entities(label: str, entity_names: list[str]) -> list[int]:
    """Columns of ``entity_names`` a Chest ImaGenome finding label stands for (may be none)."""
    wanted = IMAGENOME_LABEL_ENTITIES.get(label, (label,))
    return [entity_names.index(name) for name in wanted if name in entity_names]


def region_density_map(
    attention: torch.Tensor, boxes: torch.Tensor, size: int, cell: int
) -> torch.Tensor:
    """(size/cell)^2 map: each region's attention divided evenly over the cells of its box."""
    cells = size // cell
    centres = (torch.arange(cells, dtype=torch.float32) + 0.5) * cell
    ys, xs = centres[:, None], centres[None, :]
    heat = torch.zeros(cells, cells)
    for weight, box in zip(attention.tolist(), boxes, strict=True):
        if not bool(torch.isfinite(box).all()):
            continue
        x1, y1, x2, y2 = box.tolist()
        inside = (xs >= x1) & (xs <= x2) & (ys >= y1) & (ys <= y2)
        area = int(inside.sum())
        if area:
            heat += inside.float() * (weight / area)
    return heat


def peak_point(heat: torch.Tensor, cell: float) -> tuple[float, float]:
    """Centre (x, y), in pixels, of the highest cell of a square map of ``cell``-pixel cells."""
    index = int(heat.flatten().argmax())
    row, column = divmod(index, heat.shape[1])
    return (column + 0.5) * cell, (row + 0.5) * cell


def inside_any(point: tuple[float, float], boxes: list[torch.Tensor]) -> bool:
    x, y = point
    return any(
        bool(torch.isfinite(box).all()) and box[0] <= x <= box[2] and box[1] <= y <= box[3]
        for box in boxes
    )


def boxes_mask(boxes: list[torch.Tensor], cells: int, cell: float) -> torch.Tensor:
    """(cells, cells) bool: the cells whose centres lie inside any of ``boxes`` (pixels)."""
    centres = (torch.arange(cells, dtype=torch.float32) + 0.5) * cell
    covered = torch.zeros(cells, cells, dtype=torch.bool)
    for box in boxes:
        if bool(torch.isfinite(box).all()):
            covered |= (
                (centres[None, :] >= box[0])
                & (centres[None, :] <= box[2])
                & (centres[:, None] >= box[1])
                & (centres[:, None] <= box[3])
            )
    return covered


def map_iou(heat: torch.Tensor, cell: float, boxes: list[torch.Tensor]) -> float:
    """IoU of the map's cells at or above half its peak with the cells the boxes cover."""
    attended = heat >= 0.5 * heat.max()
    truth = boxes_mask(boxes, heat.shape[0], cell)
    union = int((attended | truth).sum())
    return int((attended & truth).sum()) / union if union else 0.0


def pointing_game(
    heat_of: Callable[[int, str], tuple[torch.Tensor, float] | None],
    findings: list[dict[str, set[str]]],
    boxes: torch.Tensor,
    image_size: int,
    examples: list | None = None,
    max_examples: int = 12,
    one_per_finding: bool = False,
) -> dict:
    """Hit rate over (image, present finding) pairs; ``heat_of(i, label)`` gives (map, cell
    px), or None for a finding the model has no map of (not scored).

    Also the hit rate of a uniformly random point (the share of the image the true regions
    cover), so a figure can be read against chance. The first ``max_examples`` pairs (with
    ``one_per_finding``, the first pair of each finding type) are appended to ``examples`` as
    (image index, finding, heat map, true boxes, hit).
    """
    hits = pairs = 0
    chance = iou_sum = 0.0
    per_entity: dict[str, list[int]] = {}
    for image, regions_of in enumerate(findings):
        for finding, regions in regions_of.items():
            true_boxes = [boxes[image, REGION_INDEX[r]] for r in regions if r in REGION_INDEX]
            found = heat_of(image, finding) if true_boxes else None
            if found is None:
                continue
            heat, cell = found
            hit = inside_any(peak_point(heat, cell), true_boxes)
            iou_sum += map_iou(heat, cell, true_boxes)
            shown = one_per_finding and any(example[1] == finding for example in examples or [])
            if examples is not None and len(examples) < max_examples and not shown:
                examples.append((image, finding, heat, true_boxes, hit))
            hits += hit
            pairs += 1
            # A uniformly random point hits with the share of the image the boxes cover.
            chance += float(boxes_mask(true_boxes, image_size // 4, 4.0).float().mean())
            counts = per_entity.setdefault(finding, [0, 0])
            counts[0] += hit
            counts[1] += 1
    return {
        "pointing_game": hits / pairs if pairs else None,
        "pairs": pairs,
        "chance": chance / pairs if pairs else None,
        "iou": iou_sum / pairs if pairs else None,
        "per_entity": {
            name: {"hits": h, "pairs": n} for name, (h, n) in sorted(per_entity.items())
        },
    }


@torch.no_grad()
def itm_attention_map(
    model,
    images: torch.Tensor,
    boxes: torch.Tensor,
    text_ids: torch.Tensor,
    text_mask: torch.Tensor,
) -> torch.Tensor:
    """(B, G, G) cross-attention of the image-report encoder's last layer from the text's word
    tokens ([CLS]/[SEP] left out) to the patch tokens, heads averaged."""
    features = model.encode_image(images, boxes)
    batch = len(images)
    ids, mask = text_ids.expand(batch, -1), text_mask.expand(batch, -1)
    hidden = model.encode_text(ids, mask)
    _, maps = model.image_report_encoder(hidden, mask, features.tokens, return_attention=True)
    last = maps[-1].mean(dim=1)  # (B, L, T)
    words = mask.clone()
    words[:, 0] = 0
    lengths = mask.sum(dim=1)
    words[torch.arange(batch), lengths - 1] = 0
    weights = words.float() / words.sum(dim=1, keepdim=True).clamp(min=1)
    per_token = (last * weights[:, :, None]).sum(dim=1)
    grid = model.image_encoder.grid
    return per_token[:, 1 : 1 + grid * grid].reshape(batch, grid, grid)
