"""Hyperparameter search with Optuna: ``tune(config, dataset) -> TuneResult``.

The search space is ``config.tune`` (architecture, width, input size, learning rate,
weight decay, augmentation strength). Trials are sampled by a seeded TPE sampler and
cut short by a median pruner over epochs (each epoch's val balanced accuracy is
reported from the training loop). Every trial is an ordinary tracked training run
(:func:`lineguard.train.train`) nested under one parent MLflow run per study, so the
winner can be registered, evaluated and exported like any other run.

The study lives in an Optuna RDB storage -- ``sqlite:///<workdir>/optuna.db`` by
default, or any SQLAlchemy URL (``postgresql+psycopg2://...``) -- so several worker
processes, on this machine (``workers``) or on others (run ``lineguard tune`` with the
same ``--storage`` and ``--study``), add trials to one study. The best trial is written
out as a complete ``lineguard.yaml`` that ``lineguard train --config`` takes as is.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lineguard import LineguardError

if TYPE_CHECKING:
    import optuna
    from rich.console import Console

    from lineguard.config import LineguardConfig, TuneConfig
    from lineguard.manifest import Dataset
    from lineguard.train import PreparedData


class TuneError(LineguardError):
    """The study cannot run: bad search space, incompatible existing study, failed workers."""


# study user attributes (shared by every worker through the storage)
ATTR_PARENT_RUN = "lineguard.parent_run_id"
ATTR_TRACKING_URI = "lineguard.tracking_uri"
ATTR_DATASET = "lineguard.dataset_version"
ATTR_SPACE = "lineguard.search_space"
TAG_STUDY = "tune.study"
TAG_TRIAL = "tune.trial"
TAG_STATE = "tune.state"
OBJECTIVE = "val_balanced_accuracy"


# --- the search space (pure) ---------------------------------------------------------------------


def suggest(trial: optuna.Trial, space: TuneConfig) -> dict[str, Any]:
    """Sample one point of the search space; a single choice is fixed, not searched."""

    def pick(name: str, choices: list[Any]) -> Any:
        return choices[0] if len(set(choices)) == 1 else trial.suggest_categorical(name, choices)

    def log_range(name: str, lo: float, hi: float) -> float:
        return lo if lo == hi else trial.suggest_float(name, lo, hi, log=True)

    lo, hi = space.augment_strength
    return {
        "model": pick("model", list(space.models)),
        "width": float(pick("width", [float(w) for w in space.width])),
        "size": int(pick("size", [int(s) for s in space.size])),
        "lr": log_range("lr", *space.lr),
        "weight_decay": log_range("weight_decay", *space.weight_decay),
        "augment_strength": lo if lo == hi else trial.suggest_float("augment_strength", lo, hi),
    }


def apply_params(config: LineguardConfig, params: dict[str, Any], epochs: int | None = None) -> LineguardConfig:
    """``config`` with one trial's parameters set (and ``train.epochs`` if given); validated."""
    from lineguard.config import LineguardConfig

    data = config.to_dict()
    data["train"].update(model=params["model"], width=params["width"], lr=params["lr"],
                         weight_decay=params["weight_decay"])
    data["preprocess"]["size"] = [params["size"], params["size"]]
    data["augment"]["strength"] = params["augment_strength"]
    if epochs is not None:
        data["train"]["epochs"] = epochs
    return LineguardConfig.model_validate(data)


def space_fingerprint(space: TuneConfig) -> str:
    """A short hash of the search space: a study only accepts trials from the same space."""
    keys = ("epochs", "lr", "weight_decay", "width", "size", "augment_strength", "models")
    data = {k: getattr(space, k) for k in keys}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=list).encode()).hexdigest()[:16]


def default_storage(config: LineguardConfig) -> str:
    """``sqlite:///<workdir>/optuna.db``."""
    return f"sqlite:///{Path(config.workdir).resolve() / 'optuna.db'}"


def redact(url: str) -> str:
    """A storage URL without its password (safe to print and to log)."""
    if "://" not in url or "@" not in url.split("://", 1)[1]:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


# --- results ---------------------------------------------------------------------------------------


@dataclass
class TrialRecord:
    """One trial as plain data."""

    number: int
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    value: float | None
    params: dict[str, Any]
    run_id: str
    val_loss: float | None
    epochs: int
    seconds: float | None


@dataclass
class TuneResult:
    """The study after this call: every trial (from every worker) and the best one."""

    study: str
    storage: str  # redacted
    parent_run_id: str
    trials: list[TrialRecord]
    best: TrialRecord
    best_config: LineguardConfig
    best_config_path: str
    seconds: float
    new_trials: int = 0


def _record(trial: optuna.trial.FrozenTrial) -> TrialRecord:
    values = trial.intermediate_values
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if (
        trial.datetime_complete and trial.datetime_start) else None
    params = dict(trial.user_attrs.get("params", trial.params))
    return TrialRecord(
        number=trial.number, state=trial.state.name, value=trial.value, params=params,
        run_id=str(trial.user_attrs.get("run_id", "")), val_loss=trial.user_attrs.get("val_loss"),
        epochs=len(values), seconds=seconds,
    )


def best_trial(trials: list[TrialRecord]) -> TrialRecord | None:
    """Highest val balanced accuracy; ties broken by lower val loss, then the earlier trial."""
    done = [t for t in trials if t.state == "COMPLETE" and t.value is not None]
    if not done:
        return None
    return min(done, key=lambda t: (-(t.value or 0.0), t.val_loss if t.val_loss is not None else math.inf, t.number))


# --- storage and study -------------------------------------------------------------------------------


def _optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _storage(url: str) -> Any:
    optuna = _optuna()
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        path = url[len("sqlite:///"):]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # several processes write to one file: wait for the lock instead of failing
        kwargs = {"connect_args": {"timeout": 120}}
    # workers started together race to create the schema: the losers retry once it exists
    for attempt in range(10):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except Exception as exc:
            if attempt < 9 and _is_creation_race(exc):
                time.sleep(0.5 + 0.5 * attempt)
                continue
            raise TuneError(f"cannot open the Optuna storage '{redact(url)}' (tune.storage): {_one_line(exc)}") from None
    raise AssertionError("unreachable")


def _is_creation_race(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("unique constraint", "already exists", "database is locked", "duplicate"))


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def _sampler(config: LineguardConfig, worker: int) -> Any:
    optuna = _optuna()
    # each worker gets its own seed, so parallel workers do not sample the same points
    return optuna.samplers.TPESampler(seed=config.train.seed + 1000 * worker)


def _pruner(space: TuneConfig) -> Any:
    optuna = _optuna()
    if not space.prune:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=space.prune_startup_trials,
                                       n_warmup_steps=space.prune_warmup_epochs)


def _open_study(config: LineguardConfig, storage: Any, name: str, worker: int) -> Any:
    optuna = _optuna()
    return optuna.load_study(study_name=name, storage=storage, sampler=_sampler(config, worker),
                             pruner=_pruner(config.tune))


def _create_or_join(config: LineguardConfig, dataset: Dataset, storage: Any, name: str,
                    console: Console) -> tuple[Any, str]:
    """Create the study and its parent run, or join an existing one (checking it is compatible)."""
    optuna = _optuna()
    from lineguard import tracking

    fingerprint = space_fingerprint(config.tune)
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                    sampler=_sampler(config, 0), pruner=_pruner(config.tune))
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = _open_study(config, storage, name, 0)
        created = False
    if created:
        tags = {tracking.TAG_KIND: "tune", TAG_STUDY: name}
        with tracking.start_run(config, name=f"tune-{name}", tags=tags) as run:
            run.log_text(config.to_yaml(), tracking.CONFIG_ARTIFACT)
            run.log_params(tracking.flatten({"tune": config.tune.model_dump(mode="json")}))
            run.log_params({"dataset_version": dataset.version})
            run.log_dataset(dataset, context="tuning")
            parent = run.run_id
        study.set_user_attr(ATTR_DATASET, dataset.version)
        study.set_user_attr(ATTR_SPACE, fingerprint)
        study.set_user_attr(ATTR_TRACKING_URI, config.tracking_uri())
        study.set_user_attr(ATTR_PARENT_RUN, parent)  # last: its presence means "ready"
        return study, parent
    # join: the creator may still be writing the attributes
    deadline = time.monotonic() + 120
    while ATTR_PARENT_RUN not in study.user_attrs:
        if time.monotonic() > deadline:
            raise TuneError(f"study '{name}' exists but was never finished setting up; use another --study name")
        time.sleep(0.5)
        study = _open_study(config, storage, name, 0)
    attrs = study.user_attrs
    if attrs.get(ATTR_DATASET) != dataset.version:
        raise TuneError(f"study '{name}' was run on dataset version {attrs.get(ATTR_DATASET)}, not "
                        f"{dataset.version}; pick a new name with --study (tune.study)")
    if attrs.get(ATTR_SPACE) != fingerprint:
        raise TuneError(f"study '{name}' was run with another search space (tune.*); pick a new name with --study")
    if attrs.get(ATTR_TRACKING_URI) != config.tracking_uri():
        theirs = redact(str(attrs.get(ATTR_TRACKING_URI)))
        raise TuneError(f"study '{name}' logs its runs to {theirs}, this worker to "
                        f"{redact(config.tracking_uri())}; pass --tracking-uri {theirs} (a tracking "
                        f"server all workers reach, when they run on several machines)")
    return study, str(attrs[ATTR_PARENT_RUN])


# --- the objective ---------------------------------------------------------------------------------------


def _train_accepts_on_epoch() -> bool:
    import inspect

    from lineguard.train import train

    return "on_epoch" in inspect.signature(train).parameters


def _objective(config: LineguardConfig, dataset: Dataset, parent_run_id: str, study_name: str,
               cache: dict[int, PreparedData], console: Console, threads: int,
               worker: int = 0) -> Callable[[Any], float]:
    optuna = _optuna()
    from lineguard import models
    from lineguard.train import prepare_data, preprocess_params, train

    live_pruning = _train_accepts_on_epoch()

    def objective(trial: Any) -> float:
        params = suggest(trial, config.tune)
        trial.set_user_attr("params", params)
        trial.set_user_attr("worker", worker)
        if params["model"] not in models.MODELS:
            raise TuneError(f"tune.models has '{params['model']}'; valid models: {', '.join(models.MODELS)}")
        cfg = apply_params(config, params, epochs=config.tune.epochs)
        if threads:
            cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"threads": threads})})
        size = params["size"]
        if size not in cache:
            cache[size] = prepare_data(dataset, preprocess_params(cfg))

        def report(epoch: int, row: dict[str, float]) -> None:
            trial.report(float(row[OBJECTIVE]), epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: val balanced accuracy {row[OBJECTIVE]:.4f} below the median")

        tags = {TAG_STUDY: study_name, TAG_TRIAL: str(trial.number)}
        kwargs: dict[str, Any] = {"on_epoch": report} if live_pruning else {}
        t0 = time.perf_counter()
        try:
            result = train(cfg, dataset, data=cache[size], run_name=f"{study_name}-trial-{trial.number}",
                           parent_run_id=parent_run_id, tags=tags, progress=False, console=_quiet_console(),
                           **kwargs)
        except optuna.TrialPruned:
            _mark_pruned(config, study_name, trial.number)
            console.print(f"trial {trial.number:3d} pruned   {_describe(params)}", highlight=False)
            raise
        value = float(result.val_metrics["balanced_accuracy"])
        trial.set_user_attr("run_id", result.run_id or "")
        trial.set_user_attr("val_loss", float(result.val_metrics.get("loss", math.nan)))
        trial.set_user_attr("best_epoch", result.best_epoch)
        if not live_pruning:  # report afterwards: the pruner still learns the curves
            for row in result.history:
                trial.report(float(row[OBJECTIVE]), int(row["epoch"]))
        console.print(f"trial {trial.number:3d} {value:.4f}   {_describe(params)}  "
                      f"({time.perf_counter() - t0:.0f} s, run {result.run_id})", highlight=False)
        return value

    return objective


def _quiet_console() -> Console:
    import io

    from rich.console import Console

    return Console(file=io.StringIO())


def _describe(params: dict[str, Any]) -> str:
    return (f"{params['model']} w={params['width']:g} {params['size']}px lr={params['lr']:.2g} "
            f"wd={params['weight_decay']:.2g} aug={params['augment_strength']:.2f}")


def _mark_pruned(config: LineguardConfig, study_name: str, number: int) -> None:
    """Tag the (FAILED-by-exception) MLflow run of a pruned trial so it reads as pruned."""
    from lineguard import tracking

    filt = f"tags.`{TAG_STUDY}` = '{study_name}' and tags.`{TAG_TRIAL}` = '{number}'"
    for rec in tracking.list_runs(config, max_results=5, filter_string=filt):
        tracking.Run(run_id=rec.run_id, client=tracking.client(config)).set_tags({TAG_STATE: "pruned"})


def run_worker(config_data: dict[str, Any], dataset_url: str, storage_url: str, study_name: str, n_trials: int,
               worker: int, threads: int = 0) -> None:
    """One worker: load the study and run ``n_trials`` trials (the body of a worker process)."""
    from rich.console import Console

    from lineguard.config import LineguardConfig
    from lineguard.manifest import load_dataset

    config = LineguardConfig.model_validate(config_data)
    dataset = load_dataset(dataset_url)
    study = _open_study(config, _storage(storage_url), study_name, worker)
    parent = str(study.user_attrs[ATTR_PARENT_RUN])
    _optimize(study, config, dataset, parent, study_name, n_trials, Console(), threads, worker)


def _optimize(study: Any, config: LineguardConfig, dataset: Dataset, parent: str, study_name: str,
              n_trials: int, console: Console, threads: int, worker: int = 0) -> None:
    if n_trials <= 0:
        return
    cache: dict[int, PreparedData] = {}
    objective = _objective(config, dataset, parent, study_name, cache, console, threads, worker)
    # an error in a trial stops this worker loudly (the trial is recorded as FAIL); pruning is not an error
    study.optimize(objective, n_trials=n_trials, gc_after_trial=True)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# --- tune ----------------------------------------------------------------------------------------------------


def tune(
    config: LineguardConfig,
    dataset: Dataset,
    *,
    trials: int | None = None,
    workers: int | None = None,
    storage: str | None = None,
    study: str | None = None,
    out: str | None = None,
    console: Console | None = None,
) -> TuneResult:
    """Run ``trials`` trials (default ``tune.trials``) in ``workers`` processes on one study.

    Trials already in the study (from earlier calls or other machines) count towards the
    best config but not towards ``trials``. The best config is written to ``out``
    (default ``<workdir>/tune/<study>-best.yaml``) and logged to the parent run.
    """
    from rich.console import Console

    from lineguard import models, tracking

    console = console or Console()
    t0 = time.perf_counter()
    space = config.tune
    unknown = [m for m in space.models if m not in models.MODELS]
    if unknown:
        raise TuneError(f"tune.models has unknown model(s) {unknown}; valid models: {', '.join(models.MODELS)}")
    n_trials = space.trials if trials is None else trials
    n_workers = space.workers if workers is None else workers
    if n_trials < 1 or n_workers < 1:
        raise TuneError(f"trials and workers must be >= 1 (got trials={n_trials}, workers={n_workers})")
    storage_url = storage or space.storage or default_storage(config)
    study_name = study or space.study
    rdb = _storage(storage_url)
    optuna_study, parent = _create_or_join(config, dataset, rdb, study_name, console)
    before = len(optuna_study.trials)
    console.print(f"study '{study_name}' in {redact(storage_url)}: {n_trials} trial(s) in {n_workers} worker(s), "
                  f"{space.epochs} epochs each; parent run {parent}", highlight=False)

    if n_workers == 1:
        study_obj = _open_study(config, rdb, study_name, 0)
        _optimize(study_obj, config, dataset, parent, study_name, n_trials, console, 0)
    else:
        _run_workers(config, dataset, storage_url, study_name, n_trials, n_workers)

    final = _open_study(config, rdb, study_name, 0)
    records = [_record(t) for t in final.trials]
    best = best_trial(records)
    if best is None:
        raise TuneError(f"study '{study_name}' has no completed trial (all pruned or failed); see the runs of "
                        f"parent run {parent}")
    best_config = apply_params(config, best.params)  # full-length training: train.epochs as configured
    path = out or str(Path(config.workdir) / "tune" / f"{study_name}-best.yaml")
    from lineguard import storage as lg_storage

    if lg_storage.is_local(path):
        Path(lg_storage.local_path(path)).parent.mkdir(parents=True, exist_ok=True)
    header = (f"# lineguard tune: best of {len(records)} trial(s) in study '{study_name}' -- trial {best.number}, "
              f"val balanced accuracy {best.value:.4f}, run {best.run_id}\n"
              f"# train with: lineguard train --config {Path(path).name} --data DATASET\n")
    lg_storage.write_text(path, header + best_config.to_yaml())

    parent_run = tracking.Run(run_id=parent, client=tracking.client(config))
    parent_run.log_text(header + best_config.to_yaml(), "tune/best.yaml")
    parent_run.log_dict([t.__dict__ for t in records], "tune/trials.json")
    parent_run.log_metrics({"best_" + OBJECTIVE: float(best.value or 0.0), "trials": float(len(records)),
                            "pruned_trials": float(sum(t.state == "PRUNED" for t in records))})
    parent_run.set_tags({"tune.best_run_id": best.run_id, "tune.best_trial": str(best.number)})
    return TuneResult(
        study=study_name, storage=redact(storage_url), parent_run_id=parent, trials=records, best=best,
        best_config=best_config, best_config_path=path, seconds=time.perf_counter() - t0,
        new_trials=len(records) - before,
    )


def _run_workers(config: LineguardConfig, dataset: Dataset, storage_url: str, study_name: str, n_trials: int,
                 n_workers: int) -> None:
    """Spawn worker processes sharing the study; torch threads are split between them."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # fresh interpreters: no forked torch/sqlite state
    threads = config.train.threads or max(1, (os.cpu_count() or 1) // n_workers)
    procs = []
    for worker, count in enumerate(_split(n_trials, n_workers)):
        if count == 0:
            continue
        proc = ctx.Process(target=run_worker, name=f"lineguard-tune-{worker}",
                           args=(config.to_dict(), str(dataset.root), storage_url, study_name, count, worker, threads))
        proc.start()
        procs.append(proc)
    failed = []
    for proc in procs:
        proc.join()
        if proc.exitcode != 0:
            failed.append(f"{proc.name} (exit {proc.exitcode})")
    if failed:
        raise TuneError(f"tuning worker(s) failed: {', '.join(failed)}; their error is printed above")


def trials_table(result: TuneResult, limit: int = 20) -> Any:
    """A rich Table of the best trials (completed first, by value)."""
    from rich.table import Table

    table = Table(title=f"study {result.study}: {len(result.trials)} trial(s), best #{result.best.number}")
    for col in ("#", "state", "val bal. acc", "model", "width", "size", "lr", "wd", "aug", "epochs", "run id"):
        table.add_column(col, justify="right" if col not in ("state", "model", "run id") else "left")
    order = sorted(result.trials, key=lambda t: (t.state != "COMPLETE", -(t.value or 0.0), t.number))
    for t in order[:limit]:
        p = t.params
        style = "bold green" if t.number == result.best.number else None
        table.add_row(
            str(t.number), t.state, "" if t.value is None else f"{t.value:.4f}", str(p.get("model", "")),
            f"{p.get('width', 0):g}", str(p.get("size", "")), f"{p.get('lr', 0):.2g}",
            f"{p.get('weight_decay', 0):.2g}", f"{p.get('augment_strength', 0):.2f}", str(t.epochs), t.run_id,
            style=style,
        )
    return table
