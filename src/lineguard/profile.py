"""Profile a dataset and derive its training recipe: ``train.recipe: auto``.

Real inspection photos differ more from each other than from toy cones: 300 px grey solar
cells, 4096x256 fabric strips, 227 px colour leather, 128 px cones on a belt. One fixed recipe
cannot serve them all, so before training :func:`profile_dataset` measures what matters --
image sizes and aspect ratios, grey or colour, whether the pictures have an "up", class and
recipe counts, imbalance -- and :func:`derive_recipe` turns that into input size and resize
policy, colour, tiles, augmentation family, architecture, width, batch size and learning rate,
each with the reason, printed and recorded in the run. Any key the config sets explicitly
wins over the derived value. Pure functions over the manifest and a sample of images; the
decisions are unit-tested on made-up profiles.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lineguard import LineguardError

if TYPE_CHECKING:
    from lineguard.config import LineguardConfig
    from lineguard.manifest import Dataset

TILE_SIDE = 128  # pixels of one tile: enough context for a crack or a spot, cheap to score in a batch
MAX_TILES = 16  # tiles per image: what two CPU cores can train on in a few minutes
GREY_TOLERANCE = 3.0  # mean |channel - luma| (0-255) under which an image counts as grey
SYMMETRY_TOLERANCE = 0.02  # mean |M - g(M)| of the mean image (0-1 scale) under which g counts as a symmetry


class ProfileError(LineguardError):
    """The dataset cannot be profiled (no train split, an unreadable image)."""


@dataclass(frozen=True)
class DatasetProfile:
    """What the recipe depends on, measured on a dataset's train split (sizes from the manifest,
    colour and orientation from a seeded sample of decoded images)."""

    train_images: int
    class_counts: dict[str, int]
    recipes: list[str]
    recipe_class_counts: dict[str, dict[str, int]]
    median_width: int
    median_height: int
    min_side: int
    max_side: int
    aspect_median: float  # width / height
    aspect_spread: float  # largest / smallest aspect ratio seen
    grey_fraction: float  # share of sampled images whose colour channels agree
    mirror_asymmetry: float  # mean |M - flip(M)| of the mean image, max over the two axes (0-1 scale)
    turn_asymmetry: float  # mean |M - rot90(M)| of the mean image (0-1 scale; 1.0 for non-square images)
    tile_mirror_asymmetry: float  # the same for the mean square tile along the long side (= the above when square)
    tile_turn_asymmetry: float
    sampled: int

    @property
    def imbalance(self) -> float:
        """Largest class count over the smallest (1.0 = balanced)."""
        counts = [c for c in self.class_counts.values() if c > 0]
        return max(counts) / min(counts) if counts else 1.0

    @property
    def grey(self) -> bool:
        return self.grey_fraction >= 0.95

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"imbalance": round(self.imbalance, 3), "grey": self.grey}


@dataclass(frozen=True)
class Choice:
    """One derived setting: the dotted config key, its value and why."""

    key: str
    value: Any
    reason: str
    overridden: bool = False  # the config set this key explicitly; ``value`` is the derived one, unused


@dataclass
class Recipe:
    """The derived settings, the profile they came from, and the config with them applied."""

    profile: DatasetProfile
    choices: list[Choice] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile.to_dict(),
                "choices": [asdict(c) | {"value": _plain(c.value)} for c in self.choices]}

    def lines(self) -> list[str]:
        """One printable line per choice."""
        out = []
        for c in self.choices:
            if c.overridden:
                out.append(f"{c.key} = (set by the config; auto would choose {_plain(c.value)}: {c.reason})")
            else:
                out.append(f"{c.key} = {_plain(c.value)}  ({c.reason})")
        return out


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# --- measuring ----------------------------------------------------------------------------------


def _mean_image(images: list[np.ndarray], side: int = 32, tiles: int = 1) -> np.ndarray:
    """The mean of the images' grey versions (0-1 scale) at ``side`` x ``side``, stretched to fill; with
    ``tiles`` > 1, each image is resized to ``tiles`` squares along its long side and the squares averaged."""
    from PIL import Image

    acc = np.zeros((side, side), np.float64)
    for img in images:
        wide = img.shape[1] >= img.shape[0]
        size = (side * tiles, side) if wide else (side, side * tiles)
        grey = np.asarray(Image.fromarray(img).convert("L").resize(size, Image.Resampling.BILINEAR), np.float64)
        parts = np.split(grey, tiles, axis=1 if wide else 0)
        acc += sum(parts) / (255.0 * tiles)
    return acc / max(1, len(images))


def _asymmetry(mean: np.ndarray, square: bool) -> tuple[float, float]:
    """(mirror, quarter-turn) asymmetry of a mean image: mean |M - g(M)|, the mirror the larger of the two axes."""
    mirror = max(float(np.abs(mean - mean[::-1]).mean()), float(np.abs(mean - mean[:, ::-1]).mean()))
    turn = float(np.abs(mean - np.rot90(mean)).mean()) if square else 1.0
    return round(mirror, 4), round(turn, 4)


def _is_grey(img: np.ndarray) -> bool:
    f = img[:: max(1, img.shape[0] // 64), :: max(1, img.shape[1] // 64)].astype(np.float32)
    luma = f @ np.array([0.299, 0.587, 0.114], np.float32)
    return float(np.abs(f - luma[..., None]).mean()) <= GREY_TOLERANCE


def _read(dataset: Dataset, path: str) -> np.ndarray:
    from lineguard.preprocess import ImageDecodeError

    try:
        return dataset.read_image(path)
    except ImageDecodeError as exc:
        raise ProfileError(f"dataset '{dataset.root}': image '{path}' cannot be decoded ({exc})") from None


def profile_dataset(dataset: Dataset, sample: int = 200, seed: int = 0) -> DatasetProfile:
    """Measure ``dataset``'s train split: counts and sizes from the manifest, colour and symmetry from up to
    ``sample`` decoded images (seeded, so the same dataset always gives the same profile)."""
    rows = dataset.split("train")
    if len(rows) == 0:
        raise ProfileError(f"dataset '{dataset.root}' has no train split rows; re-ingest it with splits")
    widths, heights = rows["width"].to_numpy(np.int64), rows["height"].to_numpy(np.int64)
    aspects = widths / np.maximum(1, heights)
    rng = np.random.default_rng(seed)
    picked = rows.iloc[np.sort(rng.permutation(len(rows))[:sample])]
    images = [_read(dataset, p) for p in picked["path"]]
    aspect = float(np.median(aspects))
    mirror, turn = _asymmetry(_mean_image(images), 0.8 <= aspect <= 1.25)
    ratio = max(aspect, 1 / max(aspect, 1e-9))
    tiles = min(MAX_TILES, max(1, round(ratio)))
    tile_mirror, tile_turn = (mirror, turn) if tiles == 1 else _asymmetry(_mean_image(images, tiles=tiles), True)
    per_recipe: dict[str, dict[str, int]] = {}
    for (recipe, label), n in Counter(zip(rows["recipe"], rows["label"], strict=True)).items():
        per_recipe.setdefault(str(recipe), {})[str(label)] = int(n)
    return DatasetProfile(
        train_images=len(rows),
        class_counts={str(k): int(v) for k, v in rows["label"].value_counts().sort_index().items()},
        recipes=sorted(per_recipe), recipe_class_counts=per_recipe,
        median_width=int(np.median(widths)), median_height=int(np.median(heights)),
        min_side=int(min(widths.min(), heights.min())), max_side=int(max(widths.max(), heights.max())),
        aspect_median=round(float(np.median(aspects)), 4),
        aspect_spread=round(float(aspects.max() / max(1e-9, aspects.min())), 4),
        grey_fraction=round(float(np.mean([_is_grey(i) for i in images])) if images else 0.0, 4),
        mirror_asymmetry=mirror, turn_asymmetry=turn, tile_mirror_asymmetry=tile_mirror,
        tile_turn_asymmetry=tile_turn, sampled=len(images),
    )


# --- deciding -----------------------------------------------------------------------------------


def _round_to(value: float, step: int, low: int, high: int) -> int:
    return int(min(high, max(low, step * round(value / step))))


def _auto_tiled(profile: DatasetProfile) -> bool:
    """Tiles when the images are long strips (aspect >= 3:1) or large (short side >= 4 tiles)."""
    short = min(profile.median_width, profile.median_height)
    ratio = max(profile.median_width, profile.median_height) / max(1, short)
    return ratio >= 3.0 or short >= 4 * TILE_SIDE


def _borderline_tiled(profile: DatasetProfile) -> bool:
    """The tiles-or-whole-image rule is a close call: the aspect or the short side within 1.5x of its threshold."""
    short = min(profile.median_width, profile.median_height)
    ratio = max(profile.median_width, profile.median_height) / max(1, short)
    return 2.0 <= ratio < 4.5 or 4 * TILE_SIDE / 1.5 <= short < 4 * TILE_SIDE * 1.5


def derive_recipe(
    profile: DatasetProfile, config: LineguardConfig, *, tiled: bool | None = None
) -> tuple[LineguardConfig, Recipe]:
    """The config with every derived setting applied that the config does not set explicitly, and the
    recipe (profile, choices and reasons) to print and record.

    ``tiled`` forces the tiles-or-whole-image decision (a search candidate on a borderline profile);
    None applies the rule.
    """
    recipe = Recipe(profile)
    pp_set, tr_set, aug_set = (config.preprocess.model_fields_set, config.train.model_fields_set,
                               config.augment.model_fields_set)
    pp: dict[str, Any] = {}
    tr: dict[str, Any] = {}
    aug: dict[str, Any] = {}

    def choose(section: dict[str, Any], fields_set: set[str], prefix: str, key: str, value: Any, why: str) -> None:
        explicit = key in fields_set
        recipe.choices.append(Choice(f"{prefix}.{key}", value, why, overridden=explicit))
        if not explicit:
            section[key] = value

    # Colour: a grey dataset trains (and ships) a 1-channel model.
    if profile.grey:
        choose(pp, pp_set, "preprocess", "color", "grey",
               f"{profile.grey_fraction:.0%} of {profile.sampled} sampled images are grey: a 1-channel model")
    else:
        choose(pp, pp_set, "preprocess", "color", "rgb",
               f"only {profile.grey_fraction:.0%} of {profile.sampled} sampled images are grey: colour carries "
               f"information")

    # Input size, resize policy and tiles.
    short = min(profile.median_width, profile.median_height)
    long_ = max(profile.median_width, profile.median_height)
    ratio = long_ / max(1, short)
    forced = tiled is not None and tiled != _auto_tiled(profile)
    tiled = _auto_tiled(profile) if tiled is None else tiled
    note = "search candidate, the profile is borderline: " if forced else ""
    if tiled:
        side = min(TILE_SIDE, _round_to(short, 16, 32, TILE_SIDE))
        if ratio >= 3.0:
            across = min(MAX_TILES, max(2, round(ratio)))
            grid = (1, across) if profile.median_width >= profile.median_height else (across, 1)
            why = (f"images are {profile.median_width}x{profile.median_height} (aspect {ratio:.1f}:1): resizing "
                   f"the whole strip to a square erases small defects, so the model scores {grid[0] * grid[1]} "
                   f"tiles of {side} px and pools them")
        else:
            per_side = max(2, min(int(np.sqrt(MAX_TILES)), round(short / (2 * side))))
            grid = (per_side, per_side)
            why = (f"images are {profile.median_width}x{profile.median_height}: a whole-image input would shrink "
                   f"them {short / (per_side * side):.1f}x less than tiles do, so the model scores "
                   f"{per_side * per_side} tiles of {side} px and pools them")
        size = (grid[0] * side, grid[1] * side)
        choose(pp, pp_set, "preprocess", "tile", (side, side), note + why)
        choose(pp, pp_set, "preprocess", "size", size, f"{grid[0]}x{grid[1]} tiles of {side} px")
        choose(pp, pp_set, "preprocess", "resize", "stretch" if profile.aspect_spread <= 1.05 else "letterbox",
               "every image has the same aspect ratio: fill the tiles exactly" if profile.aspect_spread <= 1.05
               else f"aspect ratios vary {profile.aspect_spread:.2f}x: letterbox, never distort")
    else:
        limit = 160 if profile.grey else 128
        side = _round_to(short, 32, 64, limit)
        if ratio <= 1.25:
            size = (side, side)
        elif profile.median_width >= profile.median_height:
            size = (side, _round_to(side * ratio, 32, side, 3 * side))
        else:
            size = (_round_to(side * ratio, 32, side, 3 * side), side)
        if forced:
            choose(pp, pp_set, "preprocess", "tile", None, note + "the whole image, resized")
        choose(pp, pp_set, "preprocess", "size", size,
               f"{note}median image {profile.median_width}x{profile.median_height}: {size[0]}x{size[1]} keeps "
               f"{'every pixel' if short <= side else f'{side / short:.0%} of the resolution'} within the "
               f"{limit} px budget of a {'grey' if profile.grey else 'colour'} model")
        choose(pp, pp_set, "preprocess", "resize", "letterbox",
               "keep the aspect ratio (pad, never distort: a stretched defect is another defect)")

    # Architecture, width, batch size, learning rate.
    recipe_head = len(profile.recipes) >= 2 and not tiled
    small_colour_recipes = recipe_head and not profile.grey and short <= 160
    if small_colour_recipes:
        choose(tr, tr_set, "train", "model", "tinycnn",
               f"{len(profile.recipes)} recipes of small colour images: the separable network with a recipe head "
               f"meets the edge budget")
        choose(tr, tr_set, "train", "lr", 1e-2, "the separable network's tuned peak learning rate")
    else:
        choose(tr, tr_set, "train", "model", "convnet",
               "full 3x3 convolutions learn real textures (cracks, spots, pinholes) from scratch in minutes; "
               "compress distils a smaller student for the edge")
        choose(tr, tr_set, "train", "lr", 3e-3, "AdamW peak for a residual network with batch norm")

    # Augmentation family, from the symmetries of the mean image (of the mean tile, when tiled).
    what = "tile" if tiled else "image"
    mirror = profile.tile_mirror_asymmetry if tiled else profile.mirror_asymmetry
    turn = profile.tile_turn_asymmetry if tiled else profile.turn_asymmetry
    free_turn = turn <= SYMMETRY_TOLERANCE and not tiled
    free_mirror = mirror <= SYMMETRY_TOLERANCE or free_turn
    if free_mirror:
        why = (f"the mean {what} is symmetric (mirror {mirror:.3f}, quarter turn {turn:.3f}, "
               f"<= {SYMMETRY_TOLERANCE} is symmetric): a surface or texture with no 'up'")
        choose(aug, aug_set, "augment", "hflip", 0.5, why)
        choose(aug, aug_set, "augment", "vflip", 0.5, why)
        choose(aug, aug_set, "augment", "rot90", 0.5 if free_turn else 0.0,
               why if free_turn else "quarter turns change the picture (non-square input or tiles)")
    else:
        why = (f"the mean {what} is not symmetric (mirror {mirror:.3f} > {SYMMETRY_TOLERANCE}): "
               f"parts on a line have an 'up' -- keep it; left-right mirror only")
        choose(aug, aug_set, "augment", "hflip", 0.5, why)
        choose(aug, aug_set, "augment", "vflip", 0.0, why)
        choose(aug, aug_set, "augment", "rot90", 0.0, why)

    if small_colour_recipes:
        choose(aug, aug_set, "augment", "rotate_deg", 10.0 if free_mirror else 15.0,
               "small tilts of the camera or the part")
    else:
        why = ("lossless geometry only (flips, quarter turns): a resampled rotation, zoom or shift blurs a "
               "thin crack, thread or pinhole that test images show sharp (docs/training.md)")
        for key in ("rotate_deg", "scale", "translate"):
            choose(aug, aug_set, "augment", key, 0.0, why)

    batch = 32 if profile.train_images < 2000 or tiled else 64
    choose(tr, tr_set, "train", "batch_size", batch,
           f"{profile.train_images} train images: {'more steps per epoch' if batch == 32 else 'the default'}")
    if profile.imbalance >= 3:
        choose(tr, tr_set, "train", "balance", "sampler",
               f"classes are imbalanced {profile.imbalance:.1f}:1: every class seen equally often")

    updated = config.model_copy(update={
        "preprocess": config.preprocess.model_copy(update=pp),
        "train": config.train.model_copy(update=tr),
        "augment": config.augment.model_copy(update=aug),
    })
    return updated, recipe


# --- candidates for the search within the budget -------------------------------------------------

WIDER = 1.5  # width factor of the "wider" candidate
MAX_SEARCH_SIDE = 224  # largest whole-image side a candidate tries


@dataclass(frozen=True)
class Candidate:
    """One recipe the search trains briefly: its full config, what differs from the derived recipe, and why."""

    name: str
    config: LineguardConfig
    changes: dict[str, Any]
    reason: str

    def describe(self) -> str:
        """``wider (train.width=1.5)``: the name and its changes."""
        if not self.changes:
            return self.name
        return f"{self.name} ({', '.join(f'{k}={_plain(v)}' for k, v in self.changes.items())})"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "changes": {k: _plain(v) for k, v in self.changes.items()}, "reason": self.reason}


def explicit_keys(config: LineguardConfig) -> set[str]:
    """The dotted keys of the preprocess, augment and train sections that the config sets explicitly."""
    return ({f"preprocess.{k}" for k in config.preprocess.model_fields_set}
            | {f"augment.{k}" for k in config.augment.model_fields_set}
            | {f"train.{k}" for k in config.train.model_fields_set})


def _value(config: LineguardConfig, dotted: str) -> Any:
    section, key = dotted.split(".", 1)
    return getattr(getattr(config, section), key)


def with_changes(config: LineguardConfig, changes: dict[str, Any]) -> LineguardConfig:
    """``config`` with dotted ``section.key`` values replaced (preprocess, augment, train)."""
    updates: dict[str, dict[str, Any]] = {}
    for dotted, value in changes.items():
        section, key = dotted.split(".", 1)
        updates.setdefault(section, {})[key] = value
    return config.model_copy(update={s: getattr(config, s).model_copy(update=u) for s, u in updates.items()})


def _diff(base: LineguardConfig, other: LineguardConfig, keys: list[str]) -> dict[str, Any]:
    return {k: _value(other, k) for k in keys if _value(other, k) != _value(base, k)}


def derive_candidates(profile: DatasetProfile, config: LineguardConfig, limit: int = 3) -> list[Candidate]:
    """Up to ``limit`` recipes for the search, the derived one first.

    The others each change one thing the profile leaves open: a wider model (50 % more channels);
    tiles instead of the whole image, or the reverse, when the profile is borderline for that rule;
    otherwise a larger input when the images have the pixels for it (a smaller one when they do
    not: faster epochs, more of them). A candidate never changes a key the config sets explicitly,
    so an explicit config leaves fewer (or no) alternatives.
    """
    base, recipe = derive_recipe(profile, config)
    fixed = explicit_keys(config)
    out = [Candidate("derived", base, {}, "the recipe derived from the profile")]

    width = min(2.0, round(base.train.width * WIDER, 3))
    if "train.width" not in fixed and width > base.train.width:
        wide = with_changes(base, {"train.width": width})
        out.append(Candidate("wider", wide, {"train.width": width},
                             f"{width / base.train.width:.1f}x the channels per layer: more capacity, if the "
                             f"budget can feed it"))

    tiled = base.preprocess.tile is not None
    shape_keys = {"preprocess.tile", "preprocess.size", "preprocess.resize"}
    if _borderline_tiled(profile) and not shape_keys & fixed:
        alt, alt_recipe = derive_recipe(profile, config, tiled=not tiled)
        keys = [c.key for c in alt_recipe.choices] + [c.key for c in recipe.choices]
        changes = _diff(base, alt, list(dict.fromkeys(keys)))
        if changes:
            out.append(Candidate("whole-image" if tiled else "tiles", alt, changes,
                                 "the profile is borderline for the tiles rule: try "
                                 + ("the whole image resized" if tiled else "tiles pooled into one decision")))
    elif not tiled and "preprocess.size" not in fixed:
        h, w = base.preprocess.size
        short = min(profile.median_width, profile.median_height)
        if short > 1.25 * min(h, w):
            factor, why = 1.5, f"the images have {short} px on the short side: more of their resolution"
        else:
            factor, why = 0.75, "the input already holds every pixel: a smaller input trains more epochs"
        side = _round_to(min(h, w) * factor, 32, 64, MAX_SEARCH_SIDE)  # the short side; the aspect ratio is kept
        scale = side / min(h, w)
        size = (side, _round_to(w * scale, 32, side, 3 * MAX_SEARCH_SIDE)) if h <= w else \
            (_round_to(h * scale, 32, side, 3 * MAX_SEARCH_SIDE), side)
        if size != (h, w):
            out.append(Candidate("larger-input" if factor > 1 else "smaller-input",
                                 with_changes(base, {"preprocess.size": size}), {"preprocess.size": size}, why))
    return out[:limit]
