"""One typed, frozen config per stage, loaded from one YAML file with CLI overrides on top.

``lineguard.yaml`` holds a section per stage (``synth``, ``ingest``, ``preprocess``,
``augment``, ``train``, ...). Every key has a default here, so an empty file (or no
file) is a valid config. Unknown keys are rejected with a "did you mean" suggestion
rather than silently ignored, because a typo in a threshold is a defect on the line.

Overrides use dotted paths: ``train.lr=0.003 augment.strength=0.5``. Values are
parsed as YAML scalars/lists (``[128,128]``, ``true``, ``1e-3``).
"""

from __future__ import annotations

import difflib
import reprlib
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from lineguard import LineguardError

CONFIG_FILENAME = "lineguard.yaml"
RecipeSource = Literal["csv", "top_folder", "filename"]
# A config file is a few KB; these caps keep a hostile one ("billion laughs": a few
# hundred bytes of nested aliases that expand to billions of nodes) from costing
# memory or time, here or in an error message that would print the expanded value.
MAX_YAML_BYTES = 1_000_000
MAX_YAML_NODES = 100_000


class ConfigError(LineguardError):
    """The config file or an override is invalid."""


def _is_number_type(annotation: Any) -> bool:
    """True when ``annotation`` expects a number somewhere (int, float, or a container or union of them)."""
    if annotation in (int, float):
        return True
    return any(_is_number_type(a) for a in get_args(annotation) if a is not Ellipsis)


def _holds_bool_where_number(annotation: Any, value: Any) -> bool:
    """True when ``value`` puts a bool where ``annotation`` wants an int or float.

    pydantic (like Python) takes ``true`` as 1 for an int field, so ``train.epochs=true``
    would quietly train one epoch; a bool is never a number in a LineGuard config.
    """
    if annotation is bool or annotation is Any:
        return False
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = get_args(annotation)
        if bool in options:
            return False
        return any(_holds_bool_where_number(a, value) for a in options if a is not type(None))
    if isinstance(value, bool):
        return _is_number_type(annotation)
    args = [a for a in get_args(annotation) if a is not Ellipsis]
    if origin in (list, tuple, set, frozenset) and isinstance(value, list | tuple):
        if origin is tuple and len(args) == len(value) and len(args) > 1:
            return any(_holds_bool_where_number(a, v) for a, v in zip(args, value, strict=True))
        return bool(args) and any(_holds_bool_where_number(args[0], v) for v in value)
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return any(_holds_bool_where_number(args[1], v) for v in value.values())
    return False


class _Section(BaseModel):
    """A config section: frozen, unknown keys refused, no NaN/inf floats, no bools as numbers."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and _holds_bool_where_number(field.annotation, value):
            raise ValueError("expects a number, not a boolean")
        return value


# --- data -------------------------------------------------------------------------------


class SynthConfig(_Section):
    """The procedurally drawn toy dataset (ice-cream cones on a conveyor)."""

    recipes: int = Field(5, ge=1, le=8, description="how many recipes to draw")
    per_class: int = Field(300, ge=1, description="images per recipe and per class (good, bad)")
    size: int = Field(128, ge=32, le=1024, description="image side in pixels")
    seed: int = 0
    difficulty: float = Field(0.5, ge=0.0, le=1.0, description="0 = clean studio shots, 1 = harsh line")
    messy: bool = Field(False, description="store it the way a first real dataset arrives (docs/data-layout.md)")
    drift: Literal["dirty-lens", "lighting", "blur", "color-cast", "camera-shift", "new-recipe"] | None = Field(
        None, description="change every image (or draw an unseen recipe) to test drift monitoring")
    severity: float = Field(0.5, ge=0.0, le=1.0, description="drift strength (new-recipe: share of items)")
    workers: int = Field(0, ge=0, description="drawing processes; 0 = the usable cores, at most 4")
    video_cones: int = Field(24, ge=1, description="cones in a --video file")
    video_fps: int = Field(30, ge=1, le=240)
    video_frames_per_cone: int = Field(10, ge=2, le=200, description="frames a cone takes to cross the view")


class IngestConfig(_Section):
    """Turning a messy source into a clean, versioned Dataset (see docs/ingest.md for the rules)."""

    label_synonyms: dict[str, list[str]] = Field(
        default_factory=lambda: {
            "good": ["good", "ok", "pass", "passed", "accept", "accepted", "normal", "fine", "no defect",
                     "non defective", "not defective", "defect free", "flawless"],
            "bad": ["bad", "nok", "ng", "notok", "not_ok", "defect", "defective", "reject", "rejected",
                    "fail", "failed", "anomaly"],
        },
        description="class name -> words that mean it in folder names, file names and CSV cells",
    )
    positive_class: str = Field("bad", description="the class a detection means (the defect)")
    layout: Literal["auto", "rules", "class_folders"] = Field(
        "auto",
        description="class_folders: SRC/<class>/<image>, every folder name is a class (synonyms mapped, others "
        "used as-is); rules: labels only from synonyms; auto: class_folders when every image sits one folder "
        "deep and there is no CSV",
    )
    recipe_from: list[RecipeSource] = Field(
        default_factory=lambda: list[RecipeSource](["csv", "top_folder"]),
        description="where the recipe is read from, in order (first found is used; csv and top_folder "
        "disagreeing is a conflict); none found -> default_recipe",
    )
    default_recipe: str = "default"
    defect_types: list[str] = Field(
        default_factory=lambda: ["missing_topping", "partial_topping", "spillage", "wrong_topping"],
        description="defect-type names looked for in file and folder names when no CSV column gives one",
    )
    max_pixels: int = Field(40_000_000, ge=1, description="larger images are refused (decompression bombs)")
    max_file_bytes: int = Field(200_000_000, ge=1, description="larger files (and archive members) are refused")
    max_archive_bytes: int = Field(
        4_000_000_000, ge=1, description="largest archive file read (it is streamed, never held in memory)"
    )
    max_unpacked_bytes: int = Field(
        8_000_000_000, ge=1, description="decompression budget of one source: the total unpacked size of all "
        "its archive members (zip bombs); members are unpacked to a private temp folder, one at a time",
    )
    max_archive_members: int = Field(
        200_000, ge=1, description="members one archive may hold (entries beyond it are refused)"
    )
    max_table_bytes: int = Field(
        200_000_000, ge=1, description="largest labels CSV or Label Studio JSON export read"
    )
    max_json_depth: int = Field(
        64, ge=2, le=1000, description="deepest nesting accepted in a Label Studio JSON export"
    )
    near_duplicate_bits: int = Field(
        8, ge=0, le=32, description="near duplicates: at most this many of the 64 perceptual-hash bits differ..."
    )
    near_duplicate_max_diff: float = Field(
        3.5, ge=0.0, le=255.0, description="...and their 16x16 colour thumbnails differ by at most this (0-255 scale)"
    )
    split: dict[str, float] = Field(default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15})
    balance_test: bool = Field(True, description="downsample the majority class of the test split per recipe "
                               "(a test split the user gave is kept as given)")
    user_split: Literal["auto", "ignore"] = Field(
        "auto", description="auto: a split the source gives (train/ val/ test/ folders above the class folders, "
        "or a split column in the labels CSV) is kept; ignore: always split by group and seed",
    )
    workers: int = Field(2, ge=0, le=64, description="processes decoding and hashing images; 0 = in-process")
    seed: int = 0

    @field_validator("split")
    @classmethod
    def _check_split(cls, value: dict[str, float]) -> dict[str, float]:
        if set(value) != {"train", "val", "test"}:
            raise ValueError("ingest.split needs exactly the keys train, val and test")
        if min(value.values()) < 0 or sum(value.values()) <= 0 or value["train"] <= 0:
            raise ValueError("ingest.split fractions must be >= 0 with train > 0")
        return value

    @field_validator("label_synonyms")
    @classmethod
    def _check_synonyms(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        seen: dict[str, str] = {}
        for name, words in value.items():
            for word in [name, *words]:
                key = word.strip().lower()
                if key in seen and seen[key] != name:
                    raise ValueError(f"ingest.label_synonyms: '{word}' is listed for both '{seen[key]}' and '{name}'")
                seen[key] = name
        return value


# --- model development --------------------------------------------------------------------


class PreprocessConfig(_Section):
    """The preprocessing contract; it ships inside every bundle (see preprocess.py).

    With ``train.recipe: auto`` the training run derives size, colour and tiles from the data
    (docs/training.md) for every key here that the config does not set; a key set here wins.
    """

    size: tuple[int, int] = Field((96, 96), description="model input (height, width) in pixels")
    resize: Literal["letterbox", "stretch", "center_crop"] = "letterbox"
    color: Literal["rgb", "grey"] = Field("rgb", description="grey: one luma channel (a 1-channel model)")
    mean: tuple[float, ...] | None = Field(None, description="per-channel mean (0-1 scale); default: ImageNet's "
                                           "(rgb) or their average (grey)")
    std: tuple[float, ...] | None = Field(None, description="per-channel std; default: ImageNet's or their average")
    pad_value: int = Field(0, ge=0, le=255)
    tile: tuple[int, int] | None = Field(None, description="classify (height, width) tiles of the resized image "
                                         "and pool their scores: small defects in large images; None = whole image")
    tile_stride: tuple[int, int] | None = Field(None, description="tile step (default: the tile size, no overlap)")
    tile_pool: Literal["lse", "max", "mean"] = Field("lse", description="how tile scores become one: lse = smooth max")

    @field_validator("size", "tile", "tile_stride")
    @classmethod
    def _positive_pair(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and min(v) < 1:
            raise ValueError(f"must be (height, width) of positive integers, got {list(v)}")
        return v


class AugmentConfig(_Section):
    """Training-only augmentation. ``strength`` scales every magnitude below at once; 0 turns it all off."""

    strength: float = Field(0.5, ge=0.0, le=3.0, description="scales every magnitude; 0 = no augmentation")
    hflip: float = Field(0.5, ge=0.0, le=1.0, description="probability")
    vflip: float = Field(0.0, ge=0.0, le=1.0, description="probability")
    rot90: float = Field(0.0, ge=0.0, le=1.0, description="probability of a quarter turn (with both flips: the 8 "
                         "symmetries of a square, for surfaces and textures; a half turn on non-square inputs)")
    rotate_deg: float = Field(15.0, ge=0.0, le=180.0)
    scale: float = Field(0.1, ge=0.0, le=0.5, description="max relative zoom in/out")
    translate: float = Field(0.08, ge=0.0, le=0.5, description="max shift as a fraction of the side")
    brightness: float = Field(0.2, ge=0.0, le=1.0)
    contrast: float = Field(0.2, ge=0.0, le=1.0)
    saturation: float = Field(0.2, ge=0.0, le=1.0)
    hue: float = Field(0.02, ge=0.0, le=0.5)
    blur: float = Field(0.1, ge=0.0, le=1.0, description="probability of a light Gaussian blur")
    noise: float = Field(0.02, ge=0.0, le=0.5, description="std of additive Gaussian noise (0..1 scale)")
    cutout: float = Field(0.0, ge=0.0, le=1.0, description="probability of one erased patch")


class TrainConfig(_Section):
    """One training run. Transfer learning and distillation are options of the same loop.

    ``recipe: auto`` (the default) profiles the dataset before training and derives the input
    size, colour, tiles, augmentation family, architecture, width, batch size and learning rate
    from it, printing and recording the reason for each; any key the config sets explicitly
    wins. ``recipe: manual`` uses the values below as they are. With ``search: auto`` and a
    budget, two or three candidate recipes are tried briefly and the best is continued.
    """

    recipe: Literal["auto", "manual"] = Field("auto", description="auto: derive the recipe from the data profile")
    # tinycnn: the model that meets the edge budget (P1); see docs/training.md.
    model: str = Field("tinycnn", description="architecture, a key of lineguard.models.MODELS")
    width: float = Field(1.0, gt=0.0, le=2.0, description="width multiplier of the architecture")
    budget_s: float | None = Field(240.0, gt=0.0, description="wall-time budget of the run in seconds (decoding "
                                   "included): the epoch count and the cosine schedule are fitted to it from the "
                                   "measured throughput; an explicit train.epochs wins; None = train.epochs")
    search: Literal["auto", "off"] = Field("auto", description="auto: with recipe auto and a budget, train 2-3 "
                                           "candidate recipes from the profile briefly and continue the best on "
                                           "validation (docs/training.md); off: the derived recipe only")
    search_share: float = Field(0.25, gt=0.0, lt=1.0, description="share of train.budget_s the candidates get "
                                "together (split evenly); the winner trains for the rest")
    epochs: int = Field(25, ge=1, description="epochs when there is no budget (or when set explicitly)")
    max_epochs: int = Field(150, ge=1, description="most epochs a budget may plan")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-2, gt=0.0, description="peak AdamW learning rate (after warm-up, then cosine decay)")
    backbone_lr_scale: float = Field(0.1, gt=0.0, le=1.0, description="backbone lr factor when fine-tuning")
    weight_decay: float = Field(0.05, ge=0.0)
    warmup_epochs: float = Field(1.0, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    ema: float = Field(0.99, ge=0.0, lt=1.0, description="per-step decay of a weight moving average that is "
                       "validated and kept instead of the raw weights; 0 = off")
    balance: Literal["sampler", "loss", "none"] = "sampler"
    recipe_head: bool = Field(True, description="score each (recipe, class) pair and sum the pairs back to "
                              "classes: 'good' can look different per recipe; off, or one recipe: a plain head")
    recipe_head_min: int = Field(30, ge=1, description="use the recipe head only when every (recipe, class) pair "
                                 "has at least this many train images (always when fine-tuning a recipe-head run)")
    patience: int = Field(10, ge=1, description="early stopping: epochs without val balanced-accuracy gain")
    seed: int = 0
    threads: int = Field(0, ge=0, description="torch threads; 0 = all cores")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="arithmetic of the training steps (weights stay fp32); bf16 needs a CPU with native "
        "bf16 (AVX512-BF16/AMX) and pays off only for full convolutions with OMP_WAIT_POLICY=ACTIVE on an idle "
        "machine -- docs/training.md")
    deterministic: bool = True
    weights: str | None = Field(None, description="a torchvision/timm ImageNet state-dict file to start from")
    init_from: str | None = Field(None, description="RUN_ID, models:/name@alias or a weights file")
    freeze_epochs: int = Field(0, ge=0, description="epochs with the backbone frozen when fine-tuning")
    rehearsal: int = Field(200, ge=0, description="old images mixed in per class when onboarding a recipe")
    teacher: str | None = Field(None, description="RUN_ID of a teacher for knowledge distillation")
    distill_temperature: float = Field(4.0, gt=0.0)
    distill_weight: float = Field(0.5, ge=0.0, le=1.0)
    max_minutes: float | None = Field(None, gt=0.0, description="stop after this much wall time")

    @field_validator("search", mode="before")
    @classmethod
    def _search_switch(cls, v: Any) -> Any:
        """YAML reads a bare ``off`` as false (and ``on`` as true): take them as the words they were."""
        return {False: "off", True: "auto"}.get(v, v) if isinstance(v, bool) else v


class TuneConfig(_Section):
    """Hyperparameter search (Optuna TPE + median pruning). The search space lists the choices.

    ``lr``, ``weight_decay`` and ``augment_strength`` are (low, high) ranges (lr and weight
    decay searched on a log scale); ``width``, ``size`` and ``models`` are lists of choices.
    """

    trials: int = Field(20, ge=1, description="trials in all (split over the workers)")
    workers: int = Field(1, ge=1, description="processes sharing the study on this machine")
    storage: str | None = Field(None, description="Optuna RDB URL; default sqlite:///<workdir>/optuna.db")
    study: str = Field("lineguard", min_length=1, description="study name; runs with the same name add trials")
    epochs: int = Field(8, ge=1, description="epochs per trial")
    lr: tuple[float, float] = (3e-4, 1e-2)
    weight_decay: tuple[float, float] = (1e-4, 0.1)
    width: list[float] = Field(default_factory=lambda: [0.5, 0.75, 1.0], min_length=1)
    size: list[int] = Field(default_factory=lambda: [96, 128], min_length=1)
    augment_strength: tuple[float, float] = (0.0, 1.5)
    models: list[str] = Field(default_factory=lambda: ["mobilenetv3_small", "tinycnn"], min_length=1)
    prune: bool = Field(True, description="stop trials whose val balanced accuracy is below the median")
    prune_startup_trials: int = Field(3, ge=0, description="finished trials before pruning starts")
    prune_warmup_epochs: int = Field(2, ge=0, description="epochs a trial always runs before it can be pruned")

    @field_validator("lr", "weight_decay")
    @classmethod
    def _log_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"must be [low, high] with 0 < low <= high, got {list(v)}")
        return v

    @field_validator("augment_strength")
    @classmethod
    def _strength_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= v[0] <= v[1] <= 3:
            raise ValueError(f"must be [low, high] with 0 <= low <= high <= 3, got {list(v)}")
        return v

    @field_validator("width")
    @classmethod
    def _widths(cls, v: list[float]) -> list[float]:
        if any(not 0 < w <= 2 for w in v):
            raise ValueError(f"every width must be in (0, 2], got {v}")
        return v

    @field_validator("size")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if any(s < 32 for s in v):
            raise ValueError(f"every input size must be at least 32 px, got {v}")
        return v


class TrackingConfig(_Section):
    """MLflow. The default is a SQLite store and a local artifact folder under the workdir."""

    uri: str | None = Field(None, description="tracking URI (sqlite:///PATH or http://HOST:PORT); "
                            "default sqlite:///<workdir>/mlflow.db, artifacts in <workdir>/mlartifacts")
    experiment: str = "lineguard"
    registered_model: str = "lineguard-model"


# --- evaluation and release -----------------------------------------------------------------


class CostConfig(_Section):
    """What each error costs; the decision threshold minimises the expected cost."""

    false_reject: float = Field(1.0, ge=0.0, description="a good item thrown away")
    missed_defect: float = Field(1.0, ge=0.0, description="a defect that reaches the customer")
    defect_rate: float | None = Field(0.5, gt=0.0, lt=1.0, description="share of defects on the line the "
                                      "expected cost is weighed at when the thresholds are chosen; 0.5 (default) "
                                      "weighs both classes the same, as the balanced test split does (equal costs "
                                      "then maximise balanced accuracy); set your line's rate, e.g. 0.02, with costs "
                                      "to match; none: the val split's own mix (how many photos of each class were "
                                      "collected, rarely the line's)")


class EvaluateConfig(_Section):
    """Evaluation: calibration, cost-based thresholds, confidence intervals, learning curve."""

    cost: CostConfig = CostConfig()
    per_recipe_threshold: bool = True
    min_threshold_samples: int = Field(
        10, ge=1, description="a recipe gets its own threshold only with this many val images of each class"
    )
    calibrate: bool = Field(True, description="fit a temperature on the val split (temperature scaling)")
    ece_bins: int = Field(15, ge=2)
    bootstrap: int = Field(1000, ge=0, description="resamples for 95 % confidence intervals")
    seed: int = Field(0, description="seed of the bootstrap resampling")
    min_test_per_recipe: int = Field(50, ge=1, description="warn below this many test images per recipe")
    gallery: int = Field(12, ge=0, description="worst errors shown as thumbnails in the report")
    learning_curve_fractions: list[float] = Field(
        default_factory=lambda: [0.1, 0.25, 0.5, 1.0], description="fractions of the train split"
    )
    learning_curve_seeds: int = Field(3, ge=1, description="repeats per fraction (different subsets and seeds)")
    learning_curve_epochs: int | None = Field(None, ge=1, description="epochs per point; default train.epochs")


class GateConfig(_Section):
    """The release gate (gate.py): when may a candidate replace the champion?"""

    tolerance: float = Field(0.005, ge=0.0, description="allowed cost-metric loss vs the champion")
    max_ece: float = Field(0.05, ge=0.0, le=1.0)
    min_balanced_accuracy: float = Field(0.95, ge=0.0, le=1.0, description="absolute limit, first model")
    min_recipe_balanced_accuracy: float = Field(0.9, ge=0.0, le=1.0)
    max_parity_disagreement: float = Field(0.01, ge=0.0, le=1.0, description="exported vs float decisions")
    alpha: float = Field(0.05, gt=0.0, lt=1.0, description="significance of the paired (McNemar) test")


# --- deployment -------------------------------------------------------------------------------


class ExportConfig(_Section):
    """torch -> ONNX and the bundle: parity tolerance, golden batch, reference statistics."""

    opset: int = Field(18, ge=17, description="ONNX opset of the exported model")
    golden_size: int = Field(64, ge=1, description="images in the fixed parity batch (from val/test)")
    atol: float = Field(1e-4, gt=0.0, description="max |logit difference| torch vs ONNX")
    reference_images: int = Field(2000, ge=1, description="training images sampled for drift reference statistics "
                                  "(the monitor's false-alarm promise needs a few hundred per recipe)")
    monitor_arl0: float = Field(100_000.0, gt=1, description="drift monitor: mean clean frames between false "
                                "alarms, all signals together, that the shipped thresholds are calibrated to")


class CompressConfig(_Section):
    """Compression candidates (INT8, pruning, distillation, OpenVINO) and how one is chosen."""

    budget_ms: float = Field(1.0, gt=0.0, description="latency budget per image (median, batch 1)")
    budget_threads: int = Field(1, ge=1, description="thread count the budget applies to")
    max_drop: float = Field(0.003, ge=0.0, le=1.0, description="max balanced-accuracy drop vs float (0.003 = 0.3 points)")
    int8: bool = Field(True, description="build the static INT8 (QDQ) candidate")
    calibration_images: int = Field(256, ge=1, description="training images INT8 activations are calibrated on")
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = Field(True, description="per-channel INT8 weights")
    activation_type: Literal["uint8", "int8"] = Field(
        "uint8", description="INT8 activations: uint8 (U8S8, fastest on x86 without VNNI) or int8 (S8S8)"
    )
    prune_ratios: list[float] = Field(default_factory=lambda: [0.25, 0.5], description="fraction of channels removed")
    finetune_epochs: int = Field(3, ge=0, description="epochs of fine-tuning after pruning")
    finetune_lr_scale: float = Field(0.3, gt=0.0, le=1.0, description="fine-tuning lr relative to train.lr")
    distill: bool = Field(True, description="train a smaller student with the run as teacher")
    student_model: str | None = Field(None, description="student architecture; None = the teacher's")
    student_width_scale: float = Field(0.5, gt=0.0, le=1.0, description="student width relative to the teacher's")
    student_epochs: int | None = Field(None, ge=1, description="student training epochs; None = train.epochs")
    openvino: bool = Field(True, description="measure the fp32 model on OpenVINO too (when installed)")
    on_no_fit: Literal["error", "fp32"] = Field(
        "error", description="nothing fits the budget: fail (error) or bundle fp32 and say so (fp32)"
    )
    backends: list[Literal["ort", "openvino"]] = Field(
        default_factory=lambda: list[Literal["ort", "openvino"]](["ort"]),
        description="backends the edge may deploy with; others are compared only",
    )
    threads: list[int] = Field(default_factory=lambda: [1, 2], description="thread counts latency is measured at")
    warmup: int = Field(50, ge=0, description="untimed runs before timing, per subprocess")
    repeats: int = Field(500, ge=10, description="timed runs per candidate and thread count")
    rounds: int = Field(5, ge=1, description="repeats are split over this many interleaved fresh subprocesses")


class PipelineConfig(_Section):
    """``lineguard pipeline run``: which steps run, on what data, and where a cluster runs them.

    With ``data`` unset the pipeline draws the toy cones first (the demo); then the toy
    presets (:data:`lineguard.pipeline.TOY_PRESETS`) apply to every key the config does not set.
    """

    data: str | None = Field(None, description="photos to ingest (folder, archive, CSV, Label Studio export; "
                             "path or URL); None = draw the toy cones (synth)")
    tune: bool = Field(False, description="search hyperparameters (the tune section) before the final training")
    baseline: bool = Field(True, description="also fit the non-deep baseline (colour and shape features)")
    compress: bool = Field(True, description="build compression candidates and ship the one that fits the budget")
    artifacts: str | None = Field(None, description="where steps write datasets, reports and bundles (a folder "
                                  "or s3://, gs://, az:// URL); None = the workdir")
    image: str = Field("lineguard:latest", min_length=1, description="container image each Kubeflow step runs in "
                       "(docker/Dockerfile)")


class LimitsConfig(_Section):
    """What the edge, ``predict``, ``bench`` and the bundle loader read at most (docs/security.md).

    Ingest's own limits are in the ``ingest`` section. The defaults are the edge
    runtime's own (``lineguard.edge.bundle.BundleLimits``); a test keeps them equal.
    """

    max_bundle_json_bytes: int = Field(10_000_000, ge=1_000, description="largest bundle.json read")
    max_bundle_files: int = Field(64, ge=2, description="most files (or archive members) a bundle may hold")
    max_bundle_bytes: int = Field(2_000_000_000, ge=1, description="largest total size of a bundle's files")
    max_image_bytes: int = Field(200_000_000, ge=1, description="largest image file `predict` reads")
    max_pixels: int = Field(40_000_000, ge=1, description="largest image `predict` decodes, and largest bench frame")


class TrustConfig(_Section):
    """Which bundles the edge may load (docs/deployment.md, "Signing bundles").

    With ``keys`` set, a bundle must carry a valid ed25519 signature by one of them, or it
    is refused, with no fallback. ``digest`` pins one bundle (``sha256:...`` as printed
    by ``lineguard bundle info``).
    """

    keys: list[str] = Field(default_factory=list, description="public key files (PEM, ed25519) trusted to sign bundles")
    digest: str | None = Field(None, description="load only the bundle with this digest (sha256:<64 hex>)")

    @field_validator("digest")
    @classmethod
    def _check_digest(cls, value: str | None) -> str | None:
        if value is None:
            return value
        hexpart = value.removeprefix("sha256:")
        if len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
            raise ValueError("trust.digest must be sha256:<64 lower-case hex digits>")
        return f"sha256:{hexpart}"


class LineguardConfig(_Section):
    """The whole config: one section per lifecycle stage."""

    workdir: str = Field("lineguard-work", description="where runs, bundles and the MLflow store live")
    synth: SynthConfig = SynthConfig()
    ingest: IngestConfig = IngestConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    tune: TuneConfig = TuneConfig()
    tracking: TrackingConfig = TrackingConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    gate: GateConfig = GateConfig()
    export: ExportConfig = ExportConfig()
    compress: CompressConfig = CompressConfig()
    limits: LimitsConfig = LimitsConfig()
    trust: TrustConfig = TrustConfig()
    pipeline: PipelineConfig = PipelineConfig()

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (what is saved with every run)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def tracking_uri(self) -> str:
        """The MLflow tracking URI, defaulting to a SQLite file in the workdir."""
        if self.tracking.uri:
            return self.tracking.uri
        return f"sqlite:///{Path(self.workdir).resolve() / 'mlflow.db'}"


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{hint} Valid keys: {', '.join(sorted(valid))}"


def _check_keys(data: Any, model: type[BaseModel], where: str) -> None:
    """Reject unknown keys at every level with a suggestion (pydantic's message is less kind)."""
    if not isinstance(data, dict):
        return
    fields = model.model_fields
    for key, value in data.items():
        if key not in fields:
            path = f"{where}.{key}" if where else str(key)
            raise ConfigError(f"unknown config key '{path}'{_suggest(str(key), list(fields))}")
        annotation = fields[key].annotation
        path = f"{where}.{key}" if where else str(key)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            _check_keys(value, annotation, path)
        elif isinstance(value, dict) and get_origin(annotation) is not dict:
            raise ConfigError(f"'{path}' is a value, not a section; set it as {path}=VALUE")


class _CappedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a cap on the nodes a document expands to (aliases counted each time)."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expansion(node)
        return super().construct_document(node)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand past MAX_YAML_NODES (counted without expanding it)."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        kids: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            kids = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            kids = [n for pair in node.value for n in pair]
        if children_done or not kids:
            total = 1 + sum(sizes.get(id(k), 0) for k in kids)
            if total > MAX_YAML_NODES:
                raise ConfigError(
                    f"YAML expands to more than {MAX_YAML_NODES:,} values (nested aliases?); "
                    "a LineGuard config is a few plain sections"
                )
            sizes[id(node)] = total
            continue
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in sizes)


def _safe_yaml(text: str) -> Any:
    """``yaml.safe_load`` with the expansion cap (aliases are fine; a billion laughs is not)."""
    loader = _CappedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxtuple, _SHORT.maxlevel = 60, 60, 6, 6, 6, 2


def _apply_override(data: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override '{override}' must look like section.key=value, e.g. train.lr=0.003")
    dotted, raw = override.split("=", 1)
    parts = [p for p in dotted.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override '{override}' has no key before '='")
    try:
        value = _safe_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{override}': value is not valid YAML ({exc})") from None
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{override}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _format_validation_error(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    got = _SHORT.repr(err.get("input"))  # bounded: never print a whole (possibly aliased) value
    msg = err["msg"].removeprefix("Value error, ").lower()
    return f"{source}: '{loc}' {msg} (got {got})"


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> LineguardConfig:
    """Load ``lineguard.yaml`` (or defaults when ``path`` is None), apply overrides, validate.

    If ``path`` is None and ``./lineguard.yaml`` exists, that file is used.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is None and Path(CONFIG_FILENAME).is_file():
        path = CONFIG_FILENAME
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"config file '{p}' not found; create it or run without --config for defaults")
        size = p.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError(f"config file '{p}' is {size:,} bytes; a config file may be at most {MAX_YAML_BYTES:,}")
        try:
            with p.open("rb") as f:
                loaded = _safe_yaml(f.read(MAX_YAML_BYTES + 1).decode("utf-8"))
        except ConfigError as exc:
            raise ConfigError(f"config file '{p}': {exc}") from None
        except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
            detail = " ".join(str(exc).split())
            raise ConfigError(f"config file '{p}' is not valid YAML: {detail}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file '{p}' must hold a mapping of sections, got {type(loaded).__name__}")
        data = loaded
    for override in overrides:
        _apply_override(data, override)
    _check_keys(data, LineguardConfig, "")
    try:
        return LineguardConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def parse_config(text: str, source: str = "config text") -> LineguardConfig:
    """A config from YAML text (what each pipeline step receives), checked like a config file."""
    if len(text.encode("utf-8")) > MAX_YAML_BYTES:
        raise ConfigError(f"{source} is larger than {MAX_YAML_BYTES:,} bytes")
    try:
        data = _safe_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {' '.join(str(exc).split())}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a mapping of sections, got {type(data).__name__}")
    _check_keys(data, LineguardConfig, "")
    try:
        return LineguardConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def save_config(config: LineguardConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(config.to_yaml(), encoding="utf-8")
    tmp.replace(p)
