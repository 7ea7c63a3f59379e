"""The pipeline for Kubeflow Pipelines v2 (and Vertex AI Pipelines): one YAML from the same steps.

Every function of :mod:`lineguard.pipeline.steps` becomes a kfp lightweight Python component
running in the project's image (``pipeline.image``, built from ``docker/Dockerfile``) with
``install_kfp_package=False`` and no ``packages_to_install``: nothing is pip-installed when a
step starts. Steps pass plain strings -- the URLs of artefacts under ``pipeline.artifacts``
(blob storage on a cluster), run ids, the dataset version -- never kfp artefacts, so the
same functions run unchanged in :func:`lineguard.pipeline.run`.

The pipeline's parameters come from the config: ``config`` (the resolved config as one line of
JSON, what every step parses and validates) and ``data`` (the photos). Which steps exist (the toy synth,
baseline, compress) is decided when compiling, from the config, so the definition has no
``dsl.If`` / ``ParallelFor`` (the local runner has known bugs with both). Kubeflow's own
execution cache is off for every task: each run opens its own MLflow parent run, which every
step receives; the content-hash step cache is the local runner's (docs/pipeline.md).
"""

# No `from __future__ import annotations`: kfp reads the pipeline function's annotations as types.
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lineguard.config import LineguardConfig
from lineguard.pipeline import resolve, steps


def pipeline_function(config: LineguardConfig, image: str | None = None) -> Any:
    """The ``@dsl.pipeline`` function for ``config`` (compile it, or call it under ``kfp.local``)."""
    from kfp import dsl

    config = resolve(config)
    pc = config.pipeline
    base_image = image or pc.image
    components = {name: dsl.component(getattr(steps, name), base_image=base_image, install_kfp_package=False)
                  for name in steps.COMPONENTS}

    def task(name: str, **kwargs: Any) -> Any:
        t = components[name](**kwargs)
        t.set_caching_options(False)
        t.set_display_name(name)
        return t

    toy = pc.data is None

    @dsl.pipeline(name="lineguard", description="LineGuard: ingest -> validate -> train -> evaluate -> export "
                  "-> compress -> gate -> promote -> release, one MLflow parent run with a child run per step")
    def lineguard(config: str = steps.config_text(config), data: str = pc.data or "") -> str:
        parent = task("start", config=config).output
        source = task("synth", config=config, parent_run_id=parent).output if toy else data
        dataset = task("ingest", config=config, source=source, parent_run_id=parent).output
        version = task("validate", config=config, dataset=dataset, parent_run_id=parent).output
        on_data: dict[str, Any] = {"config": config, "dataset": dataset, "dataset_version": version,
                                   "parent_run_id": parent}
        run_id = task("train", **on_data).output
        if pc.baseline:
            task("baseline", **on_data)
        task("evaluate", run_id=run_id, **on_data)
        bundle = task("export", run_id=run_id, **on_data).output
        if pc.compress:
            bundle = task("compress", run_id=run_id, **on_data).output
        verdict = task("gate", bundle=bundle, **on_data).output
        champion = task("promote", config=config, verdict=verdict, parent_run_id=parent).output
        release = task("release", config=config, bundle=bundle, verdict=verdict, champion=champion,
                       parent_run_id=parent).output
        return task("finish", config=config, parent_run_id=parent, release=release).output  # type: ignore[no-any-return]

    return lineguard


def compile_kubeflow(config: LineguardConfig, out: str | Path, image: str | None = None,
                     say: Callable[[str], None] = print) -> Path:
    """Compile the pipeline to a kfp v2 IR YAML at ``out`` (runs on Kubeflow and Vertex AI Pipelines)."""
    from kfp import compiler

    from lineguard import storage

    config = resolve(config)
    if config.tracking.uri is None or config.tracking_uri().startswith("sqlite:"):
        say("note: tracking.uri is the local SQLite store; on a cluster every step needs the same MLflow server "
            "(set tracking.uri=http://mlflow:5000)")
    if storage.is_local(steps.root_of(config)):
        say("note: pipeline.artifacts is a local folder; on a cluster steps share artefacts through blob storage "
            "(set pipeline.artifacts=s3://bucket/lineguard)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_function(config, image), str(out))
    return out
