"""The ingest report: counts, rejected files, conflicts, duplicates; saved as report.json / report.md."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from lineguard.escaping import code_span, escape_markdown, terminal_text


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
    split_source: str = ""  # seed (LineGuard split it), folders or csv (the source's own split, kept)
    split_leaks: list[dict[str, Any]] = field(default_factory=list)  # the source's split, checked
    # Merging with a previous version (empty otherwise): previous, previous_version, from_previous,
    # new_items, relabelled, already_present, near_duplicates_of_previous, per_split.
    merge: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        """The report as Markdown; every name that came from the source is escaped."""
        c, e = code_span, escape_markdown
        lines = [
            "# Ingest report",
            "",
            f"- source: {c(self.source)}",
            f"- dataset: {c(self.out)} version {c(self.version)}",
            f"- files seen: {self.files_seen}; images in the dataset: {self.images}; layout: {e(self.layout)}; "
            f"split: {e(self.split_source or 'seed')}",
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
            lines.append(f"| {e(recipe)} | {e(label)} | " + " | ".join(str(v) for v in n) + " |")
        lines += self._merge_markdown()
        leaks = []
        for leak in self.split_leaks:
            files = leak.get("files") or leak.get("moved_to_unused") or []
            leaks.append(f"- {c(leak['kind'])}: kept in {c(leak['kept_in'])}; " + ", ".join(c(f) for f in files))
        for title, items in (
            ("Warnings", [f"- {e(w)}" for w in self.warnings]),
            ("Rejected files", [f"- {c(r['source_path'])}: {c(r['reason'])} {e(r['detail'])}".rstrip()
                                for r in self.rejected]),
            ("Conflicts (held out)", [f"- {c(x['source_path'])}: {c(x['field'])} {e(x['values'])}"
                                      for x in self.conflicts]),
            ("Unlabelled (held out)", [f"- {c(p)}" for p in self.unlabelled]),
            ("Exact duplicates", [f"- {c(d['kept'])} kept; copies: {', '.join(c(x) for x in d['copies'])}"
                                  for d in self.duplicates_exact]),
            ("Near-duplicate groups", [f"- {', '.join(c(p) for p in g)}" for g in self.near_duplicate_groups]),
            ("Split leaks", leaks),
        ):
            if items:
                lines += ["", f"## {title}", "", *items]
        return "\n".join(lines) + "\n"

    def _merge_markdown(self) -> list[str]:
        """The merge section: per split, from PREV / new / relabelled / duplicates of PREV; every relabel."""
        from lineguard.ingest.merge import summarise

        m = self.merge
        if not m:
            return []
        c, e = code_span, escape_markdown
        lines = [
            "", "## Merged with the previous version", "",
            f"- previous: {c(str(m.get('previous', '')))} version {c(str(m.get('previous_version', '')))}",
            f"- items from the previous version: {m.get('from_previous', 0)}; new items: {m.get('new_items', 0)}; "
            f"relabelled: {len(m.get('relabelled', []))}; already present: {len(m.get('already_present', []))}; "
            f"near duplicates of previous items: {len(m.get('near_duplicates_of_previous', []))}",
            "",
            "| split | from previous | new | relabelled | already present | near duplicates of previous |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        lines += [f"| {s} | " + " | ".join(str(v) for v in n) + " |" for s, n in summarise(m)]
        if m.get("relabelled"):
            lines += ["", "### Relabelled (the new label wins)", ""]
            for r in m["relabelled"]:
                old, new = r["old"], r["new"]
                changes = ", ".join(f"{k} {c(old[k])} -> {c(new[k])}" for k in ("label", "recipe", "defect_type")
                                    if old[k] != new[k])
                lines.append(f"- {c(r['previous_source_path'])} ({e(r['split'])}), from {c(r['source_path'])}: {changes}")
        if m.get("near_duplicates_of_previous"):
            lines += ["", "### Near duplicates of previous items (joined their split)", ""]
            lines += [f"- {c(d['source_path'])} -> {e(d['split'])}, near "
                      + ", ".join(c(p) for p in d["previous_source_paths"]) for d in m["near_duplicates_of_previous"]]
        return lines


def print_report(report: IngestReport, console: Any) -> None:
    """The ingest report as rich tables (what ``lineguard data ingest`` shows)."""
    from rich.table import Table

    t = terminal_text
    table = Table(title=f"Dataset {report.version} ({report.images} images)")
    for col in ("recipe", "class", "train", "val", "test", "unused"):
        table.add_column(col, justify="right" if col not in ("recipe", "class") else "left")
    for cell in sorted({c for split in report.counts.values() for c in split}):
        recipe, label = cell.rsplit("/", 1)
        table.add_row(t(recipe), t(label), *(str(report.counts.get(s, {}).get(cell, 0)) for s in ("train", "val", "test", "unused")))
    console.print(table)
    summary = Table(title="Files", show_header=False)
    reasons = Counter(r["reason"] for r in report.rejected)
    summary.add_row("seen", str(report.files_seen))
    summary.add_row("rejected", ", ".join(f"{t(k)}: {v}" for k, v in sorted(reasons.items())) or "0")
    summary.add_row("conflicts (held out)", str(len(report.conflicts)))
    summary.add_row("unlabelled (held out)", str(len(report.unlabelled)))
    summary.add_row("exact duplicates removed", str(sum(len(d["copies"]) for d in report.duplicates_exact)))
    summary.add_row("near-duplicate groups", str(len(report.near_duplicate_groups)))
    summary.add_row("left out of test (balance)", str(len(report.unused)))
    summary.add_row("hidden files skipped", str(report.skipped_hidden))
    summary.add_row("split", t(report.split_source or "seed") + (f"; {len(report.split_leaks)} leak(s) resolved"
                                                                  if report.split_leaks else ""))
    console.print(summary)
    if report.merge:
        from lineguard.ingest.merge import summarise

        merged = Table(title=f"Merged with {t(str(report.merge.get('previous', '')))} "
                             f"(version {t(str(report.merge.get('previous_version', '')))})")
        for col in ("split", "from previous", "new", "relabelled", "already present", "near dup. of previous"):
            merged.add_column(col, justify="left" if col == "split" else "right")
        for split, n in summarise(report.merge):
            merged.add_row(split, *(str(v) for v in n))
        console.print(merged)
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {t(w)}", highlight=False)


