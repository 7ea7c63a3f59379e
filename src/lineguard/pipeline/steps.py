"""The pipeline's steps: one function per lifecycle step, the same for a local run and Kubeflow.

Each step takes the resolved config as text (:func:`config_text`) plus plain strings (URLs of artefacts,
run ids, a dataset version) and returns one string, so the very same function is a kfp v2
lightweight component (:mod:`lineguard.pipeline.kubeflow`): its body imports what it needs
inside (Kubeflow runs the function's source alone, in the project's image) and this module
has no ``from __future__ import annotations`` (kfp reads the annotations as types).

Artefacts are passed by URL: each step writes under ``pipeline.artifacts`` (default the
workdir; ``s3://...`` on a cluster) and returns where. Every step opens its own MLflow run
as a child of the pipeline's parent run, and the runs the library makes inside it (training,
evaluation, compression) nest under that step run.
"""

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lineguard.config import LineguardConfig
    from lineguard.manifest import Dataset

# The steps of a Kubeflow pipeline, in order (``edge`` runs only locally: it measures this machine).
COMPONENTS = ("start", "synth", "ingest", "validate", "train", "baseline", "evaluate", "export", "compress",
              "gate", "promote", "release", "finish")


# --- what every step shares -----------------------------------------------------------------------


def config_text(cfg: "LineguardConfig") -> str:
    """The config as every step receives it: one line of JSON (YAML reads it; a multi-line default
    would break the comment header kfp writes into the compiled pipeline).

    Only the keys the config sets (``exclude_unset``): a step parses this text back, and a key
    that comes back "set" means something to some steps -- an explicit ``train.epochs`` turns
    the time budget off, a set ``preprocess.size`` overrides the auto recipe's choice -- so
    writing every default out would silently turn the budget and the auto recipe off."""
    import json

    return json.dumps(cfg.model_dump(mode="json", exclude_unset=True), separators=(",", ":"))


def root_of(cfg: "LineguardConfig") -> str:
    """Where steps write their artefacts: ``pipeline.artifacts`` or the workdir (absolute)."""
    from pathlib import Path

    from lineguard import storage

    root = cfg.pipeline.artifacts or cfg.workdir
    return str(Path(storage.local_path(root)).resolve()) if storage.is_local(root) else root.rstrip("/")


@contextlib.contextmanager
def step_run(name: str, config: str, parent_run_id: str,
             **inputs: str) -> Iterator[tuple["LineguardConfig", Callable[[str], str]]]:
    """Parse the config, open the step's child run, nest the library's runs under it.

    Yields ``(config, done)``; ``done(output)`` records the step's output on its run and
    returns it. The run ends FAILED (and the error propagates) when the step raises, and so
    does the pipeline's parent run, tagged with the failing step: on Kubeflow no later task
    runs (``finish`` would have closed it), so without this a failed run stayed RUNNING.
    """
    from lineguard import tracking
    from lineguard.config import parse_config

    cfg = parse_config(config, "the pipeline config")
    tags = {tracking.TAG_KIND: "pipeline-step", tracking.TAG_PIPELINE_STEP: name}
    with tracking.start_run(cfg, name=f"step {name}", tags=tags, parent_run_id=parent_run_id or None) as run:
        run.log_params({f"input.{k}": v for k, v in inputs.items()})

        def done(output: str) -> str:
            run.log_params({"output": output})
            return output

        try:
            with tracking.nested_under(run.run_id):
                yield cfg, done
        except BaseException as exc:
            _fail_parent(cfg, parent_run_id, name, exc)
            raise


def _fail_parent(cfg: "LineguardConfig", parent_run_id: str, step: str, exc: BaseException) -> None:
    """Mark the pipeline's parent run FAILED at ``step``; best effort (the step's own error is what matters)."""
    from lineguard import LineguardError, tracking

    if not parent_run_id:
        return
    try:
        tracking.Run(parent_run_id, tracking.client(cfg)).set_tags(
            {"pipeline.failed_step": step, "pipeline.error": " ".join(str(exc).split())[:500]})
        tracking.end_run(cfg, parent_run_id, "FAILED")
    except LineguardError:
        pass


def record_cached(config: str, name: str, parent_run_id: str, output: str, finished_at: str) -> None:
    """A cached step still gets its child run (tagged ``pipeline.cached``), so the parent run shows every step."""
    from lineguard import tracking
    from lineguard.config import parse_config

    cfg = parse_config(config, "the pipeline config")
    tags = {tracking.TAG_KIND: "pipeline-step", tracking.TAG_PIPELINE_STEP: name, tracking.TAG_PIPELINE_CACHED: "true"}
    with tracking.start_run(cfg, name=f"step {name} (cached)", tags=tags, parent_run_id=parent_run_id) as run:
        run.log_params({"output": output, "cached_from": finished_at})


def open_checked(dataset: str, dataset_version: str) -> "Dataset":
    """The dataset at ``dataset``, refused when it is not the version the pipeline validated."""
    from lineguard.manifest import DatasetError, load_dataset

    ds = load_dataset(dataset)
    if dataset_version and ds.version != dataset_version:
        raise DatasetError(f"dataset '{dataset}' is version {ds.version}, but the pipeline validated "
                           f"{dataset_version}: it changed during the run; run the pipeline again")
    return ds


def local_copy(url: str, cfg: "LineguardConfig") -> str:
    """A local path for an artefact URL: local paths as they are, remote files downloaded once."""
    import hashlib
    from pathlib import Path

    from lineguard import storage

    if storage.is_local(url):
        return storage.local_path(url)
    name = url.rstrip("/").rsplit("/", 1)[-1]
    target = Path(cfg.workdir).resolve() / "downloads" / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    if not target.is_file():
        storage.write_bytes(str(target), storage.read_bytes(url))
    return str(target)


def publish(local: str, url: str) -> str:
    """Copy a local file or folder to ``url`` (nothing to do when they are the same place); returns ``url``."""
    import os

    from lineguard import storage

    if storage.is_local(url) and os.path.abspath(local) == os.path.abspath(storage.local_path(url)):
        return url
    if os.path.isdir(local):
        for base, _dirs, files in os.walk(local):
            for f in sorted(files):
                path = os.path.join(base, f)
                with open(path, "rb") as fh:
                    storage.write_bytes(storage.join(url, os.path.relpath(path, local)), fh.read())
    else:
        with open(local, "rb") as fh:
            storage.write_bytes(url, fh.read())
    return url


# --- the steps, in lifecycle order ----------------------------------------------------------------


def start(config: str) -> str:
    """Open the pipeline's parent MLflow run (Kubeflow; a local run opens its own); returns its id."""
    from lineguard import tracking
    from lineguard.config import parse_config

    cfg = parse_config(config, "the pipeline config")
    return tracking.open_run(cfg, "pipeline", {tracking.TAG_KIND: "pipeline"})


def synth(config: str, parent_run_id: str) -> str:
    """Draw the toy cones, stored badly when ``synth.messy`` (the demo's raw photos); returns their folder."""
    from lineguard import storage
    from lineguard import synth as synth_mod
    from lineguard.pipeline.steps import root_of, step_run

    with step_run("synth", config, parent_run_id) as (cfg, done):
        out = storage.join(root_of(cfg), "raw-photos")
        synth_mod.synth(out, cfg.synth, overwrite=True, progress=True)
        return done(out)


def ingest(config: str, source: str, parent_run_id: str) -> str:
    """Ingest messy photos (folder, archive, CSV, Label Studio export) into a versioned dataset; returns its URL."""
    from lineguard import storage
    from lineguard.ingest import ingest as ingest_fn
    from lineguard.pipeline.steps import root_of, step_run

    with step_run("ingest", config, parent_run_id, source=source) as (cfg, done):
        out = storage.join(root_of(cfg), "dataset")
        ingest_fn(source, out, cfg.ingest, overwrite=True, progress=True)
        return done(out)


def validate(config: str, dataset: str, parent_run_id: str) -> str:
    """Check the dataset (schema, hashes, leakage, balance); returns its version, or fails naming the checks."""
    from lineguard.manifest import DatasetError, load_dataset
    from lineguard.manifest import validate as validate_fn
    from lineguard.pipeline.steps import step_run

    with step_run("validate", config, parent_run_id, dataset=dataset) as (_cfg, done):
        checks = validate_fn(dataset)
        if not checks.ok:
            raise DatasetError(f"dataset '{dataset}' failed validation: "
                               + "; ".join(c.detail for c in checks.failures))
        return done(load_dataset(dataset).version)


def train(config: str, dataset: str, dataset_version: str, parent_run_id: str) -> str:
    """Train the model (after a hyperparameter search when ``pipeline.tune``); returns the training run id."""
    from lineguard import train as train_mod
    from lineguard import tune as tune_mod
    from lineguard.pipeline.steps import open_checked, step_run

    with step_run("train", config, parent_run_id, dataset=dataset, dataset_version=dataset_version) as (cfg, done):
        ds = open_checked(dataset, dataset_version)
        if cfg.pipeline.tune:  # trials fan out over tune.workers processes sharing the study's RDB storage
            cfg = tune_mod.tune(cfg, ds).best_config
        result = train_mod.train(cfg, ds)
        if result.run_id is None:
            raise train_mod.TrainError("training produced no tracked run")
        return done(result.run_id)


def baseline(config: str, dataset: str, dataset_version: str, parent_run_id: str) -> str:
    """Fit the non-deep baseline (could colour and shape features do it?); returns its run id."""
    from lineguard.baseline import BaselineError
    from lineguard.baseline import baseline as baseline_fn
    from lineguard.pipeline.steps import open_checked, step_run

    with step_run("baseline", config, parent_run_id, dataset=dataset) as (cfg, done):
        result = baseline_fn(cfg, open_checked(dataset, dataset_version))
        if result.run_id is None:
            raise BaselineError("the baseline produced no tracked run")
        return done(result.run_id)


def evaluate(config: str, run_id: str, dataset: str, dataset_version: str, parent_run_id: str) -> str:
    """Evaluate the run on the balanced test set, per recipe, with cost-based thresholds; returns the report folder."""
    from pathlib import Path

    from lineguard import storage
    from lineguard.evaluate import evaluate as evaluate_fn
    from lineguard.pipeline.steps import open_checked, publish, root_of, step_run

    with step_run("evaluate", config, parent_run_id, run_id=run_id, dataset=dataset) as (cfg, done):
        local = Path(cfg.workdir).resolve() / "evaluations" / run_id
        evaluate_fn(run_id, open_checked(dataset, dataset_version), cfg, out=str(local), log=True, report=True)
        return done(publish(str(local), storage.join(root_of(cfg), "evaluations", run_id)))


def export(config: str, run_id: str, dataset: str, dataset_version: str, parent_run_id: str) -> str:
    """Export the run to an fp32 bundle (ONNX + parity + thresholds + drift reference); returns its URL."""
    from lineguard import storage
    from lineguard.export import export as export_fn
    from lineguard.pipeline.steps import open_checked, root_of, step_run

    with step_run("export", config, parent_run_id, run_id=run_id, dataset=dataset) as (cfg, done):
        open_checked(dataset, dataset_version)
        out = storage.join(root_of(cfg), "bundles", f"{run_id}-fp32")
        return done(str(export_fn(run_id, dataset, out, cfg, overwrite=True).path))


def compress(config: str, run_id: str, dataset: str, dataset_version: str, parent_run_id: str) -> str:
    """Build INT8 / pruned / OpenVINO candidates, keep the best under the edge budget; returns its bundle URL."""
    from pathlib import Path

    from lineguard import storage
    from lineguard.compress import CompressError
    from lineguard.compress import compress as compress_fn
    from lineguard.pipeline.steps import open_checked, publish, root_of, step_run

    with step_run("compress", config, parent_run_id, run_id=run_id, dataset=dataset) as (cfg, done):
        open_checked(dataset, dataset_version)
        remote = not storage.is_local(root_of(cfg))
        out = Path(cfg.workdir).resolve() / "bundles" / (f"{run_id}-compressed" + (".tar.gz" if remote else ""))
        result = compress_fn(run_id, dataset, cfg, out=out, say=print)
        if result.bundle is None:
            raise CompressError("compression bundled nothing")
        url = storage.join(root_of(cfg), "bundles", out.name)
        return done(publish(str(result.bundle), url))


def gate(config: str, bundle: str, dataset: str, dataset_version: str, parent_run_id: str) -> str:
    """Gate the bundle that would ship against the champion (absolute limits for the first model).

    Returns the verdict as JSON: passed, reasons, the registered version, the champion it faced.
    """
    import json
    from pathlib import Path

    from lineguard import storage
    from lineguard.edge.bundle import load_bundle
    from lineguard.evaluate.release import gate as gate_fn
    from lineguard.pipeline.steps import local_copy, open_checked, publish, root_of, step_run

    with step_run("gate", config, parent_run_id, bundle=bundle, dataset=dataset) as (cfg, done):
        open_checked(dataset, dataset_version)
        path = local_copy(bundle, cfg)
        name = "gate-" + Path(path).name.removesuffix(".tar.gz")
        local = Path(cfg.workdir).resolve() / "evaluations" / name  # the shipped bundle's report, with its Decision
        outcome = gate_fn(cfg, path, dataset, out=str(local))
        lineage = load_bundle(path, check_model=False).meta.get("lineage") or {}
        verdict = {"passed": outcome.decision.passed, "reasons": list(outcome.decision.reasons),
                   "version": outcome.candidate_version, "champion": outcome.champion_version,
                   "run_id": lineage.get("run_id"), "dataset_version": dataset_version,
                   "report": publish(str(local), storage.join(root_of(cfg), "evaluations", name))}
        return done(json.dumps(verdict, sort_keys=True))


def promote(config: str, verdict: str, parent_run_id: str) -> str:
    """Make the gated version the champion; fails (naming the gate's reasons) when the gate did not pass."""
    import json

    from lineguard import tracking
    from lineguard.evaluate.release import ReleaseError
    from lineguard.evaluate.release import promote as promote_fn
    from lineguard.pipeline.steps import step_run

    with step_run("promote", config, parent_run_id) as (cfg, done):
        v = json.loads(verdict)
        if not v["passed"]:
            raise ReleaseError(f"version {v['version']} failed the gate, nothing is promoted or released: "
                               + "; ".join(v["reasons"])[:600])
        current = tracking.get_model_version_by_alias(cfg, tracking.ALIAS_CHAMPION)
        if current is not None and current.version == v["version"]:
            return done(current.version)
        return done(promote_fn(cfg, f"models:/{cfg.tracking.registered_model}/{v['version']}").version)


def release(config: str, bundle: str, verdict: str, champion: str, parent_run_id: str) -> str:
    """Write the release: ``bundle.tar.gz`` (checked by the edge's own loader), ``release.json`` and the
    gate's ``report.md`` on that bundle."""
    import hashlib
    import io
    import json
    import os
    import tarfile
    import time
    from pathlib import Path

    from lineguard import storage
    from lineguard.edge.bundle import load_bundle
    from lineguard.pipeline.steps import local_copy, root_of, step_run

    with step_run("release", config, parent_run_id, bundle=bundle, champion=champion) as (cfg, done):
        path = Path(local_copy(bundle, cfg))
        if path.is_dir():  # pack the folder the way export packs one: flat, bundle.json beside model.onnx
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz") as tf:
                for f in sorted(path.iterdir()):
                    tf.add(f, arcname=f.name, recursive=False)
            data = buf.getvalue()
        else:
            data = path.read_bytes()
        out = storage.join(root_of(cfg), "release")
        storage.write_bytes(storage.join(out, "bundle.tar.gz"), data)
        checked = load_bundle(local_copy(storage.join(out, "bundle.tar.gz"), cfg))  # what ships must load on the edge
        v = json.loads(verdict)
        record = {"bundle": "bundle.tar.gz", "sha256": hashlib.sha256(data).hexdigest(), "name": checked.meta["name"],
                  "precision": checked.meta["model"].get("precision"), "registered_version": v["version"],
                  "champion": champion, "run_id": v["run_id"], "dataset_version": v["dataset_version"],
                  "gate": {"passed": v["passed"], "reasons": v["reasons"]},
                  "evaluation": checked.meta.get("evaluation", {}).get("overall", checked.meta.get("evaluation")),
                  "released_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        storage.write_text(storage.join(out, "release.json"), json.dumps(record, indent=2, default=str))
        report_md = storage.join(v["report"], "report.md")
        if storage.exists(report_md):
            storage.write_bytes(storage.join(out, "report.md"), storage.read_bytes(report_md))
        print(f"released {os.path.basename(str(path))} as {out}")
        return done(out)


def finish(config: str, parent_run_id: str, release: str) -> str:
    """Close the parent run (Kubeflow); returns the release folder."""
    from lineguard import tracking
    from lineguard.config import parse_config

    cfg = parse_config(config, "the pipeline config")
    tracking.Run(parent_run_id, tracking.client(cfg)).set_tags({"pipeline.release": release})
    tracking.end_run(cfg, parent_run_id)
    return release


def edge(config: str, release: str, dataset: str, dataset_version: str, parent_run_id: str) -> str:
    """The released bundle on the edge runtime of this machine: decide a few test images, time it (no torch).

    Returns the JSON file holding the decisions and the latency figures.
    """
    import json

    from lineguard import storage
    from lineguard.edge import Predictor
    from lineguard.edge.bench import bench
    from lineguard.pipeline.steps import local_copy, open_checked, root_of, step_run

    with step_run("edge", config, parent_run_id, release=release) as (cfg, done):
        ds = open_checked(dataset, dataset_version)
        bundle = local_copy(storage.join(release, "bundle.tar.gz"), cfg)
        rows = ds.split("test").head(8)
        predictions = Predictor(bundle, threads=1).predict([ds.read_image(p) for p in rows["path"]],
                                                          recipe=list(rows["recipe"]))
        figures: dict[str, Any] = {
            "predictions": [{"recipe": p.recipe, "truth": t, "decision": p.label, "score": round(p.score, 4)}
                            for p, t in zip(predictions, rows["label"], strict=True)],
            "bench": bench(bundle, threads=1, repeats=300),
        }
        out = storage.join(root_of(cfg), "pipeline", "edge.json")
        storage.write_text(out, json.dumps(figures, indent=1, default=str))
        return done(out)
