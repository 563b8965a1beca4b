"""Patient anatomy of the synthetic world and the 29 Chest ImaGenome region boxes it implies.

Anatomy is described in a canonical chest frame ``(u, v)``: ``u`` runs across the chest in
units of the thoracic half-width (negative = image left = the patient's right, as on a PA
film), ``v`` runs down from the lung apices (0) to the hemidiaphragms (about 1). One affine
map (scale, rotation, shift) places that frame on the image; the renderer inverts it per
pixel and the region boxes are the image-space extents of canonical shapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from cxrvlp.constants import CHEST_IMAGENOME_REGIONS

# Lung zones: upper / mid / lower split the lung height in thirds, apical zone is its top.
ZONE_LIMITS = {
    "apical": (-1.0, 0.15),
    "upper": (-1.0, 0.36),
    "mid": (0.36, 0.64),
    "lower": (0.64, 2.0),
}
APEX_CENTER_U = 0.33
HEART_TILT = 0.12  # v per unit u: the cardiac apex sits lower than the right heart border


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in image pixels (x1, y1 top-left; x2, y2 bottom-right)."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    def clip(self, width: float, height: float) -> Box:
        return Box(
            min(max(self.x1, 0.0), width - 1),
            min(max(self.y1, 0.0), height - 1),
            min(max(self.x2, 1.0), width),
            min(max(self.y2, 1.0), height),
        )

    def intersection(self, other: Box) -> float:
        w = min(self.x2, other.x2) - max(self.x1, other.x1)
        h = min(self.y2, other.y2) - max(self.y1, other.y1)
        return max(0.0, w) * max(0.0, h)

    def as_list(self) -> list[float]:
        return [round(self.x1, 2), round(self.y1, 2), round(self.x2, 2), round(self.y2, 2)]

    @staticmethod
    def around(xs: np.ndarray, ys: np.ndarray) -> Box:
        return Box(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))


@dataclass(frozen=True)
class Anatomy:
    """One frontal radiograph's anatomy: body habitus, positioning and organ sizes."""

    width: int
    height: int
    view: str  # "PA" or "AP"
    sex: str  # "M" or "F"
    center_x: float  # pixel position of the thorax centre (u = 0, v = 0.5)
    center_y: float
    half_width: float  # pixels per unit of u
    lung_height: float  # pixels per unit of v (apex to hemidiaphragm: depth of inspiration)
    rotation: float  # radians, patient rotation in the image plane
    cardiothoracic_ratio: float
    mediastinum_half_width: float  # in u units, upper mediastinum
    right_dome_base: float  # v of the right hemidiaphragm (higher than the left: smaller)
    left_dome_base: float
    dome_height: float
    body_half_width: float  # soft tissue extent in u units
    clavicle_drop: float  # v offset of the clavicles (AP films project them higher)
    mediastinal_widening: float = 0.0  # extra upper-mediastinal half-width (u units)

    def mediastinum_width(self, v: np.ndarray) -> np.ndarray:
        """Half-width of the mediastinal column at height v; widening affects its upper part."""
        window = np.clip((v + 0.25) / 0.1, 0.0, 1.0) * np.clip((0.55 - v) / 0.1, 0.0, 1.0)
        return self.mediastinum_half_width + self.mediastinal_widening * window

    @property
    def clavicle_v(self) -> float:
        """v of the clavicles' mid-shaft: below the apices, higher on AP films."""
        return 0.06 + self.clavicle_drop

    # ---- canonical shape functions (vectorised over numpy arrays) --------------------
    def heart_ellipse(self) -> tuple[float, float, float, float]:
        """(u centre, v centre, u semi-axis, v semi-axis) of the cardiac silhouette.

        The silhouette is this ellipse sheared by ``HEART_TILT``: its left (apex) side sits
        lower than its right atrial side, as on a real film.
        """
        left = 2.0 * self.cardiothoracic_ratio * 0.66
        right = 2.0 * self.cardiothoracic_ratio * 0.34
        top = 0.42
        bottom = 0.5 * (self.right_dome_base + self.left_dome_base) + 0.03
        return (
            (left - right) / 2.0,
            (top + bottom) / 2.0,
            (left + right) / 2.0,
            (bottom - top) / 2.0,
        )

    def heart_distance(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Normalised radius of (u, v) in the sheared heart ellipse (< 1 inside)."""
        uc, vc, a, b = self.heart_ellipse()
        du = u - uc
        return np.hypot(du / a, (v - vc - HEART_TILT * du) / b)

    def heart_borders(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """u of the right and left heart borders at height v, and where the heart exists."""
        uc, vc, a, b = self.heart_ellipse()
        dv = v - vc
        qa = 1.0 / a**2 + HEART_TILT**2 / b**2
        qb = -2.0 * HEART_TILT * dv / b**2
        qc = dv**2 / b**2 - 1.0
        disc = qb**2 - 4.0 * qa * qc
        root = np.sqrt(np.clip(disc, 0.0, None))
        return uc + (-qb - root) / (2 * qa), uc + (-qb + root) / (2 * qa), disc > 0

    def heart_box(self) -> tuple[float, float, float, float]:
        """Canonical (u1, v1, u2, v2) extent of the sheared heart."""
        uc, vc, a, b = self.heart_ellipse()
        half_height = math.sqrt(b**2 + (HEART_TILT * a) ** 2)
        return uc - a, vc - half_height, uc + a, vc + half_height

    def dome(self, u: np.ndarray) -> np.ndarray:
        """v of the hemidiaphragm under each u (the lung's lower border)."""
        base = np.where(u < 0, self.right_dome_base, self.left_dome_base)
        offset = (np.abs(u) - 0.45) / 0.55
        return base + 0.03 - self.dome_height * (1.0 - np.clip(offset, -1.0, 1.0) ** 2)

    def lateral_edge(self, v: np.ndarray) -> np.ndarray:
        """|u| of the lung's lateral border (chest wall) at height v."""
        return APEX_CENTER_U + 0.64 * np.sqrt(np.clip(v / 0.85, 0.0, 1.0))

    def apex(self, absolute_u: np.ndarray) -> np.ndarray:
        """v of the lung apex dome medial to the apex centre (the chest wall rounds the rest)."""
        return 0.32 * (np.clip(APEX_CENTER_U - absolute_u, 0.0, None) / 0.24) ** 2

    def medial_edge(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """|u| of the lung's medial border: mediastinum, aortic knob and heart."""
        right_border, left_border, exists = self.heart_borders(v)
        heart_right = np.where(exists, -right_border, 0.0)
        heart_left = np.where(exists, left_border, 0.0)
        knob = 0.22 * np.exp(-(((v - 0.22) / 0.07) ** 2))
        column = self.mediastinum_width(v)
        right = np.maximum(column, heart_right * 0.98)
        left = np.maximum(np.maximum(column + 0.02, knob), heart_left * 0.98)
        return np.where(u < 0, right, left)

    def lung_mask(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        au = np.abs(u)
        return (
            (v >= self.apex(au))
            & (au <= self.lateral_edge(v))
            & (au >= self.medial_edge(u, v))
            & (v <= self.dome(u))
        )

    # ---- frame mapping -----------------------------------------------------------
    def to_image(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx = self.half_width * np.asarray(u)
        dy = self.lung_height * (np.asarray(v) - 0.5)
        cos, sin = math.cos(self.rotation), math.sin(self.rotation)
        return self.center_x + cos * dx - sin * dy, self.center_y + sin * dx + cos * dy

    def to_canonical(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx = np.asarray(x) - self.center_x
        dy = np.asarray(y) - self.center_y
        cos, sin = math.cos(self.rotation), math.sin(self.rotation)
        return (cos * dx + sin * dy) / self.half_width, (
            -sin * dx + cos * dy
        ) / self.lung_height + 0.5

    def canonical_box(self, u1: float, v1: float, u2: float, v2: float) -> Box:
        xs, ys = self.to_image(np.array([u1, u2, u1, u2]), np.array([v1, v1, v2, v2]))
        return Box.around(xs, ys)

    # ---- regions -------------------------------------------------------------------
    @lru_cache(maxsize=512)  # noqa: B019 - anatomies are frozen; scenes ask many times
    def lung_points(self, side: str) -> tuple[np.ndarray, np.ndarray]:
        """Canonical (u, v) samples inside one lung (side: "right" or "left")."""
        u, v = np.meshgrid(np.linspace(-1.05, 1.05, 211), np.linspace(-0.05, 1.15, 121))
        sign = -1.0 if side == "right" else 1.0
        inside = self.lung_mask(u, v) & (sign * u > 0)
        return u[inside], v[inside]

    def zone_points(self, side: str, zone: str) -> tuple[np.ndarray, np.ndarray]:
        u, v = self.lung_points(side)
        low, high = ZONE_LIMITS[zone]
        keep = (v >= low) & (v < high)
        return u[keep], v[keep]

    def region_boxes(self) -> dict[str, Box]:
        """The 29 Chest ImaGenome region boxes in image pixels, clipped to the image."""
        return dict(self._region_boxes())

    @lru_cache(maxsize=512)  # noqa: B019 - anatomies are frozen; scenes ask many times
    def _region_boxes(self) -> tuple[tuple[str, Box], ...]:
        boxes: dict[str, Box] = {}
        heart_u1, heart_v1, heart_u2, heart_v2 = self.heart_box()
        for side in ("right", "left"):
            sign = -1.0 if side == "right" else 1.0
            lung_u, lung_v = self.lung_points(side)
            boxes[f"{side} lung"] = Box.around(*self.to_image(lung_u, lung_v))
            for zone, name in (
                ("upper", "upper lung zone"),
                ("mid", "mid lung zone"),
                ("lower", "lower lung zone"),
                ("apical", "apical zone"),
            ):
                boxes[f"{side} {name}"] = Box.around(*self.to_image(*self.zone_points(side, zone)))
            boxes[f"{side} hilar structures"] = self._side_box(sign, 0.09, 0.36, 0.30, 0.56)
            lateral_v = float(self.dome(np.array(sign * 0.97))) - 0.01
            lateral_u = float(self.lateral_edge(np.array(lateral_v)))
            boxes[f"{side} costophrenic angle"] = self._side_box(
                sign, lateral_u - 0.26, lateral_u + 0.03, lateral_v - 0.2, lateral_v + 0.05
            )
            dome_u = np.linspace(0.05, lateral_u, 40) * sign
            dome_v = self.dome(dome_u)
            boxes[f"{side} hemidiaphragm"] = Box.around(
                *self.to_image(
                    np.concatenate([dome_u, dome_u]), np.concatenate([dome_v - 0.02, dome_v + 0.04])
                )
            )
            boxes[f"{side} clavicle"] = self._side_box(
                sign, 0.07, 0.92, self.clavicle_v - 0.08, self.clavicle_v + 0.08
            )
        mw = self.mediastinum_half_width
        boxes["trachea"] = self.canonical_box(-0.06, -0.3, 0.06, 0.34)
        boxes["spine"] = self.canonical_box(-0.1, -0.3, 0.1, 1.15)
        boxes["aortic arch"] = self.canonical_box(0.02, 0.12, 0.28, 0.32)
        boxes["mediastinum"] = self.canonical_box(
            min(-mw, heart_u1), -0.1, max(mw + 0.1, heart_u2), heart_v2
        )
        upper = mw + self.mediastinal_widening
        boxes["upper mediastinum"] = self.canonical_box(-upper - 0.04, -0.1, upper + 0.12, 0.40)
        boxes["svc"] = self.canonical_box(-mw - 0.06, 0.10, -0.02, 0.50)
        boxes["cardiac silhouette"] = self.canonical_box(heart_u1, heart_v1, heart_u2, heart_v2)
        boxes["cavoatrial junction"] = self.canonical_box(-mw - 0.08, 0.46, -0.02, 0.60)
        boxes["right atrium"] = self.canonical_box(heart_u1, 0.55, -0.02, heart_v2 - 0.08)
        boxes["carina"] = self.canonical_box(-0.07, 0.27, 0.07, 0.42)
        abdomen_top = min(self.right_dome_base, self.left_dome_base) - self.dome_height
        boxes["abdomen"] = self.canonical_box(-1.0, abdomen_top + 0.05, 1.0, abdomen_top + 0.5)
        return tuple(
            (name, boxes[name].clip(self.width, self.height)) for name in CHEST_IMAGENOME_REGIONS
        )

    def _side_box(self, sign: float, u_in: float, u_out: float, v1: float, v2: float) -> Box:
        us = sorted((sign * u_in, sign * u_out))
        return self.canonical_box(us[0], v1, us[1], v2)


def sample_anatomy(
    rng: np.random.Generator, width: int, height: int, view: str, sex: str
) -> Anatomy:
    """A plausible adult anatomy: size, inspiration, rotation and shift all vary."""
    portable = view == "AP"
    half_width = width * rng.uniform(0.33, 0.41) * (0.95 if sex == "F" else 1.0)
    inspiration = rng.uniform(0.88, 1.08) * (0.93 if portable else 1.0)
    lung_height = half_width * rng.uniform(1.45, 1.65) * inspiration
    top = height * 0.5 - lung_height * 0.58 + rng.normal(0.0, 0.03) * height
    ctr = rng.uniform(0.40, 0.49) + (0.03 if portable else 0.0)
    right_base = rng.uniform(0.93, 0.98)
    return Anatomy(
        width=width,
        height=height,
        view=view,
        sex=sex,
        center_x=width * 0.5 + rng.normal(0.0, 0.025) * width,
        center_y=top + 0.5 * lung_height,
        half_width=half_width,
        lung_height=lung_height,
        rotation=math.radians(rng.normal(0.0, 2.0)),
        cardiothoracic_ratio=ctr,
        mediastinum_half_width=rng.uniform(0.13, 0.17),
        right_dome_base=right_base,
        left_dome_base=right_base + rng.uniform(0.02, 0.06),
        dome_height=rng.uniform(0.07, 0.11),
        body_half_width=rng.uniform(1.12, 1.3) * (1.05 if sex == "F" else 1.0),
        clavicle_drop=rng.uniform(-0.08, -0.03) if portable else rng.uniform(-0.02, 0.03),
    )
