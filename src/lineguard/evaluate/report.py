"""The evaluation report: Markdown with PNG figures beside it, and one self-contained HTML page.

Figures: confusion matrix, ROC and PR curves (overall and per recipe), reliability
diagram before/after calibration, score histograms per class with the thresholds, and
a gallery of the worst errors (or, with none, the closest calls). The HTML embeds every
figure as base64 so the single file can be mailed or attached to a ticket.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lineguard.escaping import code_span, escape_html, escape_markdown
from lineguard.evaluate import metrics as m

if TYPE_CHECKING:
    from lineguard.evaluate.evaluation import EvaluationResult
    from lineguard.manifest import Dataset


def new_figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6, 4), squeeze: bool = True) -> Any:
    """``(figure, axes)`` like ``pyplot.subplots``, but a bare :class:`matplotlib.figure.Figure`.

    Reports never touch pyplot: no global backend switch (which would kill a notebook's
    inline plots), no figure registry to leak into, safe from any thread.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def figure_png(fig: Any) -> bytes:
    """The figure as PNG bytes (rendered by Agg through the figure's own canvas)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def figure_confusion(result: EvaluationResult) -> bytes:
    cm = np.asarray(result.metrics["overall"]["confusion"])
    fig, ax = new_figure(figsize=(3.6, 3.2))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="black" if v < cm.max() / 2 else "white")
    ax.set_xticks([0, 1], ["pass (good)", "reject (bad)"])
    ax.set_yticks([0, 1], ["good", "bad"])
    ax.set_xlabel("decision")
    ax.set_ylabel("truth")
    ax.set_title("Confusion matrix (test)")
    return figure_png(fig)


def figure_curves(result: EvaluationResult) -> bytes:
    assert result.test is not None
    y, s = result.test.labels, result.test_scores()
    fig, (ax1, ax2) = new_figure(1, 2, figsize=(9, 3.8))
    slices: list[tuple[str, np.ndarray]] = [("all", np.ones_like(y, dtype=bool))]
    slices += [(r, result.test.recipes == r) for r in sorted(set(result.test.recipes.tolist()))]
    for name, mask in slices:
        fpr, tpr, _ = m.roc_curve(y[mask], s[mask])
        prec, rec, _ = m.pr_curve(y[mask], s[mask])
        lw = 2.2 if name == "all" else 1.0
        if fpr.size:
            ax1.plot(fpr, tpr, lw=lw, label=f"{name} (AUC {m.roc_auc(y[mask], s[mask]):.3f})")
        if prec.size:
            ax2.step(rec, prec, lw=lw, where="post", label=f"{name} (AP {m.pr_auc(y[mask], s[mask]):.3f})")
    ax1.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax1.set(xlabel="false-reject rate (good rejected)", ylabel="detection rate (bad rejected)", title="ROC")
    ax2.set(xlabel="recall (bad)", ylabel="precision (bad)", title="Precision-recall", ylim=(0, 1.02))
    for ax in (ax1, ax2):
        ax.legend(fontsize=7, loc="lower right" if ax is ax1 else "lower left")
        ax.grid(alpha=0.3)
    return figure_png(fig)


def figure_reliability(result: EvaluationResult) -> bytes:
    fig, ax = new_figure(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="perfect")
    for key, label in (("before", f"before (ECE {result.metrics['uncalibrated']['ece'] or 0:.3f})"),
                       ("after", f"after T={result.decision.temperature:.2f} (ECE {result.ece or 0:.3f})")):
        rel = result.metrics["reliability"][key]
        x = np.asarray(rel["mean_score"], dtype=float)
        yv = np.asarray(rel["fraction_bad"], dtype=float)
        ok = np.asarray(rel["count"]) > 0
        ax.plot(x[ok], yv[ok], "o-", label=label)
    ax.set(xlabel="mean predicted p(bad)", ylabel="observed fraction bad", title="Reliability (test)",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return figure_png(fig)


def figure_histogram(result: EvaluationResult) -> bytes:
    assert result.test is not None
    s, y = result.test_scores(), result.test.labels
    fig, ax = new_figure(figsize=(6, 3.2))
    bins = np.linspace(0, 1, 41)
    ax.hist(s[y == 0], bins=bins, alpha=0.6, label="good", color="tab:green")
    ax.hist(s[y == 1], bins=bins, alpha=0.6, label="bad", color="tab:red")
    ax.axvline(result.decision.default_threshold, color="k", ls="--", lw=1, label="threshold (default)")
    for t in result.decision.per_recipe.values():
        ax.axvline(t, color="k", ls=":", lw=0.6)
    ax.set_yscale("log")
    ax.set(xlabel="calibrated p(bad)", ylabel="images", title="Scores per class (test)")
    ax.legend(fontsize=8)
    return figure_png(fig)


def worst_items(result: EvaluationResult, k: int) -> np.ndarray:
    """Indices of the worst test items: errors by confidence, then the closest calls."""
    assert result.test is not None
    s, t, y = result.test_scores(), result.test_thresholds(), result.test.labels
    wrong = m.decisions(s, t) != y
    distance = np.abs(s - t)
    order = np.lexsort((-distance, ~wrong)) if wrong.any() else np.argsort(distance)
    return order[:k]


def figure_gallery(result: EvaluationResult, images: Sequence[np.ndarray], indices: np.ndarray) -> bytes | None:
    if not len(indices):
        return None
    assert result.test is not None
    cols = min(6, len(indices))
    rows = (len(indices) + cols - 1) // cols
    fig, axes = new_figure(rows, cols, figsize=(1.9 * cols, 2.2 * rows), squeeze=False)
    s, t = result.test_scores(), result.test_thresholds()
    for ax in axes.flat:
        ax.axis("off")
    for ax, i, img in zip(axes.flat, indices, images, strict=False):
        truth = "bad" if result.test.labels[i] else "good"
        wrong = (s[i] >= t[i]) != bool(result.test.labels[i])
        ax.imshow(img)
        ax.set_title(f"{'WRONG ' if wrong else ''}{truth} p={s[i]:.2f}\n{result.test.recipes[i]}", fontsize=7,
                     color="red" if wrong else "black")
    return figure_png(fig)


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{100 * v:.2f} %" if pct else f"{v:.4f}"
    return str(v)


def _ci(d: dict[str, Any], key: str) -> str:
    ci = d.get("ci", {}).get(key)
    if not ci or ci[0] is None:
        return ""
    return f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def tables(result: EvaluationResult) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for every table of the report."""
    o = result.metrics["overall"]
    overall_rows = [
        [name, _fmt(o.get(key), pct) + (_ci(o, key) if pct else "")]
        for name, key, pct in (
            ("images", "n", False), ("balanced accuracy", "balanced_accuracy", True), ("accuracy", "accuracy", True),
            ("false-reject rate (good rejected)", "false_reject_rate", True),
            ("escape rate (defect passed)", "escape_rate", True), ("expected cost per image", "expected_cost", False),
            ("precision (bad)", "precision_bad", True), ("recall (bad)", "recall_bad", True),
            ("F1 (bad)", "f1_bad", True), ("precision (good)", "precision_good", True),
            ("recall (good)", "recall_good", True), ("ROC-AUC", "roc_auc", False), ("PR-AUC", "pr_auc", False),
            ("ECE after calibration", "ece", False),
        )
    ]
    overall_rows.append(["ECE before calibration", _fmt(result.metrics["uncalibrated"].get("ece"))])
    overall_rows.append(["temperature", f"{result.decision.temperature:.3f}"])
    recipe_rows = [
        [r, str(int(s.get("n") or 0)), _fmt(s.get("balanced_accuracy"), True) + _ci(s, "balanced_accuracy"),
         _fmt(s.get("false_reject_rate"), True), _fmt(s.get("escape_rate"), True), _fmt(s.get("roc_auc")),
         _fmt(s.get("ece")), f"{result.decision.threshold_for(r):.3f}"
         + ("" if r in result.decision.per_recipe else " (default)")]
        for r, s in result.metrics["per_recipe"].items()
    ]
    defect_rows = [
        [k, str(v["n"]), _fmt(v.get("detection_rate"), True)
         + (f" [{100 * v['ci'][0]:.1f}, {100 * v['ci'][1]:.1f}]" if v.get("ci") else "")]
        for k, v in result.metrics["per_defect"].items()
    ]
    out = [
        ("Overall (test, 95 % bootstrap CI)", ["metric", "value"], overall_rows),
        ("Per recipe", ["recipe", "images", "balanced accuracy", "false rejects", "escapes", "ROC-AUC", "ECE",
                        "threshold"], recipe_rows),
        ("Per defect type", ["defect", "images", "detection rate"], defect_rows),
    ]
    if result.refit is not None:
        out.append(("Shipped vs re-fitted on this val split (test)", ["slice", "threshold shipped / re-fitted",
                    "balanced accuracy shipped / re-fitted", "expected cost shipped / re-fitted"],
                    _refit_rows(result)))
    b = result.behaviour
    if b:
        inv = [[k, f"{100 * v['flip_rate']:.2f} % ({v['flipped']}/{v['n']})", "ok" if v["passed"] else "FAIL"]
               for k, v in b.get("invariance", {}).items()]
        out.append((f"Invariance (decisions flipped; limit {100 * b['max_flip_rate']:.0f} %)",
                    ["change", "flipped", "check"], inv))
        mf = [[k, _fmt(v["balanced_accuracy"], True), _fmt(v["limit"], True), "ok" if v["passed"] else "FAIL"]
              for k, v in b.get("minimum_function", {}).items()]
        out.append(("Minimum function per recipe", ["recipe", "balanced accuracy", "floor", "check"], mf))
    return out


def _refit_rows(result: EvaluationResult) -> list[list[str]]:
    """Side by side: the shipped Decision (every headline metric) and the one fitted on this val split."""
    from lineguard.edge.decision import Decision

    assert result.refit is not None
    fitted = Decision.from_dict(result.refit["decision"])
    shipped = result.decision
    slices = [("overall", None, result.metrics["overall"], result.refit["overall"])]
    slices += [(r, r, s, result.refit["per_recipe"].get(r, {})) for r, s in result.metrics["per_recipe"].items()]
    return [
        [name, f"{shipped.threshold_for(recipe):.3f} / {fitted.threshold_for(recipe):.3f}",
         f"{_fmt(a.get('balanced_accuracy'), True)} / {_fmt(b.get('balanced_accuracy'), True)}",
         f"{_fmt(a.get('expected_cost'))} / {_fmt(b.get('expected_cost'))}"]
        for name, recipe, a, b in slices
    ]


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; every cell is escaped (recipe names come from the data)."""
    lines = ["| " + " | ".join(escape_markdown(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(escape_markdown(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape_html(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape_html(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:14px}
th{background:#f3f3f3}.warn{background:#fff4d6;border-left:4px solid #e0a800;padding:.5em 1em}
img{max-width:100%}h1{font-size:1.6em}"""


def write_report(result: EvaluationResult, dataset: Dataset, out_dir: Path, title: str = "", gallery: int = 12) -> Path:
    """Write report.md (+ PNGs), report.html and evaluation.json into ``out_dir``; returns the HTML path."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, bytes] = {
        "confusion.png": figure_confusion(result),
        "curves.png": figure_curves(result),
        "reliability.png": figure_reliability(result),
        "scores.png": figure_histogram(result),
    }
    if gallery > 0 and result.test is not None:
        idx = worst_items(result, gallery)
        imgs = [dataset.read_image(p) for p in result.test.paths[idx]]
        g = figure_gallery(result, imgs, idx)
        if g is not None:
            figures["worst.png"] = g
    captions = {"confusion.png": "Confusion matrix", "curves.png": "ROC and precision-recall curves",
                "reliability.png": "Reliability diagram before and after temperature scaling",
                "scores.png": "Score histograms per class", "worst.png": "Worst errors (or closest calls)"}
    name = title or result.source
    decision_text = (f"Decision: reject when calibrated p(bad) >= threshold; default threshold "
                     f"{result.decision.default_threshold:.3f}, cost false reject = {result.cost.false_reject}, "
                     f"missed defect = {result.cost.missed_defect}.")
    intro = [
        f"Model: **{escape_markdown(name)}**; dataset version {code_span(result.dataset_version)}; thresholds and "
        "temperature " + ("shipped by the bundle (used unchanged)" if result.decision_source == "bundle"
                          else "fitted on val") + ", every number below measured on test.",
        escape_markdown(decision_text),
    ]
    md = [f"# Evaluation: {escape_markdown(name)}", "", *intro, ""]
    hp = [f"<h1>Evaluation: {escape_html(name)}</h1>",
          f"<p>Model: <b>{escape_html(name)}</b>; dataset version <code>{escape_html(result.dataset_version)}</code>; "
          f"thresholds and temperature "
          f"{'shipped by the bundle (used unchanged)' if result.decision_source == 'bundle' else 'fitted on val'}, "
          f"every number below measured on test.</p>",
          f"<p>{escape_html(decision_text)}</p>"]
    warn = result.warnings + [f"note: {n}" for n in result.notes]
    if warn:
        md += ["## Warnings", "", *[f"- {escape_markdown(w)}" for w in warn], ""]
        hp.append('<div class="warn"><b>Warnings</b><ul>' + "".join(f"<li>{escape_html(w)}</li>" for w in warn)
                  + "</ul></div>")
    for ttl, header, rows in tables(result):
        md += [f"## {escape_markdown(ttl)}", "", _md_table(header, rows) if rows else "_none_", ""]
        hp += [f"<h2>{escape_html(ttl)}</h2>", _html_table(header, rows) if rows else "<p>none</p>"]
    md += ["## Figures", ""]
    hp.append("<h2>Figures</h2>")
    for fname, data in figures.items():
        _atomic_write(out_dir / fname, data)
        md += [f"![{captions[fname]}]({fname})", ""]
        b64 = base64.b64encode(data).decode("ascii")
        hp.append(f"<h3>{captions[fname]}</h3><img alt='{captions[fname]}' src='data:image/png;base64,{b64}'>")
    _atomic_write(out_dir / "report.md", "\n".join(md).encode("utf-8"))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape_html(name)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(hp)}</body></html>")
    _atomic_write(out_dir / "report.html", page.encode("utf-8"))
    _atomic_write(out_dir / "evaluation.json",
                  json.dumps(result.to_dict(), indent=2, sort_keys=True, default=str).encode("utf-8"))
    return out_dir / "report.html"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
