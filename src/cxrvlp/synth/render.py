"""Radiograph-like rendering of a scene (frontal and lateral views).

The renderer builds an attenuation map in two layers: smooth anatomy (soft tissue, lungs,
heart, diffuse findings) computed on a half-resolution grid of canonical coordinates, and
fine structures (ribs, vessels, spine, devices, pleural lines) drawn at full resolution with
PIL. The displayed radiograph is ``1 - exp(-attenuation)`` with exposure, blur, quantum noise
and burned-in markers, so air is black and bone is white as on a real film.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import gaussian_filter

from cxrvlp.synth.anatomy import Anatomy
from cxrvlp.synth.scene import COVID_NAME, SEVERITY_CONTRAST, Finding, Scene, rib_v

POSTERIOR_RIBS = range(1, 12)
# Peak attenuation each diffuse finding adds at full severity (before SEVERITY_CONTRAST).
AIRSPACE_DENSITY = {
    "consolidation": 0.3,
    "pneumonia": 0.28,
    "lung opacity": 0.17,
    "atelectasis": 0.24,
}
# Ground glass is fainter than consolidation: the vessels stay visible through it.
GROUND_GLASS_DENSITY = 0.2


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _soft_inside(signed_distance: np.ndarray, softness: float) -> np.ndarray:
    """1 well inside (positive distance), 0 outside, smooth over ``softness``."""
    return _smoothstep(0.5 + signed_distance / (2.0 * softness))


class _Layers:
    """Canonical-coordinate grids and the two attenuation layers of one frontal image."""

    def __init__(self, anatomy: Anatomy, rng: np.random.Generator):
        self.anatomy = anatomy
        self.rng = rng
        self.width, self.height = anatomy.width, anatomy.height
        self.small_w, self.small_h = (self.width + 1) // 2, (self.height + 1) // 2
        xs = (np.arange(self.small_w, dtype=np.float32) + 0.5) * (self.width / self.small_w)
        ys = (np.arange(self.small_h, dtype=np.float32) + 0.5) * (self.height / self.small_h)
        x, y = np.meshgrid(xs, ys)
        u, v = anatomy.to_canonical(x, y)
        self.u, self.v = u.astype(np.float32), v.astype(np.float32)
        self.smooth = np.zeros((self.small_h, self.small_w), np.float32)
        self.fine = Image.new("F", (self.width, self.height), 0.0)
        self.draw = ImageDraw.Draw(self.fine)
        self.markings = Image.new("F", (self.width, self.height), 0.0)
        self.markings_draw = ImageDraw.Draw(self.markings)

    def px(self, u: float | np.ndarray, v: float | np.ndarray) -> list[tuple[float, float]]:
        x, y = self.anatomy.to_image(np.atleast_1d(u), np.atleast_1d(v))
        return list(zip(x.tolist(), y.tolist(), strict=True))

    def line(
        self, u, v, width_v: float, value: float, draw: ImageDraw.ImageDraw | None = None
    ) -> None:
        """A polyline through canonical points, width given in v units."""
        width = max(1, round(width_v * self.anatomy.lung_height))
        (draw or self.draw).line(self.px(u, v), fill=float(value), width=width)


# ---- normal anatomy -----------------------------------------------------------------------


def _body(layers: _Layers) -> np.ndarray:
    """Soft tissue: neck, shoulders, chest wall, abdomen; arms and humeral heads at the edges."""
    a, u, v = layers.anatomy, layers.u, layers.v
    half = a.body_half_width * np.where(
        v < -0.2,
        0.3 + 0.7 * _smoothstep((v + 0.62) / 0.42),
        1.0 - 0.06 * _smoothstep((v - 0.9) / 0.5),
    )
    inside = _soft_inside(half - np.abs(u), 0.05)
    depth = np.sqrt(np.clip(1.0 - (u / np.maximum(half, 1e-3)) ** 2, 0.0, 1.0))
    tissue = inside * (0.6 + 0.4 * depth)
    arm_gap = np.abs(np.abs(u) - a.body_half_width - 0.22)
    arms = _soft_inside(0.15 - arm_gap, 0.05) * _soft_inside(0.45 - v, 0.25)
    humerus = _soft_inside(0.1 - np.hypot(np.abs(u) - a.body_half_width - 0.1, v + 0.3), 0.03)
    if a.sex == "F":
        breast = _soft_inside(0.4 - np.hypot(np.abs(u) - 0.62, (v - 0.95) * 1.2), 0.2)
        tissue = tissue + 0.18 * breast * inside
    return 0.4 * tissue + 0.3 * arms + 0.22 * humerus


def _lungs(layers: _Layers) -> np.ndarray:
    a = layers.anatomy
    mask = gaussian_filter(a.lung_mask(layers.u, layers.v).astype(np.float32), 1.2)
    # Lungs are thicker (darker) low and lateral, thinner under the apices and near the hila.
    hilum = np.exp(-(((np.abs(layers.u) - 0.2) / 0.15) ** 2) - ((layers.v - 0.45) / 0.12) ** 2)
    thickness = 0.72 + 0.28 * _smoothstep(layers.v / 0.6) - 0.25 * hilum
    return mask * thickness


def _mediastinum(layers: _Layers) -> np.ndarray:
    """Heart, great vessels and the mediastinal column over the body; the abdomen below."""
    a, u, v = layers.anatomy, layers.u, layers.v
    # The heart's upper border fades into the mediastinum; its lateral borders are sharp.
    heart = _soft_inside(1.0 - a.heart_distance(u, v), 0.04 + 0.25 * _smoothstep((0.6 - v) / 0.2))
    column = _soft_inside(a.mediastinum_width(v) + 0.02 - np.abs(u - 0.02), 0.03)
    column = column * _soft_inside(0.8 - v, 0.1) * (0.5 + 0.5 * _soft_inside(v + 0.1, 0.15))
    knob = _soft_inside(0.08 - np.hypot(u - 0.14, (v - 0.22) * 0.8), 0.02)
    # The liver and spleen under the domes, fading out lateral to the costophrenic angles.
    under_lungs = _soft_inside(a.lateral_edge(np.ones_like(u)) + 0.02 - np.abs(u), 0.08)
    below = _soft_inside(v - a.dome(u) + 0.01, 0.025) * under_lungs
    gas = _soft_inside(0.07 - np.hypot((u - 0.42) / 1.6, v - a.left_dome_base - 0.09), 0.03)
    central = np.maximum(np.maximum(0.22 * heart, 0.24 * column), 0.24 * knob)
    return central + 0.2 * below * (1.0 - heart) - 0.15 * gas * below


def _draw_ribs(layers: _Layers, fractures: list[Finding]) -> None:
    a = layers.anatomy
    rib_width = 0.042
    fractured = {(f.shape["rib"], f.laterality): f for f in fractures if f.shape["target"] == "rib"}
    for side_sign, side in ((-1.0, "right"), (1.0, "left")):
        for rib in POSTERIOR_RIBS:
            au = np.linspace(0.07, 1.1, 40)
            rv = rib_v(a, rib, au)
            fracture = fractured.get((rib, side))
            if fracture is None:
                _rib_segment(layers, side_sign * au, rv, rib_width)
            else:
                cut = abs(fracture.shape["u"])
                contrast = SEVERITY_CONTRAST[fracture.severity]
                step = fracture.shape["step"] * (1.5 + 4.0 * contrast)
                inner, outer = au < cut - 0.02, au > cut + 0.02 * (1 + contrast)
                displaced = rv + step * _fragment_taper(au, cut)
                _rib_segment(layers, side_sign * au[inner], rv[inner], rib_width)
                _rib_segment(layers, side_sign * au[outer], displaced[outer], rib_width)
            # The anterior rib: from the lateral wall, fainter, running down and medially.
            if rib <= 7:
                lateral = float(rib_v(a, rib, np.array(1.1)))
                ant_u = np.linspace(1.1, 0.36, 24)
                ant_v = lateral + 0.3 * ((1.1 - ant_u) / 0.74) ** 1.2
                layers.line(side_sign * ant_u, ant_v, rib_width * 1.15, 0.035)


def _fragment_taper(absolute_u: np.ndarray, cut: float) -> np.ndarray:
    """A displaced fragment is offset at the break and realigns within a short distance."""
    return np.clip(1.0 - (absolute_u - cut) / 0.06, 0.0, 1.0)


def _rib_segment(layers: _Layers, u: np.ndarray, v: np.ndarray, width: float) -> None:
    if len(u) < 2:
        return
    # Ribs projected over the abdomen are seen through the liver: fainter.
    strength = 1.0 if float(np.mean(v)) < 0.95 else 0.55
    layers.line(u, v, width, 0.055 * strength)
    layers.line(u, v, width * 0.5, -0.012 * strength)  # thinner medulla: cortices stand out


def _draw_clavicles(layers: _Layers, fractures: list[Finding]) -> None:
    a = layers.anatomy
    broken = {f.laterality: f for f in fractures if f.shape["target"] == "clavicle"}
    for side_sign, side in ((-1.0, "right"), (1.0, "left")):
        au = np.linspace(0.08, 0.98, 40)
        cv = a.clavicle_v + 0.06 - 0.14 * au + 0.03 * np.sin(2 * np.pi * au)
        fracture = broken.get(side)
        if fracture is None:
            layers.line(side_sign * au, cv, 0.055, 0.16)
            continue
        cut = abs(fracture.shape["u"])
        contrast = SEVERITY_CONTRAST[fracture.severity]
        inner, outer = au < cut - 0.01, au > cut + 0.01 * (1 + 2 * contrast)
        layers.line(side_sign * au[inner], cv[inner], 0.055, 0.16)
        shifted = cv[outer] + fracture.shape["step"] * 3 * contrast * _fragment_taper(
            au[outer], cut
        )
        layers.line(side_sign * au[outer], shifted, 0.055, 0.16)


def _draw_spine_and_airways(layers: _Layers) -> None:
    a = layers.anatomy
    for level in np.arange(-0.45, 1.35, 0.095):
        corners = layers.px(
            np.array([-0.075, 0.075, 0.075, -0.075]),
            np.array([level, level, level + 0.075, level + 0.075]),
        )
        layers.draw.polygon(corners, fill=0.07)
        for pedicle in (-0.055, 0.055):
            ((x, y),) = layers.px(pedicle, level + 0.03)
            r = 0.012 * a.half_width
            layers.draw.ellipse(
                [x - r, y - 1.4 * r, x + r, y + 1.4 * r], outline=0.08, width=max(1, round(r / 3))
            )
    # Trachea and main bronchi are air columns: darker than the mediastinum around them.
    layers.line(np.array([0.0, 0.0, 0.005]), np.array([-0.7, 0.1, 0.35]), 0.05, -0.12)
    layers.line(np.array([0.005, -0.14, -0.24]), np.array([0.35, 0.42, 0.5]), 0.03, -0.08)
    layers.line(np.array([0.005, 0.16, 0.27]), np.array([0.35, 0.44, 0.53]), 0.028, -0.08)
    # Descending aorta along the left of the spine.
    layers.line(np.array([0.15, 0.1, 0.08]), np.array([0.25, 0.6, 1.0]), 0.05, 0.03)


def _draw_vessels(layers: _Layers, rng: np.random.Generator, blur: float) -> None:
    """Pulmonary vessels branching out of the hila, thinning toward the periphery."""
    for side_sign in (-1.0, 1.0):
        for _ in range(14):
            angle = rng.uniform(-0.45 * math.pi, 0.55 * math.pi)
            length = 0.35 + 0.25 * rng.random()
            _branch(layers, rng, side_sign * 0.2, 0.45, side_sign, angle, 0.018, length, depth=0)
    layers.markings = Image.fromarray(gaussian_filter(np.asarray(layers.markings), blur))


def _branch(layers, rng, u, v, side_sign, angle, width, length, depth) -> None:
    """One vessel as a wandering polyline; two thinner branches leave it at random points."""
    steps = 6
    us, vs = [u], [v]
    for _ in range(steps):
        angle += rng.normal(0.0, 0.08)
        u += side_sign * math.cos(angle) * length / steps
        v += math.sin(angle) * length / steps * 0.9
        us.append(u)
        vs.append(v)
    layers.line(np.array(us), np.array(vs), width, 0.075 - 0.02 * depth, layers.markings_draw)
    if depth < 2:
        for _ in range(2):
            i = int(rng.integers(2, steps))
            turn = rng.normal(0.0, 0.6)
            _branch(
                layers,
                rng,
                us[i],
                vs[i],
                side_sign,
                angle + turn,
                width * 0.6,
                length * 0.55,
                depth + 1,
            )


# ---- findings ------------------------------------------------------------------------------


def _texture(layers: _Layers, seed: int, scale: float) -> np.ndarray:
    """Patchy band-limited noise in [0, 1], stable for a given seed."""
    noise = np.random.default_rng(seed).standard_normal(layers.u.shape).astype(np.float32)
    noise = gaussian_filter(noise, scale)
    return _smoothstep(0.5 + noise / (4.0 * noise.std() + 1e-6))


def _lesion_profile(layers: _Layers, lesion: dict, edge: float) -> np.ndarray:
    a = layers.anatomy
    du, dv = layers.u - lesion["u"], layers.v - lesion["v"]
    cos, sin = math.cos(lesion["angle"]), math.sin(lesion["angle"])
    ru, rv = lesion["radius_u"], lesion["radius_v"] * a.lung_height / a.half_width
    r = np.hypot((cos * du + sin * dv) / ru, (-sin * du + cos * dv) / rv)
    return _soft_inside(1.0 - r, edge)


def _side_lung(layers: _Layers, side: str) -> np.ndarray:
    sign = -1.0 if side == "right" else 1.0
    mask = layers.anatomy.lung_mask(layers.u, layers.v) & (sign * layers.u > 0)
    return gaussian_filter(mask.astype(np.float32), 1.0)


def _findings_smooth(
    layers: _Layers, scene: Scene, lungs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Attenuation added by diffuse findings, and how much lung markings stay visible."""
    a = layers.anatomy
    added = np.zeros_like(layers.u)
    markings_keep = np.ones_like(layers.u)
    for finding in scene.findings:
        contrast = SEVERITY_CONTRAST[finding.severity]
        if finding.name in AIRSPACE_DENSITY:
            for lesion in finding.shape["lesions"]:
                hazy = finding.name in ("lung opacity", "atelectasis")
                blob = _lesion_profile(layers, lesion, 0.45 if hazy else 0.3)
                patches = _texture(layers, lesion["texture_seed"], 2.5 if hazy else 1.6)
                density = blob * (0.55 + 0.45 * patches) * _side_lung(layers, lesion["side"])
                added += AIRSPACE_DENSITY[finding.name] * contrast * density
        elif finding.name in ("nodule", "mass"):
            for lesion in finding.shape["lesions"]:
                profile = _lesion_profile(layers, lesion, 0.12 if finding.name == "nodule" else 0.2)
                profile = np.sqrt(profile) * _side_lung(layers, lesion["side"])
                added += (0.22 if finding.name == "nodule" else 0.3) * contrast * profile
        elif finding.name == "pleural effusion":
            for side in (
                ("right", "left") if finding.laterality == "bilateral" else (finding.laterality,)
            ):
                sign = -1.0 if side == "right" else 1.0
                floor = float(a.dome(np.array(sign * 0.97)))
                level = floor - finding.shape["height"] * (0.55 + 0.45 * np.abs(layers.u))
                fluid = _smoothstep((layers.v - level) / 0.05) * _side_lung(layers, side)
                # Fluid replaces aerated lung: at full severity the base is as dense as tissue.
                added += 0.27 * (0.55 + 0.45 * contrast) * fluid * lungs
                markings_keep *= 1.0 - fluid
        elif finding.name == "pneumothorax":
            collapsed = _pneumothorax_space(layers, finding)
            added -= 0.1 * (0.5 + 0.5 * contrast) * collapsed
            markings_keep *= 1.0 - collapsed
        elif finding.name == COVID_NAME:
            # Ground glass leaves the lung markings visible: markings_keep is untouched.
            added += GROUND_GLASS_DENSITY * contrast * _covid_haze(layers, finding)
        elif finding.name == "pulmonary edema":
            hila = np.exp(-(((np.abs(layers.u) - 0.3) / 0.28) ** 2) - ((layers.v - 0.5) / 0.3) ** 2)
            haze = hila * (0.6 + 0.4 * _texture(layers, finding.shape["texture_seed"], 3.0))
            added += 0.2 * contrast * haze * lungs
    return added, markings_keep


def _covid_haze(layers: _Layers, finding: Finding) -> np.ndarray:
    """Patchy ground glass in [0, 1]: the union of the finding's patch ellipses (zero outside
    each ellipse, so the boxes `scene._place_covid` computes enclose it), within the lungs."""
    texture = _texture(layers, finding.shape["texture_seed"], 2.0)
    haze = {"right": np.zeros_like(layers.u), "left": np.zeros_like(layers.u)}
    for patch in finding.shape["patches"]:
        r = np.hypot(
            (layers.u - patch["u"]) / patch["radius_u"], (layers.v - patch["v"]) / patch["radius_v"]
        )
        side = patch["side"]
        haze[side] = np.maximum(haze[side], _smoothstep((1.0 - r) / 0.7))
    inside = haze["right"] * _side_lung(layers, "right") + haze["left"] * _side_lung(layers, "left")
    return inside * (0.6 + 0.4 * texture)


def _pneumothorax_geometry(
    anatomy: Anatomy, finding: Finding, u: np.ndarray, v: np.ndarray
) -> np.ndarray:
    """Where a pneumothorax leaves air (bool, at canonical points ``u``, ``v``): the rim of its
    lung between the chest wall (and apex) and the visceral pleural line, above ``extent``.

    The one geometry both of the drawn space (`_pneumothorax_space`) and of the mask
    (`pneumothorax_mask`)."""
    depth, extent = finding.shape["depth"], finding.shape["extent"]
    sign = -1.0 if finding.laterality == "right" else 1.0
    taper = np.clip(1.0 - v / extent, 0.0, 1.0) ** 0.5
    au = np.abs(u)
    rim = (au > anatomy.lateral_edge(v) - depth * taper) | (v < anatomy.apex(au) + depth * taper)
    return anatomy.lung_mask(u, v) & rim & (sign * u > 0) & (v < extent)


def _pneumothorax_space(layers: _Layers, finding: Finding) -> np.ndarray:
    space = _pneumothorax_geometry(layers.anatomy, finding, layers.u, layers.v)
    return gaussian_filter(space.astype(np.float32), 0.7)


def pneumothorax_mask(scene: Scene) -> np.ndarray:
    """The scene's pneumothorax as drawn: bool (height, width), all False without one.

    `_pneumothorax_geometry` evaluated, unblurred, at every pixel centre of the full-resolution
    image. The renderer darkens the same geometry evaluated on its half-resolution grid, blurred
    (sigma 0.7 of that grid) and upsampled bilinearly, so the darkened space's soft edge lies
    within about a pixel of the mask's edge. Exported as SIIM-ACR's segmentation mask.
    """
    a = scene.anatomy
    finding = scene.finding("pneumothorax")
    if finding is None:
        return np.zeros((a.height, a.width), bool)
    x, y = np.meshgrid(
        np.arange(a.width, dtype=np.float32) + 0.5, np.arange(a.height, dtype=np.float32) + 0.5
    )
    u, v = a.to_canonical(x, y)
    return _pneumothorax_geometry(a, finding, u.astype(np.float32), v.astype(np.float32))


def _draw_pleural_line(layers: _Layers, finding: Finding) -> None:
    """The visceral pleural line of the collapsed lung, the sign radiologists look for."""
    a = layers.anatomy
    depth, extent = finding.shape["depth"], finding.shape["extent"]
    sign = -1.0 if finding.laterality == "right" else 1.0
    v = np.linspace(0.0, extent * 0.97, 40)
    taper = np.clip(1.0 - v / extent, 0.0, 1.0) ** 0.5
    # The collapsed lung keeps its hilum: its edge never crosses into the mediastinum.
    u = np.maximum(a.lateral_edge(v) - depth * taper, 0.24)
    top_u = np.linspace(0.16, float(u[0]), 12)
    top_v = a.apex(top_u) + depth
    contrast = SEVERITY_CONTRAST[finding.severity]
    layers.line(
        sign * np.concatenate([top_u, u]), np.concatenate([top_v, v]), 0.006, 0.2 * contrast
    )


def _draw_devices(layers: _Layers, scene: Scene) -> None:
    a = layers.anatomy
    for finding in scene.findings:
        s = finding.shape
        if finding.name == "endotracheal tube":
            v = np.linspace(-0.75, s["tip_v"], 20)
            for offset in (-0.022, 0.022):
                layers.line(np.full_like(v, offset), v, 0.007, 0.12)
            layers.line(np.full_like(v, -0.012), v, 0.006, 0.25)
        elif finding.name == "enteric tube":
            v = np.linspace(-0.75, s["tip_v"], 40)
            u = (
                0.03
                + 0.04 * np.sin(v * 3.0)
                + np.clip(v - a.left_dome_base + 0.05, 0, None) * (s["tip_u"] / 0.25)
            )
            layers.line(u, v, 0.008, 0.22)
        elif finding.name == "central venous catheter":
            entry, tip_v = s["entry_u"], s["tip_v"]
            u = np.concatenate([np.linspace(entry, -0.1, 12), np.full(10, -0.09)])
            v = np.concatenate(
                [
                    np.linspace(-0.45 if abs(entry) < 0.3 else -0.05, 0.08, 12),
                    np.linspace(0.1, tip_v, 10),
                ]
            )
            layers.line(u, v, 0.007, 0.2)
        elif finding.name == "pacemaker":
            gu, gv = s["generator_u"], s["generator_v"]
            ((x, y),) = layers.px(gu, gv)
            rx, ry = 0.09 * a.half_width, 0.06 * a.lung_height
            layers.draw.rounded_rectangle(
                [x - rx, y - ry, x + rx, y + ry], radius=rx * 0.5, fill=1.5
            )
            uc, vc, ha, _ = a.heart_ellipse()
            for end_u, end_v in ((uc - 0.55 * ha, 0.62), (uc + 0.2 * ha, vc + 0.15)):
                lead_u = np.array([gu, gu * 0.5, -0.1, -0.1, end_u])
                lead_v = np.array([gv, gv - 0.06, 0.1, 0.45, end_v])
                layers.line(lead_u, lead_v, 0.007, 0.3)


# ---- composition ---------------------------------------------------------------------------


def _upsample(layer: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(layer).resize((width, height), Image.BILINEAR))


def render_frontal(scene: Scene, rng: np.random.Generator, markers: bool = True) -> np.ndarray:
    """A frontal (PA/AP) radiograph of the scene: float32 (H, W) in [0, 1], bone bright."""
    a = scene.anatomy
    layers = _Layers(a, rng)
    lungs = _lungs(layers)
    findings_added, markings_keep = _findings_smooth(layers, scene, lungs)
    edema = scene.finding("pulmonary edema")
    smooth = _body(layers) + _mediastinum(layers) - 0.27 * lungs + findings_added
    fractures = [f for f in scene.findings if f.name == "fracture"]
    _draw_ribs(layers, fractures)
    _draw_clavicles(layers, fractures)
    _draw_spine_and_airways(layers)
    _draw_vessels(layers, np.random.default_rng(rng.integers(2**31)), 2.0 if edema else 1.0)
    for finding in scene.findings:
        if finding.name == "pneumothorax":
            _draw_pleural_line(layers, finding)
    _draw_devices(layers, scene)

    keep = _upsample(markings_keep * np.clip(lungs * 1.3, 0, 1), a.width, a.height)
    attenuation = (
        _upsample(smooth, a.width, a.height)
        + gaussian_filter(np.asarray(layers.fine), 1.1)
        + np.asarray(layers.markings) * keep
    )
    return _expose(attenuation, rng, a, markers)


def _expose(
    attenuation: np.ndarray, rng: np.random.Generator, anatomy: Anatomy | None, markers: bool
) -> np.ndarray:
    exposure = rng.uniform(1.45, 2.0)
    image = 1.0 - np.exp(-exposure * np.clip(attenuation, 0.0, None))
    image = gaussian_filter(image.astype(np.float32), rng.uniform(0.5, 1.0))
    # Quantum noise grows with the signal; a little fine-grain detector noise on top.
    image = image + rng.normal(0.0, 1.0, image.shape).astype(np.float32) * (
        0.012 + 0.02 * np.sqrt(image)
    )
    gamma = rng.uniform(0.85, 1.2)
    image = np.clip(image, 0.0, 1.0) ** gamma
    if markers:
        image = _burn_in_markers(image, rng, anatomy)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _burn_in_markers(
    image: np.ndarray, rng: np.random.Generator, anatomy: Anatomy | None
) -> np.ndarray:
    """Side marker and technologist text, burned into the pixels as on real films."""
    height, width = image.shape
    canvas = Image.fromarray((image * 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    size = max(10, width // 22)
    font = ImageFont.load_default(size)
    left_side = rng.random() < 0.5
    x = width * (0.04 if left_side else 0.88)
    y = height * rng.uniform(0.04, 0.18)
    draw.text((x, y), "R" if left_side else "L", fill=250, font=font)
    if anatomy is not None and anatomy.view == "AP":
        label = ["PORTABLE", "AP UPRIGHT", "SEMI-ERECT", "SUPINE"][int(rng.integers(4))]
        draw.text(
            (width * 0.6, height * 0.03),
            label,
            fill=235,
            font=ImageFont.load_default(max(8, size * 2 // 3)),
        )
    return np.asarray(canvas, dtype=np.float32) / 255.0


def render_lateral(scene: Scene, rng: np.random.Generator, markers: bool = True) -> np.ndarray:
    """A lateral view of the same chest, patient facing image left: float32 (H, W) in [0, 1]."""
    a = scene.anatomy
    width, height = a.width, a.height
    small_w, small_h = (width + 1) // 2, (height + 1) // 2
    x, y = np.meshgrid(
        (np.arange(small_w, dtype=np.float32) + 0.5) * (width / small_w),
        (np.arange(small_h, dtype=np.float32) + 0.5) * (height / small_h),
    )
    # p: anterior (0) to posterior (1) chest wall; q: lung apex (0) to hemidiaphragm (1).
    front, back = a.center_x - 0.95 * a.half_width, a.center_x + 0.8 * a.half_width
    p = (x - front) / (back - front)
    q = (y - (a.center_y - 0.5 * a.lung_height)) / a.lung_height
    body_front = -0.06 - 0.1 * _smoothstep(-q / 0.5)
    body = _soft_inside(np.minimum(p - body_front, 1.1 - p), 0.04)
    body = body * (0.75 + 0.25 * np.sqrt(np.clip(1 - (2 * p - 1) ** 2, 0, 1)))
    dome = 0.88 + 0.18 * p - 0.12 * np.sin(np.pi * np.clip(p, 0, 1))
    lung = (
        _soft_inside(q - 0.25 * ((p - 0.55) / 0.45) ** 2 - 0.02, 0.03)
        * _soft_inside(dome - q, 0.025)
        * _soft_inside(0.41 - np.abs(p - 0.45), 0.04)
    )
    ratio = a.cardiothoracic_ratio
    heart = _soft_inside(1.0 - np.hypot((p - 0.3) / (0.45 * ratio + 0.06), (q - 0.7) / 0.26), 0.05)
    heart = heart * _soft_inside(dome - q, 0.03)
    arms = _soft_inside(0.28 - np.hypot((p - 0.15) / 1.4, q + 0.05), 0.1)
    below = _soft_inside(q - dome, 0.02) * body
    attenuation = 0.5 * body - 0.3 * lung + 0.12 * heart + 0.15 * arms + 0.05 * below
    for finding in scene.findings:
        contrast = SEVERITY_CONTRAST[finding.severity]
        if finding.name == "pleural effusion":
            level = dome - finding.shape["height"] * (0.4 + 0.6 * p)
            attenuation += 0.22 * (0.6 + 0.4 * contrast) * _smoothstep((q - level) / 0.05) * lung
        elif finding.name in AIRSPACE_DENSITY or finding.name in ("nodule", "mass"):
            for lesion in finding.shape["lesions"]:
                radius = max(lesion["radius_v"], 0.03)
                distance = np.hypot((p - 0.6) / (radius * 1.4), (q - lesion["v"]) / radius)
                attenuation += 0.18 * contrast * _soft_inside(1.0 - distance, 0.3) * lung
        elif finding.name == COVID_NAME:
            # Both lower lobes' ground glass overlaps the posterior lung bases.
            basal = _soft_inside(q - 0.6, 0.15) * _soft_inside(0.3 - np.abs(p - 0.65), 0.15)
            attenuation += 0.08 * contrast * basal * lung
    attenuation = _upsample(attenuation.astype(np.float32), width, height)
    fine = Image.new("F", (width, height), 0.0)
    draw = ImageDraw.Draw(fine)
    spine_x = front + 0.9 * (back - front)
    body_height = 0.075 * a.lung_height
    for level in np.arange(-0.35, 1.35, 0.095):
        top = a.center_y + (level - 0.5) * a.lung_height
        draw.rectangle(
            [spine_x - 0.09 * a.half_width, top, spine_x + 0.09 * a.half_width, top + body_height],
            fill=0.12,
        )
    sternum = [
        (front + 0.03 * (back - front), a.center_y - 0.45 * a.lung_height),
        (front + 0.06 * (back - front), a.center_y + 0.25 * a.lung_height),
    ]
    draw.line(sternum, fill=0.12, width=max(2, width // 60))
    trachea = [
        (front + 0.45 * (back - front), a.center_y - 0.9 * a.lung_height),
        (front + 0.52 * (back - front), a.center_y - 0.1 * a.lung_height),
    ]
    draw.line(trachea, fill=-0.05, width=max(3, round(0.06 * a.lung_height)))
    fine_layer = gaussian_filter(np.asarray(fine), 2.0)
    return _expose(attenuation + fine_layer, rng, None, markers)


def render_without(scene: Scene, name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The scene rendered with and without one finding, same noise: the finding's footprint."""
    with_it = render_frontal(scene, np.random.default_rng(seed), markers=False)
    without = render_frontal(scene.without(name), np.random.default_rng(seed), markers=False)
    return with_it, without
