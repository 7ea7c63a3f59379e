"""The ingest report: counts, rejected files, conflicts, duplicates; saved as report.json / report.md."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class IngestReport:
    """What ingest did, file by file where it matters. Saved as report.json / report.md."""

    source: str
    out: str
    version: str = ""
    files_seen: int = 0
    images: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> "recipe/label" -> n
    rejected: list[dict[str, str]] = field(default_factory=list)  # source_path, reason, detail
    conflicts: list[dict[str, Any]] = field(default_factory=list)  # source_path, field, values
    unlabelled: list[str] = field(default_factory=list)
    duplicates_exact: list[dict[str, Any]] = field(default_factory=list)  # kept, copies
    near_duplicate_groups: list[list[str]] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)  # source paths left out of test to balance it
    skipped_hidden: int = 0
    warnings: list[str] = field(default_factory=list)
    layout: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        lines = [
            "# Ingest report",
            "",
            f"- source: `{self.source}`",
            f"- dataset: `{self.out}` version `{self.version}`",
            f"- files seen: {self.files_seen}; images in the dataset: {self.images}; layout: {self.layout}",
            f"- rejected: {len(self.rejected)}; conflicts held out: {len(self.conflicts)}; "
            f"unlabelled: {len(self.unlabelled)}; hidden files skipped: {self.skipped_hidden}",
            f"- exact duplicates removed: {sum(len(d['copies']) for d in self.duplicates_exact)}; "
            f"near-duplicate groups: {len(self.near_duplicate_groups)}; left out of test to balance it: "
            f"{len(self.unused)}",
            "",
            "## Images per recipe, class and split",
            "",
            "| recipe | class | train | val | test | unused |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        cells = sorted({c for split in self.counts.values() for c in split})
        for cell in cells:
            recipe, label = cell.rsplit("/", 1)
            n = [self.counts.get(s, {}).get(cell, 0) for s in ("train", "val", "test", "unused")]
            lines.append(f"| {recipe} | {label} | " + " | ".join(str(v) for v in n) + " |")
        for title, items in (
            ("Warnings", [f"- {w}" for w in self.warnings]),
            ("Rejected files", [f"- `{r['source_path']}`: {r['reason']} {r['detail']}".rstrip() for r in self.rejected]),
            ("Conflicts (held out)", [f"- `{c['source_path']}`: {c['field']} {c['values']}" for c in self.conflicts]),
            ("Unlabelled (held out)", [f"- `{p}`" for p in self.unlabelled]),
            ("Exact duplicates", [f"- `{d['kept']}` kept; copies: {', '.join(d['copies'])}" for d in self.duplicates_exact]),
            ("Near-duplicate groups", [f"- {', '.join(f'`{p}`' for p in g)}" for g in self.near_duplicate_groups]),
        ):
            if items:
                lines += ["", f"## {title}", "", *items]
        return "\n".join(lines) + "\n"


def print_report(report: IngestReport, console: Any) -> None:
    """The ingest report as rich tables (what ``lineguard data ingest`` shows)."""
    from rich.table import Table

    table = Table(title=f"Dataset {report.version} ({report.images} images)")
    for col in ("recipe", "class", "train", "val", "test", "unused"):
        table.add_column(col, justify="right" if col not in ("recipe", "class") else "left")
    for cell in sorted({c for split in report.counts.values() for c in split}):
        recipe, label = cell.rsplit("/", 1)
        table.add_row(recipe, label, *(str(report.counts.get(s, {}).get(cell, 0)) for s in ("train", "val", "test", "unused")))
    console.print(table)
    summary = Table(title="Files", show_header=False)
    reasons = Counter(r["reason"] for r in report.rejected)
    summary.add_row("seen", str(report.files_seen))
    summary.add_row("rejected", ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) or "0")
    summary.add_row("conflicts (held out)", str(len(report.conflicts)))
    summary.add_row("unlabelled (held out)", str(len(report.unlabelled)))
    summary.add_row("exact duplicates removed", str(sum(len(d["copies"]) for d in report.duplicates_exact)))
    summary.add_row("near-duplicate groups", str(len(report.near_duplicate_groups)))
    summary.add_row("left out of test (balance)", str(len(report.unused)))
    summary.add_row("hidden files skipped", str(report.skipped_hidden))
    console.print(summary)
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)


