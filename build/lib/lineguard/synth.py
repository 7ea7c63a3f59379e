"""The toy dataset: procedurally drawn ice-cream cones on a conveyor, good and defective.

Why it exists: every stage of LineGuard (ingest, training, evaluation, the edge runtime,
drift monitoring) needs realistic inspection images that anyone can make offline in
seconds, with known truth. ``synth`` draws photo-like three-quarter views of waffle
cones with a scoop of the recipe's ice cream and the recipe's topping, on a textured
belt, with lighting, white balance, shadows, sensor noise, JPEG artefacts and motion
blur scaled by ``difficulty``. Defective cones (``bad``) miss their topping, have only
a partial topping, have ice cream spilled over the rim and on the tray, or carry
another recipe's topping.

Every item is drawn from its own random stream derived from ``(seed, recipe, label,
index)`` with :class:`numpy.random.SeedSequence`, so the output is byte-identical for a
seed whatever the number of worker processes. Images are drawn at twice the output
size and downsampled (anti-aliasing) for a photo-like look.

Layouts are the contract in ``docs/data-layout.md``: the clean class-per-folder layout,
or (``messy``) the same items stored the way a first real dataset arrives. The ground
truth goes to ``OUT/.truth/ground_truth.csv``. :func:`apply_drift` is a pure image
function (dirty lens, lighting, blur, colour cast, camera shift) reused by monitoring.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from lineguard import LineguardError, storage
from lineguard.config import SynthConfig

# --- what can be drawn ----------------------------------------------------------------------

LABELS = ("good", "bad")
DEFECT_TYPES = ("missing_topping", "partial_topping", "spillage", "wrong_topping")
DRIFT_KINDS = ("dirty-lens", "lighting", "blur", "color-cast", "camera-shift", "new-recipe")
TRUTH_COLUMNS = ("source_path", "expected", "label", "recipe", "defect_type", "item_id", "original")
TRUTH_FILE = ".truth/ground_truth.csv"
META_FILE = ".truth/synth.json"


@dataclass(frozen=True)
class Recipe:
    """One product: the ice-cream colour (RGB 0..1) and the topping drawn on it."""

    cream: tuple[float, float, float]
    topping: str
    specks: bool = False  # cookies & cream has dark specks in the ice cream itself


# Order matters: --recipes N takes the first N; the new-recipe drift takes one after the first five.
RECIPES: dict[str, Recipe] = {
    "vanilla_sprinkles": Recipe((0.97, 0.92, 0.76), "sprinkles"),
    "chocolate_nuts": Recipe((0.42, 0.25, 0.14), "nuts"),
    "strawberry_drizzle": Recipe((0.96, 0.60, 0.68), "drizzle"),
    "mint_chips": Recipe((0.62, 0.90, 0.76), "chips"),
    "caramel_cherry": Recipe((0.95, 0.74, 0.45), "cherries"),
    "pistachio_coconut": Recipe((0.66, 0.76, 0.40), "coconut"),
    "lemon_blueberries": Recipe((0.99, 0.89, 0.40), "blueberries"),
    "cookies_crumble": Recipe((0.84, 0.81, 0.76), "crumble", specks=True),
}
RECIPE_IDS = tuple(RECIPES)
TOPPINGS = tuple(r.topping for r in RECIPES.values())
# Wrong-topping defects never use a topping that looks like the right one at 128 px.
_CONFUSABLE = {"chips": {"crumble", "blueberries"}, "crumble": {"chips"}, "blueberries": {"chips"}}
# How many pieces a full topping has; good cones show 80-100 %, partial ones 12-30 % on one side.
_TOPPING_PIECES = {"sprinkles": 56, "nuts": 22, "drizzle": 6, "chips": 24, "cherries": 5, "coconut": 30,
                   "blueberries": 12, "crumble": 14}
_GOOD_COVERAGE = (0.8, 1.0)
_PARTIAL_COVERAGE = (0.12, 0.3)
_CONE_RGB = np.array([0.80, 0.56, 0.30], np.float32)
_BELTS = np.array([(0.24, 0.24, 0.26), (0.22, 0.27, 0.33), (0.21, 0.29, 0.24), (0.58, 0.59, 0.58),
                   (0.33, 0.31, 0.29)], np.float32)


class SynthError(LineguardError):
    """The synth request cannot be done (bad output folder, unknown drift, missing OpenCV)."""


@dataclass(frozen=True)
class Item:
    """One generated cone: what it is and where its random stream comes from."""

    recipe: str  # the recipe drawn (differs from ``slot`` only for the new-recipe drift)
    label: str
    defect_type: str
    index: int
    slot: str  # the recipe whose (seed, recipe, label, index) stream this item uses

    @property
    def item_id(self) -> str:
        return f"{self.slot}-{self.label}-{self.index:05d}"

    @property
    def clean_name(self) -> str:
        defect = self.defect_type or "ok"
        number = self.index if self.recipe == self.slot else RECIPE_IDS.index(self.slot) * 100_000 + self.index
        return f"{self.recipe}_{self.label}_{defect}_{number:05d}"


@dataclass
class SynthResult:
    """What :func:`synth` wrote."""

    out: str
    layout: str  # "clean" or "messy"
    counts: dict[str, dict[str, int]]  # recipe -> label -> items
    defect_counts: dict[str, int]
    files: int
    truth_path: str
    seconds: float
    drift: str | None = None
    severity: float = 0.0
    video_path: str | None = None
    video_truth_path: str | None = None
    expected_counts: dict[str, int] = field(default_factory=dict)  # messy: ground-truth 'expected' tally


# --- random streams ---------------------------------------------------------------------------


def item_rng(seed: int, slot: str, label: str, index: int, stream: int = 0) -> np.random.Generator:
    """The random stream of one item: a pure function of (seed, recipe, label, index, stream)."""
    entropy = [seed % (1 << 63), RECIPE_IDS.index(slot), LABELS.index(label), index, stream]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def _stream_rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed % (1 << 63), 7919, *key]))


# --- drawing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pose:
    cx: float
    cy: float
    unit: float  # pixels per cone unit
    cos: float
    sin: float

    def to_image(self, u: np.ndarray | float, v: np.ndarray | float) -> tuple[Any, Any]:
        """Cone coordinates (u across, v down from the rim) -> image x, y."""
        du, dv = np.asarray(u) * self.unit, (np.asarray(v) - _CENTRE_V) * self.unit
        return self.cx + du * self.cos - dv * self.sin, self.cy + du * self.sin + dv * self.cos

    def to_cone(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = x - self.cx, y - self.cy
        u = (dx * self.cos + dy * self.sin) / self.unit
        v = (-dx * self.sin + dy * self.cos) / self.unit + _CENTRE_V
        return u.astype(np.float32), v.astype(np.float32)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return xx + 0.5, yy + 0.5


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1] (a small random grid upsampled bicubically)."""
    small = rng.uniform(0, 255, (max(2, cells * h // max(h, w)), max(2, cells * w // max(h, w))))
    big = Image.fromarray(small.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(big, np.float32) / 127.5 - 1.0


def _belt(rng: np.random.Generator, h: int, w: int, difficulty: float) -> np.ndarray:
    """A conveyor belt (moving along x): rubber colour, ribs, seams, stains; HxWx3 float32."""
    d = difficulty
    base = (_BELTS[int(rng.integers(len(_BELTS)))] * (1 + rng.uniform(-0.08, 0.08, 3))).astype(np.float32)
    rib_period = float(rng.uniform(5, 12)) * h / 256
    rows = np.arange(h, dtype=np.float32)[:, None]
    ribs = 0.035 * np.sin(rows * (2 * np.pi / rib_period) + float(rng.uniform(0, 6.3)))
    shade = _smooth_noise(rng, h, w, 24) * 0.06
    shade += _smooth_noise(rng, h, w, 5) * (0.03 + 0.07 * d)
    shade += rng.standard_normal((h, w), dtype=np.float32) * 0.02
    shade += 1.0 + ribs
    seam_every = float(rng.uniform(1.2, 3.0)) * h
    cols = np.arange(w, dtype=np.float32)[None, :]
    seam = np.mod(cols + float(rng.uniform(0, seam_every)), seam_every) < 3 * h / 256
    shade *= 1.0 - 0.25 * seam
    # Grease and dust stains, more on a harsh line: drawn at quarter resolution, upsampled.
    n_stains = int(rng.poisson(0.5 + 3 * d))
    if n_stains:
        qh, qw = max(2, h // 4), max(2, w // 4)
        qx, qy = _grid(qh, qw)
        stains = np.ones((qh, qw), np.float32)
        for _ in range(n_stains):
            sx, sy = float(rng.uniform(0, qw)), float(rng.uniform(0, qh))
            r, k = float(rng.uniform(0.02, 0.09)) * qh, float(rng.uniform(0.1, 0.35))
            stains *= 1 - k * np.exp(-((qx - sx) ** 2 + (qy - sy) ** 2) * (1 / (2 * r * r)))
        shade *= np.asarray(Image.fromarray(stains).resize((w, h), Image.Resampling.BILINEAR))
    return base[None, None, :] * shade[:, :, None]


def _lumpy_radius(angle: np.ndarray, rng: np.random.Generator, r0: float, amount: float) -> np.ndarray:
    p = [float(x) for x in rng.uniform(0, 2 * np.pi, 3)]
    return r0 * (1 + amount * (np.sin(5 * angle + p[0]) * 0.6 + np.sin(9 * angle + p[1]) * 0.3
                               + np.sin(3 * angle + p[2]) * 0.4))


def _sample_in_disc(rng: np.random.Generator, n: int, radius: float, sector: tuple[float, float] | None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """n points (u, v) in the scoop's top disc, optionally restricted to an angular sector."""
    r = radius * np.sqrt(rng.uniform(0.0, 1.0, n))
    a = rng.uniform(0, 2 * np.pi, n) if sector is None else rng.uniform(sector[0], sector[1], n)
    return r * np.cos(a), -0.36 + r * np.sin(a) * 0.92


_SCOOP_V = -0.36
_CENTRE_V = 0.2  # the cone point (v, in cone units) drawn at the pose centre
_SCOOP_R = 0.6
_CONE_H = 1.35
_CONE_W = 0.5


def _draw_topping(layer: ImageDraw.ImageDraw, rng: np.random.Generator, topping: str, n: int,
                  pose: _Pose, sector: tuple[float, float] | None) -> None:
    """Draw ``n`` pieces of ``topping`` on the scoop (PIL shapes on an RGBA layer)."""
    if n <= 0:
        return
    unit = pose.unit
    ang = math.atan2(pose.sin, pose.cos)
    if topping == "drizzle":
        us = np.linspace(-_SCOOP_R, _SCOOP_R, 40)
        rows = np.sort(rng.uniform(-0.8, 0.8, n)) if sector is None else rng.uniform(-0.7, 0.7, n)
        for row in rows:
            wav = rng.uniform(0.03, 0.07)
            ph, fr = rng.uniform(0, 6.3), rng.uniform(6, 12)
            vs = _SCOOP_V + row * _SCOOP_R * 0.85 + wav * np.sin(fr * us + ph) + 0.25 * row * us
            inside = (us**2 + ((vs - _SCOOP_V) / 0.92) ** 2) < (0.82 * _SCOOP_R) ** 2
            if sector is not None:
                a = np.mod(np.arctan2((vs - _SCOOP_V) / 0.92, us) - sector[0], 2 * np.pi)
                inside &= a < (sector[1] - sector[0])
            xs, ys = pose.to_image(us, vs)
            run: list[tuple[float, float]] = []
            for k in range(len(us) + 1):
                if k < len(us) and inside[k]:
                    run.append((float(xs[k]), float(ys[k])))
                    continue
                if len(run) >= 2:
                    layer.line(run, fill=(66, 36, 22, 255), width=max(2, round(0.075 * unit)), joint="curve")
                    layer.line(run, fill=(120, 80, 60, 255), width=max(1, round(0.02 * unit)))
                run = []
        return
    us, vs = _sample_in_disc(rng, n, _SCOOP_R * 0.8, sector)
    xs, ys = pose.to_image(us, vs)
    for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
        if topping == "sprinkles":
            palette = ((232, 40, 60), (250, 205, 30), (50, 160, 240), (70, 195, 85), (250, 125, 30),
                       (235, 80, 200), (250, 250, 250))
            c = palette[int(rng.integers(len(palette)))]
            a, half = rng.uniform(0, np.pi), 0.065 * unit
            dx, dy = half * math.cos(a), half * math.sin(a)
            layer.line([(x - dx, y - dy), (x + dx, y + dy)], fill=(*c, 255), width=max(2, round(0.045 * unit)))
        elif topping in ("nuts", "crumble", "chips"):
            k = int(rng.integers(5, 8))
            rad = {"nuts": 0.065, "crumble": 0.085, "chips": 0.05}[topping] * unit
            angles = np.sort(rng.uniform(0, 2 * np.pi, k))
            radii = rad * rng.uniform(0.6, 1.2, k)
            pts = [(x + r * math.cos(t), y + r * math.sin(t) * 0.85) for r, t in zip(radii, angles, strict=True)]
            if topping == "nuts":
                layer.polygon(pts, fill=(214, 172, 112, 255), outline=(140, 95, 50, 255))
            elif topping == "crumble":
                layer.polygon(pts, fill=(40, 32, 28, 255), outline=(20, 15, 12, 255))
                layer.point([(x + rad * 0.3, y - rad * 0.2)], fill=(200, 190, 170, 255))
            else:
                layer.polygon(pts, fill=(72, 40, 22, 255))
                layer.point([(x - rad * 0.3, y - rad * 0.3)], fill=(140, 100, 80, 255))
        elif topping == "cherries":
            r = 0.1 * unit * rng.uniform(0.9, 1.1)
            layer.line([(x, y - r * 0.6), (x + r * 0.7 * math.cos(ang), y - r * 2.0)], fill=(70, 90, 30, 255),
                       width=max(1, round(0.025 * unit)))
            layer.ellipse([x - r, y - r, x + r, y + r], fill=(178, 16, 34, 255), outline=(110, 8, 20, 255))
            layer.ellipse([x - r * 0.55, y - r * 0.6, x - r * 0.15, y - r * 0.25], fill=(250, 160, 160, 255))
        elif topping == "coconut":
            a, half = rng.uniform(0, np.pi), 0.07 * unit
            dx, dy = half * math.cos(a), half * math.sin(a)
            layer.line([(x - dx, y - dy), (x + dx, y + dy)], fill=(175, 170, 160, 255),
                       width=max(2, round(0.045 * unit)))
            layer.line([(x - dx, y - dy), (x + dx, y + dy)], fill=(252, 252, 248, 255),
                       width=max(1, round(0.03 * unit)))
        elif topping == "blueberries":
            r = 0.065 * unit * rng.uniform(0.85, 1.15)
            layer.ellipse([x - r, y - r, x + r, y + r], fill=(52, 44, 108, 255), outline=(110, 110, 160, 255))
            layer.point([(x, y)], fill=(25, 20, 50, 255))
        else:  # the tables above list every topping
            raise SynthError(f"unknown topping {topping!r}")


def _scene(rng: np.random.Generator, item: Item, size: int, difficulty: float,
           background: np.ndarray | None = None) -> np.ndarray:
    """Draw one cone at 2x resolution over a belt; returns a (2*size)^2x3 float32 image in ~0..1.

    Only the cone's bounding box is computed per pixel (the belt around it is left alone),
    which keeps a 128 px image at a few milliseconds.
    """
    d = difficulty
    s2 = 2 * size
    recipe = RECIPES[item.recipe]
    img = _belt(rng, s2, s2, d) if background is None else background.copy()
    h, w = img.shape[:2]
    spill = item.defect_type == "spillage"

    jitter = (0.03 + 0.10 * d) * s2
    scale = 1 + float(rng.uniform(-1, 1)) * (0.04 + 0.14 * d)
    theta = math.radians(float(rng.uniform(-1, 1)) * (4 + 26 * d))
    pose = _Pose(w / 2 + float(rng.uniform(-jitter, jitter)), h / 2 + float(rng.uniform(-jitter, jitter)),
                 0.32 * s2 * scale, math.cos(theta), math.sin(theta))
    # The box (in cone units) holding the cone, its shadow and any spilt ice cream.
    reach_u, reach_v = (1.85, 2.15) if spill else (0.7, 1.4)
    corners_u = np.array([-reach_u, reach_u, -reach_u, reach_u])
    corners_v = np.array([-1.05, -1.05, reach_v, reach_v])
    cx, cy = pose.to_image(corners_u, corners_v)
    margin = 0.45 * pose.unit
    x0, x1 = max(0, int(cx.min() - margin)), min(w, int(cx.max() + margin) + 1)
    y0, y1 = max(0, int(cy.min() - margin)), min(h, int(cy.max() + margin) + 1)
    sub = img[y0:y1, x0:x1]
    bh, bw = sub.shape[:2]
    local = _Pose(pose.cx - x0, pose.cy - y0, pose.unit, pose.cos, pose.sin)
    xx, yy = _grid(bh, bw)
    u, v = local.to_cone(xx, yy)
    lx, ly, lz = -0.45 / 0.937, -0.6 / 0.937, 0.66 / 0.937  # light from the top-left, unit vector

    # Masks of the cone body, rim and scoop in cone coordinates.
    half_w = _CONE_W * (1 - v / _CONE_H)
    body = (v >= 0) & (v <= _CONE_H) & (np.abs(u) <= half_w)
    rim = (u * (1 / (_CONE_W * 1.06))) ** 2 + (v * (1 / 0.13)) ** 2 <= 1.0
    du, dv = u, (v - _SCOOP_V) * (1 / 0.95)
    dist = np.sqrt(du * du + dv * dv)
    edge = _lumpy_radius(np.arctan2(dv, du), rng, _SCOOP_R, 0.05)
    scoop = (dist <= edge) & (v <= 0.06 + 0.04 * np.sin(u * 17 + float(rng.uniform(0, 6.3))))

    # Drop shadow of the whole cone on the belt (light from top-left -> shadow down-right).
    silhouette = (body | rim | scoop).astype(np.uint8) * 255
    shadow_img = Image.fromarray(silhouette).filter(ImageFilter.GaussianBlur(0.06 * pose.unit))
    sx, sy = int(0.22 * pose.unit), int(0.14 * pose.unit)
    shadow = np.zeros((bh, bw), np.float32)
    shadow[sy:, sx:] = np.asarray(shadow_img, np.float32)[: bh - sy, : bw - sx] * (1 / 255.0)
    sub *= (1 - (0.3 + 0.3 * d * float(rng.uniform())) * shadow)[:, :, None]

    cream = (np.asarray(recipe.cream, np.float32) * (1 + rng.uniform(-0.03, 0.03, 3))).astype(np.float32)
    if spill:  # a puddle and drops of ice cream on the tray, beside the cone
        side = 1.0 if rng.uniform() < 0.5 else -1.0
        pu, pv, pr = side * float(rng.uniform(0.6, 0.95)), float(rng.uniform(0.7, 1.4)), float(rng.uniform(0.2, 0.3))
        pd = np.sqrt((u - pu) ** 2 + ((v - pv) * (1 / 0.7)) ** 2)
        puddle = pd <= _lumpy_radius(np.arctan2(v - pv, u - pu), rng, pr, 0.15)
        for _ in range(int(rng.integers(2, 5))):
            qu, qv = pu + float(rng.uniform(-0.5, 0.5)), pv + float(rng.uniform(-0.4, 0.4))
            qr = float(rng.uniform(0.04, 0.08))
            puddle |= (u - qu) ** 2 + ((v - qv) * (1 / 0.7)) ** 2 <= qr * qr
        gloss = np.clip(1 - pd * (1 / pr), 0, 1)
        sub[puddle] = cream * (0.82 + 0.25 * gloss[puddle])[:, None]

    # Waffle cone: cross-hatched texture, cylindrical shading, darker under the scoop.
    cone_rgb = (_CONE_RGB * (1 + rng.uniform(-0.05, 0.05, 3))).astype(np.float32)
    period = 1 / 0.17
    a = np.mod((u + 0.75 * v) * period, 1.0)
    b = np.mod((u - 0.75 * v) * period, 1.0)
    grid_line = (np.minimum(a, 1 - a) < 0.12) | (np.minimum(b, 1 - b) < 0.12)
    across = u / np.maximum(half_w, 1e-3)
    cone_shade = (0.92 - 0.4 * across**2 - 0.18 * across) * np.where(grid_line, 0.7, 1.0)
    cone_shade *= 1 - 0.35 * np.exp(-np.maximum(v, 0) * (1 / 0.12))
    sub[body] = cone_rgb * cone_shade[body][:, None]
    rim_only = rim & ~scoop
    sub[rim_only] = cone_rgb * (0.9 * (0.85 + 0.15 * np.sin(u[rim_only] * 40)))[:, None]

    # Scoop: a lumpy sphere lit from the top-left, with a specular highlight.
    nz = np.sqrt(np.clip(1 - (dist / np.maximum(edge, 1e-3)) ** 2, 0, 1))
    diffuse = np.clip((du * lx + dv * ly) * (1 / _SCOOP_R) + nz * lz, 0, 1)
    texture = 1 + 0.05 * _smooth_noise(rng, bh, bw, max(4, 40 * max(bh, bw) // h))
    dif_s = diffuse[scoop]
    scoop_rgb = cream * (0.5 + 0.55 * dif_s * texture[scoop])[:, None] + (0.35 * dif_s**24)[:, None]
    if recipe.specks:  # cookies & cream: dark specks in the ice cream itself
        specks = rng.random(len(scoop_rgb), dtype=np.float32) < 0.025
        scoop_rgb[specks] *= 0.45
    sub[scoop] = scoop_rgb

    if spill:  # ice cream running over the rim and down the cone
        for _ in range(int(rng.integers(2, 4))):
            cu, length = float(rng.uniform(-0.4, 0.4)), float(rng.uniform(0.35, 0.75))
            width = float(rng.uniform(0.07, 0.11))
            t = np.clip(v * (1 / length), 0, 1)
            drip = (v >= -0.05) & (v <= length) & (np.abs(u - cu) <= width * (1 - 0.35 * t))
            drip |= (u - cu) ** 2 + (v - length) ** 2 <= (width * 0.9) ** 2
            hl = np.clip(1 - np.abs(u[drip] - cu + width * 0.3) * (1 / width), 0, 1)
            sub[drip] = cream * (0.75 + 0.3 * hl)[:, None]

    # Topping pieces, drawn with Pillow on an RGBA layer and composited.
    topping, pieces = _topping_plan(rng, item, recipe)
    if pieces:
        layer = Image.new("RGBA", (bw, bh), (0, 0, 0, 0))
        sector = None
        if item.defect_type == "partial_topping":
            start = float(rng.uniform(0, 2 * np.pi))
            sector = (start, start + float(rng.uniform(1.3, 1.9)))
        _draw_topping(ImageDraw.Draw(layer), rng, topping, pieces, local, sector)
        rgba = np.asarray(layer, np.float32) * (1 / 255.0)
        lit = rgba[:, :, :3] * (0.65 + 0.45 * np.where(scoop, diffuse, 0.8))[:, :, None]
        alpha = rgba[:, :, 3:4]
        sub[:] = sub * (1 - alpha) + lit * alpha

    # Crumbs of random toppings fallen on the belt: clutter that is not a defect.
    n_crumbs = int(rng.poisson(3 * d))
    if n_crumbs:
        layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        for _ in range(n_crumbs):
            fx, fy = float(rng.uniform(0, w)), float(rng.uniform(0, h))
            if abs(fx - pose.cx) < 0.6 * pose.unit and abs(fy - pose.cy) < 1.3 * pose.unit:
                continue  # never on the cone itself
            crumb = TOPPINGS[int(rng.integers(len(TOPPINGS)))]
            at = _Pose(fx, fy + (_CENTRE_V - _SCOOP_V) * pose.unit, pose.unit, 1.0, 0.0)
            _draw_topping(draw, rng, "sprinkles" if crumb == "drizzle" else crumb, 1, at, (0.0, 0.01))
        rgba_full = np.asarray(layer)
        ys, xs = np.nonzero(rgba_full[:, :, 3])
        if len(ys):
            a0, a1, b0, b1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            part = rgba_full[a0:a1, b0:b1].astype(np.float32) * (1 / 255.0)
            img[a0:a1, b0:b1] = img[a0:a1, b0:b1] * (1 - part[:, :, 3:4]) + part[:, :, :3] * part[:, :, 3:4]
    return img


def _topping_plan(rng: np.random.Generator, item: Item, recipe: Recipe) -> tuple[str, int]:
    """Which topping and how many pieces this item gets (the defect decides)."""
    topping = recipe.topping
    if item.defect_type == "wrong_topping":
        choices = [t for t in TOPPINGS if t != topping and t not in _CONFUSABLE.get(topping, set())]
        topping = choices[int(rng.integers(len(choices)))]
    full = _TOPPING_PIECES[topping]
    if item.defect_type == "missing_topping":
        return topping, 0
    lo, hi = _PARTIAL_COVERAGE if item.defect_type == "partial_topping" else _GOOD_COVERAGE
    return topping, max(1, round(full * rng.uniform(lo, hi)))


def _camera(rng: np.random.Generator, img2x: np.ndarray, difficulty: float) -> np.ndarray:
    """What the camera adds: downsample (anti-aliasing), exposure, white balance, light falloff,
    motion blur along the belt, sensor noise and JPEG artefacts. Returns HxWx3 uint8."""
    d = difficulty
    img = 0.25 * (img2x[0::2, 0::2] + img2x[1::2, 0::2] + img2x[0::2, 1::2] + img2x[1::2, 1::2])
    h, w = img.shape[:2]
    gain = 1 + float(rng.uniform(-1, 1)) * (0.04 + 0.22 * d)
    balance = (1 + rng.uniform(-1, 1, 3) * (0.015 + 0.06 * d)).astype(np.float32)
    phi, slope = float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0, 0.06 + 0.3 * d))
    ramp_x = (np.arange(w, dtype=np.float32) * (1 / w) - 0.5) * (slope * math.cos(phi))
    ramp_y = (np.arange(h, dtype=np.float32) * (1 / h) - 0.5) * (slope * math.sin(phi))
    falloff = (1 + ramp_y[:, None] + ramp_x[None, :]) * gain
    img = img * falloff[:, :, None] * balance
    length = 1 + int(rng.integers(0, 1 + round(2.5 * d)))
    if length > 1:  # the belt moves along x during the exposure: a short horizontal smear
        pad = np.pad(img, ((0, 0), (0, length - 1), (0, 0)), mode="edge")
        img = sum(pad[:, k : k + w] for k in range(length)) * (1 / length)
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * (0.004 + 0.02 * d)
    out = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    if rng.uniform() < 0.2 + 0.6 * d:
        quality = int(rng.integers(int(92 - 40 * d), 96))
        buf = io.BytesIO()
        Image.fromarray(out).save(buf, format="JPEG", quality=quality)
        out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return out


def draw_cone(rng: np.random.Generator, recipe: str, label: str, defect_type: str = "", size: int = 128,
              difficulty: float = 0.5) -> np.ndarray:
    """Draw one photo-like cone on a conveyor: HxWx3 uint8, H = W = ``size``.

    ``label`` is ``good`` (``defect_type`` empty) or ``bad`` with a defect type from
    :data:`DEFECT_TYPES`. ``difficulty`` (0..1) scales pose, lighting, clutter and
    camera variation. The same ``rng`` state gives the same pixels.
    """
    _check_item(recipe, label, defect_type)
    item = Item(recipe, label, defect_type, 0, recipe)
    return _camera(rng, _scene(rng, item, size, difficulty), difficulty)


def _check_item(recipe: str, label: str, defect_type: str) -> None:
    if recipe not in RECIPES:
        raise SynthError(f"unknown recipe {recipe!r}; expected one of {', '.join(RECIPE_IDS)}")
    if label not in LABELS:
        raise SynthError(f"unknown label {label!r}; expected good or bad")
    if label == "good" and defect_type:
        raise SynthError(f"a good cone has no defect type, got {defect_type!r}")
    if label == "bad" and defect_type not in DEFECT_TYPES:
        raise SynthError(f"defect type {defect_type!r} unknown; expected one of {', '.join(DEFECT_TYPES)}")


# --- drift ------------------------------------------------------------------------------------


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return image.astype(np.float32)
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(sigma)), np.float32)


def apply_drift(image: np.ndarray, kind: str, severity: float, rng: np.random.Generator) -> np.ndarray:
    """A changed camera or scene, applied to an HxWx3 uint8 image; returns a new uint8 image.

    Pure (the input is not changed); ``severity`` 0 returns an equal copy, 1 the strongest.
    ``dirty-lens`` hazes and smudges (lower contrast and sharpness), ``lighting`` dims the
    lamp with an uneven falloff (lower brightness), ``blur`` defocuses, ``color-cast`` warms
    the white balance (red up, blue down), ``camera-shift`` moves, rotates and zooms the
    view. ``new-recipe`` is a dataset drift (:func:`synth` draws an unseen recipe), not an
    image change, so it is refused here.
    """
    if kind not in DRIFT_KINDS:
        raise SynthError(f"unknown drift {kind!r}; expected one of {', '.join(DRIFT_KINDS)}")
    if kind == "new-recipe":
        raise SynthError("drift 'new-recipe' changes what is drawn, not the image; use synth(..., drift='new-recipe')")
    if not 0.0 <= severity <= 1.0:
        raise SynthError(f"drift severity must be within 0..1, got {severity}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise SynthError(f"apply_drift expects an HxWx3 uint8 image, got {image.shape} {image.dtype}")
    s = float(severity)
    if s == 0.0:
        return image.copy()
    h, w = image.shape[:2]
    px = max(h, w) / 128.0
    img = image.astype(np.float32)
    if kind == "dirty-lens":
        xx, yy = _grid(h, w)
        smudge = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(3, 7))):
            sx, sy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.1, 0.3) * max(h, w)
            smudge = np.maximum(smudge, np.exp(-((xx - sx) ** 2 + (yy - sy) ** 2) / (2 * r * r)))
        haze = np.clip(0.45 * s + 0.45 * s * smudge, 0, 0.9)[:, :, None]
        soft = _blur(image, (0.6 + 2.2 * s) * px)
        img = soft * (0.3 + 0.7 * haze / 0.9) + img * (0.7 - 0.7 * haze / 0.9)
        veil = 205.0 + 30.0 * rng.uniform()
        img = img * (1 - 0.6 * haze) + veil * 0.6 * haze
    elif kind == "lighting":
        xx, yy = _grid(h, w)
        phi = rng.uniform(0, 2 * np.pi)
        falloff = 1 + 0.3 * s * ((xx / w - 0.5) * math.cos(phi) + (yy / h - 0.5) * math.sin(phi))
        img = img * ((1 - 0.55 * s) * falloff)[:, :, None]
    elif kind == "blur":
        img = _blur(image, 2.5 * s * px)
    elif kind == "color-cast":
        img = img * np.array([1 + 0.3 * s, 1 + 0.04 * s, 1 - 0.3 * s], np.float32)
    else:  # camera-shift
        angle = math.radians(rng.choice([-1.0, 1.0]) * 8 * s)
        zoom = 1 + 0.15 * s
        tx = rng.choice([-1.0, 1.0]) * 0.12 * s * w
        ty = rng.choice([-1.0, 1.0]) * 0.08 * s * h
        cx, cy = w / 2, h / 2
        ca, sa = math.cos(angle) / zoom, math.sin(angle) / zoom
        # Output pixel (x, y) samples the input at A @ (x - cx - tx, y - cy - ty) + centre.
        coeffs = (ca, sa, cx - ca * (cx + tx) - sa * (cy + ty), -sa, ca, cy + sa * (cx + tx) - ca * (cy + ty))
        fill = tuple(int(c) for c in image.reshape(-1, 3).mean(axis=0))
        moved = Image.fromarray(image).transform((w, h), Image.Transform.AFFINE, coeffs,
                                                 resample=Image.Resampling.BILINEAR, fillcolor=fill)
        img = np.asarray(moved, np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


# --- one item, end to end (runs in worker processes) ------------------------------------------


@dataclass(frozen=True)
class _Task:
    item: Item
    size: int
    difficulty: float
    seed: int
    drift: str | None
    severity: float
    encodings: tuple[str, ...]


def render_item(item: Item, size: int, difficulty: float, seed: int, drift: str | None = None,
                severity: float = 0.0) -> np.ndarray:
    """The pixels of one dataset item: a pure function of the item and the settings."""
    rng = item_rng(seed, item.slot, item.label, item.index)
    image = _camera(rng, _scene(rng, item, size, difficulty), difficulty)
    if drift and drift != "new-recipe" and severity > 0:
        image = apply_drift(image, drift, severity, item_rng(seed, item.slot, item.label, item.index, 1))
    return image


def _encode(image: np.ndarray, encoding: str) -> bytes:
    """Deterministic file bytes of an image in one of the storage formats of the layouts."""
    buf = io.BytesIO()
    pil = Image.fromarray(image)
    h, w = image.shape[:2]
    kind, _, variant = encoding.partition(":")
    if kind == "png":
        pil.save(buf, format="PNG", compress_level=6)
    elif kind == "jpg":
        pil.save(buf, format="JPEG", quality=int(variant or 92))
    elif kind == "bmp":
        pil.save(buf, format="BMP")
    elif kind == "rgba":
        rgba = np.dstack([image, np.full((h, w), 255, np.uint8)])
        Image.fromarray(rgba).save(buf, format="PNG", compress_level=6)
    elif kind == "grey":
        pil.convert("L").save(buf, format="PNG", compress_level=6)
    elif kind == "png16":
        grey = np.asarray(pil.convert("L"), np.uint16) * 257
        Image.fromarray(grey.astype("<u2")).save(buf, format="PNG", compress_level=6)
    elif kind == "exif":  # stored rotated, with the Orientation tag that makes it upright again
        orientation = int(variant)
        stored = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90,
                  8: Image.Transpose.ROTATE_270}[orientation]
        exif = Image.Exif()
        exif[0x0112] = orientation
        pil.transpose(stored).save(buf, format="JPEG", quality=92, exif=exif.tobytes())
    elif kind == "big":  # an upscaled copy (a camera with another resolution)
        pil.resize((round(w * 1.5), round(h * 1.5)), Image.Resampling.BICUBIC).save(buf, format="PNG",
                                                                                     compress_level=6)
    elif kind == "aspect":  # another aspect ratio (4:3)
        pil.resize((round(w * 4 / 3), h), Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=90)
    elif kind == "near":  # a near duplicate: resized ~90 % and re-encoded at JPEG q70
        pil.resize((round(w * 0.9), round(h * 0.9)), Image.Resampling.BILINEAR).save(buf, format="JPEG", quality=70)
    elif kind == "near_jpg":  # a near duplicate: re-encoded at JPEG q70 only
        pil.save(buf, format="JPEG", quality=70)
    elif kind == "truncated":  # the first part of a valid file
        data = _encode(image, variant or "png")
        return data[: max(64, len(data) * 2 // 5)]
    else:  # encodings come from this module only
        raise SynthError(f"unknown encoding {encoding!r}")
    return buf.getvalue()


def _run_task(task: _Task) -> list[bytes]:
    image = render_item(task.item, task.size, task.difficulty, task.seed, task.drift, task.severity)
    return [_encode(image, enc) for enc in task.encodings]


def _map_tasks(tasks: Sequence[_Task], workers: int) -> Iterator[list[bytes]]:
    """Render tasks in order, in a process pool when it pays; output does not depend on workers."""
    if workers <= 1 or len(tasks) < 32:
        yield from map(_run_task, tasks)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # fork on Linux: workers start at once and never re-import the caller's script (spawn would,
    # and fails in scripts without a __main__ guard). Workers only run numpy and Pillow, so
    # threads the caller may hold (torch, MLflow) are never touched in the child.
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    chunk = max(1, min(16, len(tasks) // (workers * 8)))
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        yield from pool.map(_run_task, tasks, chunksize=chunk)


def default_workers() -> int:
    """Worker processes used when the config says 0: the cores we may use, at most 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


# --- the dataset --------------------------------------------------------------------------------


def make_items(config: SynthConfig, drift: str | None = None, severity: float = 0.0) -> list[Item]:
    """Every item of a dataset in a fixed order: recipe, label, index. Bad items cycle the defects."""
    recipes = list(RECIPE_IDS[: config.recipes])
    new = _new_recipe(recipes) if drift == "new-recipe" else None
    n_new = round(severity * config.per_class) if new else 0
    items = []
    for recipe in recipes:
        for label in LABELS:
            for i in range(config.per_class):
                defect = "" if label == "good" else DEFECT_TYPES[i % len(DEFECT_TYPES)]
                drawn = new if new and i < n_new else recipe
                items.append(Item(drawn, label, defect, i, recipe))
    return items


def _new_recipe(recipes: Sequence[str]) -> str:
    for recipe in RECIPE_IDS[5:]:
        if recipe not in recipes:
            return recipe
    raise SynthError("drift 'new-recipe' needs a recipe not in the dataset: use --recipes 7 or fewer")


@dataclass
class _File:
    """One file of a layout: where it goes and what it holds."""

    path: str  # relative to OUT, POSIX
    expected: str
    item: Item | None = None
    encoding: str = "png"
    original: str = ""
    raw: bytes | None = None  # content not rendered from an item (broken files)
    zip_path: str = ""  # set for members of a zip archive (path is then zip_path/member)

    def truth(self) -> dict[str, str]:
        it = self.item if self.expected != "corrupt" else None
        return {
            "source_path": self.path, "expected": self.expected,
            "label": it.label if it else "", "recipe": it.recipe if it else "",
            "defect_type": it.defect_type if it else "", "item_id": it.item_id if it else "",
            "original": self.original,
        }


def _clean_layout(items: Sequence[Item]) -> tuple[list[_File], list[dict[str, str]]]:
    files = [_File(f"{it.recipe}/{it.label}/{it.clean_name}.png", "image", it) for it in items]
    return files, []


# The messy layout (docs/data-layout.md). Folder and file names never hold a label synonym
# of the wrong class, so the only label conflicts are the ones planted through labels.csv.
_GOOD_DIRS = ("Good", "ok", "OK parts", "good cones", "PASS")
_BAD_DIRS = ("bad cones", "NOK_2024-05-01", "Defect", "reject", "NG")
_GOOD_TOKENS = ("ok", "OK", "good", "PASS")
_BAD_TOKENS = ("NOK", "ng", "defect", "REJECT")
_GOOD_CELLS = (" OK", "Good", "ok ", "PASS", "good")
_BAD_CELLS = ("nok ", "DEFECT", " NG", "Bad", "reject")
_SPECIAL_FORMATS = ("rgba", "grey", "png16", "bmp", "exif:3", "exif:6", "exif:8", "big", "aspect")
_CSV_HEADER = (" File ", "Label ", " Recipe")
MESSY_SHARES = {"corrupt": 0.05, "duplicate": 0.05, "conflict": 0.03, "unlabelled": 0.03, "csv_only": 0.05,
                "filename_label": 0.08, "zip": 0.1, "csv_confirm": 0.1, "special_format": 0.12}


def messy_recipe_folder(recipe: str, position: int) -> str:
    """A recipe id written the way people name folders; normalising it gives the id back."""
    words = recipe.split("_")
    style = position % 8
    if style in (0, 3):
        return " ".join(w.title() for w in words)
    if style == 1:
        return "-".join(words)
    if style == 2:
        return "_".join(words).upper()
    if style == 4:
        return "-".join(w.title() for w in words)
    if style == 5:
        return " ".join(words)
    if style == 6:
        return "_".join(w.title() for w in words)
    return " ".join(words).upper()


def _extension(encoding: str, rng: np.random.Generator) -> str:
    kind = encoding.split(":")[0]
    if kind in ("png", "rgba", "grey", "png16", "big"):
        return ".png"
    if kind == "bmp":
        return ".bmp"
    return (".jpg", ".jpg", ".jpeg", ".JPG")[int(rng.integers(4))]


def _messy_layout(items: Sequence[Item], seed: int) -> tuple[list[_File], list[dict[str, str]]]:
    """Plan the messy layout: every file, its format, its expected ingest outcome, and labels.csv."""
    rng = _stream_rng(seed, 5)
    recipes = [r for r in RECIPE_IDS if any(it.recipe == r for it in items)]
    files: list[_File] = []
    csv_rows: list[tuple[str, str, str]] = []  # (path, label cell, recipe cell)
    in_folder: list[_File] = []  # valid files whose label comes from a folder (duplicate originals)
    n_total = len(items)
    number = int(rng.integers(100, 900))

    def next_number() -> int:
        nonlocal number
        number += int(rng.integers(1, 4))
        return number

    def shares(key: str, n: int, minimum: int = 1) -> int:
        return max(minimum, round(MESSY_SHARES[key] * n))

    def label_cell(label: str) -> str:
        cells = _GOOD_CELLS if label == "good" else _BAD_CELLS
        return cells[int(rng.integers(len(cells)))]

    def recipe_cell(recipe: str) -> str:
        text = messy_recipe_folder(recipe, int(rng.integers(8)))
        return (" " + text) if rng.uniform() < 0.3 else text

    for ri, recipe in enumerate(recipes):
        folder = messy_recipe_folder(recipe, ri)
        dirs = {"good": f"{folder}/{_GOOD_DIRS[ri % 5]}", "bad": f"{folder}/{_BAD_DIRS[ri % 5]}"}
        dup_dirs = {"good": f"{folder}/{_GOOD_DIRS[(ri + 2) % 5]}", "bad": f"{folder}/{_BAD_DIRS[(ri + 2) % 5]}"}
        goods = [items_i for items_i in items if items_i.recipe == recipe and items_i.label == "good"]
        bads = [items_i for items_i in items if items_i.recipe == recipe and items_i.label == "bad"]
        goods = [goods[i] for i in rng.permutation(len(goods))]
        bads = [bads[i] for i in rng.permutation(len(bads))]
        mixed = [it for pair in zip(goods, bads, strict=False) for it in pair]
        mixed += goods[len(bads):] + bads[len(goods):]
        n = len(mixed)
        n_zip = shares("zip", n, 2) if ri == 0 else 0
        n_unl, n_csv, n_tok = shares("unlabelled", n), shares("csv_only", n), shares("filename_label", n, 2)
        pos = 0
        zip_path = f"{folder}/batch_2024-05.zip"
        for it in mixed[pos : pos + n_zip]:
            member = f"{'ok' if it.label == 'good' else 'NOK'}/IMG_{next_number():04d}"
            enc = "png" if rng.uniform() < 0.5 else "jpg"
            files.append(_File(f"{zip_path}/{member}{_extension(enc, rng)}", "image", it, enc, zip_path=zip_path))
        pos += n_zip
        for it in mixed[pos : pos + n_unl]:  # valid pictures nobody labelled
            files.append(_File(f"{folder}/unsorted/IMG_{next_number():04d}", "unlabelled", it))
        pos += n_unl
        for it in mixed[pos : pos + n_csv]:  # labelled only by labels.csv
            f = _File(f"{folder}/unsorted/DSC{next_number():05d}", "image", it)
            files.append(f)
            csv_rows.append((f.path, label_cell(it.label), recipe_cell(recipe)))
        pos += n_csv
        labelled: list[_File] = []
        for it in mixed[pos : pos + n_tok]:  # labelled by a file-name token
            tokens = _GOOD_TOKENS if it.label == "good" else _BAD_TOKENS
            token = tokens[int(rng.integers(len(tokens)))]
            stem = (f"IMG_{next_number():04d}_{token}" if rng.uniform() < 0.5 else f"cone-{next_number():04d}-{token}")
            labelled.append(_File(f"{folder}/unsorted/{stem}", "image", it))
        pos += n_tok
        style = ("IMG_{:04d}", "cone_{:05d}", "DSC{:05d}", "photo {}", "frame-{:06d}")[ri % 5]
        for it in mixed[pos:]:  # the bulk: one folder per class
            f = _File(f"{dirs[it.label]}/{style.format(next_number())}", "image", it)
            labelled.append(f)
            in_folder.append(f)
        files.extend(labelled)
        # Planted conflicts: labels.csv says the other class for a file a folder or its name labels.
        n_conf = shares("conflict", n)
        for i in rng.choice(len(labelled), size=min(n_conf, len(labelled)), replace=False):
            f = labelled[int(i)]
            f.expected = "conflict"
            assert f.item is not None
            csv_rows.append((f.path, label_cell("bad" if f.item.label == "good" else "good"), recipe_cell(recipe)))
        # labels.csv also confirms some folder labels (same class, messy spelling).
        agree = [f for f in labelled if f.expected == "image"]
        for i in rng.choice(len(agree), size=min(len(agree), round(MESSY_SHARES["csv_confirm"] * n)), replace=False):
            f = agree[int(i)]
            assert f.item is not None
            csv_rows.append((f.path, label_cell(f.item.label), recipe_cell(recipe)))
        # Exact and near duplicates of folder files, stored under another folder of the same class.
        originals = [f for f in in_folder if f.expected == "image" and f.path.startswith(folder + "/")]
        n_dup = shares("duplicate", n, 2)
        picks = rng.choice(len(originals), size=min(n_dup, len(originals)), replace=False)
        for k, i in enumerate(picks):
            orig = originals[int(i)]
            assert orig.item is not None
            near = k % 2 == 1
            enc = ("near" if k % 4 == 1 else "near_jpg") if near else "png"
            stem = f"{dup_dirs[orig.item.label]}/IMG_{next_number():04d}"
            files.append(_File(stem, "duplicate_near" if near else "duplicate_exact", orig.item, enc,
                               original=orig.path))
    # Formats: every special format at least once, then a modest share; exact copies keep their original's.
    valid = [f for f in files if f.expected in ("image", "unlabelled", "conflict") and not f.zip_path]
    dup_sources = {f.original for f in files if f.expected == "duplicate_exact"}
    order = [valid[int(i)] for i in rng.permutation(len(valid))]
    specials = list(_SPECIAL_FORMATS)
    for f in order:
        if f.path in dup_sources:
            f.encoding = "png" if rng.uniform() < 0.5 else "jpg"
        elif specials:
            f.encoding = specials.pop(0)
        elif rng.uniform() < MESSY_SHARES["special_format"]:
            f.encoding = _SPECIAL_FORMATS[int(rng.integers(len(_SPECIAL_FORMATS)))]
        else:
            f.encoding = "png" if rng.uniform() < 0.45 else "jpg"
    by_path = {f.path: f for f in files}
    for f in files:
        if f.expected == "duplicate_exact":
            f.encoding = by_path[f.original].encoding
    # Extensions follow the format (zip members already have theirs). CSV paths are updated too.
    renamed: dict[str, str] = {}
    for f in files:
        if not f.zip_path:
            new = f.path + _extension(f.encoding, rng)
            renamed[f.path] = new
            f.path = new
    for f in files:
        if f.original:
            f.original = renamed[f.original]
    csv_rows = [(renamed.get(p, p), lab, rec) for p, lab, rec in csv_rows]
    # Broken files: zero-byte, random bytes, truncated PNG and JPEG, non-image text.
    kinds = ("zero", "random", "truncated:png", "truncated:jpg", "text")
    n_corrupt = max(len(kinds), round(MESSY_SHARES["corrupt"] * n_total))
    for k in range(n_corrupt):
        recipe = recipes[k % len(recipes)]
        ri = recipes.index(recipe)
        folder = messy_recipe_folder(recipe, ri)
        where = f"{folder}/unsorted" if k % 3 == 2 else f"{folder}/{(_GOOD_DIRS if k % 2 else _BAD_DIRS)[ri % 5]}"
        kind = kinds[k % len(kinds)]
        if kind == "zero":
            files.append(_File(f"{where}/IMG_{next_number():04d}.jpg", "corrupt", raw=b""))
        elif kind == "random":
            blob = b"\x13\x37" + rng.bytes(int(rng.integers(500, 4000)))
            files.append(_File(f"{where}/DSC{next_number():05d}.jpg", "corrupt", raw=blob))
        elif kind == "text":
            text = f"Batch notes {k}: camera re-focused after cleaning; line speed 42 cones/min.\n"
            files.append(_File(f"{where}/notes_{next_number()}.txt", "corrupt", raw=text.encode()))
        else:
            some = [it for it in items if it.recipe == recipe]
            it = some[int(rng.integers(len(some)))]
            ext = ".png" if kind.endswith("png") else ".jpg"
            files.append(_File(f"{where}/IMG_{next_number():04d}{ext}", "corrupt", it, kind))
    # A hidden file is never data (not in the ground truth either).
    files.append(_File(f"{messy_recipe_folder(recipes[0], 0)}/.DS_Store", "hidden", raw=b"\x00\x00\x00\x01Bud1"))
    order_rows = rng.permutation(len(csv_rows))
    rows = []
    for i in order_rows:
        path, lab, rec = csv_rows[int(i)]
        shown = path.replace("/", "\\") if rng.uniform() < 0.35 else path
        rows.append(dict(zip(_CSV_HEADER, (shown, lab, rec), strict=True)))
    return files, rows


def synth(
    out: str,
    config: SynthConfig | None = None,
    *,
    messy: bool | None = None,
    drift: str | None = None,
    severity: float | None = None,
    video: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> SynthResult:
    """Generate the toy dataset into ``out`` (a folder or fsspec URL); arguments left None come
    from ``config``. Same seed and settings -> byte-identical files, whatever ``workers``.

    The layout is ``docs/data-layout.md``: clean class-per-folder, or ``messy``. The
    ground truth is written to ``out/.truth/ground_truth.csv``. ``drift`` changes every
    image (see :func:`apply_drift`) or, for ``new-recipe``, draws an unseen recipe for
    the first ``severity * per_class`` items of every recipe and class. ``video`` also
    writes a conveyor video there (see :func:`write_video`). A local ``out`` is built in a
    temporary sibling folder and renamed into place, so it is never left half-written.
    """
    cfg = config or SynthConfig()
    messy = cfg.messy if messy is None else messy
    drift = cfg.drift if drift is None else drift
    severity = cfg.severity if severity is None else severity
    workers = cfg.workers if workers is None else workers
    if drift is not None and drift not in DRIFT_KINDS:
        raise SynthError(f"unknown drift {drift!r}; expected one of {', '.join(DRIFT_KINDS)}")
    if not 0.0 <= severity <= 1.0:
        raise SynthError(f"drift severity must be within 0..1, got {severity}")
    workers = workers or default_workers()
    started = time.perf_counter()
    items = make_items(cfg, drift, severity)
    if messy:
        files, csv_rows = _messy_layout(items, cfg.seed)
    else:
        files, csv_rows = _clean_layout(items)

    target, commit = _staging(out, overwrite)
    try:
        _write_files(target, files, cfg, drift, severity, workers, progress)
        if csv_rows:
            storage.write_text(storage.join(target, "labels.csv"), _csv_text(csv_rows, list(csv_rows[0])))
        truth_rows = [f.truth() for f in files if f.expected != "hidden"]
        storage.write_text(storage.join(target, TRUTH_FILE), _csv_text(truth_rows, list(TRUTH_COLUMNS)))
        counts: dict[str, dict[str, int]] = {}
        defects: dict[str, int] = dict.fromkeys(DEFECT_TYPES, 0)
        for it in items:
            counts.setdefault(it.recipe, dict.fromkeys(LABELS, 0))[it.label] += 1
            if it.defect_type:
                defects[it.defect_type] += 1
        expected: dict[str, int] = {}
        for row in truth_rows:
            expected[row["expected"]] = expected.get(row["expected"], 0) + 1
        meta = {"schema": 1, "generator": "lineguard.synth", "config": cfg.model_dump(mode="json", exclude={"workers"}),
                "layout": "messy" if messy else "clean", "drift": drift, "severity": severity,
                "counts": counts, "defect_counts": defects, "expected_counts": expected}
        storage.write_text(storage.join(target, META_FILE), json.dumps(meta, indent=2, sort_keys=True) + "\n")
        commit()
    except BaseException:
        if storage.is_local(out) and target != out:
            shutil.rmtree(storage.local_path(target), ignore_errors=True)
        raise
    result = SynthResult(out=out, layout="messy" if messy else "clean", counts=counts, defect_counts=defects,
                         files=len(truth_rows), truth_path=storage.join(out, TRUTH_FILE),
                         seconds=0.0, drift=drift, severity=severity, expected_counts=expected)
    if video:
        result.video_path, result.video_truth_path = write_video(video, cfg, drift=drift, severity=severity)
    result.seconds = time.perf_counter() - started
    return result


def _made_by_synth(path: str) -> bool:
    try:
        with open(os.path.join(path, META_FILE), encoding="utf-8") as f:
            return bool(json.loads(f.read(1_000_000)).get("generator") == "lineguard.synth")
    except (OSError, ValueError, AttributeError):
        return False


def _staging(out: str, overwrite: bool) -> tuple[str, Callable[[], None]]:
    """Where to write, and the function that publishes it. Local: a temp sibling renamed at the end."""
    if not storage.is_local(out):
        if storage.exists(out) and any(True for _ in storage.walk_files(out)) and not overwrite:
            raise SynthError(f"output '{out}' already holds files; choose an empty place or pass --force")
        return out, lambda: None
    path = os.path.abspath(storage.local_path(out))
    if os.path.isfile(path):
        raise SynthError(f"output '{out}' is a file; expected a folder to create")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise SynthError(f"output folder '{out}' is not empty; choose a new folder or pass --force")
    if os.path.islink(path):
        raise SynthError(f"output '{out}' is a symbolic link; give the real folder")
    if os.path.isdir(path) and os.listdir(path) and not _made_by_synth(path):
        # --force replaces a toy dataset this command wrote, never a folder of someone's files.
        raise SynthError(f"output folder '{out}' was not written by lineguard data synth (no {META_FILE} from it); "
                         "--force only replaces a folder synth made -- choose a new folder")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.synth-{uuid.uuid4().hex[:8]}")

    def commit() -> None:
        old = None
        if os.path.exists(path):
            old = os.path.join(parent, f".{os.path.basename(path)}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old:
            shutil.rmtree(old, ignore_errors=True)

    return tmp, commit


def _write_files(target: str, files: Sequence[_File], cfg: SynthConfig, drift: str | None, severity: float,
                 workers: int, progress: bool) -> None:
    """Render every item once (all its files' encodings in the same task) and write the files."""
    by_item: dict[Item, list[_File]] = {}
    for f in files:
        if f.item is not None and f.raw is None:
            by_item.setdefault(f.item, []).append(f)
    tasks = [_Task(it, cfg.size, cfg.difficulty, cfg.seed, drift, severity, tuple(f.encoding for f in fs))
             for it, fs in by_item.items()]
    zips: dict[str, list[tuple[str, bytes]]] = {}

    def put(f: _File, data: bytes) -> None:
        if f.zip_path:
            zips.setdefault(f.zip_path, []).append((f.path[len(f.zip_path) + 1 :], data))
        else:
            storage.write_bytes(storage.join(target, *f.path.split("/")), data)

    with _progress(progress, len(tasks)) as advance:
        for task, blobs in zip(tasks, _map_tasks(tasks, workers), strict=True):
            for f, data in zip(by_item[task.item], blobs, strict=True):
                put(f, data)
            advance()
    for f in files:
        if f.raw is not None:
            put(f, f.raw)
    for zip_path, members in zips.items():
        storage.write_bytes(storage.join(target, *zip_path.split("/")), _zip_bytes(members))


def _zip_bytes(members: Sequence[tuple[str, bytes]]) -> bytes:
    """A deterministic zip: sorted members, fixed timestamps."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in sorted(members):
            info = zipfile.ZipInfo(name, date_time=(2024, 5, 1, 12, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


class _progress:
    """A rich progress bar (or nothing) as a context manager yielding ``advance()``."""

    def __init__(self, show: bool, total: int) -> None:
        self.show, self.total = show, total
        self.bar: Any = None

    def __enter__(self) -> Callable[[], None]:
        if not self.show:
            return lambda: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("drawing cones"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        self.bar.__enter__()
        task = self.bar.add_task("synth", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def _csv_text(rows: Sequence[dict[str, str]], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# --- video ----------------------------------------------------------------------------------------


VIDEO_COLUMNS = ("frame", "recipe", "label", "defect_type", "centred", "item_id", "drift")


def write_video(path: str, config: SynthConfig | None = None, *, cones: int | None = None,
                drift: str | None = None, severity: float = 0.5, drift_from: int | None = None
                ) -> tuple[str, str]:
    """Write a short video of cones passing along the conveyor, and its truth per frame.

    An MJPG ``.avi`` (OpenCV; works offline everywhere) of ``cones`` cones, each crossing
    the frame in ``config.video_frames_per_cone`` frames and exactly centred in one of
    them, recipes in blocks as on a real line, about a third of the cones bad. The sidecar
    CSV (``<path>.csv`` with the suffix replaced) has one row per frame: ``frame``,
    ``recipe``, ``label``, ``defect_type`` of the cone nearest the centre, ``centred`` (1 in
    the frame where it is centred) and ``drift`` (the drift active in that frame, from frame
    ``drift_from``, default half-way). Returns ``(video path, csv path)``.
    """
    try:
        import cv2
    except ImportError:
        raise SynthError("writing a video needs OpenCV: pip install 'lineguard[edge]'") from None
    cfg = config or SynthConfig()
    if drift is not None and drift not in DRIFT_KINDS:
        raise SynthError(f"unknown drift {drift!r}; expected one of {', '.join(DRIFT_KINDS)}")
    n_cones = cones or cfg.video_cones
    size, step = cfg.size, cfg.video_frames_per_cone
    s2 = 2 * size
    recipes = list(RECIPE_IDS[: cfg.recipes])
    rng = _stream_rng(cfg.seed, 1)
    # The whole belt as one strip (at 2x); cone k is drawn centred at x = (k + 1) * pitch.
    pitch = s2
    strip_w = (n_cones + 2) * pitch
    strip = _belt(rng, s2, strip_w, cfg.difficulty)
    cones_list: list[Item] = []
    for k in range(n_cones):
        recipe = recipes[min(len(recipes) - 1, k * len(recipes) // n_cones)]
        bad = rng.uniform() < 0.35
        defect = DEFECT_TYPES[int(rng.integers(len(DEFECT_TYPES)))] if bad else ""
        item = Item(recipe, "bad" if bad else "good", defect, k, recipe)
        cones_list.append(item)
        x0 = (k + 1) * pitch - s2 // 2
        window = strip[:, x0 : x0 + s2]
        strip[:, x0 : x0 + s2] = _scene(_stream_rng(cfg.seed, 2, k), item, size, cfg.difficulty, window)
    n_frames = n_cones * step
    start = n_frames // 2 if drift_from is None else drift_from
    fps = float(cfg.video_fps)
    tmp_dir = None
    local = storage.is_local(path)
    if local:
        video_file = os.path.abspath(storage.local_path(path))
        os.makedirs(os.path.dirname(video_file), exist_ok=True)
    else:
        import tempfile

        tmp_dir = tempfile.mkdtemp(prefix="lineguard-video-")
        video_file = os.path.join(tmp_dir, "video.avi")
    tmp_video = f"{video_file}.{uuid.uuid4().hex[:8]}.tmp.avi"
    writer = cv2.VideoWriter(tmp_video, cv2.VideoWriter.fourcc(*"MJPG"), fps, (size, size))
    if not writer.isOpened():
        raise SynthError(f"OpenCV cannot write an MJPG video at '{path}'")
    rows = []
    try:
        for f in range(n_frames):
            # The belt moves right to left: cone k is centred at frame k*step + step//2.
            centre = pitch + (f - step // 2) * pitch / step
            x0 = round(centre - s2 / 2)
            crop = strip[:, x0 : x0 + s2]
            frame = _camera(_stream_rng(cfg.seed, 3, f), crop, cfg.difficulty)
            active = drift if drift and drift != "new-recipe" and f >= start else None
            if active:
                frame = apply_drift(frame, active, severity, _stream_rng(cfg.seed, 4, f))
            writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
            k = min(n_cones - 1, max(0, f // step))
            it = cones_list[k]
            rows.append({"frame": str(f), "recipe": it.recipe, "label": it.label, "defect_type": it.defect_type,
                         "centred": "1" if f % step == step // 2 else "0", "item_id": f"video-{k:05d}",
                         "drift": active or ""})
    except BaseException:
        writer.release()
        if os.path.exists(tmp_video):
            os.unlink(tmp_video)
        raise
    writer.release()
    csv_path = os.path.splitext(path)[0] + ".csv"
    if local:
        os.replace(tmp_video, video_file)
    else:
        with open(tmp_video, "rb") as fh:
            storage.write_bytes(path, fh.read())
        shutil.rmtree(tmp_dir or "", ignore_errors=True)
    storage.write_text(csv_path, _csv_text(rows, list(VIDEO_COLUMNS)))
    return path, csv_path
