"""The whole lifecycle as plain calls: what ``lineguard demo`` runs, readable in one screen.

synth (messy) -> ingest -> validate -> train -> baseline -> evaluate -> register -> gate
-> promote -> export -> compress -> edge predict + bench. Each step is the library
function of the same name; nothing here is hidden from the CLI or a notebook.

``run(demo_config())`` is exactly ``lineguard demo`` (and ``run(demo_config(quick=True))``
is ``lineguard demo --quick``): the demo's presets live here, not in the CLI.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lineguard import LineguardError
from lineguard.config import LineguardConfig, load_config, save_config

# The demo keeps to its 5-minute budget: the distilled student (a second full training run) is left to
# `lineguard compress`, and when no candidate fits the latency budget the fp32 bundle ships with the reason.
DEMO_OVERRIDES: tuple[str, ...] = ("compress.distill=false", "compress.on_no_fit=fp32", "train.budget_s=90")
# --quick: a tiny config (2 recipes, 64 px, 8 epochs) that runs in about a minute.
QUICK_OVERRIDES: tuple[str, ...] = (
    "synth.recipes=2", "synth.per_class=24", "synth.size=64", "preprocess.size=[64,64]",
    "train.epochs=8", "train.batch_size=16", "evaluate.bootstrap=100", "compress.repeats=50", "compress.warmup=5",
    "compress.prune_ratios=[0.5]", "compress.finetune_epochs=1", "compress.threads=[1]", "compress.rounds=1",
    "compress.openvino=false", "export.golden_size=16", "export.reference_images=64",
)


class PipelineError(LineguardError):
    """A lifecycle step failed in a way the user must look at (e.g. the dataset is invalid)."""


@dataclass
class PipelineResult:
    """What the lifecycle produced, step by step, with the key figures."""

    workdir: Path
    dataset: str = ""
    dataset_version: str = ""
    run_id: str | None = None
    baseline_run_id: str | None = None
    model_version: str | None = None
    gate_passed: bool | None = None
    gate_reasons: list[str] = field(default_factory=list)
    bundle: str | None = None
    compressed_bundle: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def demo_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    quick: bool = False,
    workdir: str | Path = "lineguard-work",
) -> LineguardConfig:
    """The config ``lineguard demo`` runs: ``path`` (or the defaults), the demo presets
    (:data:`DEMO_OVERRIDES`, plus :data:`QUICK_OVERRIDES` when ``quick``), ``workdir``, then
    ``overrides`` (``section.key=value``, like ``--set``) on top of everything."""
    presets = [*DEMO_OVERRIDES, *(QUICK_OVERRIDES if quick else ()), f"workdir={workdir}"]
    return load_config(path, [*presets, *overrides])


def run(
    config: LineguardConfig,
    *,
    messy: bool = True,
    compress: bool = True,
    say: Callable[[str], None] = print,
) -> PipelineResult:
    """Run every stage on the toy dataset under ``config.workdir`` and return what it made.

    The demo owns its workdir: the raw toy photos and the dataset there are regenerated
    (same seed, same dataset version); the MLflow store keeps every run, so a second
    demo gates its new model against the first one's champion.
    """
    from lineguard import synth as synth_mod
    from lineguard import train as train_mod
    from lineguard.baseline import baseline
    from lineguard.compress import compress as compress_run
    from lineguard.edge import Predictor
    from lineguard.edge.bench import bench
    from lineguard.evaluate import evaluate
    from lineguard.evaluate.release import gate, promote, register
    from lineguard.export import export
    from lineguard.ingest import ingest
    from lineguard.manifest import load_dataset, validate

    work = Path(config.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    save_config(config, work / "lineguard.resolved.yaml")
    result = PipelineResult(workdir=work)
    raw, data = str(work / "raw-photos"), str(work / "dataset")
    clock = time.perf_counter()

    def step(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        result.seconds[name] = round(now - clock, 1)
        clock = now

    say(f"1/9 synth: drawing the toy cones ({'badly stored' if messy else 'clean'}) into {raw}")
    synth_mod.synth(raw, config.synth, messy=messy, overwrite=True, progress=True)
    step("synth")

    say(f"2/9 ingest: {raw} -> {data}")
    report = ingest(raw, data, config.ingest, overwrite=True, progress=True)
    result.figures["ingest"] = {"images": report.images, "rejected": len(report.rejected),
                                "conflicts": len(report.conflicts), "unlabelled": len(report.unlabelled)}
    step("ingest")

    say("3/9 validate the dataset")
    checks = validate(data)
    if not checks.ok:
        raise PipelineError("dataset failed validation: " + "; ".join(c.detail for c in checks.failures))
    dataset = load_dataset(data)
    result.dataset, result.dataset_version = data, dataset.version
    step("validate")

    say(f"4/9 train {config.train.model} (tracked in {config.tracking_uri()})")
    trained = train_mod.train(config, dataset)
    result.run_id = trained.run_id
    result.figures["train"] = {"val": trained.val_metrics, "test": trained.test_metrics, "seconds": trained.seconds}
    step("train")
    if trained.run_id is None:
        raise PipelineError("training produced no tracked run")
    run_id = trained.run_id

    say("5/9 baseline: could colour and shape features do it without deep learning?")
    base = baseline(config, dataset)
    result.baseline_run_id = base.run_id
    result.figures["baseline"] = {"classifier": base.classifier, "test": base.test_metrics}
    step("baseline")

    say("6/9 evaluate on the balanced test set, per recipe, with cost-based thresholds")
    evaluation = evaluate(run_id, dataset, config, progress=True)
    result.figures["evaluate"] = {"overall": evaluation.metrics.get("overall"), "temperature": evaluation.decision.temperature}
    step("evaluate")

    say("7/9 register, gate against the champion, promote")
    result.model_version = register(config, run_id)
    outcome = gate(config, run_id, data)
    result.gate_passed, result.gate_reasons = outcome.decision.passed, list(outcome.decision.reasons)
    if outcome.decision.passed:
        promote(config, run_id)
    step("release")

    say("8/9 export the bundle (ONNX + parity + thresholds + drift reference)")
    bundle_dir = work / "bundles" / f"{run_id}-fp32"
    exported = export(run_id, data, bundle_dir, config, overwrite=True)
    result.bundle = str(exported.path)
    step("export")
    if compress:
        say("8b/9 compress: INT8, pruning, OpenVINO candidates under the edge latency budget")
        compressed = compress_run(run_id, data, config)
        result.compressed_bundle = str(compressed.bundle) if compressed.bundle else None
        result.figures["compress"] = compressed.table_markdown
        step("compress")

    say("9/9 the edge: decide a few test images and measure latency (no torch in the loop)")
    predictor = Predictor(result.compressed_bundle or result.bundle, threads=1)
    test_rows = dataset.split("test").head(8)
    images = [dataset.read_image(p) for p in test_rows["path"]]
    predictions = predictor.predict(images, recipe=list(test_rows["recipe"]))
    result.figures["edge_predictions"] = [
        {"recipe": p.recipe, "truth": t, "decision": p.label, "score": round(p.score, 4)}
        for p, t in zip(predictions, test_rows["label"], strict=True)
    ]
    result.figures["edge_bench"] = bench(result.compressed_bundle or result.bundle, threads=1, repeats=300)
    step("edge")
    return result
