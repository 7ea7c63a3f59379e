"""Experiment tracking and the model registry: the only module that imports MLflow.

Default store: SQLite (``sqlite:///<workdir>/mlflow.db``) with artifacts in
``<workdir>/mlartifacts``; a tracking server URL when configured. Telemetry is off.

A run records everything needed to reproduce it: the resolved config (``config.yaml``),
the dataset manifest and version, per-epoch metrics, plots, the environment, the git
commit, and the weights as safetensors with a small ``model.json`` so the model can be
rebuilt from the run alone (never a pickle). Browse with
``mlflow ui --backend-store-uri <the same URI>``.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lineguard import LineguardError

if TYPE_CHECKING:
    import torch
    from mlflow import MlflowClient

    from lineguard.config import LineguardConfig
    from lineguard.manifest import Dataset

# === runs: start, log, read (owned by training) ==============================================

# Tag names every training run carries (lineage: dataset -> run -> bundle).
TAG_KIND = "lineguard.kind"  # train | tune | baseline | evaluate ...
TAG_MODEL = "model"
TAG_DATASET_VERSION = "dataset_version"
TAG_DATASET_URL = "dataset_url"
TAG_INIT_FROM = "init_from"
TAG_TEACHER = "teacher"
TAG_GIT_COMMIT = "git_commit"
TAG_WARNING = "lineguard.warning"
CONFIG_ARTIFACT = "config.yaml"
WEIGHTS_ARTIFACT = "model/model.safetensors"
MODEL_META_ARTIFACT = "model/model.json"
MANIFEST_ARTIFACT = "dataset/manifest.parquet"


class TrackingError(LineguardError):
    """The tracking store is unreachable, or a run / artifact is missing."""


def _mlflow() -> Any:
    """Import MLflow with telemetry off (set here, not at import of this module)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)

    return mlflow


def artifact_root(config: LineguardConfig) -> str:
    """Where a local store keeps artifacts: ``<workdir>/mlartifacts``."""
    return str(Path(config.workdir).resolve() / "mlartifacts")


def _check_reachable(uri: str) -> None:
    """Fail fast with one line instead of MLflow's long retry loop and traceback."""
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as resp:
                resp.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(
                f"tracking server '{uri}' is unreachable ({reason}); start it "
                f"(mlflow server ...) or unset tracking.uri to use the local SQLite store"
            ) from None
    elif uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(f"cannot create the tracking store folder '{db.parent}': {exc}") from None
    elif "://" not in uri or uri.startswith("file:"):
        raise TrackingError(
            f"tracking URI '{uri}' is a plain folder, which MLflow refuses; use sqlite:///PATH/mlflow.db or http://HOST:PORT"
        )


def client(config: LineguardConfig) -> MlflowClient:
    """An MLflow client on the configured store (checked reachable)."""
    mlflow = _mlflow()
    uri = config.tracking_uri()
    _check_reachable(uri)
    try:
        return mlflow.MlflowClient(tracking_uri=uri)
    except Exception as exc:
        raise TrackingError(f"cannot open tracking store '{uri}': {exc}") from None


def experiment_id(config: LineguardConfig, cl: MlflowClient | None = None) -> str:
    """The id of ``config.tracking.experiment``, created (with the local artifact root) if new."""
    cl = cl or client(config)
    name = config.tracking.experiment
    try:
        exp = cl.get_experiment_by_name(name)
        if exp is not None:
            return str(exp.experiment_id)
        location = None
        if config.tracking_uri().startswith("sqlite:"):
            Path(artifact_root(config)).mkdir(parents=True, exist_ok=True)
            location = Path(artifact_root(config)).as_uri()
        return str(cl.create_experiment(name, artifact_location=location))
    except LineguardError:
        raise
    except Exception as exc:
        raise TrackingError(f"tracking store '{config.tracking_uri()}' failed: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config dict -> ``{"train.lr": "0.003", ...}`` (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)
    return out


@dataclass
class Run:
    """A live MLflow run; every log call goes straight to the store."""

    run_id: str
    client: Any = field(repr=False)
    experiment_id: str = ""

    def log_params(self, params: Mapping[str, Any]) -> None:
        mlflow = _mlflow()
        items = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        mlflow = _mlflow()
        now = int(time.time() * 1000)
        items = [mlflow.entities.Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        mlflow = _mlflow()
        items = [mlflow.entities.RunTag(k, str(v)) for k, v in tags.items()]
        if items:
            self.client.log_batch(self.run_id, tags=items)

    def log_figure(self, figure: Any, name: str) -> None:
        """A matplotlib figure as a PNG artifact (e.g. ``plots/confusion_matrix.png``)."""
        buf = io.BytesIO()
        figure.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        self.log_artifact_bytes(buf.getvalue(), name)

    def log_dict(self, data: Any, name: str) -> None:
        """JSON (``.json``) or YAML (``.yaml``) artifact."""
        if name.endswith((".yaml", ".yml")):
            import yaml

            text = yaml.safe_dump(data, sort_keys=False)
        else:
            text = json.dumps(data, indent=2, sort_keys=True, default=str)
        self.log_artifact_bytes(text.encode("utf-8"), name)

    def log_text(self, text: str, name: str) -> None:
        self.log_artifact_bytes(text.encode("utf-8"), name)

    def log_artifact_bytes(self, data: bytes, name: str) -> None:
        """Store ``data`` as artifact ``name`` (``dir/file.ext``)."""
        directory, filename = os.path.split(name)
        with tempfile.TemporaryDirectory(prefix="lineguard-artifact-") as tmp:
            path = os.path.join(tmp, filename)
            with open(path, "wb") as f:
                f.write(data)
            self.client.log_artifact(self.run_id, path, artifact_path=directory or None)

    def log_dataset(self, dataset: Dataset, context: str = "training") -> None:
        """The dataset as an MLflow dataset input (digest = version) + its manifest as an artifact."""
        mlflow = _mlflow()
        import warnings

        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():  # MLflow's hints about integer columns and source types
            warnings.simplefilter("ignore")
            ds = mlflow.data.from_pandas(
                dataset.manifest, source=str(dataset.root), name=f"dataset-{dataset.version}", digest=dataset.version
            )
            entity = ds._to_mlflow_entity()
        tag = InputTag(key="mlflow.data.context", value=context)
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset=entity, tags=[tag])])
        buf = io.BytesIO()
        dataset.manifest.to_parquet(buf, index=False)
        self.log_artifact_bytes(buf.getvalue(), MANIFEST_ARTIFACT)
        self.log_dict({"url": str(dataset.root), "version": dataset.version, "meta": dataset.meta},
                      "dataset/dataset.json")
        self.set_tags({TAG_DATASET_VERSION: dataset.version, TAG_DATASET_URL: str(dataset.root)})

    def log_config(self, config: LineguardConfig) -> None:
        """The resolved config: ``config.yaml`` artifact + flattened params."""
        self.log_text(config.to_yaml(), CONFIG_ARTIFACT)
        data = config.to_dict()
        sections = ("preprocess", "augment", "train")
        self.log_params(flatten({k: data[k] for k in sections}))

    def log_model(self, model: torch.nn.Module, meta: Mapping[str, Any]) -> None:
        """Weights as safetensors + ``model.json`` (name, width, classes, preprocess) to rebuild it."""
        from safetensors.torch import save

        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        self.log_artifact_bytes(save(state), WEIGHTS_ARTIFACT)
        self.log_dict(dict(meta), MODEL_META_ARTIFACT)

    def log_environment(self) -> None:
        """pip freeze, torch version and threads, python, platform, git commit."""
        env = environment()
        self.log_dict(env, "environment/environment.json")
        self.log_text(env.pop("pip_freeze_text", ""), "environment/requirements.txt")
        self.set_tags({TAG_GIT_COMMIT: env["git_commit"], "mlflow.source.git.commit": env["git_commit"]})


def environment() -> dict[str, Any]:
    """What the run ran on; ``pip_freeze_text`` holds the full package list."""
    import platform
    import sys
    from importlib import metadata

    packages = sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"])
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "git_commit": git_commit(),
        "pip_freeze_text": "\n".join(packages) + "\n",
    }
    try:
        import torch

        env.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                   cuda=torch.cuda.is_available())
    except ImportError:
        env["torch"] = "missing"
    return env


def git_commit(path: str | None = None) -> str:
    """The current git commit of ``path`` (default: this package's checkout), or 'unknown'."""
    import subprocess

    where = path or str(Path(__file__).resolve().parent)
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5,
                             check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else "unknown"


@contextmanager
def start_run(
    config: LineguardConfig,
    name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[Run]:
    """Open a run (nested under ``parent_run_id``, else under :func:`nested_under`'s run, if any);
    it ends FINISHED, or FAILED on error."""
    cl = client(config)
    exp = experiment_id(config, cl)
    all_tags = {str(k): str(v) for k, v in (tags or {}).items()}
    parent_run_id = parent_run_id or _NEST_UNDER.get()
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    try:
        created = cl.create_run(exp, run_name=name, tags=all_tags)
    except Exception as exc:
        raise TrackingError(f"cannot start a run in '{config.tracking_uri()}': {_one_line(exc)}") from None
    run = Run(run_id=created.info.run_id, client=cl, experiment_id=exp)
    try:
        yield run
    except BaseException:
        cl.set_terminated(run.run_id, status="FAILED")
        raise
    cl.set_terminated(run.run_id, status="FINISHED")


@dataclass(frozen=True)
class RunRecord:
    """A finished (or running) run as plain data."""

    run_id: str
    name: str
    status: str
    start_time_ms: int
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    experiment_id: str
    artifact_uri: str

    @property
    def dataset_version(self) -> str:
        return self.tags.get(TAG_DATASET_VERSION, "")

    @property
    def dataset_url(self) -> str:
        return self.tags.get(TAG_DATASET_URL, "")


def _record(run: Any) -> RunRecord:
    return RunRecord(
        run_id=run.info.run_id,
        name=run.info.run_name or "",
        status=run.info.status,
        start_time_ms=int(run.info.start_time or 0),
        params=dict(run.data.params),
        metrics={k: float(v) for k, v in run.data.metrics.items()},
        tags={k: v for k, v in run.data.tags.items()},
        experiment_id=run.info.experiment_id,
        artifact_uri=run.info.artifact_uri,
    )


def load_run(config: LineguardConfig, run_id: str) -> RunRecord:
    """A run by id; :class:`TrackingError` if the store has no such run."""
    cl = client(config)
    try:
        return _record(cl.get_run(run_id))
    except Exception as exc:
        raise TrackingError(
            f"run '{run_id}' not found in '{config.tracking_uri()}' ({_one_line(exc)}); see: lineguard runs list"
        ) from None


def list_runs(config: LineguardConfig, max_results: int = 50, filter_string: str = "") -> list[RunRecord]:
    """Runs of the configured experiment, newest first."""
    cl = client(config)
    exp = cl.get_experiment_by_name(config.tracking.experiment)
    if exp is None:
        return []
    runs = cl.search_runs([exp.experiment_id], filter_string=filter_string, max_results=max_results,
                          order_by=["attributes.start_time DESC"])
    return [_record(r) for r in runs]


def list_artifacts(config: LineguardConfig, run_id: str, path: str | None = None) -> list[str]:
    """All artifact file paths of a run (recursively)."""
    cl = client(config)
    out: list[str] = []
    for info in cl.list_artifacts(run_id, path):
        if info.is_dir:
            out.extend(list_artifacts(config, run_id, info.path))
        else:
            out.append(info.path)
    return out


def read_artifact(config: LineguardConfig, run_id: str, path: str) -> bytes:
    """The bytes of one artifact of a run."""
    cl = client(config)
    with tempfile.TemporaryDirectory(prefix="lineguard-dl-") as tmp:
        try:
            local = cl.download_artifacts(run_id, path, tmp)
        except Exception as exc:
            raise TrackingError(f"run '{run_id}' has no artifact '{path}' ({_one_line(exc)})") from None
        return Path(local).read_bytes()


def load_run_config(config: LineguardConfig, run_id: str) -> LineguardConfig:
    """The resolved config a run recorded (its ``config.yaml``), validated."""
    import yaml

    from lineguard.config import LineguardConfig as _Config

    data = yaml.safe_load(read_artifact(config, run_id, CONFIG_ARTIFACT).decode("utf-8"))
    return _Config.model_validate(data)


def load_model_from_run(config: LineguardConfig, run_id: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a run's model from its safetensors weights and ``model.json`` (no pickle involved)."""
    from safetensors.torch import load

    from lineguard import models

    meta = json.loads(read_artifact(config, run_id, MODEL_META_ARTIFACT).decode("utf-8"))
    state = load(read_artifact(config, run_id, WEIGHTS_ARTIFACT))
    model = models.create_from_meta(meta)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise TrackingError(
            f"run '{run_id}' weights do not fit {meta['model']}: missing {list(missing)[:5]}, "
            f"unexpected {list(unexpected)[:5]}"
        )
    model.eval()
    return model, meta

# === pipelines: the parent run and one child run per step (owned by pipeline) ==============

TAG_PIPELINE_STEP = "pipeline.step"
TAG_PIPELINE_CACHED = "pipeline.cached"
# The run that runs started without an explicit parent nest under (set by nested_under).
_NEST_UNDER: ContextVar[str | None] = ContextVar("lineguard_nest_under", default=None)


@contextmanager
def nested_under(run_id: str | None) -> Iterator[None]:
    """Runs started inside this block without their own parent become children of ``run_id``.

    A pipeline step wraps its library call in it, so the training, evaluation and
    compression runs the step makes appear under the step's run in the MLflow UI.
    """
    token = _NEST_UNDER.set(run_id or None)
    try:
        yield
    finally:
        _NEST_UNDER.reset(token)


def open_run(config: LineguardConfig, name: str, tags: Mapping[str, Any] | None = None,
             parent_run_id: str | None = None) -> str:
    """Start a run that outlives this call (a pipeline's parent run on Kubeflow); close it with :func:`end_run`."""
    cl = client(config)
    exp = experiment_id(config, cl)
    all_tags = {str(k): str(v) for k, v in (tags or {}).items()}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    try:
        return str(cl.create_run(exp, run_name=name, tags=all_tags).info.run_id)
    except Exception as exc:
        raise TrackingError(f"cannot start a run in '{config.tracking_uri()}': {_one_line(exc)}") from None


def end_run(config: LineguardConfig, run_id: str, status: str = "FINISHED") -> None:
    """Mark a run FINISHED (or FAILED / KILLED)."""
    try:
        client(config).set_terminated(run_id, status=status)
    except Exception as exc:
        raise TrackingError(f"cannot end run '{run_id}': {_one_line(exc)}") from None


def run_status(config: LineguardConfig, run_id: str) -> str | None:
    """A run's status (FINISHED, FAILED, RUNNING ...), or None when the store has no such run."""
    try:
        return str(client(config).get_run(run_id).info.status)
    except LineguardError:
        raise
    except Exception as exc:
        if _is_absent(exc) or "not found" in str(exc).lower():
            return None
        raise TrackingError(f"cannot read run '{run_id}': {_one_line(exc)}") from None


# === tuning and baseline helpers (owned by tune/baseline) ====================================

# === registry: register, aliases, load by alias (owned by evaluation and release) ============

# The aliases the release flow moves: the model on the line, and the one under test.
ALIAS_CHAMPION = "champion"
ALIAS_CHALLENGER = "challenger"
_RUN_ID_CHARS = set("0123456789abcdef")


@dataclass(frozen=True)
class ModelVersionRecord:
    """One registered model version as plain data."""

    name: str
    version: str
    run_id: str
    aliases: tuple[str, ...]
    tags: dict[str, str]
    source: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _version_record(mv: Any) -> ModelVersionRecord:
    return ModelVersionRecord(
        name=str(mv.name), version=str(mv.version), run_id=str(mv.run_id or ""),
        aliases=tuple(getattr(mv, "aliases", []) or []), tags=dict(mv.tags or {}), source=str(mv.source or ""),
    )


def _model_name(config: LineguardConfig, name: str | None) -> str:
    return name or config.tracking.registered_model


def _is_absent(exc: BaseException) -> bool:
    """True when MLflow says the model, version or alias does not exist -- and only then.

    Anything else (a server that is down, a timeout, a broken store) is not "absent": it
    must not read as "not registered yet", so callers raise it as a TrackingError.
    """
    code = getattr(exc, "error_code", None)
    if code == "RESOURCE_DOES_NOT_EXIST":
        return True
    return code == "INVALID_PARAMETER_VALUE" and "alias" in str(exc) and "not found" in str(exc)


def find_version(config: LineguardConfig, run_id: str, name: str | None = None) -> ModelVersionRecord | None:
    """The registered version made from ``run_id`` (the newest if several), or None."""
    cl = client(config)
    model = _model_name(config, name)
    try:
        found = cl.search_model_versions(f"name = '{model}' and run_id = '{run_id}'")
    except Exception as exc:
        if _is_absent(exc):
            return None
        raise TrackingError(f"cannot look up run '{run_id}' in the registry: {_one_line(exc)}") from None
    if not found:
        return None
    newest = max(found, key=lambda mv: int(mv.version))
    return get_version(config, str(newest.version), model)


def get_version(config: LineguardConfig, version: str, name: str | None = None) -> ModelVersionRecord:
    """A registered version by number; :class:`TrackingError` if it does not exist."""
    model = _model_name(config, name)
    try:
        return _version_record(client(config).get_model_version(model, str(version)))
    except LineguardError:
        raise
    except Exception as exc:
        raise TrackingError(f"model '{model}' has no version {version} ({_one_line(exc)})") from None


def register(
    config: LineguardConfig, run_id: str, name: str | None = None, evaluation: Mapping[str, Any] | None = None
) -> str:
    """Register a training run's model as a new version of ``name`` (default tracking.registered_model).

    Idempotent: a run already registered returns its existing version (its tags are
    updated). ``evaluation`` (e.g. ``EvaluationResult.headline()``) is flattened into
    version tags ``eval.*`` so the registry shows how good each version is.
    """
    run = load_run(config, run_id)
    if WEIGHTS_ARTIFACT not in list_artifacts(config, run_id, "model"):
        raise TrackingError(f"run '{run_id}' has no model artifact (model/model.safetensors); was it a training run?")
    model = _model_name(config, name)
    cl = client(config)
    tags: dict[str, str] = {TAG_DATASET_VERSION: run.dataset_version, TAG_MODEL: run.tags.get(TAG_MODEL, "")}
    for key, value in flatten(dict(evaluation or {}), "eval.").items():
        if value not in ("None", "[]", "{}"):
            tags[key] = value[:5000]
    existing = find_version(config, run_id, model)
    try:
        if existing is not None:
            for k, v in tags.items():
                cl.set_model_version_tag(model, existing.version, k, v)
            return existing.version
        try:
            cl.get_registered_model(model)
        except Exception as exc:
            if not _is_absent(exc):
                raise
            cl.create_registered_model(model, description="LineGuard inspection models (see lineguard gate/promote)")
        mv = cl.create_model_version(model, source=f"{run.artifact_uri}/model", run_id=run_id, tags=tags)
        return str(mv.version)
    except LineguardError:
        raise
    except Exception as exc:
        raise TrackingError(f"cannot register run '{run_id}' as '{model}': {_one_line(exc)}") from None


def set_version_tags(config: LineguardConfig, version: str, tags: Mapping[str, Any], name: str | None = None) -> None:
    """Set tags on a registered version (gate results, promotion records)."""
    model = _model_name(config, name)
    cl = client(config)
    for k, v in tags.items():
        cl.set_model_version_tag(model, str(version), str(k), str(v)[:5000])


def set_alias(config: LineguardConfig, alias: str, version: str, name: str | None = None) -> None:
    """Point ``alias`` (e.g. champion, challenger) of the registered model at ``version``."""
    model = _model_name(config, name)
    get_version(config, version, model)
    client(config).set_registered_model_alias(model, alias, str(version))


def get_model_version_by_alias(
    config: LineguardConfig, alias: str, name: str | None = None
) -> ModelVersionRecord | None:
    """The version an alias points at, or None when the alias (or the model) does not exist yet.

    A registry that cannot be reached is a :class:`TrackingError`, never None.
    """
    model = _model_name(config, name)
    try:
        return _version_record(client(config).get_model_version_by_alias(model, alias))
    except LineguardError:
        raise
    except Exception as exc:
        if _is_absent(exc):
            return None
        raise TrackingError(f"cannot read alias '{alias}' of model '{model}': {_one_line(exc)}") from None


def resolve_model_uri(config: LineguardConfig, uri: str) -> str:
    """The run id a run reference names: the one place such references are resolved.

    Accepted: a run id (32 hex digits), ``runs:/RUN_ID/...``, ``models:/NAME@ALIAS``,
    ``models:/NAME/VERSION`` and a bare alias of the default registered model
    (``champion``, ``challenger``). Anything else, and an alias or version that does not
    exist, is a :class:`TrackingError` naming what was expected.
    """
    uri = uri.strip()
    if uri.startswith("runs:/"):
        return uri[len("runs:/") :].split("/")[0]
    if uri.startswith("models:/"):
        rest = uri[len("models:/") :]
        if "@" in rest:
            model, alias = rest.split("@", 1)
            mv = get_model_version_by_alias(config, alias, model)
            if mv is None:
                raise TrackingError(f"'{uri}': model '{model}' has no alias '{alias}'; see: lineguard promote")
            return mv.run_id
        if "/" in rest:
            model, version = rest.split("/", 1)
            return get_version(config, version, model).run_id
        raise TrackingError(f"'{uri}' must look like models:/NAME@ALIAS or models:/NAME/VERSION")
    if len(uri) == 32 and set(uri) <= _RUN_ID_CHARS:
        return uri
    if uri and uri.replace("-", "").replace("_", "").isalnum() and not uri.isdigit():
        mv = get_model_version_by_alias(config, uri)
        if mv is not None:
            return mv.run_id
        raise TrackingError(
            f"'{uri}' is neither a run id nor an alias of model '{config.tracking.registered_model}'; "
            f"pass a run id (lineguard runs list), models:/NAME@ALIAS or models:/NAME/VERSION"
        )
    raise TrackingError(f"'{uri}' is not a run id or model URI; expected RUN_ID, models:/NAME@ALIAS or an alias")


def resolve_version(config: LineguardConfig, ref: str) -> ModelVersionRecord:
    """The registered version a reference names: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
    a bare alias of the default registered model, or a run reference whose run is registered.

    :class:`TrackingError` when the alias, the version or the run's registration does not exist.
    """
    ref = ref.strip()
    if ref.startswith("models:/"):
        rest = ref[len("models:/") :]
        if "@" in rest:
            name, alias = rest.split("@", 1)
            mv = get_model_version_by_alias(config, alias, name)
            if mv is None:
                raise TrackingError(f"'{ref}': model '{name}' has no alias '{alias}'; see: lineguard promote")
            return mv
        if "/" in rest:
            name, version = rest.rsplit("/", 1)
            return get_version(config, version, name)
        raise TrackingError(f"'{ref}' must look like models:/NAME@ALIAS or models:/NAME/VERSION")
    if ref in (ALIAS_CHALLENGER, ALIAS_CHAMPION):
        mv = get_model_version_by_alias(config, ref)
        if mv is None:
            raise TrackingError(f"no model has the alias '{ref}' yet; run: lineguard gate CANDIDATE --data DATASET")
        return mv
    run_id = resolve_model_uri(config, ref)
    found = find_version(config, run_id)
    if found is None:
        raise TrackingError(f"'{ref}' is not registered; run: lineguard gate {ref} --data DATASET")
    return found
