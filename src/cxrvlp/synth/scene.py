"""The truth of one synthetic radiograph: anatomy plus findings placed in regions."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from cxrvlp.synth.anatomy import ZONE_LIMITS, Anatomy, Box
from cxrvlp.synth.calibration import sample_lesion_size

SEVERITIES = ("small", "moderate", "large")
ZONE_REGION = {
    "apical": "apical zone",
    "upper": "upper lung zone",
    "mid": "mid lung zone",
    "lower": "lower lung zone",
}


@dataclass(frozen=True)
class FindingType:
    """A kind of finding the world can place, and how every label set names it."""

    name: str
    category: str  # Chest ImaGenome attribute category
    imagenome_label: str
    chexpert: tuple[str, ...]  # CheXpert observations it makes positive
    nih: str | None  # NIH ChestX-ray14 label, if any
    nih_box: str | None  # label used in NIH's BBox_List_2017.csv, if any
    rsna_opacity: bool  # counts as "Lung Opacity" in RSNA
    weight: float  # relative prevalence among abnormal studies
    lateralities: dict[str, float]


COVID_NAME = "covid-19 pneumonia"  # bilateral peripheral basal ground glass (COVIDx)
FINDING_TYPES: dict[str, FindingType] = {
    t.name: t
    for t in (
        FindingType(
            "pleural effusion",
            "anatomicalfinding",
            "pleural effusion",
            ("Pleural Effusion",),
            "Effusion",
            "Effusion",
            False,
            0.16,
            {"right": 0.35, "left": 0.35, "bilateral": 0.3},
        ),
        FindingType(
            "consolidation",
            "anatomicalfinding",
            "consolidation",
            ("Consolidation", "Lung Opacity"),
            "Consolidation",
            None,
            True,
            0.06,
            {"right": 0.5, "left": 0.5},
        ),
        FindingType(
            "pneumonia",
            "disease",
            "pneumonia",
            ("Pneumonia", "Lung Opacity"),
            "Pneumonia",
            "Pneumonia",
            True,
            0.07,
            {"right": 0.42, "left": 0.42, "bilateral": 0.16},
        ),
        FindingType(
            "lung opacity",
            "anatomicalfinding",
            "lung opacity",
            ("Lung Opacity",),
            "Infiltration",
            "Infiltrate",
            True,
            0.10,
            {"right": 0.42, "left": 0.42, "bilateral": 0.16},
        ),
        FindingType(
            "atelectasis",
            "anatomicalfinding",
            "atelectasis",
            ("Atelectasis",),
            "Atelectasis",
            "Atelectasis",
            False,
            0.12,
            {"right": 0.3, "left": 0.4, "bilateral": 0.3},
        ),
        FindingType(
            "pulmonary edema",
            "disease",
            "pulmonary edema/hazy opacity",
            ("Edema",),
            "Edema",
            None,
            False,
            0.07,
            {"bilateral": 1.0},
        ),
        FindingType(
            "pneumothorax",
            "anatomicalfinding",
            "pneumothorax",
            ("Pneumothorax",),
            "Pneumothorax",
            "Pneumothorax",
            False,
            0.05,
            {"right": 0.5, "left": 0.5},
        ),
        FindingType(
            "cardiomegaly",
            "anatomicalfinding",
            "enlarged cardiac silhouette",
            ("Cardiomegaly",),
            "Cardiomegaly",
            "Cardiomegaly",
            False,
            0.10,
            {"none": 1.0},
        ),
        FindingType(
            "enlarged cardiomediastinum",
            "anatomicalfinding",
            "mediastinal widening",
            ("Enlarged Cardiomediastinum",),
            None,
            None,
            False,
            0.04,
            {"none": 1.0},
        ),
        FindingType(
            "nodule",
            "anatomicalfinding",
            "lung lesion",
            ("Lung Lesion",),
            "Nodule",
            "Nodule",
            False,
            0.05,
            {"right": 0.5, "left": 0.5},
        ),
        FindingType(
            "mass",
            "anatomicalfinding",
            "lung lesion",
            ("Lung Lesion",),
            "Mass",
            "Mass",
            False,
            0.03,
            {"right": 0.5, "left": 0.5},
        ),
        FindingType(
            "fracture",
            "anatomicalfinding",
            "rib fracture",
            ("Fracture",),
            None,
            None,
            False,
            0.04,
            {"right": 0.5, "left": 0.5},
        ),
        FindingType(
            "endotracheal tube",
            "tubesandlines",
            "endotracheal tube",
            ("Support Devices",),
            None,
            None,
            False,
            0.05,
            {"none": 1.0},
        ),
        FindingType(
            "enteric tube",
            "tubesandlines",
            "enteric tube",
            ("Support Devices",),
            None,
            None,
            False,
            0.04,
            {"none": 1.0},
        ),
        FindingType(
            "central venous catheter",
            "tubesandlines",
            "ij line",
            ("Support Devices",),
            None,
            None,
            False,
            0.06,
            {"right": 0.75, "left": 0.25},
        ),
        FindingType(
            "pacemaker",
            "device",
            "cardiac pacer and wires",
            ("Support Devices",),
            None,
            None,
            False,
            0.04,
            {"left": 0.85, "right": 0.15},
        ),
        # Weight 0: never drawn at random, only where a cohort is enriched with it (COVIDx).
        FindingType(
            COVID_NAME,
            "disease",
            "pneumonia",
            ("Pneumonia", "Lung Opacity"),
            "Pneumonia",
            None,
            True,
            0.0,
            {"bilateral": 1.0},
        ),
    )
}
DEVICE_NAMES = ("endotracheal tube", "enteric tube", "central venous catheter", "pacemaker")
# Findings the world draws at random (scenes, follow-up studies, questions about absent
# findings); the others (weight 0) appear only where a cohort is enriched with them, so that
# adding one changes no existing cohort.
SAMPLED_FINDINGS = tuple(name for name, kind in FINDING_TYPES.items() if kind.weight > 0)
# Findings a present one makes true in words: a report never negates them beside it and no
# question asks about them as absent ("no pneumonia" beside COVID-19 pneumonia).
IMPLIED_FINDINGS = {COVID_NAME: ("pneumonia", "lung opacity")}


@dataclass(frozen=True)
class Finding:
    """One finding of one image: where it is, how large, and how the renderer draws it."""

    name: str
    laterality: str  # "right", "left", "bilateral" or "none"
    severity: str | None  # "small", "moderate", "large"; None for devices
    regions: tuple[str, ...]  # Chest ImaGenome regions the finding lies in
    boxes: tuple[Box, ...]  # one per lesion: two for a bilateral finding
    shape: dict = field(default_factory=dict, compare=False)  # renderer parameters

    @property
    def type(self) -> FindingType:
        return FINDING_TYPES[self.name]

    @property
    def is_device(self) -> bool:
        return self.name in DEVICE_NAMES

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "category": self.type.category,
            "laterality": self.laterality,
            "severity": self.severity,
            "regions": list(self.regions),
            "boxes": [box.as_list() for box in self.boxes],
        }


@dataclass(frozen=True)
class Scene:
    """A frontal radiograph's truth. ``base_anatomy`` is the patient without findings."""

    base_anatomy: Anatomy
    findings: tuple[Finding, ...]

    @property
    def anatomy(self) -> Anatomy:
        """The anatomy as imaged: cardiomegaly and a wide mediastinum change organ sizes."""
        changes = {}
        for finding in self.findings:
            if finding.name == "cardiomegaly":
                changes["cardiothoracic_ratio"] = finding.shape["cardiothoracic_ratio"]
            elif finding.name == "enlarged cardiomediastinum":
                changes["mediastinal_widening"] = finding.shape["mediastinal_widening"]
        return replace(self.base_anatomy, **changes) if changes else self.base_anatomy

    @property
    def is_normal(self) -> bool:
        return not self.findings

    def finding(self, name: str) -> Finding | None:
        return next((f for f in self.findings if f.name == name), None)

    def without(self, name: str) -> Scene:
        return Scene(self.base_anatomy, tuple(f for f in self.findings if f.name != name))

    def region_boxes(self) -> dict[str, Box]:
        return self.anatomy.region_boxes()


def implied_findings(scene: Scene) -> set[str]:
    """Names the scene's findings imply (`IMPLIED_FINDINGS`); empty for most scenes."""
    return {name for f in scene.findings for name in IMPLIED_FINDINGS.get(f.name, ())}


# ---- placement of each kind of finding ---------------------------------------------------


def _sides(laterality: str) -> tuple[str, ...]:
    return ("right", "left") if laterality == "bilateral" else (laterality,)


def _sign(side: str) -> float:
    return -1.0 if side == "right" else 1.0


def _regions_overlapping(anatomy: Anatomy, box: Box, side: str, boxes: dict[str, Box]) -> list[str]:
    """Lung zones covering at least a fifth of the lesion (always the best one)."""
    overlaps = []
    for zone in ("upper", "mid", "lower"):
        region = f"{side} {ZONE_REGION[zone]}"
        overlaps.append((box.intersection(boxes[region]) / max(box.area, 1e-6), region))
    best = max(overlaps)[1]
    return [region for share, region in overlaps if share >= 0.2 or region == best]


def _lesion_in_zone(
    rng: np.random.Generator,
    anatomy: Anatomy,
    side: str,
    zone: str,
    width_fraction: float,
    height_fraction: float,
) -> tuple[dict, Box]:
    """Centre a lesion of the given size on a random lung point of the zone."""
    us, vs = anatomy.zone_points(side, zone)
    pick = rng.integers(len(us))
    radius_u = 0.5 * width_fraction * anatomy.width / anatomy.half_width
    radius_v = 0.5 * height_fraction * anatomy.width / anatomy.lung_height
    # Keep the centre far enough inside the lung that most of the lesion overlies lung.
    lateral = float(anatomy.lateral_edge(np.array(vs[pick])))
    u = _sign(side) * float(np.clip(abs(us[pick]), 0.2, max(0.2, lateral - 0.5 * radius_u)))
    v = float(vs[pick])
    lung_box = Box.around(*anatomy.to_image(*anatomy.lung_points(side)))
    box = anatomy.canonical_box(u - radius_u, v - radius_v, u + radius_u, v + radius_v)
    clipped = Box(
        max(box.x1, lung_box.x1),
        max(box.y1, lung_box.y1),
        min(box.x2, lung_box.x2),
        min(box.y2, lung_box.y2),
    )
    return {"u": u, "v": v, "radius_u": radius_u, "radius_v": radius_v}, clipped


def _zone_choice(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names])
    return names[rng.choice(len(names), p=p / p.sum())]


LESION_ZONES = {
    "consolidation": {"upper": 0.2, "mid": 0.3, "lower": 0.5},
    "pneumonia": {"upper": 0.15, "mid": 0.3, "lower": 0.55},
    "lung opacity": {"upper": 0.2, "mid": 0.35, "lower": 0.45},
    "atelectasis": {"mid": 0.25, "lower": 0.75},
    "nodule": {"upper": 0.35, "mid": 0.35, "lower": 0.3},
    "mass": {"upper": 0.45, "mid": 0.4, "lower": 0.15},
}
LESION_CALIBRATION = {
    "consolidation": "airspace",
    "pneumonia": "airspace",
    "lung opacity": "airspace",
    "atelectasis": "atelectasis",
    "nodule": "nodule",
    "mass": "mass",
}
# How much of its full contrast a finding shows: small findings are faint on purpose.
SEVERITY_CONTRAST = {"small": 0.45, "moderate": 0.75, "large": 1.0, None: 1.0}


def _place_lesion(rng, anatomy, name, laterality, severity, boxes):
    shapes, lesion_boxes, regions = [], [], []
    zone = _zone_choice(rng, LESION_ZONES[name])
    for side in _sides(laterality):
        width, height = sample_lesion_size(rng, LESION_CALIBRATION[name], severity)
        if name == "atelectasis":
            height = min(height, 0.08)
        shape, box = _lesion_in_zone(rng, anatomy, side, zone, width, height)
        shape["side"] = side
        shape["angle"] = float(rng.uniform(-0.4, 0.4))
        shape["texture_seed"] = int(rng.integers(2**31))
        shapes.append(shape)
        lesion_boxes.append(box)
        regions += _regions_overlapping(anatomy, box, side, boxes)
    return {"lesions": shapes, "zone": zone}, lesion_boxes, regions


def _place_effusion(rng, anatomy, laterality, severity, boxes):
    fluid_height = {"small": (0.08, 0.13), "moderate": (0.2, 0.3), "large": (0.38, 0.52)}[severity]
    height = float(rng.uniform(*fluid_height))
    lesion_boxes, regions = [], []
    for side in _sides(laterality):
        us, vs = anatomy.lung_points(side)
        lateral_floor = float(anatomy.dome(np.array(_sign(side) * 0.97)))
        # The meniscus: fluid rises higher along the chest wall than medially.
        wet = vs >= lateral_floor - height * (0.55 + 0.45 * np.abs(us))
        lesion_boxes.append(Box.around(*anatomy.to_image(us[wet], vs[wet])))
        regions.append(f"{side} costophrenic angle")
        if severity != "small":
            regions += [f"{side} lower lung zone", f"{side} hemidiaphragm"]
        if severity == "large":
            regions.append(f"{side} mid lung zone")
    return {"height": height}, lesion_boxes, regions


def _place_pneumothorax(rng, anatomy, side, severity, boxes):
    depth = float(
        rng.uniform(
            *{"small": (0.05, 0.09), "moderate": (0.12, 0.2), "large": (0.28, 0.4)}[severity]
        )
    )
    extent = {"small": 0.38, "moderate": 0.62, "large": 0.95}[severity]
    us, vs = anatomy.lung_points(side)
    rim = (np.abs(us) >= anatomy.lateral_edge(vs) - depth - 0.03) | (
        vs <= anatomy.apex(np.abs(us)) + depth
    )
    keep = rim & (vs <= extent)
    box = Box.around(*anatomy.to_image(us[keep], vs[keep]))
    regions = [f"{side} apical zone", f"{side} upper lung zone"]
    if severity != "small":
        regions.append(f"{side} mid lung zone")
    if severity == "large":
        regions.append(f"{side} lower lung zone")
    return {"depth": depth, "extent": extent}, [box], regions


# COVID-19 pneumonia: faint ground-glass patches in both lungs, along the chest wall, mostly
# basal. Per severity: patches per lung (inclusive range) and the (u, v) semi-axes' ranges.
COVID_PATCHES = {"small": (2, 3), "moderate": (3, 4), "large": (4, 6)}
COVID_RADII = {
    "small": ((0.1, 0.14), (0.06, 0.08)),
    "moderate": ((0.13, 0.18), (0.07, 0.1)),
    "large": ((0.16, 0.22), (0.09, 0.12)),
}
COVID_PERIPHERY = 0.2  # patch centres lie within this many u units of the chest wall
COVID_TOP_V = 0.5  # and in the lower half of the lung: the lower zone or the mid zone's base
COVID_BASAL_SHARE = 0.7  # of the patches after each lung's first (always basal) one


def _place_covid(rng, anatomy, severity, boxes):
    """Bilateral, peripheral, lower-zone-predominant patches. A lung's box encloses its patch
    ellipses within the lung: where the renderer's ``_covid_haze`` puts density (which is zero
    outside the ellipses), give or take the image blur."""
    low, high = COVID_PATCHES[severity]
    (ru_low, ru_high), (rv_low, rv_high) = COVID_RADII[severity]
    patches, lesion_boxes, regions = [], [], []
    for side in ("right", "left"):
        us, vs = anatomy.lung_points(side)
        peripheral = (np.abs(us) >= anatomy.lateral_edge(vs) - COVID_PERIPHERY) & (
            vs >= COVID_TOP_V
        )
        basal = peripheral & (vs >= ZONE_LIMITS["lower"][0])
        covered = np.zeros(len(us), bool)
        zones = set()
        for index in range(int(rng.integers(low, high + 1))):
            wanted = (
                basal if index == 0 or rng.random() < COVID_BASAL_SHARE else peripheral & ~basal
            )
            pool = np.flatnonzero(wanted if wanted.any() else peripheral)
            pick = pool[rng.integers(len(pool))]
            patch = {
                "side": side,
                "u": float(us[pick]),
                "v": float(vs[pick]),
                "radius_u": float(rng.uniform(ru_low, ru_high)),
                "radius_v": float(rng.uniform(rv_low, rv_high)),
            }
            inside = (
                np.hypot(
                    (us - patch["u"]) / patch["radius_u"], (vs - patch["v"]) / patch["radius_v"]
                )
                <= 1.0
            )
            covered |= inside
            patch_box = Box.around(*anatomy.to_image(us[inside], vs[inside]))
            zones.update(_regions_overlapping(anatomy, patch_box, side, boxes))
            patches.append(patch)
        lesion_boxes.append(Box.around(*anatomy.to_image(us[covered], vs[covered])))
        regions += [
            f"{side} {ZONE_REGION[z]}"
            for z in ("upper", "mid", "lower")
            if f"{side} {ZONE_REGION[z]}" in zones
        ]
    shape = {"patches": patches, "texture_seed": int(rng.integers(2**31))}
    return shape, lesion_boxes, regions


def _place_fracture(rng, anatomy, side, boxes):
    if rng.random() < 0.2:
        u = _sign(side) * float(rng.uniform(0.35, 0.7))
        v = anatomy.clavicle_v
        region = f"{side} clavicle"
        target = "clavicle"
        rib = -1
    else:
        rib = int(rng.integers(3, 8))  # ribs over the lung, not behind the liver
        u = _sign(side) * float(rng.uniform(0.6, 0.85))
        v = float(rib_v(anatomy, rib, np.array(abs(u))))
        target = "rib"
        zone = (
            "upper"
            if v < ZONE_LIMITS["mid"][0]
            else "mid"
            if v < ZONE_LIMITS["lower"][0]
            else "lower"
        )
        region = f"{side} {ZONE_REGION[zone]}"
    box = anatomy.canonical_box(u - 0.07, v - 0.05, u + 0.07, v + 0.05)
    return (
        {"target": target, "rib": rib, "u": u, "v": v, "step": float(rng.uniform(0.004, 0.012))},
        [box],
        [region],
    )


def rib_v(anatomy: Anatomy, rib: int, absolute_u: np.ndarray) -> np.ndarray:
    """v of the centre line of posterior rib ``rib`` (1 = highest) at |u| (canonical frame).

    Posterior ribs leave the spine, arch upward over the lung and fall along the chest wall.
    """
    # Intercostal spaces widen toward the bases.
    start = -0.12 + 0.085 * rib + 0.0035 * rib**2
    arch = 0.13 * np.sin(np.pi * np.clip(absolute_u, 0.0, 1.1) / 1.25)
    return start - arch + 0.16 * np.clip(absolute_u, 0.0, 1.2) ** 2


def _place_device(rng, anatomy, name, laterality, boxes):
    carina_v = 0.35
    if name == "endotracheal tube":
        tip = carina_v - float(rng.uniform(0.08, 0.22))
        shape = {"tip_v": tip}
        box = anatomy.canonical_box(-0.035, -0.7, 0.035, tip)
        return shape, [box], ["trachea"]
    if name == "enteric tube":
        stomach_v = anatomy.left_dome_base + float(rng.uniform(0.12, 0.22))
        shape = {"tip_u": float(rng.uniform(0.2, 0.45)), "tip_v": stomach_v}
        box = anatomy.canonical_box(-0.04, -0.7, shape["tip_u"] + 0.04, stomach_v)
        return shape, [box], ["abdomen"]
    if name == "central venous catheter":
        tip_region = "cavoatrial junction" if rng.random() < 0.45 else "svc"
        tip_v = float(
            rng.uniform(0.48, 0.56)
            if tip_region == "cavoatrial junction"
            else rng.uniform(0.24, 0.42)
        )
        entry_u = _sign(laterality) * (0.2 if rng.random() < 0.7 else 0.55)
        shape = {"entry_u": entry_u, "tip_u": -0.08, "tip_v": tip_v}
        box = anatomy.canonical_box(
            min(entry_u, -0.1) - 0.03, -0.6, max(entry_u, -0.06) + 0.03, tip_v + 0.02
        )
        return shape, [box], [tip_region]
    # Pacemaker: generator over the upper chest, leads to the right atrium and ventricle.
    gen_u = _sign(laterality) * float(rng.uniform(0.55, 0.8))
    gen_v = float(rng.uniform(-0.05, 0.08))
    shape = {"generator_u": gen_u, "generator_v": gen_v}
    box = anatomy.canonical_box(min(gen_u, -0.2) - 0.12, gen_v - 0.08, max(gen_u, 0.3) + 0.12, 0.9)
    return shape, [box], ["right atrium", "cardiac silhouette"]


def place_finding(
    rng: np.random.Generator, anatomy: Anatomy, name: str, boxes: dict[str, Box]
) -> Finding:
    """Place one finding of type ``name`` with random laterality, severity and position."""
    kind = FINDING_TYPES[name]
    sides = list(kind.lateralities)
    probs = np.array([kind.lateralities[s] for s in sides])
    laterality = sides[rng.choice(len(sides), p=probs / probs.sum())]
    severity = None if name in DEVICE_NAMES else SEVERITIES[rng.choice(3, p=[0.4, 0.35, 0.25])]
    if name in LESION_ZONES:
        shape, lesion_boxes, regions = _place_lesion(
            rng, anatomy, name, laterality, severity, boxes
        )
    elif name == "pleural effusion":
        shape, lesion_boxes, regions = _place_effusion(rng, anatomy, laterality, severity, boxes)
    elif name == "pneumothorax":
        shape, lesion_boxes, regions = _place_pneumothorax(
            rng, anatomy, laterality, severity, boxes
        )
    elif name == "fracture":
        shape, lesion_boxes, regions = _place_fracture(rng, anatomy, laterality, boxes)
    elif name == COVID_NAME:
        shape, lesion_boxes, regions = _place_covid(rng, anatomy, severity, boxes)
    elif name == "pulmonary edema":
        shape = {"texture_seed": int(rng.integers(2**31))}
        # A diffuse process: it hazes both lungs, densest around the hila.
        lesion_boxes = [boxes["right lung"], boxes["left lung"]]
        regions = [
            f"{s} {r}" for s in ("right", "left") for r in ("hilar structures", "mid lung zone")
        ]
        if severity == "large":
            regions += ["right lower lung zone", "left lower lung zone"]
    elif name == "cardiomegaly":
        ratio = float(
            rng.uniform(
                *{"small": (0.54, 0.57), "moderate": (0.57, 0.61), "large": (0.61, 0.67)}[severity]
            )
        )
        shape = {"cardiothoracic_ratio": ratio}
        enlarged = replace(anatomy, cardiothoracic_ratio=ratio)
        lesion_boxes, regions = (
            [enlarged.region_boxes()["cardiac silhouette"]],
            ["cardiac silhouette"],
        )
    elif name == "enlarged cardiomediastinum":
        widening = float(
            rng.uniform(
                *{"small": (0.06, 0.08), "moderate": (0.09, 0.12), "large": (0.13, 0.17)}[severity]
            )
        )
        shape = {"mediastinal_widening": widening}
        upper = anatomy.mediastinum_half_width + widening
        lesion_boxes = [anatomy.canonical_box(-upper - 0.06, -0.25, upper + 0.14, 0.55)]
        regions = ["upper mediastinum", "mediastinum"]
    else:
        shape, lesion_boxes, regions = _place_device(rng, anatomy, name, laterality, boxes)
    clipped = tuple(b.clip(anatomy.width, anatomy.height) for b in lesion_boxes)
    return Finding(name, laterality, severity, tuple(dict.fromkeys(regions)), clipped, shape)


def sample_scene(
    rng: np.random.Generator, anatomy: Anatomy, normal_fraction: float = 1 / 3
) -> Scene:
    """About a third of scenes are normal; the rest carry one to four distinct findings."""
    if rng.random() < normal_fraction:
        return Scene(anatomy, ())
    count = int(rng.choice([1, 2, 3, 4], p=[0.4, 0.3, 0.2, 0.1]))
    names = list(SAMPLED_FINDINGS)
    weights = np.array([FINDING_TYPES[n].weight for n in names])
    chosen = rng.choice(len(names), size=count, replace=False, p=weights / weights.sum())
    boxes = anatomy.region_boxes()
    findings = tuple(place_finding(rng, anatomy, names[i], boxes) for i in sorted(chosen))
    return Scene(anatomy, findings)
