"""Tracked, reproducible training: ``train(config, dataset) -> TrainResult``.

One loop serves every case: training from scratch, transfer learning (``init_from`` a
run, a registered model or a weights file, with a freeze-then-unfreeze schedule and a
lower backbone lr), onboarding a new recipe (rehearsal mixes in a sample of the old
training data so old recipes are not forgotten) and knowledge distillation (``teacher``).

Images are decoded and resized ONCE with :mod:`lineguard.preprocess` (the same code the
edge runs) and kept in memory as uint8 tensors; each batch is augmented on tensors
(:mod:`lineguard.augment`) and normalised with the same constants as
``preprocess.normalise``. Seeds, thread count and deterministic algorithms are set so
the same config and data give the same metrics on the same machine. Every run is an
MLflow run (:mod:`lineguard.tracking`) holding all it needs to be reproduced:
``reproduce(config, run_id)`` re-trains from the run alone and compares the metrics.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lineguard import LineguardError

if TYPE_CHECKING:
    import torch
    from rich.console import Console

    from lineguard.config import LineguardConfig
    from lineguard.manifest import Dataset
    from lineguard.preprocess import PreprocessParams
    from lineguard.profile import Candidate, Recipe
    from lineguard.tracking import Run


class TrainError(LineguardError):
    """Training cannot start or cannot go on (bad data, bad reference, incompatible models)."""


class BudgetTooSmall(TrainError):
    """``train.budget_s`` cannot fit what has to run: the decoding, the first epoch, or (for a search
    candidate) the few epochs a fair comparison needs. ``epoch_s`` is the measured epoch (0 before one ran)."""

    def __init__(self, message: str, epoch_s: float = 0.0, elapsed_s: float = 0.0) -> None:
        super().__init__(message)
        self.epoch_s, self.elapsed_s = epoch_s, elapsed_s


_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
COLLAPSE_WARNING = "collapsed_to_majority_class"


# --- results ------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a training run produced; ``model`` holds the best (by val balanced accuracy) weights."""

    run_id: str | None
    best_epoch: int
    val_metrics: dict[str, float]
    test_metrics: dict[str, float]
    model: Any  # torch.nn.Module
    classes: list[str]
    preprocess: PreprocessParams
    history: list[dict[str, float]]
    config: LineguardConfig
    dataset_version: str
    seconds: float
    warnings: list[str] = field(default_factory=list)
    search: dict[str, Any] | None = None  # the candidate search (train.search), as recorded in recipe.json

    @property
    def model_meta(self) -> dict[str, Any]:
        """What rebuilds the model from its weights (stored as ``model/model.json`` in the run)."""
        from lineguard.models import grouped_head

        head = grouped_head(self.model)
        return model_meta(self.config, self.classes, self.preprocess, self.dataset_version,
                          head.group_names if head is not None else ())


@dataclass
class SplitTensors:
    """One split decoded and resized once: uint8 ``(N, C, H, W)`` images, int64 labels, recipes."""

    images: torch.Tensor
    labels: torch.Tensor
    recipes: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class PreparedData:
    """A dataset's train/val/test splits in memory at one preprocessing size (reusable across runs)."""

    classes: list[str]
    params: PreprocessParams
    dataset_version: str
    splits: dict[str, SplitTensors]


def model_meta(
    config: LineguardConfig, classes: Sequence[str], params: PreprocessParams, dataset_version: str,
    head_recipes: Sequence[str] = (),
) -> dict[str, Any]:
    """What rebuilds a model from its weights: ``head_recipes`` names the groups of a
    :class:`~lineguard.models.GroupedLinear` head (empty: a plain head)."""
    return {
        "schema": 1,
        "model": config.train.model,
        "width": config.train.width,
        "classes": list(classes),
        "head_recipes": list(head_recipes),
        "positive_class": list(classes)[-1],
        "preprocess": params.to_dict(),
        "dataset_version": dataset_version,
    }


# --- set-up: determinism, device, data ----------------------------------------------------------


def preprocess_params(config: LineguardConfig) -> PreprocessParams:
    """The :class:`PreprocessParams` of ``config.preprocess``."""
    from lineguard.preprocess import params_from_config

    return params_from_config(config.preprocess)


def seed_everything(seed: int, threads: int = 0, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; set the torch thread count; ask for deterministic kernels."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.set_num_threads(threads or os.cpu_count() or 1)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cpu``, ``cuda``, ``cuda:N`` as given."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainError(f"train.device '{name}' is not a device; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"train.device is '{name}' but no CUDA device is available; use auto or cpu")
    return device


def load_split(
    dataset: Dataset, split: str, params: PreprocessParams, classes: Sequence[str], progress: bool = False
) -> SplitTensors:
    """Decode and resize a split once (``preprocess.resize``) into a uint8 tensor in memory."""
    import torch

    rows = dataset.split(split)
    images = _decode_rows(dataset, rows, params, progress, split)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(rows["label"]) - set(index))
    if unknown:
        raise TrainError(f"dataset '{dataset.root}' split {split} has labels {unknown} not in classes {list(classes)}")
    labels = torch.tensor([index[c] for c in rows["label"]], dtype=torch.int64)
    return SplitTensors(torch.from_numpy(images), labels, [str(r) for r in rows["recipe"]])


def _decode_rows(dataset: Dataset, rows: Any, params: PreprocessParams, progress: bool, what: str) -> np.ndarray:
    """The images of ``rows`` decoded and resized to the model input: uint8 ``(N, C, H, W)``, in order.

    A few threads decode at once (Pillow releases the GIL while decoding and resizing).
    """
    from concurrent.futures import ThreadPoolExecutor

    from lineguard.preprocess import ImageDecodeError, model_pixels

    def load(path: str) -> np.ndarray:
        try:
            return model_pixels(dataset.read_image(path), params)
        except ImageDecodeError as exc:
            raise TrainError(f"dataset '{dataset.root}': image '{path}' cannot be decoded ({exc})") from None

    paths = list(rows["path"])
    images = np.empty((len(paths), *params.input_shape), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        decoded: Any = pool.map(load, paths)
        if progress and paths:
            from rich.progress import track

            decoded = track(decoded, total=len(paths), description=f"Decoding {what}", transient=True)
        for i, img in enumerate(decoded):
            images[i] = img.transpose(2, 0, 1)
    return images


def prepare_data(dataset: Dataset, params: PreprocessParams, progress: bool = False) -> PreparedData:
    """Decode every split once; pass the result to :func:`train` to reuse it across runs (tuning)."""
    if len(dataset.split("train")) == 0:
        raise TrainError(f"dataset '{dataset.root}' has no train split rows; re-ingest it with splits")
    if len(dataset.split("val")) == 0:
        raise TrainError(f"dataset '{dataset.root}' has no val split rows; training needs a validation split")
    classes = dataset.classes
    if len(classes) < 2:
        raise TrainError(f"dataset '{dataset.root}' has only the class(es) {classes}; training needs at least two")
    splits = {s: load_split(dataset, s, params, classes, progress) for s in ("train", "val", "test")}
    return PreparedData(classes, params, dataset.version, splits)


# --- init_from, teacher, rehearsal ----------------------------------------------------------------


@dataclass
class _Init:
    """A resolved ``init_from``: a run (with its model meta) or a weights file."""

    ref: str
    run_id: str | None = None
    weights_path: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def resolve_run_reference(config: LineguardConfig, ref: str) -> str | None:
    """The run id ``ref`` names (run id, ``models:/NAME@ALIAS``, ``models:/NAME/N``, ``runs:/ID``, an
    alias such as ``champion``), or None when ``ref`` is an existing weights file."""
    from lineguard import storage, tracking

    if _RUN_ID.match(ref):
        return ref
    if ref.startswith(("models:/", "runs:/")):
        return tracking.resolve_model_uri(config, ref)
    if storage.exists(ref):
        return None
    if "/" in ref or "\\" in ref or ref.endswith((".safetensors", ".pth", ".pt", ".bin")):
        raise TrainError(f"weights file '{ref}' does not exist (expected .safetensors or a .pth state dict)")
    return tracking.resolve_model_uri(config, ref)


def _resolve_init(config: LineguardConfig, ref: str) -> _Init:
    from lineguard import tracking

    run_id = resolve_run_reference(config, ref)
    if run_id is None:
        return _Init(ref=ref, weights_path=ref)
    tracking.load_run(config, run_id)  # clear error if absent
    meta = json.loads(tracking.read_artifact(config, run_id, tracking.MODEL_META_ARTIFACT).decode("utf-8"))
    return _Init(ref=ref, run_id=run_id, meta=meta)


def _with_init_architecture(config: LineguardConfig, init: _Init) -> LineguardConfig:
    """Fine-tuning from a run keeps that run's architecture, width and preprocessing (weights must fit)."""
    if not init.meta:
        return config
    pp = init.meta["preprocess"]
    train_cfg = config.train.model_copy(update={"model": init.meta["model"], "width": float(init.meta["width"])})
    tiles = pp.get("tiles")
    pre_cfg = config.preprocess.model_copy(update={
        "size": tuple(pp["size"]), "resize": pp["resize"], "color": pp.get("color", "rgb"), "mean": tuple(pp["mean"]),
        "std": tuple(pp["std"]), "pad_value": int(pp.get("pad_value", 0)),
        "tile": tuple(tiles["size"]) if tiles else None, "tile_stride": tuple(tiles["stride"]) if tiles else None,
        "tile_pool": tiles["pool"] if tiles else "lse",
    })
    return config.model_copy(update={"train": train_cfg, "preprocess": pre_cfg})


def _head_recipes(config: LineguardConfig, init: _Init | None, split: SplitTensors, classes: Sequence[str]) -> list[str]:
    """The recipes of a recipe head for this run, or [] for a plain head.

    A recipe head needs two recipes or more and ``train.recipe_head_min`` train images of every
    (recipe, class) pair -- with fewer, one logit per class learns faster. Fine-tuning a run
    that had one keeps it (its recipes plus the new ones), so what it learned carries over.
    """
    tc = config.train
    recipes = sorted(set(split.recipes))
    if not tc.recipe_head or config.preprocess.tile is not None:  # tile scores are pooled per class
        return []
    if init is not None and init.meta.get("head_recipes"):
        old = list(init.meta["head_recipes"])
        return old + [r for r in recipes if r not in old]
    if len(recipes) < 2:
        return []
    cells = Counter(zip(split.recipes, split.labels.tolist(), strict=True))
    enough = all(cells[(r, c)] >= tc.recipe_head_min for r in recipes for c in range(len(classes)))
    return recipes if enough else []


def _load_init_weights(config: LineguardConfig, model: torch.nn.Module, init: _Init) -> list[str]:
    """Load the init weights into ``model``; returns head keys left fresh (class count differs)."""
    from lineguard import models, tracking

    if init.weights_path is not None:
        return models.load_weights(model, init.weights_path)
    assert init.run_id is not None
    data = tracking.read_artifact(config, init.run_id, tracking.WEIGHTS_ARTIFACT)
    old_groups = init.meta.get("head_recipes") or []
    if old_groups and models.grouped_head(model) is not None:
        from safetensors.torch import load, save

        state = load(data)
        models.remap_grouped_head(state, model, old_groups)  # rows of the recipes both know carry over
        data = save(state)
    with tempfile.TemporaryDirectory(prefix="lineguard-init-") as tmp:
        path = os.path.join(tmp, "init.safetensors")
        with open(path, "wb") as f:
            f.write(data)
        return models.load_weights(model, path)


def _rehearsal_split(
    config: LineguardConfig, init: _Init | None, rehearsal_data: Dataset | None, dataset: Dataset,
    params: PreprocessParams, classes: Sequence[str], console: Console,
) -> tuple[SplitTensors | None, Dataset | None]:
    """A seeded sample of ``train.rehearsal`` old training images per class, or None.

    Old images that ``dataset`` holds too are never rehearsed: the new dataset already trains on them,
    with its label. This matters for the loop back: fine-tuning the champion on the next version of its
    dataset (``ingest --merge-with``, relabels applied) would otherwise mix every old image back in with
    its *old* label -- undoing a changed defect definition -- and repeat the new items to match.
    """
    import torch

    from lineguard import tracking
    from lineguard.manifest import DatasetError, load_dataset

    n = config.train.rehearsal
    if n == 0 or (init is None and rehearsal_data is None):
        return None, None
    old = rehearsal_data
    if old is None and init is not None and init.run_id is not None:
        url = tracking.load_run(config, init.run_id).dataset_url
        if url:
            try:
                old = load_dataset(url)
            except (DatasetError, LineguardError) as exc:
                console.print(f"[bold yellow]warning:[/] rehearsal skipped: the init run's dataset '{url}' "
                              f"cannot be loaded ({exc}); pass --rehearsal-data DATASET")
                return None, None
    if old is None or old.version == dataset.version:
        return None, None
    rows = old.split("train")
    rows = rows[rows["label"].isin(list(classes))]
    held = rows["image_id"].isin(set(dataset.manifest["image_id"]))
    rows = rows[~held]
    rng = np.random.default_rng(config.train.seed)
    picked = [g.iloc[rng.permutation(len(g))[:n]] for _, g in rows.groupby("label", sort=True)]
    if not picked:
        if held.any():
            console.print(f"rehearsal: none needed, the dataset holds every training image of dataset {old.version}")
        return None, None
    import pandas as pd

    sample = pd.concat(picked).reset_index(drop=True)
    images = _decode_rows(old, sample, params, False, "rehearsal")
    index = {c: i for i, c in enumerate(classes)}
    labels = torch.tensor([index[c] for c in sample["label"]], dtype=torch.int64)
    console.print(f"rehearsal: {len(sample)} old training images from dataset {old.version} mixed in")
    return SplitTensors(torch.from_numpy(images), labels,
                        [str(r) for r in sample["recipe"]]), old


def _repeat(split: SplitTensors, times: int) -> SplitTensors:
    return SplitTensors(split.images.repeat(times, 1, 1, 1), split.labels.repeat(times), split.recipes * times)


def _concat(a: SplitTensors, b: SplitTensors | None) -> SplitTensors:
    import torch

    if b is None or len(b) == 0:
        return a
    return SplitTensors(torch.cat([a.images, b.images]), torch.cat([a.labels, b.labels]), a.recipes + b.recipes)


# --- the loop -------------------------------------------------------------------------------------


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """loss, accuracy and balanced accuracy (mean per-class recall over the classes present)."""
    import torch.nn.functional as F

    if len(labels) == 0:
        return {}
    pred = logits.argmax(1)
    recalls = [float((pred[labels == c] == c).float().mean()) for c in range(num_classes) if bool((labels == c).any())]
    return {
        "loss": float(F.cross_entropy(logits, labels)),
        "accuracy": float((pred == labels).float().mean()),
        "balanced_accuracy": float(sum(recalls) / len(recalls)),
        "positive_rate": float((pred == num_classes - 1).float().mean()),
        "n": float(len(labels)),
    }


def _predict(model: torch.nn.Module, split: SplitTensors, params: PreprocessParams, device: torch.device,
             batch_size: int = 256) -> torch.Tensor:
    import torch

    from lineguard.augment import normalise_batch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(split), batch_size):
            x = normalise_batch(split.images[i : i + batch_size].to(device), params)
            out.append(model(x).float().cpu())
    return torch.cat(out) if out else torch.empty(0, 2)


def _lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up, then cosine decay to 1 % of the peak."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _epoch_length(labels: torch.Tensor, balance: str) -> int:
    """Images per epoch: every image, or (``sampler``) the largest class's count times the classes present."""
    import torch

    if balance != "sampler" or len(labels) == 0:
        return len(labels)
    counts = torch.bincount(labels)
    present = counts[counts > 0]
    return int(present.max()) * len(present)


def _epoch_indices(labels: torch.Tensor, balance: str, gen: torch.Generator) -> torch.Tensor:
    """This epoch's sample order: class-balanced (``sampler``) or a plain shuffle.

    The balanced order takes every image of the largest class once and cycles through
    random permutations of each smaller class until it has as many: every image is seen
    every epoch (drawing with replacement would skip about a third of them), and the
    classes are seen equally often. With balanced classes it is a plain shuffle.
    """
    import torch

    n = len(labels)
    if balance != "sampler" or n == 0:
        return torch.randperm(n, generator=gen)
    members = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels)]
    target = _epoch_length(labels, balance) // len(members)
    parts = []
    for m in members:
        reps = -(-target // len(m))
        cycled = torch.cat([m[torch.randperm(len(m), generator=gen)] for _ in range(reps)])
        parts.append(cycled[:target])
    order = torch.cat(parts)
    return order[torch.randperm(len(order), generator=gen)]


def train(
    config: LineguardConfig,
    dataset: Dataset,
    *,
    data: PreparedData | None = None,
    rehearsal_data: Dataset | None = None,
    track: bool = True,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    progress: bool = True,
    console: Console | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> TrainResult:
    """Train ``config.train.model`` on ``dataset`` and (when ``track``) record it as an MLflow run.

    ``data`` reuses splits already decoded by :func:`prepare_data` (same preprocessing).
    ``on_epoch(epoch, metrics)`` is called after every epoch, before the early-stop check;
    an exception it raises (e.g. Optuna's ``TrialPruned``) stops training and propagates.
    ``rehearsal_data`` is the old dataset to mix in when onboarding a recipe (default: the
    dataset recorded by the ``init_from`` run). With ``train.recipe: auto``, ``train.search:
    auto`` and a budget, candidate recipes are tried first (:func:`search_recipes`; each a child
    run) and the best is trained for the rest of the budget. ``clock`` measures the budget
    (a fake one in tests). The returned model holds the best weights.
    """
    from rich.console import Console

    from lineguard import models

    console = console or Console()
    t_start = clock()
    requested = config
    _check_weights_file(config)
    init = _resolve_init(config, config.train.init_from) if config.train.init_from else None
    recipe = None
    if init is not None:
        config = _with_init_architecture(config, init)
    elif config.train.recipe == "auto":
        config, recipe = auto_recipe(config, dataset, console)
    candidates, search_note = _search_candidates(requested, recipe, dataset, init)
    tc = config.train
    for name in {tc.model, *(c.config.train.model for c in candidates)}:
        if name not in models.MODELS:
            raise TrainError(f"unknown model '{name}' (train.model); valid models: {', '.join(models.MODELS)}")
    seed_everything(tc.seed, tc.threads, tc.deterministic)
    device = resolve_device(tc.device)
    decoded = _Decoded(dataset, progress, data)
    data = decoded.get(preprocess_params(config))
    budget_s, decode_s = _budget_of(tc), clock() - t_start
    if budget_s is not None and decode_s > budget_s:
        raise BudgetTooSmall(f"train.budget_s={budget_s:g} s is too small to train anything: profiling and decoding "
                             f"the images alone took {decode_s:.2f} s; give it several times that, or set "
                             f"train.epochs", 0.0, decode_s)

    def body(run: Run | None) -> TrainResult:
        cfg, search = config, None
        if candidates:
            assert budget_s is not None
            cfg, search = search_recipes(candidates, decoded, budget_s, device=device, console=console,
                                         clock=clock, parent=run)
            kept = preprocess_params(cfg)
            decoded.items = [d for d in decoded.items if d.params == kept]  # free the losers' decoded images
        elif search_note:
            console.print(f"[yellow]{search_note}[/]", highlight=False)
            search = {"note": search_note, "candidates": [], "chosen": "derived"}
        return _train_one(cfg, dataset, decoded, init, recipe, search, rehearsal_data, device=device, run=run,
                          console=console, progress=progress, t_start=t_start, on_epoch=on_epoch, clock=clock)

    if not track:
        return body(None)
    from lineguard import tracking

    run_tags = {"lineguard.kind": "train", "init_from": tc.init_from or "", "teacher": tc.teacher or "",
                "init_run_id": init.run_id if init and init.run_id else "", **(tags or {})}
    with tracking.start_run(config, name=run_name, tags=run_tags, parent_run_id=parent_run_id) as run:
        result = body(run)
        result.run_id = run.run_id
    console.print(f"run [bold]{result.run_id}[/] recorded in {config.tracking_uri()}")
    return result


def _check_weights_file(config: LineguardConfig) -> None:
    """A ``train.weights`` file must exist and come with the architecture it holds (``train.model`` set)."""
    from lineguard import storage

    tc = config.train
    if tc.weights is None:
        return
    if not storage.exists(tc.weights):
        raise TrainError(f"train.weights file '{tc.weights}' does not exist (expected a .safetensors or .pth state "
                         f"dict, e.g. torchvision's ImageNet weights saved as a file)")
    if "model" not in tc.model_fields_set:
        raise TrainError(f"train.weights '{tc.weights}' is given but train.model is not set: set it to the file's "
                         f"architecture, e.g. --set train.model=resnet18 (or mobilenetv3_small)")


def _budget_of(tc: Any) -> float | None:
    """The budget that sets the schedule: ``train.budget_s``, unless ``train.epochs`` is set explicitly."""
    return float(tc.budget_s) if tc.budget_s is not None and "epochs" not in tc.model_fields_set else None


class _Decoded:
    """Decoded splits per preprocessing (search candidates at another input size decode once each)."""

    def __init__(self, dataset: Dataset, progress: bool, data: PreparedData | None = None) -> None:
        self.dataset, self.progress = dataset, progress
        self.items = [data] if data is not None and data.dataset_version == dataset.version else []

    def get(self, params: PreprocessParams) -> PreparedData:
        for item in self.items:
            if item.params == params:
                return item
        item = prepare_data(self.dataset, params, progress=self.progress)
        self.items.append(item)
        return item


def _build_model(config: LineguardConfig, params: PreprocessParams, classes: Sequence[str],
                 train_split: SplitTensors, init: _Init | None) -> torch.nn.Module:
    """The untrained model of ``config``: architecture, weights file, channels, tiles, recipe head."""
    from lineguard import models

    tc = config.train
    model = models.create_model(tc.model, num_classes=len(classes), width=tc.width, weights=tc.weights,
                                in_chans=params.channels)
    if params.tiles is not None:
        models.set_tiling(model, params.tiles)
    recipes = _head_recipes(config, init, train_split, classes)
    if recipes:
        models.set_grouped_head(model, recipes)
    return model


def _train_one(
    config: LineguardConfig, dataset: Dataset, decoded: _Decoded, init: _Init | None, recipe: Recipe | None,
    search: dict[str, Any] | None, rehearsal_data: Dataset | None, *, device: torch.device, run: Run | None,
    console: Console, progress: bool, t_start: float, on_epoch: Callable[[int, dict[str, float]], None] | None,
    clock: Callable[[], float],
) -> TrainResult:
    """Train ``config`` (the derived recipe, or the search's winner) for what is left of the budget; log it."""
    tc = config.train
    params = preprocess_params(config)
    data = decoded.get(params)
    classes = data.classes
    train_split = data.splits["train"]
    rehearsal, rehearsal_ds = _rehearsal_split(config, init, rehearsal_data, dataset, params, classes, console)
    if rehearsal is not None and len(rehearsal) > len(train_split) > 0:
        # A few new images against many old ones: repeat the new ones so each epoch shows both about equally
        # (augmentation makes every copy a different view); otherwise the new recipe is a rounding error.
        train_split = _repeat(train_split, math.ceil(len(rehearsal) / len(train_split)))
    train_split = _concat(train_split, rehearsal)
    val_split, test_split = data.splits["val"], data.splits["test"]

    seed_everything(tc.seed, tc.threads, tc.deterministic)  # the same start as a run of this config alone
    model = _build_model(config, params, classes, train_split, init)
    fine_tuning = init is not None or tc.weights is not None
    if init is not None:
        skipped = _load_init_weights(config, model, init)
        if skipped:
            console.print(f"init_from: head re-initialised ({len(classes)} classes): {', '.join(skipped)}")
    teacher, teacher_params = _load_teacher(config, classes, device) if tc.teacher else (None, None)
    model.to(device)
    loop = functools.partial(fit, config=config, model=model, data=data, train_split=train_split, device=device,
                             teacher=teacher, teacher_params=teacher_params, fine_tuning=fine_tuning,
                             console=console, progress=progress, t_start=t_start, on_epoch=on_epoch, clock=clock)
    if run is None:
        result = loop()
        result.search = search
        return result
    from lineguard import tracking

    run.set_tags({"model": tc.model, "rehearsal_dataset": rehearsal_ds.version if rehearsal_ds else "",
                  "rehearsal_dataset_url": str(rehearsal_ds.root) if rehearsal_ds else ""})
    run.log_config(config)
    run.log_params({"dataset_version": dataset.version, "num_classes": len(classes),
                    "train_images": len(train_split), "val_images": len(val_split),
                    "test_images": len(test_split), "device": str(device)})
    run.log_dataset(dataset)
    run.log_environment()
    if recipe is not None:
        run.log_dict(recipe.to_dict() | ({"search": search} if search is not None else {}), "recipe.json")
        run.log_params({f"auto.{c.key}": str(c.value) for c in recipe.choices if not c.overridden})
    if search is not None:
        run.log_params({"search.chosen": search["chosen"], "search.candidates": len(search["candidates"])})
        if search.get("note"):
            run.set_tags({"lineguard.search_note": search["note"]})
        run.log_metrics({f"search_{c['name']}_val_balanced_accuracy": c["val_balanced_accuracy"]
                         for c in search["candidates"] if c.get("val_balanced_accuracy") is not None})
    result = loop(run=run)
    result.search = search
    if result.config is not config:  # the budget planned the schedule: what reproduce re-runs
        run.log_text(result.config.to_yaml(), tracking.CONFIG_ARTIFACT)
        run.log_params({"planned_epochs": result.config.train.epochs})
    _log_outcome(run, result, val_split, model, params, device)
    return result


# --- the candidate search within the budget -------------------------------------------------------

SEARCH_MIN_VAL = 40  # validation images below which a search cannot tell recipes apart (one image = 2.5 points)
SEARCH_MIN_EPOCHS = 4  # epochs each candidate must afford within its share for the comparison to mean anything


def _search_candidates(requested: LineguardConfig, recipe: Recipe | None, dataset: Dataset,
                       init: _Init | None) -> tuple[list[Candidate], str | None]:
    """The candidates to search, or none and (when the data is the reason) a note saying why not.

    No search without ``recipe: auto``, with ``search: off``, without a budget (an explicit
    ``train.epochs`` wins), or when a weights file, an init run or a teacher fixes the model.
    """
    from lineguard.profile import derive_candidates

    tc = requested.train
    if recipe is None or init is not None or tc.search == "off" or _budget_of(tc) is None or tc.weights \
            or tc.teacher:
        return [], None
    n_val = len(dataset.split("val"))
    if n_val < SEARCH_MIN_VAL:
        return [], (f"candidate search skipped: {n_val} validation images are too few to tell recipes apart "
                    f"(at least {SEARCH_MIN_VAL}); the derived recipe is trained on the whole budget")
    candidates = derive_candidates(recipe.profile, requested)
    if len(candidates) < 2:
        return [], ("candidate search skipped: the config sets every key a candidate would change; the derived "
                    "recipe is trained on the whole budget")
    return candidates, None


def search_recipes(
    candidates: Sequence[Candidate], decoded: _Decoded, budget_s: float, *, device: torch.device,
    console: Console, clock: Callable[[], float] = time.perf_counter, parent: Run | None = None,
) -> tuple[LineguardConfig, dict[str, Any]]:
    """Train each candidate briefly and return the best one's config and the search record.

    The candidates share ``train.search_share`` of ``budget_s`` evenly; each trains from the same
    seed with the schedule planned for its share (at least :data:`SEARCH_MIN_EPOCHS` epochs, or it
    is dropped) and is scored by its best val balanced accuracy (ties: lower val loss, then the
    earlier candidate). When the derived recipe (the first) cannot afford those epochs the search
    stops and the derived recipe is returned with a note. With ``parent``, each candidate is a
    child run holding its config, changes and per-epoch metrics. The winner is trained again from
    its start by the caller, so the run's recorded config describes the final model completely.
    """
    from lineguard.profile import with_changes

    share = candidates[0].config.train.search_share
    per_s = budget_s * share / len(candidates)
    console.print(f"[bold]search:[/] {len(candidates)} candidate recipes, {per_s:.0f} s each ({share:.0%} of the "
                  f"{budget_s:.0f} s budget); the best on validation trains for the rest:", highlight=False)
    records: list[dict[str, Any]] = []
    for i, cand in enumerate(candidates):
        cfg = with_changes(cand.config, {"train.budget_s": per_s})
        record: dict[str, Any] = cand.to_dict() | {"status": "trained", "val_balanced_accuracy": None,
                                                     "val_loss": None, "epochs": 0, "seconds": 0.0, "run_id": None}
        c_start = clock()
        error = _train_candidate(cfg, cand, decoded, record, device=device, clock=clock, t_start=c_start,
                                 parent=parent)
        record["seconds"] = round(clock() - c_start, 3)
        records.append(record)
        if error is not None:
            record["status"] = f"dropped: {error}"
            if i == 0:
                note = (f"candidate search skipped: an epoch of the derived recipe takes {error.epoch_s:.1f} s, so "
                        f"a {per_s:.0f} s share affords fewer than {SEARCH_MIN_EPOCHS} epochs; the derived recipe "
                        f"is trained on the whole budget")
                console.print(f"[yellow]{note}[/]", highlight=False)
                return candidates[0].config, {"note": note, "per_candidate_s": per_s, "candidates": records,
                                              "chosen": candidates[0].name}
            console.print(f"  {cand.describe()}: dropped, fewer than {SEARCH_MIN_EPOCHS} epochs fit its share",
                          highlight=False)
            continue
        console.print(f"  {cand.describe()}: val bal.acc {record['val_balanced_accuracy']:.4f} after "
                      f"{record['epochs']} epochs ({record['seconds']:.0f} s)", highlight=False)
    trained = [(-i, r, c) for i, (r, c) in enumerate(zip(records, candidates, strict=True))
               if r["status"] == "trained"]
    _, best_record, best = max(trained, key=lambda t: (t[1]["val_balanced_accuracy"], -t[1]["val_loss"], t[0]))
    console.print(f"search: chose [bold]{best.describe()}[/] ({best_record['val_balanced_accuracy']:.4f}: "
                  f"{best.reason})", highlight=False)
    return best.config, {"note": "", "per_candidate_s": per_s, "candidates": records, "chosen": best.name}


def _train_candidate(cfg: LineguardConfig, cand: Candidate, decoded: _Decoded, record: dict[str, Any], *,
                     device: torch.device, clock: Callable[[], float], t_start: float,
                     parent: Run | None) -> BudgetTooSmall | None:
    """Train one candidate within its share, filling ``record``; the budget error if its share is too small."""
    import contextlib

    from rich.console import Console

    from lineguard import tracking

    tc = cfg.train
    params = preprocess_params(cfg)
    data = decoded.get(params)
    seed_everything(tc.seed, tc.threads, tc.deterministic)  # every candidate starts from the same seed
    model = _build_model(cfg, params, data.classes, data.splits["train"], None).to(device)
    with contextlib.ExitStack() as stack:
        child = None
        if parent is not None:
            child = stack.enter_context(tracking.start_run(
                cfg, name=f"candidate-{cand.name}", parent_run_id=parent.run_id,
                tags={"lineguard.kind": "search_candidate", "model": tc.model, "search_candidate": cand.name}))
            record["run_id"] = child.run_id
            child.log_config(cfg)
            child.log_params({f"change.{k}": str(v) for k, v in record["changes"].items()})
        try:
            result = fit(config=cfg, model=model, data=data, device=device, run=child, console=Console(quiet=True),
                         t_start=t_start, clock=clock, min_epochs=SEARCH_MIN_EPOCHS)
        except BudgetTooSmall as exc:
            if child is not None:
                child.set_tags({"lineguard.search_status": "dropped: share too small"})
            return exc
        record.update(val_balanced_accuracy=result.val_metrics["balanced_accuracy"],
                      val_loss=result.val_metrics["loss"], epochs=len(result.history))
        if child is not None:
            child.log_metrics({"final_val_balanced_accuracy": record["val_balanced_accuracy"],
                               "final_val_loss": record["val_loss"]}, step=len(result.history))
            child.set_tags({"lineguard.search_status": "trained"})
    return None


def auto_recipe(config: LineguardConfig, dataset: Dataset, console: Console) -> tuple[LineguardConfig, Recipe]:
    """Profile ``dataset`` and derive the training recipe (``train.recipe: auto``); prints each choice and why."""
    from lineguard.profile import ProfileError, derive_recipe, profile_dataset

    try:
        profile = profile_dataset(dataset, seed=config.train.seed)
    except ProfileError as exc:
        raise TrainError(str(exc)) from None
    config, recipe = derive_recipe(profile, config)
    console.print(f"[bold]recipe: auto[/] ({profile.train_images} train images, classes {profile.class_counts}, "
                  f"{len(profile.recipes)} recipe(s)); set any key to override:", highlight=False)
    for line in recipe.lines():
        console.print(f"  {line}", highlight=False, markup=False)
    return config, recipe


def _load_teacher(
    config: LineguardConfig, classes: Sequence[str], device: torch.device
) -> tuple[torch.nn.Module, PreprocessParams]:
    from lineguard import tracking
    from lineguard.preprocess import PreprocessParams

    assert config.train.teacher is not None
    run_id = resolve_run_reference(config, config.train.teacher)
    if run_id is None:
        raise TrainError(f"train.teacher '{config.train.teacher}' must be a run id, models:/NAME@ALIAS or an alias")
    teacher, meta = tracking.load_model_from_run(config, run_id)
    if list(meta["classes"]) != list(classes):
        raise TrainError(f"teacher run {run_id} has classes {meta['classes']}, the dataset has {list(classes)}")
    teacher_params = PreprocessParams.from_dict(meta["preprocess"])
    if teacher_params.channels != preprocess_params(config).channels:
        raise TrainError(f"teacher run {run_id} takes {teacher_params.color} input, the student "
                         f"{config.preprocess.color}; distil between models of the same colour")
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, teacher_params


def _recipe_head_loss(sub: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, groups: torch.Tensor,
                      num_classes: int, class_weights: torch.Tensor | None, smoothing: float) -> torch.Tensor:
    """Cross-entropy over the (recipe, class) sub-classes; an image whose recipe the head does not
    know is scored on the class logits instead. Class weights apply to every recipe's copy of a class."""
    import torch
    import torch.nn.functional as F

    known = groups >= 0
    per = torch.empty(len(y), device=y.device)
    if bool(known.any()):
        w = class_weights.repeat(sub.shape[1] // num_classes) if class_weights is not None else None
        per[known] = F.cross_entropy(sub[known], groups[known] * num_classes + y[known], weight=w,
                                     label_smoothing=smoothing, reduction="none")
    if not bool(known.all()):
        per[~known] = F.cross_entropy(logits[~known], y[~known], weight=class_weights, label_smoothing=smoothing,
                                      reduction="none")
    if class_weights is None:
        return per.mean()
    return per.sum() / class_weights[y].sum()  # cross_entropy's weighted mean


class _Ema:
    """An exponential moving average of the weights (and batch-norm statistics), updated each step.

    ``decay`` is per step; the average starts as a copy and warms up (decay ``min(decay,
    (1 + t) / (10 + t))``) so early epochs are not dominated by the random initialisation.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        import copy

        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay, self.updates = decay, 0
        # state_dict() tensors share storage with the live weights and buffers (the optimiser and batch norm
        # update them in place), so the pairs are resolved once instead of rebuilding two dicts every step.
        pairs = list(zip(self.model.state_dict().values(), model.state_dict().values(), strict=True))
        self._floats = [(a, c) for a, c in pairs if a.dtype.is_floating_point]
        self._others = [(a, c) for a, c in pairs if not a.dtype.is_floating_point]

    def update(self) -> None:
        """Move the average towards the live model's current weights (one training step)."""
        import torch

        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            for avg, cur in self._floats:
                avg.lerp_(cur, 1 - d)  # exact where the weights did not move
            for avg, cur in self._others:
                avg.copy_(cur)


def _set_backbone_trainable(model: torch.nn.Module, trainable: bool) -> None:
    from lineguard import models

    for p in models.backbone_parameters(model):
        p.requires_grad_(trainable)


def _check_budget(budget_s: float, elapsed_s: float, epoch_s: float, planned: int, min_epochs: int) -> None:
    """Raise :class:`BudgetTooSmall` when the first epoch overran the budget or the plan is under ``min_epochs``."""
    if elapsed_s > budget_s:
        needed = math.ceil(elapsed_s / 0.95) + 1
        raise BudgetTooSmall(
            f"train.budget_s={budget_s:g} s is too small to train anything: the first epoch took {epoch_s:.1f} s "
            f"({elapsed_s:.1f} s with decoding); set train.budget_s to at least {needed} s, or set train.epochs",
            epoch_s, elapsed_s)
    if planned < min_epochs:
        needed = math.ceil((elapsed_s + (min_epochs - 1) * epoch_s) / 0.95) + 1
        raise BudgetTooSmall(
            f"train.budget_s={budget_s:g} s affords {planned} epoch(s) of {epoch_s:.1f} s, {min_epochs} are needed "
            f"(about {needed} s)", epoch_s, elapsed_s)


def plan_epochs(budget_s: float, elapsed_s: float, epoch_s: float, max_epochs: int) -> int:
    """Epochs a run can afford: the first one (already run, ``epoch_s`` long) plus as many more as fit in
    what is left of ``budget_s`` after ``elapsed_s``, keeping 5 % of the budget for the final evaluation."""
    left = budget_s * 0.95 - elapsed_s
    more = int(left // epoch_s) if epoch_s > 0 else max_epochs
    return max(1, min(max_epochs, 1 + max(0, more)))


def fit(
    *,
    config: LineguardConfig,
    model: torch.nn.Module,
    data: PreparedData,
    train_split: SplitTensors | None = None,
    device: torch.device | None = None,
    teacher: torch.nn.Module | None = None,
    teacher_params: PreprocessParams | None = None,
    fine_tuning: bool = False,
    run: Run | None = None,
    console: Console | None = None,
    progress: bool = False,
    t_start: float | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    min_epochs: int = 1,
) -> TrainResult:
    """The training loop: train an already built ``model`` on ``data`` under ``config.train`` and return the
    weights of its best validation epoch.

    :func:`train` builds the model from the config and calls this; compression calls it directly
    with a model the config cannot describe (a pruned one). ``train_split`` replaces
    ``data.splits["train"]`` (rehearsal, repeats). With ``train.budget_s`` (and no explicit
    ``train.epochs``) the first epoch is timed on ``clock`` and the epoch count and cosine schedule
    are planned from it (:func:`plan_epochs`); the run also stops when the budget, counted from
    ``t_start``, is spent. A budget that the first epoch overruns, or that affords fewer than
    ``min_epochs`` epochs, raises :class:`BudgetTooSmall` with the measured epoch time.
    ``on_epoch(epoch, metrics)`` runs after every epoch; an exception it raises (e.g. Optuna's
    ``TrialPruned``) stops training and propagates. Logs to ``run`` when given.
    """
    import torch
    import torch.nn.functional as F
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lineguard import models
    from lineguard.augment import augment_batch, normalise_batch

    tc = config.train
    console = console or Console(quiet=True)
    t_start = clock() if t_start is None else t_start
    device = device or resolve_device(tc.device)
    classes, params = data.classes, data.params
    train_split = train_split if train_split is not None else data.splits["train"]
    val_split, test_split = data.splits["val"], data.splits["test"]
    num_classes = len(classes)
    gen = torch.Generator().manual_seed(tc.seed)
    aug_gen = torch.Generator(device=device).manual_seed(tc.seed + 1)
    counts = torch.bincount(train_split.labels, minlength=num_classes).float()
    class_weights = None
    if tc.balance == "loss":
        class_weights = (counts.sum() / (num_classes * counts.clamp(min=1))).to(device)
    head = models.grouped_head(model)
    # Recipe-head targets: sub-class g * C + c for an image of recipe g; -1 for a recipe the head lacks.
    group_of = {name: g for g, name in enumerate(head.group_names)} if head is not None else {}
    train_groups = torch.tensor([group_of.get(r, -1) for r in train_split.recipes], dtype=torch.int64)

    backbone_lr = tc.lr * (tc.backbone_lr_scale if fine_tuning else 1.0)
    head_ids = {id(p) for p in models.head_parameters(model)}
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in head_ids], "lr": backbone_lr, "base_lr": backbone_lr},
        {"params": [p for p in model.parameters() if id(p) in head_ids], "lr": tc.lr, "base_lr": tc.lr},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=tc.weight_decay)
    steps_per_epoch = max(1, math.ceil(_epoch_length(train_split.labels, tc.balance) / tc.batch_size))
    budget_s = _budget_of(tc)
    planned = tc.max_epochs if budget_s is not None else tc.epochs  # a budget re-plans after the first epoch
    total_steps = steps_per_epoch * planned
    warmup_steps = round(tc.warmup_epochs * steps_per_epoch)
    freeze = tc.freeze_epochs if fine_tuning else 0
    patience = tc.patience

    precision = tc.precision
    fmt = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    model.to(memory_format=fmt)  # type: ignore[call-overload]  # oneDNN fast layout on CPU
    ema = _Ema(model, tc.ema) if tc.ema > 0 else None
    judged = ema.model if ema is not None else model  # the weights validated, kept and returned

    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"bal": -1.0, "loss": math.inf, "epoch": 0, "state": None}
    stale, step = 0, 0
    deadline = t_start + tc.max_minutes * 60 if tc.max_minutes else None
    if budget_s is not None:
        deadline = min(deadline or math.inf, t_start + budget_s)
    bar = Progress(TextColumn("[bold]training[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=console, transient=True, disable=not progress)
    with bar:
        task = bar.add_task(tc.model, total=planned)
        epoch = 0
        t_epoch = clock()  # each epoch ends where the previous one did: logging and saving count too
        while epoch < planned:
            epoch += 1
            _set_backbone_trainable(model, epoch > freeze)
            model.train()
            order = _epoch_indices(train_split.labels, tc.balance, gen)
            loss_sum, seen = 0.0, 0
            for b in range(steps_per_epoch):
                idx = order[b * tc.batch_size : (b + 1) * tc.batch_size]
                if len(idx) < 2:  # batch norm needs 2+ samples
                    continue
                raw = augment_batch(train_split.images[idx].to(device), config.augment, aug_gen,
                                    pad_value=params.pad_value)
                y = train_split.labels[idx].to(device)
                x = normalise_batch(raw, params).contiguous(memory_format=fmt)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    if head is None:
                        logits = model(x)
                        loss = F.cross_entropy(logits, y, weight=class_weights, label_smoothing=tc.label_smoothing)
                    else:
                        with models.sub_class_outputs(model):
                            sub = model(x)
                        logits = head.group(sub)
                        loss = _recipe_head_loss(sub, logits, y, train_groups[idx].to(device), num_classes,
                                                 class_weights, tc.label_smoothing)
                    if teacher is not None and teacher_params is not None and tc.distill_weight > 0:
                        with torch.no_grad():
                            t_in = raw if tuple(teacher_params.size) == tuple(params.size) else F.interpolate(
                                raw, size=tuple(teacher_params.size), mode="bilinear", align_corners=False)
                            t_logits = teacher(normalise_batch(t_in, teacher_params))
                        temp = tc.distill_temperature
                        kd = F.kl_div(F.log_softmax(logits / temp, 1), F.log_softmax(t_logits / temp, 1),
                                      reduction="batchmean", log_target=True) * temp * temp
                        loss = (1 - tc.distill_weight) * loss + tc.distill_weight * kd
                factor = _lr_factor(step, warmup_steps, total_steps)
                for g in optimizer.param_groups:
                    g["lr"] = g["base_lr"] * factor
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if ema is not None:
                    ema.update()
                step += 1
                loss_sum += float(loss.detach()) * len(idx)
                seen += len(idx)
            val = classification_metrics(_predict(judged, val_split, params, device), val_split.labels, num_classes)
            now = clock()
            row = {"epoch": float(epoch), "train_loss": loss_sum / max(1, seen),
                   "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                   "val_balanced_accuracy": val["balanced_accuracy"], "lr": tc.lr * _lr_factor(step - 1, warmup_steps,
                                                                                                total_steps),
                   "epoch_seconds": now - t_epoch}
            t_epoch = now
            history.append(row)
            if budget_s is not None and epoch == 1:
                planned = plan_epochs(budget_s, now - t_start, row["epoch_seconds"], tc.max_epochs)
                _check_budget(budget_s, now - t_start, row["epoch_seconds"], planned, min_epochs)
                total_steps = steps_per_epoch * planned
                patience = max(tc.patience, planned // 6)
                bar.update(task, total=planned)
                console.print(f"budget {budget_s:.0f} s: {planned} epochs planned ({row['epoch_seconds']:.1f} s per "
                              f"epoch measured, {now - t_start:.0f} s spent so far)", highlight=False)
            if run is not None:
                run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            if on_epoch is not None:
                on_epoch(epoch, row)
            better = val["balanced_accuracy"] > best["bal"] or (
                val["balanced_accuracy"] == best["bal"] and val["loss"] < best["loss"])
            if better:
                best.update(bal=val["balanced_accuracy"], loss=val["loss"], epoch=epoch,
                            state={k: v.detach().clone() for k, v in judged.state_dict().items()})
            stale = 0 if better else stale + 1
            bar.update(task, advance=1)
            if progress:
                console.print(
                    f"epoch {epoch:3d}/{planned}  train loss {row['train_loss']:.4f}  val loss {val['loss']:.4f}  "
                    f"val bal.acc {val['balanced_accuracy']:.4f}{'  *' if better else ''}", highlight=False)
            if stale >= patience:
                console.print(f"early stop: no val balanced-accuracy gain in {patience} epochs")
                break
            if deadline is not None and now > deadline:
                console.print(f"stopping: the time budget ({deadline - t_start:.0f} s) is spent")
                break

    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # plain layout for safetensors
    model.eval()
    val_logits = _predict(model, val_split, params, device)
    val_metrics = classification_metrics(val_logits, val_split.labels, num_classes)
    test_metrics = classification_metrics(_predict(model, test_split, params, device), test_split.labels,
                                          num_classes) if len(test_split) else {}
    warnings: list[str] = []
    if val_metrics["balanced_accuracy"] <= 0.5 + 1e-9:
        warnings.append(COLLAPSE_WARNING)
        console.print(
            f"[bold red]WARNING: validation balanced accuracy is {val_metrics['balanced_accuracy']:.3f}: the model "
            f"predicts (almost) only one class. Check the labels and balance, train longer or lower train.lr.[/]")
    if budget_s is not None:
        # The resolved config: the planned schedule, so that reproduce re-runs it without timing anything.
        config = config.model_copy(update={"train": tc.model_copy(update={"epochs": planned, "budget_s": None,
                                                                          "patience": patience})})
    return TrainResult(
        run_id=None, best_epoch=int(best["epoch"]), val_metrics=val_metrics, test_metrics=test_metrics,
        model=model.cpu(), classes=classes, preprocess=params, history=history, config=config,
        dataset_version=data.dataset_version, seconds=clock() - t_start, warnings=warnings,
    )


def _log_outcome(run: Run, result: TrainResult, val_split: SplitTensors, model: torch.nn.Module,
                 params: PreprocessParams, device: torch.device) -> None:
    """Final metrics, plots, history, weights and warnings into the run."""
    final = {f"final_val_{k}": v for k, v in result.val_metrics.items() if k != "n"}
    final |= {f"test_{k}": v for k, v in result.test_metrics.items() if k != "n"}
    final |= {"best_epoch": float(result.best_epoch), "train_seconds": result.seconds}
    run.log_metrics(final, step=len(result.history))
    run.log_dict(result.history, "history.json")
    run.log_model(result.model, result.model_meta)
    if result.warnings:
        run.set_tags({"lineguard.warning": ",".join(result.warnings)})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred = _predict(model, val_split, params, device).argmax(1).numpy()
    figs = {"plots/confusion_matrix.png": confusion_figure(val_split.labels.numpy(), pred, result.classes),
            "plots/learning_curves.png": learning_curves_figure(result.history)}
    for name, fig in figs.items():
        run.log_figure(fig, name)
        plt.close(fig)


def confusion_figure(labels: np.ndarray, pred: np.ndarray, classes: Sequence[str]) -> Any:
    """A confusion-matrix figure (rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(classes)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    fig, ax = plt.subplots(figsize=(3.5, 3.2))
    ax.imshow(cm, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="black")
    ax.set_xticks(range(k), list(classes))
    ax.set_yticks(range(k), list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("validation")
    return fig


def learning_curves_figure(history: Sequence[dict[str, float]]) -> Any:
    """Train/val loss and val balanced accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3))
    a.plot(epochs, [h["train_loss"] for h in history], label="train")
    a.plot(epochs, [h["val_loss"] for h in history], label="val")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    b.plot(epochs, [h["val_balanced_accuracy"] for h in history], color="tab:green")
    b.set_xlabel("epoch")
    b.set_ylabel("val balanced accuracy")
    fig.tight_layout()
    return fig


# --- reproduce --------------------------------------------------------------------------------------


@dataclass
class ReproduceResult:
    """The original run, the new run and the metric differences (new - original)."""

    original_run_id: str
    new_run_id: str | None
    differences: dict[str, tuple[float, float, float]]  # name -> (original, new, new - original)

    @property
    def max_abs_difference(self) -> float:
        return max((abs(d[2]) for d in self.differences.values()), default=0.0)


REPRODUCE_METRICS = ("final_val_balanced_accuracy", "final_val_accuracy", "final_val_loss",
                     "test_balanced_accuracy", "test_accuracy", "test_loss", "best_epoch")


def reproduce(config: LineguardConfig, run_id: str, progress: bool = True,
              console: Console | None = None) -> ReproduceResult:
    """Re-run ``run_id`` from what it recorded alone (config + dataset URL/version); compare metrics.

    Only the tracking location comes from ``config``. Refuses when the dataset at the
    recorded URL now has a different version (datasets are immutable; it was replaced).
    """
    from lineguard import tracking
    from lineguard.manifest import load_dataset

    record = tracking.load_run(config, run_id)
    recorded = tracking.load_run_config(config, run_id)
    url, version = record.dataset_url, record.dataset_version
    if not url or not version:
        raise TrainError(f"run {run_id} recorded no dataset URL/version; it cannot be reproduced")
    dataset = load_dataset(url)
    if dataset.version != version:
        raise TrainError(f"run {run_id} trained on dataset version {version}, but '{url}' now holds version "
                         f"{dataset.version}; reproduce needs the original data")
    rerun_config = recorded.model_copy(update={"workdir": config.workdir, "tracking": config.tracking})
    rehearsal_data = None
    if record.tags.get("rehearsal_dataset_url"):
        rehearsal_data = load_dataset(record.tags["rehearsal_dataset_url"])
        if rehearsal_data.version != record.tags.get("rehearsal_dataset"):
            raise TrainError(f"run {run_id} rehearsed on dataset version {record.tags.get('rehearsal_dataset')}, "
                             f"but '{rehearsal_data.root}' now holds {rehearsal_data.version}")
    result = train(rerun_config, dataset, rehearsal_data=rehearsal_data, run_name=f"reproduce-{run_id[:8]}",
                   tags={"reproduces": run_id}, progress=progress, console=console)
    new = tracking.load_run(config, result.run_id) if result.run_id else None
    diffs: dict[str, tuple[float, float, float]] = {}
    for name in REPRODUCE_METRICS:
        if name in record.metrics and new is not None and name in new.metrics:
            a, b = record.metrics[name], new.metrics[name]
            diffs[name] = (a, b, b - a)
    return ReproduceResult(original_run_id=run_id, new_run_id=result.run_id, differences=diffs)
