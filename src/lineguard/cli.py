"""The ``lineguard`` command: one Typer app, one command group per lifecycle stage.

Each command is a few lines over the library function of the same name; the library
does the work, this file parses arguments and prints. Heavy modules (torch, MLflow)
are imported inside the command that needs them so ``lineguard --help`` stays fast.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from lineguard import LineguardError, __version__

if TYPE_CHECKING:
    from lineguard.config import LineguardConfig
    from lineguard.edge.bundle import Bundle, BundleLimits
    from lineguard.edge.signing import Trust
    from lineguard.pipeline import PipelineResult

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

app = typer.Typer(
    name="lineguard",
    help=(
        "LineGuard: AI visual inspection for production lines.\n\n"
        "The lifecycle, in order: data (synth, ingest, validate) -> train -> evaluate -> "
        "gate/promote -> export/compress -> predict/bench on the edge.\n\n"
        "Start with:  lineguard demo"
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Data: make the toy dataset, ingest messy photos, validate and inspect datasets.",
                       no_args_is_help=True)
label_app = typer.Typer(help="Labelling: round trip with Label Studio.", no_args_is_help=True)
runs_app = typer.Typer(help="Tracked training runs (MLflow): list and show.", no_args_is_help=True)
bundle_app = typer.Typer(help="Bundles (the deployable model folder): verify, inspect, sign.", no_args_is_help=True)
config_app = typer.Typer(help="The config file (lineguard.yaml): show the resolved config.", no_args_is_help=True)
pipeline_app = typer.Typer(help="The whole lifecycle as one cached, resumable command; compile it for Kubeflow.",
                           no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(label_app, name="label")
app.add_typer(runs_app, name="runs")
app.add_typer(bundle_app, name="bundle")
app.add_typer(config_app, name="config")
app.add_typer(pipeline_app, name="pipeline")

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file (default: ./lineguard.yaml if present, else defaults)."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config value, e.g. --set train.lr=0.003 (repeatable)."),
]


def resolve_config(config: Path | None, overrides: list[str] | None) -> LineguardConfig:
    """The config every command uses: file (or defaults) with --set overrides on top."""
    from lineguard.config import load_config  # imported here: `lineguard --help` and `edge run` stay quick

    return load_config(config, overrides or [])


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"lineguard {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """LineGuard command line."""


# --- config -------------------------------------------------------------------------------


@config_app.command("show")
def config_show(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved config (file + overrides + defaults) as YAML."""
    console.print(resolve_config(config, set_).to_yaml(), end="", highlight=False, markup=False)


# === data (synth, ingest, validate, info) ==================================================


@data_app.command("synth")
def data_synth(
    out: Annotated[str, typer.Argument(help="Folder (or fsspec URL) to create; must be new or empty.")],
    recipes: Annotated[int | None, typer.Option(help="How many recipes (1-8).")] = None,
    per_class: Annotated[int | None, typer.Option(help="Images per recipe and class (good, bad).")] = None,
    size: Annotated[int | None, typer.Option(help="Image side in pixels (default 128).")] = None,
    seed: Annotated[int | None, typer.Option(help="Same seed -> byte-identical output.")] = None,
    difficulty: Annotated[float | None, typer.Option(help="0 = clean studio shots .. 1 = harsh line.")] = None,
    messy: Annotated[bool | None, typer.Option("--messy/--clean", help="Store it like a first real dataset "
                                               "(mixed folders, formats, CSV, zip, broken files).")] = None,
    drift: Annotated[str | None, typer.Option(help="dirty-lens | lighting | blur | color-cast | camera-shift "
                                              "| new-recipe")] = None,
    severity: Annotated[float | None, typer.Option(help="Drift strength 0..1.")] = None,
    video: Annotated[str | None, typer.Option(help="Also write a conveyor video (.avi) + per-frame truth CSV.")
                     ] = None,
    workers: Annotated[int | None, typer.Option(help="Drawing processes (0 = auto).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it already holds files.")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Draw the toy dataset: ice-cream cones on a conveyor, good and defective, per recipe.

    Example:  lineguard data synth data/cones --per-class 200 --messy
    """
    from lineguard.synth import synth

    given = {"recipes": recipes, "per_class": per_class, "size": size, "seed": seed, "difficulty": difficulty,
             "messy": messy, "drift": drift, "severity": severity, "workers": workers}
    overrides = [*(set_ or []), *(f"synth.{k}={v}" for k, v in given.items() if v is not None)]
    cfg = resolve_config(config, overrides).synth
    result = synth(out, cfg, video=video, overwrite=force, progress=True)
    total = sum(sum(c.values()) for c in result.counts.values())
    console.print(f"[green]wrote[/] {total} cones ({result.layout} layout, {result.files} files) to {out} "
                  f"in {result.seconds:.1f} s; truth: {result.truth_path}")
    if result.video_path:
        console.print(f"[green]video[/] {result.video_path} (truth per frame: {result.video_truth_path})")


@data_app.command("ingest")
def data_ingest(
    src: Annotated[str, typer.Argument(help="Folder, archive (.zip/.tar/.tar.gz), CSV of paths+labels, Label "
                                            "Studio JSON export or class-per-folder tree; a path or fsspec URL.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Dataset folder (or URL) to write.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a different dataset already at --out.")
                         ] = False,
    seed: Annotated[int | None, typer.Option(help="Split seed (default: ingest.seed).")] = None,
    root: Annotated[str | None, typer.Option(help="For a CSV or Label Studio source: the folder its paths are "
                                                  "relative to (default: the file's folder).")] = None,
    merge_with: Annotated[str | None, typer.Option("--merge-with", help="Previous dataset version: --out holds all "
                                                   "its items (splits kept) plus SRC's; SRC's labels win (relabels "
                                                   "reported). The previous dataset is not changed.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Turn messy photos into a clean, versioned dataset: verify, label, de-duplicate, split.

    Labels come from folder and file names (ingest.label_synonyms), CSV columns or Label
    Studio; conflicts and unlabelled images are held out and reported. The report is also
    saved as report.md / report.json in the dataset. See docs/ingest.md.

    Example:  lineguard data ingest raw/ --out data/cones-v1
    Merging:  lineguard data ingest labels.csv --out data/cones-v2 --merge-with data/cones-v1
    """
    from lineguard.ingest import ingest, print_report

    cfg = resolve_config(config, set_).ingest
    report = ingest(src, out, cfg, overwrite=overwrite, seed=seed, root=root, progress=True, merge_with=merge_with)
    print_report(report, console)
    console.print(f"[green]dataset[/] {out} version {report.version}: {report.images} images "
                  f"({report.seconds:.1f} s); report: {out}/report.md")


@data_app.command("validate")
def data_validate(
    dataset: Annotated[str, typer.Argument(help="Dataset folder or URL.")],
    skip_files: Annotated[bool, typer.Option("--skip-files", help="Do not read every image (faster).")] = False,
) -> None:
    """Check a dataset: schema, files and hashes, class balance, recipe coverage, split leakage, test balance.

    Exits 1 when a check fails; warnings (soft issues) keep exit 0.
    """
    from rich.table import Table

    from lineguard.manifest import validate

    report = validate(dataset, check_files=not skip_files, progress=True)
    table = Table(title=f"{dataset} (version {report.version or '?'})")
    for col in ("check", "status", "detail"):
        table.add_column(col)
    colour = {"ok": "green", "warn": "yellow", "fail": "red"}
    for c in report.checks:
        table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/]", c.detail)
    console.print(table)
    if not report.ok:
        err_console.print(f"[bold red]invalid:[/] {len(report.failures)} check(s) failed")
        raise typer.Exit(1)


@data_app.command("info")
def data_info(dataset: Annotated[str, typer.Argument(help="Dataset folder or URL.")]) -> None:
    """Print a dataset's version, source, counts per split / recipe / class and image sizes."""
    from rich.table import Table

    from lineguard.manifest import info

    d = info(dataset)
    console.print(f"[bold]{d['dataset']}[/] version {d['version']}: {d['images']} images, classes "
                  f"{', '.join(d['classes'])} (positive: {d['positive_class']}); source {d['source'] or '?'}; "
                  f"ingested {d['ingested_at']}", highlight=False)
    table = Table()
    for col in ("recipe", "class", "train", "val", "test", "unused"):
        table.add_column(col, justify="left" if col in ("recipe", "class") else "right")
    for row in d["table"]:
        table.add_row(row["recipe"], row["label"], *(str(row[s]) for s in ("train", "val", "test", "unused")))
    table.add_row("all", "", *(str(d["splits"][s]) for s in ("train", "val", "test", "unused")), style="bold")
    console.print(table)
    if d["sizes"]:
        w, h = d["sizes"]["width"], d["sizes"]["height"]
        console.print(f"image sizes: width {w['min']}-{w['max']} (median {w['median']:g}), height "
                      f"{h['min']}-{h['max']} (median {h['median']:g}), {d['sizes']['distinct_sizes']} distinct")


# === label (Label Studio) ===================================================================


@label_app.command("export")
def label_export(
    source: Annotated[str, typer.Argument(help="A LineGuard dataset, or a folder of images (local path or URL).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Tasks file to write; labelling-config.xml goes beside it.")],
    local_files_root: Annotated[
        str | None,
        typer.Option(help="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT; image URLs are relative to it. "
                     "Default: SOURCE itself."),
    ] = None,
    only_unlabelled: Annotated[
        bool, typer.Option(help="Folders only: skip files whose folder or file name already holds a label.")
    ] = False,
    labels: Annotated[
        str | None, typer.Option(help="With --only-unlabelled: a labels CSV whose files also count as labelled.")
    ] = None,
    predictions: Annotated[
        str | None, typer.Option(help="A bundle: pre-annotate every task with its decision (needs lineguard[edge]).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Write Label Studio tasks (one per image) and the matching labelling config.

    Paste labelling-config.xml into a Label Studio project, serve the images with local-file storage and import the tasks file (docs/labelling.md).

    Example:  lineguard label export photos/ --only-unlabelled --out labelling/tasks.json
    """
    from lineguard.labelstudio import bundle_predictor, export_tasks

    cfg = resolve_config(config, set_)
    predict, model_version = bundle_predictor(predictions) if predictions else (None, "lineguard")
    summary = export_tasks(
        source, out, local_files_root=local_files_root, only_unlabelled=only_unlabelled, predict=predict,
        model_version=model_version, labels_csv=labels, label_synonyms=cfg.ingest.label_synonyms,
        positive_class=cfg.ingest.positive_class, defect_types=cfg.ingest.defect_types,
    )
    for note in summary.notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False)
    console.print(
        f"Wrote {summary.tasks} tasks to {summary.tasks_path} ({summary.skipped} skipped, "
        f"{summary.with_predictions} pre-annotated) and the labelling config to {summary.config_path}",
        highlight=False,
    )


@label_app.command("import")
def label_import(
    export: Annotated[str, typer.Argument(help="A Label Studio export (JSON or JSON-MIN) file or URL.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Labels CSV to write (file,label,recipe,defect_type).")],
    root: Annotated[
        str | None,
        typer.Option(help="The folder the images are under (the --local-files-root of the export). "
                     "Default: the export file's folder."),
    ] = None,
    local_files_root: Annotated[
        str | None, typer.Option(help="Label Studio's local-files document root, if it differs from --root.")
    ] = None,
    strict: Annotated[bool, typer.Option(help="Exit with an error if any task gave no label.")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Turn a Label Studio JSON export into a labels CSV for `lineguard data ingest`.

    Uses each task's latest non-cancelled annotation (ground truth first), reads labels through ingest.label_synonyms and refuses image URLs outside --root. Every task without a label is listed.

    Example:  lineguard label import export.json --root photos/ --out labels.csv
    """
    from rich.markup import escape

    from lineguard.labelstudio import KEPT_PROBLEM_KINDS, default_root, import_export

    cfg = resolve_config(config, set_)
    root = root or default_root(export)
    parsed = import_export(
        export, out, root, label_synonyms=cfg.ingest.label_synonyms, positive_class=cfg.ingest.positive_class,
        local_files_root=local_files_root,
    )
    dropped = [p for p in parsed.problems if p.kind not in KEPT_PROBLEM_KINDS]
    for p in parsed.problems[:50]:
        colour = "yellow" if p.kind in KEPT_PROBLEM_KINDS else "red"
        err_console.print(f"[{colour}]{p.kind}[/] task {escape(p.task_id)}: {escape(p.detail)}", highlight=False)
    if len(parsed.problems) > 50:
        err_console.print(f"... and {len(parsed.problems) - 50} more problems", highlight=False)
    console.print(
        f"Wrote {len(parsed.records)} labels to {out}; {len(dropped)} tasks gave no label", highlight=False
    )
    if strict and dropped:
        raise LineguardError(f"{len(dropped)} tasks of '{export}' gave no label (see above); fix them or drop --strict")


# === model development (train, runs, reproduce, tune, baseline) =============================


@app.command("train")
def train_cmd(
    data: Annotated[str, typer.Option("--data", "-d", help="Dataset folder or URL (made by `lineguard data ingest`).")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    init_from: Annotated[str | None, typer.Option(
        "--init-from", help="Fine-tune from a run id, models:/NAME@ALIAS, an alias (champion) or a weights file.")] = None,
    teacher: Annotated[str | None, typer.Option(
        "--teacher", help="Distil from this run id / models:/NAME@ALIAS (knowledge distillation).")] = None,
    weights: Annotated[str | None, typer.Option(
        "--weights", help="Start from an ImageNet state-dict file (.pth or .safetensors, torchvision key names) "
        "of the architecture set with --set train.model=NAME.")] = None,
    rehearsal_data: Annotated[str | None, typer.Option(
        "--rehearsal-data", help="Old dataset to mix in when onboarding a recipe (default: the init run's).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto (CUDA if present), cpu, cuda or cuda:N.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(
        "--tracking-uri", help="MLflow tracking URI (default: sqlite:///<workdir>/mlflow.db).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Run name shown in `lineguard runs list`.")] = None,
) -> None:
    """Train a model on a dataset and record the run (config, data version, metrics, weights) in MLflow.

    Example:  lineguard train --data toy-ds --set train.epochs=20
    """
    from lineguard.manifest import load_dataset
    from lineguard.train import train

    extra = [f"train.{k}={v}" for k, v in (("init_from", init_from), ("teacher", teacher), ("weights", weights),
                                            ("device", device)) if v]
    extra += [f"tracking.uri={tracking_uri}"] if tracking_uri else []
    cfg = resolve_config(config, [*(set_ or []), *extra])
    result = train(cfg, load_dataset(data), rehearsal_data=load_dataset(rehearsal_data) if rehearsal_data else None,
                   run_name=name, console=console)
    val, test = result.val_metrics, result.test_metrics
    console.print(f"best epoch {result.best_epoch}: val balanced accuracy {val['balanced_accuracy']:.4f}"
                  + (f", test {test['balanced_accuracy']:.4f}" if test else "") + f" ({result.seconds:.0f} s)")
    console.print(f"run id: {result.run_id}", highlight=False)


RunsTrackingOpt = Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI (default: config).")]


def _runs_config(config: Path | None, set_: list[str] | None, tracking_uri: str | None) -> LineguardConfig:
    return resolve_config(config, [*(set_ or []), *([f"tracking.uri={tracking_uri}"] if tracking_uri else [])])


@runs_app.command("list")
def runs_list(
    config: ConfigOpt = None, set_: SetOpt = None, tracking_uri: RunsTrackingOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Show at most this many runs, newest first.")] = 30,
) -> None:
    """List tracked runs: id, name, model, dataset version, val balanced accuracy, date."""
    import datetime as dt

    from rich.table import Table

    from lineguard import tracking

    cfg = _runs_config(config, set_, tracking_uri)
    runs = tracking.list_runs(cfg, max_results=limit)
    table = Table(title=f"runs in {cfg.tracking_uri()} (experiment {cfg.tracking.experiment})")
    for col in ("run id", "name", "kind", "model", "dataset", "val bal. acc", "status", "started (UTC)"):
        table.add_column(col)
    for r in runs:
        acc = r.metrics.get("final_val_balanced_accuracy")
        started = dt.datetime.fromtimestamp(r.start_time_ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M")
        table.add_row(r.run_id, r.name, r.tags.get(tracking.TAG_KIND, ""), r.tags.get(tracking.TAG_MODEL, ""),
                      r.dataset_version, "" if acc is None else f"{acc:.4f}", r.status, started)
    console.print(table if runs else "no runs yet; train one with: lineguard train --data DATASET")


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="Run id (see `lineguard runs list`).")],
    config: ConfigOpt = None, set_: SetOpt = None, tracking_uri: RunsTrackingOpt = None,
) -> None:
    """Show one run: tags (lineage), params, final metrics and artifacts."""
    from rich.table import Table

    from lineguard import tracking

    cfg = _runs_config(config, set_, tracking_uri)
    r = tracking.load_run(cfg, run_id)
    console.print(f"[bold]run {r.run_id}[/] {r.name} ({r.status})", highlight=False)
    for title, values in (("tags", {k: v for k, v in r.tags.items() if not k.startswith("mlflow.")}),
                          ("params", r.params), ("metrics", {k: f"{v:.6g}" for k, v in r.metrics.items()})):
        table = Table(title=title, show_header=False)
        for k in sorted(values):
            table.add_row(k, str(values[k]))
        console.print(table)
    console.print("artifacts: " + ", ".join(tracking.list_artifacts(cfg, run_id)), highlight=False)


@app.command("reproduce")
def reproduce_cmd(
    run_id: Annotated[str, typer.Argument(help="The run to re-run from what it recorded alone.")],
    config: ConfigOpt = None, set_: SetOpt = None, tracking_uri: RunsTrackingOpt = None,
    tolerance: Annotated[float, typer.Option(help="Max allowed |difference| of a metric, in points (1 = 1 %).")] = 0.1,
) -> None:
    """Re-train a run from its recorded config and dataset and print the metric differences."""
    from rich.table import Table

    from lineguard.train import reproduce

    cfg = _runs_config(config, set_, tracking_uri)
    result = reproduce(cfg, run_id, console=console)
    table = Table(title=f"reproduce {run_id} -> {result.new_run_id}")
    for col in ("metric", "original", "reproduced", "difference"):
        table.add_column(col)
    for metric, (a, b, d) in result.differences.items():
        table.add_row(metric, f"{a:.6g}", f"{b:.6g}", f"{d:+.3g}")
    console.print(table)
    worst = max((abs(d) * 100 for m, (_, _, d) in result.differences.items() if "accuracy" in m), default=0.0)
    if worst > tolerance:
        raise LineguardError(f"run {run_id} did not reproduce: accuracy differs by {worst:.3f} points "
                             f"(> {tolerance}); see the table above")
    console.print(f"[green]reproduced[/] within {tolerance} points (largest accuracy difference {worst:.3f})")


@app.command("tune")
def tune_cmd(
    data: Annotated[str, typer.Option("--data", "-d", help="Dataset folder or URL (made by `lineguard data ingest`).")],
    trials: Annotated[int | None, typer.Option("--trials", "-n", help="Trials to run now (default tune.trials).")
                      ] = None,
    storage: Annotated[str | None, typer.Option(
        "--storage", help="Optuna RDB URL shared by all workers (default sqlite:///<workdir>/optuna.db).")] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", "-w", help="Worker processes on this machine (default tune.workers).")] = None,
    study: Annotated[str | None, typer.Option("--study", help="Study name; reuse it to add trials (default tune.study).")
                     ] = None,
    out: Annotated[str | None, typer.Option(
        "--out", "-o", help="Where to write the best config (default <workdir>/tune/<study>-best.yaml).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    tracking_uri: Annotated[str | None, typer.Option(
        "--tracking-uri", help="MLflow tracking URI (default: sqlite:///<workdir>/mlflow.db).")] = None,
) -> None:
    """Search hyperparameters (architecture, width, input size, lr, weight decay, augmentation) with
    Optuna; each trial is a tracked training run under one parent run. Writes the best config as a
    lineguard.yaml for `lineguard train --config`. Run it on several machines with the same --storage
    and --study to share one search.

    Example:  lineguard tune --data toy-ds --trials 20 --workers 2
    """
    from lineguard.manifest import load_dataset
    from lineguard.tune import trials_table, tune

    cfg = resolve_config(config, [*(set_ or []), *([f"tracking.uri={tracking_uri}"] if tracking_uri else [])])
    result = tune(cfg, load_dataset(data), trials=trials, workers=workers, storage=storage, study=study, out=out,
                  console=console)
    console.print(trials_table(result))
    console.print(f"best: trial {result.best.number}, val balanced accuracy {result.best.value:.4f}, "
                  f"run {result.best.run_id}", highlight=False)
    console.print(f"best config written to {result.best_config_path}; train it with: "
                  f"lineguard train --config {result.best_config_path} --data {data}", highlight=False)


@app.command("baseline")
def baseline_cmd(
    data: Annotated[str, typer.Option("--data", "-d", help="Dataset folder or URL (made by `lineguard data ingest`).")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    tracking_uri: Annotated[str | None, typer.Option(
        "--tracking-uri", help="MLflow tracking URI (default: sqlite:///<workdir>/mlflow.db).")] = None,
    track: Annotated[bool, typer.Option("--track/--no-track", help="Record the run in MLflow.")] = True,
) -> None:
    """Could a traditional method do it? Colour/edge/texture features + logistic regression or
    gradient boosting, tuned on val, scored on test overall and per recipe (tracked like any run).

    Example:  lineguard baseline --data toy-ds
    """
    from lineguard.baseline import baseline, candidates_table, scores_table
    from lineguard.manifest import load_dataset

    cfg = resolve_config(config, [*(set_ or []), *([f"tracking.uri={tracking_uri}"] if tracking_uri else [])])
    result = baseline(cfg, load_dataset(data), track=track, console=console)
    console.print(candidates_table(result))
    console.print(scores_table(result))
    if result.run_id:
        console.print(f"run id: {result.run_id}", highlight=False)


# === evaluation and release (evaluate, register, gate, promote) ==============================

DataOpt = Annotated[str, typer.Option("--data", "-d", help="Dataset folder or URL whose val/test splits are used.")]


def _print_evaluation(result: object) -> None:
    from lineguard.evaluate.evaluation import EvaluationResult

    assert isinstance(result, EvaluationResult)
    from rich.table import Table

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.2f} %"

    where = "shipped by the bundle" if result.decision_source == "bundle" else "fitted on val"
    table = Table(title=f"{result.source}: test split, thresholds and temperature {where}")
    for col in ("slice", "images", "balanced acc.", "false rejects", "escapes", "ECE", "threshold"):
        table.add_column(col)
    d = result.decision
    rows = [("overall", result.metrics["overall"], d.default_threshold)]
    rows += [(r, s, d.threshold_for(r)) for r, s in result.metrics["per_recipe"].items()]
    for name, s, t in rows:
        table.add_row(name, str(int(s.get("n") or 0)), pct(s.get("balanced_accuracy")), pct(s.get("false_reject_rate")),
                      pct(s.get("escape_rate")), "–" if s.get("ece") is None else f"{s['ece']:.4f}", f"{t:.3f}")
    console.print(table)
    ci = result.metrics["overall"].get("ci", {}).get("balanced_accuracy")
    if ci and ci[0] is not None:
        console.print(f"balanced accuracy 95 % CI: [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}] %")
    unc = result.metrics["uncalibrated"].get("ece")
    console.print(f"temperature {d.temperature:.3f}; ECE {unc if unc is None else round(unc, 4)} -> "
                  f"{result.ece if result.ece is None else round(result.ece, 4)}")
    if result.refit is not None:
        fitted = result.refit["overall"]
        console.print(f"re-fitted on this val split instead: balanced accuracy {pct(fitted.get('balanced_accuracy'))}, "
                      f"differences: {'; '.join(result.refit['differences']) or 'none'}", highlight=False)
    for w in result.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    if result.behaviour:
        console.print(f"behaviour checks: {'passed' if result.behaviour.get('passed') else '[red]FAILED[/]'}")
    if result.report_path:
        console.print(f"report: {result.report_path}")
    if result.evaluation_run_id:
        console.print(f"MLflow evaluation run: {result.evaluation_run_id}")


@app.command("evaluate")
def evaluate_cmd(
    source: Annotated[str, typer.Argument(help="RUN_ID, models:/NAME@ALIAS, 'champion', or a bundle folder/.tar.gz.")],
    data: DataOpt,
    out: Annotated[str | None, typer.Option(help="Report folder (default <workdir>/evaluations/<run>).")] = None,
    log: Annotated[bool, typer.Option("--log/--no-log", help="Record the evaluation as an MLflow run.")] = True,
    behaviour: Annotated[bool, typer.Option("--behaviour/--no-behaviour",
                                            help="Run the invariance checks (scores the test set 4 more times).")] = True,
    refit: Annotated[bool, typer.Option(
        "--refit", help="For a bundle: also fit thresholds on this val split and show both side by side.")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Evaluate a model on a dataset: metrics with CIs on test under its decision settings.

    A bundle is judged with the temperature and thresholds it ships (those decide on the line);
    --refit also fits them on val and reports both. A run gets them fitted on val. Writes report.md,
    a self-contained report.html and evaluation.json, and prints the overall and per-recipe table.
    Example: lineguard evaluate champion --data data/cones
    """
    from lineguard.evaluate import evaluate

    cfg = resolve_config(config, set_)
    _print_evaluation(evaluate(source, data, cfg, out=out, log=log, behaviour=behaviour, progress=True, refit=refit))


@app.command("learning-curve")
def learning_curve_cmd(
    data: Annotated[str | None, typer.Option("--data", "-d", help="Dataset (default: the --run's dataset).")] = None,
    run: Annotated[str | None, typer.Option(help="Use this run's recorded config (and dataset unless --data).")] = None,
    fractions: Annotated[str | None, typer.Option(help="Comma-separated train fractions, e.g. 0.1,0.25,0.5,1.")] = None,
    seeds: Annotated[int | None, typer.Option(help="Repeats per fraction.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs per training (default: train.epochs).")] = None,
    out: Annotated[str | None, typer.Option(help="Folder for learning_curve.png/.json.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """How much data do we need? Train on growing fractions of the train split and fit a curve per recipe."""
    from lineguard.evaluate.learning_curve import learning_curve

    cfg = resolve_config(config, set_)
    if run:
        from lineguard import tracking

        record = tracking.load_run(cfg, tracking.resolve_model_uri(cfg, run))
        cfg = tracking.load_run_config(cfg, record.run_id).model_copy(
            update={"workdir": cfg.workdir, "tracking": cfg.tracking})
        data = data or record.dataset_url
    if not data:
        raise typer.BadParameter("pass --data DATASET or --run RUN_ID")
    fr = [float(f) for f in fractions.split(",")] if fractions else None
    curve = learning_curve(cfg, data, fractions=fr, seeds=seeds, epochs=epochs, out=out, progress=True)
    for key, text in curve.advice.items():
        console.print(f"[bold]{key}[/]: {text}", highlight=False)
    console.print(f"figure: {curve.figure_path}" + (f"; MLflow run {curve.run_id}" if curve.run_id else ""))


@app.command("register")
def register_cmd(
    run_id: Annotated[str, typer.Argument(help="The training run to register (its latest evaluation is attached).")],
    name: Annotated[str | None, typer.Option(help="Registered model name (default tracking.registered_model).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Register a run's model as a new version in the MLflow model registry."""
    from lineguard.evaluate.release import register

    cfg = resolve_config(config, set_)
    version = register(cfg, run_id, name)
    console.print(f"registered {name or cfg.tracking.registered_model} version {version}")


@app.command("gate")
def gate_cmd(
    candidate: Annotated[str, typer.Argument(help="RUN_ID, models:/NAME@ALIAS or a bundle to judge.")],
    data: DataOpt,
    against: Annotated[str, typer.Option(help="What to compare with: an alias, RUN_ID or models:/ URI.")] = "champion",
    out: Annotated[str | None, typer.Option(help="Report folder for the candidate's evaluation.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """May CANDIDATE replace the champion? Evaluates both on the same test set; exit 1 when it fails.

    The verdict is recorded on the candidate's registered version and the 'challenger' alias points at
    it; 'lineguard promote' then moves 'champion' only if this gate passed.
    """
    from lineguard.evaluate.release import gate

    cfg = resolve_config(config, set_)
    outcome = gate(cfg, candidate, data, against=against, out=out, progress=True)
    d = outcome.decision
    console.print(f"candidate: {candidate}" + (f" (version {outcome.candidate_version})"
                                               if outcome.candidate_version else ""))
    console.print(f"champion: {d.champion or 'none yet (absolute limits apply)'}")
    for check in d.checks:
        mark = "[green]pass[/]" if check.passed else "[red]FAIL[/]"
        console.print(f"  {mark} {check.name}: {check.detail}", highlight=False)
    console.print("[bold green]GATE PASSED[/]" if d.passed else "[bold red]GATE FAILED[/]")
    if not d.passed:
        raise typer.Exit(1)


@app.command("promote")
def promote_cmd(
    candidate: Annotated[str, typer.Argument(help="RUN_ID, models:/NAME/VERSION, 'challenger' or a bundle.")],
    force: Annotated[bool, typer.Option(help="Promote even without a passed gate (recorded on the version).")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Make CANDIDATE the champion: only after 'lineguard gate' passed against the current champion."""
    from lineguard.evaluate.release import promote

    cfg = resolve_config(config, set_)
    mv = promote(cfg, candidate, force=force)
    console.print(f"champion -> {mv.name} version {mv.version} (run {mv.run_id})"
                  + (" [yellow](forced)[/]" if force else ""))


# === deployment (export, compress, bundle, predict, bench) ===================================


@app.command("export")
def export_command(
    run_id: Annotated[str, typer.Argument(help="The tracked run to export (see: lineguard runs list).")],
    data: Annotated[str, typer.Option("--data", "-d", help=(
        "Dataset folder or URL: its val split sets the thresholds and temperature, test gives the evaluation "
        "summary, train the drift reference statistics."))],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to write (or a .tar.gz file).")],
    tar: Annotated[bool, typer.Option("--tar", help="Write one .tar.gz file instead of a folder.")] = False,
    name: Annotated[str | None, typer.Option(help="Bundle name (default: tracking.registered_model).")] = None,
    version: Annotated[str | None, typer.Option(help="Bundle version (default: the run id's first 8 characters).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing bundle at --out.")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Export a run to a bundle: ONNX + parity check, thresholds, evaluation, drift reference.

    Example:  lineguard export 3f2a... --data data/cones --out bundles/cones-v1 --tar
    """
    from lineguard.export import export

    cfg = resolve_config(config, set_)
    result = export(run_id, data, out, cfg, tar=tar, name=name, version=version, overwrite=overwrite,
                    progress=lambda msg: err_console.print(f"[dim]{msg}...[/]", highlight=False))
    p = result.parity
    console.print(f"[green]bundle written:[/] {result.path}")
    console.print(f"parity torch vs ONNX on {p.n} golden images: max |logit diff| {p.max_abs_logit_diff:.1e} "
                  f"(tolerance {p.atol:g}), decisions agree {p.decision_agreement:.0%}", highlight=False)
    ba = result.evaluation.get("balanced_accuracy")
    if ba is not None:
        console.print(f"test balanced accuracy {ba:.4f}, ECE {result.evaluation.get('ece') or float('nan'):.4f}",
                      highlight=False)
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False)


@app.command("compress")
def compress_command(
    run_id: Annotated[str, typer.Argument(help="The tracked run to compress (see: lineguard runs list).")],
    data: Annotated[str, typer.Option("--data", "-d", help=(
        "Dataset folder or URL: train calibrates INT8 and fine-tunes, val sets thresholds, test measures accuracy."))],
    budget_ms: Annotated[float | None, typer.Option("--budget-ms", help=(
        "Latency budget per image (median, batch 1, at compress.budget_threads threads). "
        "Default: compress.budget_ms."))] = None,
    max_drop: Annotated[float | None, typer.Option("--max-drop", help=(
        "Largest balanced-accuracy drop vs the float model, as a fraction (0.003 = 0.3 points). "
        "Default: compress.max_drop."))] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help=(
        "Bundle to write for the chosen candidate (folder, or .tar.gz). Default: <workdir>/bundles/<run>-<candidate>."
    ))] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Build INT8, pruned, distilled and OpenVINO variants of a run, measure them, bundle the best one.

    Every candidate gets file size, MACs, latency (median/p99 at 1 and 2 threads), balanced accuracy and ECE on test, and agreement with the float model. The most accurate one within the budget and the allowed drop is bundled; INT8 only if it is measured faster than fp32.

    The comparison table is printed, saved under <workdir>/compress/<run>/ and logged to MLflow.

    Example:  lineguard compress 3f2a... --data data/cones --budget-ms 1 --max-drop 0.003 --out bundles/cones-small
    """
    from lineguard.compress import compress

    cfg = resolve_config(config, set_)
    result = compress(run_id, data, cfg, budget_ms=budget_ms, max_drop=max_drop, out=out,
                      say=lambda msg: err_console.print(f"[dim]{msg}...[/]", highlight=False))
    console.print(result.table_markdown, highlight=False, markup=False, soft_wrap=True)
    chosen = result.selection.chosen
    if result.selection.fallback:
        err_console.print("[yellow]note:[/] no candidate fitted; fp32 was bundled (compress.on_no_fit=fp32)")
    if chosen is not None and result.bundle is not None:
        console.print(f"[green]chose {chosen.name}[/] ({chosen.precision}, {chosen.backend}); bundle written: "
                      f"{result.bundle}", highlight=False)


BundleArg = Annotated[Path, typer.Argument(help="A bundle folder or .tar.gz (made by: lineguard export).")]
TrustKeyOpt = Annotated[list[Path] | None, typer.Option(
    "--trust-key", help="Public key (PEM, ed25519) trusted to sign bundles; with one given, an unsigned or "
    "wrongly signed bundle is refused (repeatable; adds to trust.keys).")]
DigestOpt = Annotated[str | None, typer.Option(
    "--digest", help="Load only the bundle with this digest (sha256:..., see `lineguard bundle info`).")]


def _trust(cfg: LineguardConfig, keys: list[Path] | None, digest: str | None) -> Trust:
    """The edge's trust settings: config ``trust`` plus the command line."""
    from lineguard.edge.signing import trust_from

    return trust_from([*cfg.trust.keys, *(keys or [])], digest or cfg.trust.digest)


def _bundle_limits(cfg: LineguardConfig) -> BundleLimits:
    from lineguard.edge.bundle import BundleLimits

    lim = cfg.limits
    return BundleLimits(max_json_bytes=lim.max_bundle_json_bytes, max_files=lim.max_bundle_files,
                        max_bytes=lim.max_bundle_bytes)


def _load_trusted(bundle: Path, cfg: LineguardConfig, keys: list[Path] | None, digest: str | None,
                  check_model: bool = True) -> Bundle:
    """Load a bundle as the edge does: bounded, and only if trusted (config ``trust`` + command line)."""
    from lineguard.edge import load_bundle

    return load_bundle(bundle, check_model, trust=_trust(cfg, keys, digest), limits=_bundle_limits(cfg))


@bundle_app.command("verify")
def bundle_verify(
    bundle: BundleArg,
    threads: Annotated[int, typer.Option(help="Runtime threads for the parity re-check.")] = 1,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    trust_key: TrustKeyOpt = None,
    digest: DigestOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Check a bundle: integrity of bundle.json, file hashes, schema, the signature (with trusted keys),
    the ONNX model loads, golden-batch parity re-run here.

    Exits 1 if anything fails, so it can guard a deployment script.
    """
    import json

    from lineguard.edge import BundleError
    from lineguard.edge.predictor import verify_bundle

    cfg = resolve_config(config, set_)
    try:
        b = _load_trusted(bundle, cfg, trust_key, digest)
        report = verify_bundle(b, threads=threads)
        report["digest"], report["signed_by"] = b.digest, b.signed_by
    except BundleError as exc:
        err_console.print(f"[bold red]bundle verify FAILED:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if json_:
        console.print_json(json.dumps(report))
        return
    signed = f", signed by {report['signed_by']}" if report.get("signed_by") else ""
    console.print(f"[green]OK[/] {bundle}: {report['files']} files match their sha256, bundle.json intact, "
                  f"schema ok, ONNX loads{signed}; digest {report['digest']}", highlight=False, soft_wrap=True)
    console.print(f"parity on {report['n']} golden images: max |logit diff| {report['max_abs_logit_diff']:.1e} "
                  f"(tolerance {report['atol']:g}), decisions agree {report['decision_agreement']:.0%}", highlight=False,
                  soft_wrap=True)


@bundle_app.command("info")
def bundle_info(
    bundle: BundleArg,
    json_: Annotated[bool, typer.Option("--json", help="Print bundle.json (plus size) instead of a summary.")] = False,
) -> None:
    """Summarise a bundle: classes, recipes, thresholds, preprocessing, lineage, evaluation, size."""
    import json

    from lineguard.edge import load_bundle

    b = load_bundle(bundle, check_model=False)
    if json_:
        console.print_json(json.dumps({**b.meta, "size_bytes": b.size_bytes, "digest": b.digest}))
        return
    m, d, pp = b.meta["model"], b.decision, b.preprocess
    ev, lin = b.meta.get("evaluation", {}), b.meta.get("lineage", {})
    lines = [
        f"[bold]{b.name}[/] version {b.version}  (created {b.meta.get('created_at', '?')}, {b.size_bytes / 1e6:.2f} MB)",
        f"model      {m['file']}  {m.get('precision')}  opset {m.get('opset')}  inputs {m.get('inputs')}  "
        f"outputs {m.get('outputs')}",
        f"classes    {', '.join(b.classes)}  (positive: {b.positive_class})",
        f"recipes    {', '.join(b.recipes) or '-'}",
        f"decision   reject when score >= threshold; default {d.default_threshold:.4f}, "
        f"temperature {d.temperature:.3f}, cost {d.cost.to_dict()}",
    ]
    lines += [f"           {r}: {t:.4f}" for r, t in sorted(d.per_recipe.items())]
    lines.append(f"preprocess size {pp.size[0]}x{pp.size[1]} {pp.resize}, mean {pp.mean}, std {pp.std}, pad {pp.pad_value}")
    lines.append("lineage    " + ", ".join(f"{k} {v}" for k, v in lin.items() if v not in (None, "")))
    if ev:
        keys = ("split", "n", "balanced_accuracy", "false_reject_rate", "escape_rate", "ece", "roc_auc")
        lines.append("evaluation " + ", ".join(f"{k} {ev[k]:.4f}" if isinstance(ev.get(k), float) else f"{k} {ev[k]}"
                                               for k in keys if ev.get(k) is not None))
        for r, v in sorted((ev.get("per_recipe") or {}).items()):
            ba = v.get("balanced_accuracy")
            lines.append(f"           {r}: balanced accuracy {ba:.4f}" if ba is not None else f"           {r}: -")
    par = b.meta.get("parity", {})
    if par:
        lines.append(f"parity     vs {par.get('reference')}: max |logit diff| {par.get('max_abs_logit_diff', 0):.1e} "
                     f"(tolerance {par.get('atol')}), decisions agree {par.get('decision_agreement', 0):.0%} "
                     f"on {par.get('n')} golden images")
    lines.append("files      " + ", ".join(f"{k} {v[:12]}" for k, v in b.meta["files"].items()))
    lines.append(f"digest     {b.digest}  (pin it with trust.digest or --digest)")
    console.print("\n".join(lines), highlight=False, soft_wrap=True)


@bundle_app.command("sign")
def bundle_sign(
    bundle: BundleArg,
    key: Annotated[Path, typer.Option("--key", "-k", help="ed25519 private key (PEM), made by `lineguard bundle keygen`.")],
) -> None:
    """Sign a bundle: writes bundle.sig.json (an ed25519 signature over the bundle digest) into it.

    The bundle is verified first. An edge configured with the matching public key
    (trust.keys or --trust-key) then loads this bundle and refuses unsigned or altered ones.
    Example:  lineguard bundle sign bundles/cones --key release.pem
    """
    from lineguard.export.bundle import sign_bundle

    doc = sign_bundle(bundle, key)
    console.print(f"[green]signed[/] {bundle}: digest {doc['digest']}, key {doc['key_id']}", highlight=False,
                  soft_wrap=True)


@bundle_app.command("keygen")
def bundle_keygen(
    out: Annotated[Path, typer.Argument(help="Private key file to write (PEM); the public key goes to OUT.pub.")],
) -> None:
    """Make an ed25519 key pair for signing bundles. Keep the private key off the edge; give the edge OUT.pub."""
    from lineguard.edge.signing import generate_keypair, key_id, load_public_key

    private, public = generate_keypair(out)
    console.print(f"private key {private} (keep it secret), public key {public} "
                  f"(key id {key_id(load_public_key(public))})", highlight=False, soft_wrap=True)


@app.command("predict")
def predict(
    bundle: BundleArg,
    images: Annotated[list[Path], typer.Argument(help="Image files to decide.")],
    recipe: Annotated[str | None, typer.Option("--recipe", "-r", help=(
        "Recipe of the items: selects its threshold (default threshold if omitted or unknown)."))] = None,
    threads: Annotated[int, typer.Option(help="Runtime threads.")] = 1,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object per image.")] = False,
    trust_key: TrustKeyOpt = None,
    digest: DigestOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Decide image files with a bundle (the edge runtime: no torch). Exits 1 if any file failed.

    A file that cannot be read or decoded, or whose score is not finite, is an error for
    that file (never a decision); files are read under limits.max_image_bytes / max_pixels.
    """
    import json

    from lineguard.edge import Predictor
    from lineguard.edge.predictor import ItemError

    cfg = resolve_config(config, set_)
    predictor = Predictor(_load_trusted(bundle, cfg, trust_key, digest), threads=threads)
    failed = 0
    for path in images:
        try:
            pred = predictor.predict_file(path, recipe, max_bytes=cfg.limits.max_image_bytes,
                                          max_pixels=cfg.limits.max_pixels)
        except ItemError as exc:
            failed += 1
            if json_:
                console.print(json.dumps({"file": str(path), "error": str(exc), "reason": exc.reason}),
                              highlight=False, markup=False, soft_wrap=True)
            else:
                err_console.print(f"[red]error[/] {escape(str(exc))}", highlight=False)
            continue
        if json_:
            console.print(json.dumps({"file": str(path), **pred.to_dict()}), highlight=False, markup=False,
                          soft_wrap=True)
        else:
            colour = "red" if pred.rejected else "green"
            console.print(f"{path}  [{colour}]{pred.decision.upper()}[/]  {pred.label}  score {pred.score:.4f}  "
                          f"threshold {pred.threshold:.4f}  {pred.latency_ms:.2f} ms", highlight=False)
    if failed:
        err_console.print(f"{failed} of {len(images)} file(s) could not be decided", highlight=False)
        raise typer.Exit(1)


@app.command("bench")
def bench(
    bundle: BundleArg,
    threads: Annotated[int, typer.Option(help="Runtime intra-op threads.")] = 1,
    backend: Annotated[str, typer.Option(help="ort (ONNX Runtime) or openvino (optional extra).")] = "ort",
    batch: Annotated[int, typer.Option(help="Images per call.")] = 1,
    repeats: Annotated[int, typer.Option(help="Timed calls per measurement.")] = 500,
    warmup: Annotated[int, typer.Option(help="Untimed calls before each measurement.")] = 50,
    frame_size: Annotated[str | None, typer.Option(help="Frame size HxW fed to preprocessing (default 2x input; "
                                                        "each side 8..8192, at most limits.max_pixels).")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the full JSON result.")] = False,
    trust_key: TrustKeyOpt = None,
    digest: DigestOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Measure latency (median/p90/p99/mean) and throughput in a fresh process, with and without preprocessing."""
    import json

    from lineguard.edge.bench import bench_in_subprocess, check_frame_size

    cfg = resolve_config(config, set_)
    size = None
    if frame_size:
        try:
            h, w = (int(v) for v in frame_size.lower().split("x"))
        except ValueError:
            raise LineguardError(f"--frame-size must look like 256x256, got '{frame_size}'") from None
        size = check_frame_size((h, w), cfg.limits.max_pixels)
    _load_trusted(bundle, cfg, trust_key, digest, check_model=False)  # the model is only run if it is trusted
    result = bench_in_subprocess(bundle, threads, backend, batch, repeats, warmup, size)
    if json_:
        console.print_json(json.dumps(result))
        return
    console.print(f"{result['name']} {result['version']} ({result['precision']}), backend {backend}, "
                  f"{threads} thread(s), batch {batch}, {repeats} repeats after {warmup} warm-up", highlight=False)
    for key, label in (("model", "model only (preprocessing excluded)"),
                       ("end_to_end", f"frame {result['frame_size'][0]}x{result['frame_size'][1]} -> decision"),
                       ("preprocess", "preprocessing alone")):
        s = result[key]
        console.print(f"  {label:<40} median {s['median_ms']:.3f} ms  p90 {s['p90_ms']:.3f}  p99 {s['p99_ms']:.3f}  "
                      f"mean {s['mean_ms']:.3f}  -> {s['throughput_per_s']:.0f} images/s", highlight=False)

# === pipeline and demo ========================================================================


@pipeline_app.command("run")
def pipeline_run(
    data: Annotated[str | None, typer.Option(help="Photos to ingest (folder, archive, CSV, Label Studio export; "
                                             "path or URL). Default: pipeline.data, else the toy cones.")] = None,
    force: Annotated[list[str] | None, typer.Option(help="Rerun this step and every step using its output, "
                                                    "even if cached (repeatable), e.g. --force train.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Run the lifecycle: ingest -> validate -> train (or tune) -> evaluate -> export/compress -> gate ->
    promote -> release, reusing every step whose inputs are unchanged.

    One MLflow parent run with a child run per step. A failing step stops the pipeline and names itself
    (exit code 2); the next run resumes there. A model the gate refuses stops it at promote.

    Example:  lineguard pipeline run --data photos/ --set train.budget_s=240
    """
    from lineguard.pipeline import run

    result = run(resolve_config(config, set_), data=data, force=force or [],
                 say=lambda m: console.print(f"[bold cyan]{escape(m)}[/]"))
    _print_where(result)


@pipeline_app.command("compile")
def pipeline_compile(
    out: Annotated[Path, typer.Option(help="Where to write the pipeline YAML (kfp v2 IR).")] = Path("pipeline.yaml"),
    target: Annotated[str, typer.Option(help="Orchestrator: kubeflow (also runs on Vertex AI Pipelines).")] = "kubeflow",
    image: Annotated[str | None, typer.Option(help="Image every step runs in (default pipeline.image).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Compile the same steps to a Kubeflow Pipelines v2 definition (nothing pip-installs at run time).

    Example:  lineguard pipeline compile --out pipeline.yaml --set pipeline.artifacts=s3://bucket/lg
    """
    if target != "kubeflow":
        raise LineguardError(f"--target '{target}' is not supported; expected: kubeflow")
    try:
        from lineguard.pipeline.kubeflow import compile_kubeflow
    except ImportError as exc:
        raise LineguardError(f"compiling needs kfp ({exc.name} is missing): pip install 'lineguard[pipelines]'") from None
    path = compile_kubeflow(resolve_config(config, set_), out, image, say=lambda m: console.print(m, highlight=False))
    console.print(f"wrote {path}; submit it with the kfp client or upload it in the Kubeflow / Vertex AI UI")


# --- the station API (lineguard serve) ---------------------------------------------------------------


@app.command("serve")
def serve_cmd(
    bundle: Annotated[Path | None, typer.Option("--bundle", "-b", help="The bundle to serve (default: bundle: in station.yaml).")] = None,
    station_config: Annotated[Path | None, typer.Option("--config", "-c", help="station.yaml (store, sinks, sync, api).")] = None,
    source: Annotated[str | None, typer.Option(help=(
        "Also run the edge loop on this source in the same process (video, folder, camera index, URL); "
        "without it frames come only over POST /v1/predict."))] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1: this machine only).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8080; 0 picks a free one, printed).")] = None,
    token_file: Annotated[Path | None, typer.Option(help=(
        "API token file: read if it exists, else a new token is written to it (mode 600). Default: "
        "api.token/token_file in station.yaml, $LINEGUARD_API_TOKEN, or a new file next to the store."))] = None,
    allow_hot_swap: Annotated[bool, typer.Option(help="Enable POST /v1/model (hot swap; off by default).")] = False,
    trust_key: TrustKeyOpt = None,
    digest: DigestOpt = None,
) -> None:
    """Serve the station's HTTP API (docs/runtime.md) until SIGTERM: drains, flushes the store, exits.

    Every write needs the token (Authorization: Bearer). Trusted keys and limits come from
    lineguard.yaml's trust and limits sections plus --trust-key/--digest, for the bundle
    served and every bundle hot-swapped in.
    """
    from lineguard.edge.api import ApiLimits
    from lineguard.edge.serve import serve

    cfg = resolve_config(None, None)
    limits = ApiLimits(max_upload_bytes=min(cfg.limits.max_image_bytes, ApiLimits.max_upload_bytes),
                       max_pixels=cfg.limits.max_pixels)
    serve(station_config, bundle=bundle, source=source, host=host, port=port, token_file=token_file,
          allow_hot_swap=allow_hot_swap, trust=_trust(cfg, trust_key, digest), bundle_limits=_bundle_limits(cfg),
          limits=limits)


# --- monitoring (lineguard monitor ...) -------------------------------------------------------------

monitor_app = typer.Typer(help="Monitoring: the report over a station's store, and the frames worth labelling.",
                          no_args_is_help=True)
app.add_typer(monitor_app, name="monitor")


@monitor_app.command("report")
def monitor_report_cmd(
    store: Annotated[Path, typer.Option("--store", help="The station's store (store.path in station.yaml, e.g. edge.db).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")] = Path("monitoring-report.html"),
    since: Annotated[str | None, typer.Option(help="From this time: unix seconds or ISO 8601 (2026-11-02T06:00:00Z).")] = None,
    until: Annotated[str | None, typer.Option(help="Before this time (same forms).")] = None,
    bundle: Annotated[Path | None, typer.Option("--bundle", "-b", help=(
        "The station's bundle: its monitoring reference replays the drift detectors with their alarm thresholds, "
        "its classes and cost matrix price the KPIs."))] = None,
    window: Annotated[int, typer.Option(help="Frames per window of the accuracy estimate.")] = 500,
    shift_starts: Annotated[str, typer.Option(help="Local hours at which shifts start, comma-separated.")] = "6,14,22",
    tz: Annotated[str, typer.Option(help="Time zone of the shifts (IANA name, e.g. Europe/Berlin).")] = "UTC",
    trust_key: TrustKeyOpt = None,
    digest: DigestOpt = None,
) -> None:
    """Write a self-contained HTML monitoring report of a station's store (docs/monitoring-report.md)."""
    from lineguard.monitor.report import parse_time, write_report

    try:
        shifts = tuple(int(h) for h in shift_starts.split(",") if h.strip())
    except ValueError:
        raise LineguardError(f"--shift-starts {shift_starts!r} must be hours such as 6,14,22") from None
    loaded = _load_trusted(bundle, resolve_config(None, None), trust_key, digest) if bundle is not None else None
    path = write_report(store, out, since=parse_time(since, "since"), until=parse_time(until, "until"), bundle=loaded,
                        window=window, shifts=shifts, tz=tz)
    console.print(f"monitoring report: {path}")


@monitor_app.command("select")
def monitor_select_cmd(
    store: Annotated[Path, typer.Option("--store", help="The station's store (store.path in station.yaml, e.g. edge.db).")],
    for_labelling: Annotated[int, typer.Option("--for-labelling", "-n", help="How many frames to pick (N).")],
    out: Annotated[Path, typer.Option("--out", "-o", help=(
        "An empty folder for the picks: images/, tasks.json, labelling-config.xml, selection.csv."))],
    bundle: Annotated[Path | None, typer.Option("--bundle", "-b", help=(
        "The station's bundle: its calibrated drift detectors are replayed over the stored frames to flag "
        "drifted ones. Without it, drift is not a reason (the rest works)."))] = None,
    since: Annotated[str | None, typer.Option(help="Only frames from this time: unix seconds or ISO 8601 "
                                                   "(2026-11-02T06:00:00Z).")] = None,
    until: Annotated[str | None, typer.Option(help="Only frames before this time (same forms).")] = None,
    low_confidence_band: Annotated[float, typer.Option(help="A frame this close to its threshold (|score - "
                                                            "threshold|) counts as low-confidence.")] = 0.15,
    max_share: Annotated[float, typer.Option(help="At most this share of the picks per reason and per recipe, "
                                                  "while others are left to pick.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Breaks ties; the same store and seed give the same picks.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a selection already in --out.")] = False,
    local_files_root: Annotated[str | None, typer.Option(help=(
        "Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, when it is not OUT/images."))] = None,
    trust_key: TrustKeyOpt = None,
    digest: DigestOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Pick the N frames of a station's store most worth a human label, and write them as Label Studio tasks.

    Only frames whose image the station kept can be picked. Worth, best first: the operator's feedback contradicts the decision; the challenger in shadow decided otherwise; the frame lies in a drift alarm (needs --bundle); the score is near the threshold; then ordinary frames, for coverage.

    The picks are kept diverse (far apart in image signals, score and recipe) and no reason or recipe takes more than --max-share of them. Each task is pre-annotated with the model's decision from the store; no model is run.

    Then label in Label Studio, `lineguard label import` and `lineguard data ingest` (the commands are printed at the end; docs/monitoring.md, "Picking frames to label").

    Example:  lineguard monitor select --store edge.db --for-labelling 200 --bundle bundle/ --out to-label/
    """
    from rich.table import Table

    from lineguard.labelstudio import write_selection
    from lineguard.monitor.report import parse_time
    from lineguard.monitor.select import REASONS, select_for_labelling

    cfg = resolve_config(config, set_)
    loaded = _load_trusted(bundle, cfg, trust_key, digest, check_model=False) if bundle is not None else None
    selection = select_for_labelling(store, for_labelling, bundle=loaded, since=parse_time(since, "since"),
                                     until=parse_time(until, "until"), low_confidence_band=low_confidence_band,
                                     seed=seed, max_share=max_share)
    files = write_selection(selection, out, overwrite=overwrite, local_files_root=local_files_root,
                            label_synonyms=cfg.ingest.label_synonyms, positive_class=cfg.ingest.positive_class,
                            defect_types=cfg.ingest.defect_types)
    for note in [*selection.notes, *files.notes]:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    per_reason, per_recipe = selection.per_reason(), selection.per_recipe()
    table = Table(title=f"{len(selection.picks)} of {selection.candidates:,} frames with an image "
                        f"({selection.decisions:,} decisions)")
    table.add_column("reason (best of the frame)")
    table.add_column("picked", justify="right")
    table.add_column("candidates", justify="right")
    for reason in REASONS:
        if reason in selection.available:
            table.add_row(reason.replace("_", " "), str(per_reason.get(reason, 0)), str(selection.available[reason]))
    console.print(table)
    recipes = Table(title="picks per recipe")
    recipes.add_column("recipe")
    recipes.add_column("picked", justify="right")
    for name, count in per_recipe.items():
        recipes.add_row(escape(name or "(none)"), str(count))
    console.print(recipes)
    images = Path(files.images_dir)
    console.print(
        f"Wrote {files.tasks} tasks to {escape(files.tasks_path)}, the labelling config to "
        f"{escape(files.config_path)} and the picks to {escape(files.csv_path)}.\n\nNext:\n"
        f"  1. Label in Label Studio: start it with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and "
        f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={escape(local_files_root or str(images))}, paste "
        "labelling-config.xml into a new project, add a local-files storage for that folder, import tasks.json, "
        "label, and export the project as JSON (docs/labelling.md).\n"
        f"  2. lineguard label import export.json --root {escape(str(images))} --out {escape(str(out / 'labels.csv'))}\n"
        f"  3. lineguard data ingest {escape(str(out / 'labels.csv'))} --root {escape(str(images))} --out data/NEW "
        "--merge-with data/PREVIOUS",
        highlight=False,
    )


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes data, runs and bundles.")] = Path("lineguard-work"),
    quick: Annotated[bool, typer.Option(help="A tiny config (2 recipes, 64 px, 8 epochs) that runs in about a minute.")] = False,
    compress: Annotated[bool, typer.Option(help="Also build and compare compressed candidates.")] = True,
    force: Annotated[list[str] | None, typer.Option(help="Rerun this step (and what uses its output).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Run the whole lifecycle on the toy ice-cream dataset, end to end; a second run reuses the cache.

    synth (badly stored photos) -> the pipeline (ingest ... release) -> the edge check -> where to look.
    The same as `lineguard pipeline run` on the toy cones, and as `lineguard.pipeline.run(load_config())`.
    """
    from lineguard.pipeline import demo_config, run

    overrides = [*(set_ or []), *([] if compress else ["pipeline.compress=false"])]
    cfg = demo_config(config, overrides, quick=quick, workdir=workdir)
    t0 = time.perf_counter()
    result = run(cfg, force=force or [], say=lambda m: console.print(f"[bold cyan]{escape(m)}[/]"))
    _print_where(result)
    console.print(f"demo: {time.perf_counter() - t0:.0f} s wall")


def _print_where(result: PipelineResult) -> None:
    """The summary: what each step made (or reused) and where to look."""
    from rich.table import Table

    table = Table(title="LineGuard pipeline: what the lifecycle produced")
    table.add_column("step")
    table.add_column("output")
    table.add_column("seconds", justify="right")
    for name, output in result.outputs.items():
        secs = "cached" if name in result.cached else f"{result.seconds.get(name, 0):.1f}"
        table.add_row(name, escape(output if name != "gate" else _verdict_text(result.verdict)), secs)
    console.print(table)
    bench = result.edge.get("bench") or {}
    if bench:
        console.print(f"edge: model only {_fmt_metrics(bench.get('model') or {})}; "
                      f"with preprocessing {_fmt_metrics(bench.get('end_to_end') or {})}", highlight=False)
    line = result.line or {}
    if line:
        console.print(f"simulated line: {line['decided']} frames of {escape(line['video'])} decided, "
                      f"{line['rejects']} rejected, {line['dropped']} dropped; accuracy on centred cones "
                      f"{line['accuracy_clean']} before the {line['drift']} drift, {line['accuracy_drift']} after; "
                      f"drift alarms: {line['alarms']}",
                      highlight=False)
    uri = f"sqlite:///{result.workdir / 'mlflow.db'}"
    console.print(f"ran {len(result.ran)} step(s), reused {len(result.cached)}; everything is under {result.workdir}\n"
                  f"  runs:    mlflow ui --backend-store-uri {uri}   (parent run {result.parent_run_id})\n"
                  f"  report:  {result.outputs.get('evaluate', '-')}/report.html\n"
                  f"  release: {result.outputs.get('release', '-')}  (bundle.tar.gz, release.json, report.md)"
                  + (f"\n  line:    {line['store']}  (the edge store of the simulated line)\n"
                     f"  monitor: {line['monitoring_report']}\n"
                     f"  dashboard: lineguard serve --config {line['station']}   -> http://127.0.0.1:8080/"
                     if line else ""),
                  highlight=False, soft_wrap=True)  # whole lines: the command and paths are copied from here


def _verdict_text(verdict: dict[str, object]) -> str:
    reasons = verdict.get("reasons")
    head = "passed" if verdict.get("passed") else "FAILED"
    return f"{head} (version {verdict.get('version')}, champion before: {verdict.get('champion')}); " + "; ".join(
        str(r) for r in (reasons if isinstance(reasons, list) else [])[:3])


# --- edge: the runtime on the line (RUNTIME helper, issue 12) -------------------------------------------

edge_app = typer.Typer(
    help=("The edge runtime: run a station -- frames from a camera, stream, video or folder are decided by a "
          "bundle, written to the local store, and sent to the line (MQTT, webhook, PLC) through an outbox."),
    no_args_is_help=True,
)
app.add_typer(edge_app, name="edge")


@edge_app.command("run")
def edge_run(
    bundle: Annotated[Path | None, typer.Option(
        "--bundle", "-b", help="The bundle that decides (made by: lineguard export); or 'bundle:' in station.yaml.",
        show_default=False)] = None,
    source: Annotated[str | None, typer.Option(
        "--source", help=("Where frames come from: a video file, an image folder, a camera index (0, 1, ...), an "
                          "rtsp:// or http:// MJPEG URL, or 'push' (frames posted to the API)."),
        show_default=False)] = None,
    sink: Annotated[list[str] | None, typer.Option(
        "--sink", help=("Also send each decision to: '-' (JSON lines on stdout), jsonl:FILE, http(s)://URL "
                        "(webhook), mqtt://HOST[:PORT], modbus://HOST[:PORT]. Repeatable."),
        show_default=False)] = None,
    station_config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="station.yaml: every setting of the station (see docs/runtime.md).",
        show_default=False)] = None,
    store: Annotated[Path | None, typer.Option(
        "--store", help="The local store (SQLite) every decision is written to first (default: lineguard-store.db).",
        show_default=False)] = None,
    station: Annotated[str | None, typer.Option(
        "--station", help="This station's name (letters, digits, . _ -): in records, topics and keys.",
        show_default=False)] = None,
    recipe: Annotated[str | None, typer.Option(
        "--recipe", "-r", help="The recipe on the line now (selects its threshold; can change while running).",
        show_default=False)] = None,
    mode: Annotated[str | None, typer.Option(
        "--mode", help="free: decide every frame; triggered: one frame per trigger (API, MQTT, PLC).",
        show_default=False)] = None,
    max_frames: Annotated[int | None, typer.Option(
        "--max-frames", help="Stop after this many frames.", show_default=False)] = None,
    watch: Annotated[bool, typer.Option(
        "--watch", help="Folder source: keep waiting for new images instead of stopping when all are done.")] = False,
    loop: Annotated[bool, typer.Option("--loop", help="Video source: start again at the end.")] = False,
    realtime: Annotated[bool, typer.Option(
        "--realtime", help="Video source: read at the video's frame rate, as a camera would deliver it.")] = False,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="ONNX Runtime threads (default: 1).", show_default=False)] = None,
    trust_key: TrustKeyOpt = None,
    digest: DigestOpt = None,
) -> None:
    """Run one station until the source ends (a video or folder) or SIGTERM / Ctrl-C.

    Every decision is written to the local store first, then delivered to each sink through the store's outbox (nothing decided is lost while a sink is down). SIGTERM or Ctrl-C stops taking frames, records the frames already taken and exits 0. Several stations on one computer are several processes, each with its own --store.

    Example:  lineguard edge run --bundle bundle/ --source line.avi --sink - --recipe vanilla
    """
    import json
    import signal

    from lineguard.edge.sinks import parse_sink
    from lineguard.edge.station import load_station_config, open_station

    extra = []
    for text in sink or []:
        spec = parse_sink(text)
        extra.append({"kind": spec.kind, **spec.options})
    overrides = {"station": station, "recipe": recipe, "mode": mode, "max_frames": max_frames, "threads": threads,
                 "source.input": source, "store.path": str(store) if store is not None else None,
                 "source.watch": True if watch else None, "source.loop": True if loop else None,
                 "source.realtime": True if realtime else None}
    cfg = load_station_config(station_config, overrides, extra)
    bundle_path = bundle or (Path(cfg.bundle) if cfg.bundle else None)
    if bundle_path is None:
        raise LineguardError("no bundle: pass --bundle or set 'bundle:' in station.yaml")
    if Path("lineguard.yaml").is_file():  # its trust and limits sections apply, as for `lineguard predict`
        trusted = _load_trusted(bundle_path, resolve_config(None, None), trust_key, digest)
    else:  # the defaults, without importing the config module (a quick start: TARGETS P5)
        from lineguard.edge import load_bundle
        from lineguard.edge.signing import trust_from

        trusted = load_bundle(bundle_path, trust=trust_from(list(trust_key or []), digest))
    opened = open_station(cfg, trusted)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: opened.runtime.request_stop())
    err_console.print(f"station {escape(cfg.station)}: {escape(str(bundle_path))} on {escape(str(cfg.source.input))}"
                      f" -> {escape(cfg.store.path)}" + (f" + {', '.join(s.sink_name for s in cfg.sinks)}"
                                                        if cfg.sinks else ""), highlight=False)
    summary = opened.run()
    err_console.print(json.dumps(summary.to_dict()), highlight=False, markup=False, soft_wrap=True)
    if summary.ended == "error":
        raise typer.Exit(1)


def _fmt_metrics(metrics: dict[str, object]) -> str:
    keys = ("balanced_accuracy", "ece", "false_reject_rate", "escape_rate", "median_ms", "p99_ms")
    parts = []
    for key in keys:
        value = metrics.get(key)
        if isinstance(value, dict):
            value = value.get("value", value.get("point"))
        if isinstance(value, int | float):
            parts.append(f"{key}={value:.4g}")
    return ", ".join(parts) or "-"


def main() -> None:
    """Entry point: user errors are one red line and exit code 2; bugs keep their traceback."""
    try:
        app()
    except LineguardError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
