"""The labelling rules: folder and file-name tokens, CSV cells, recipes, conflicts, safe paths.

Pure functions over path strings and table rows (no I/O), so every rule is unit-tested.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lineguard.config import IngestConfig
from lineguard.labels import SynonymMatcher, normalise_name
from lineguard.labels import tokens as _tokens

__all__ = ["LabelRules", "LabelVotes", "normalise_name", "path_votes", "recipe_from_filename", "resolve", "safe_relpath"]


def _stem(filename: str) -> str:
    base = filename.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base


class LabelRules:
    """The explicit labelling rules of one :class:`IngestConfig` (pure; no I/O)."""

    def __init__(self, config: IngestConfig) -> None:
        self.config = config
        # Longest synonym first, so "not ok" is 'bad' and never the 'ok' inside it (lineguard.labels).
        self._matcher = SynonymMatcher(config.label_synonyms)
        self._defects = sorted({normalise_name(d) for d in config.defect_types if normalise_name(d)}, key=lambda d: -len(d))

    def classes_in(self, name: str) -> set[str]:
        """Every class whose synonym appears as whole tokens in ``name``."""
        return self._matcher.classes_in(name)

    def csv_label(self, cell: str) -> str | None:
        """A CSV label cell: a synonym maps to its class, any other non-empty value is used as a class."""
        if not cell.strip():
            return None
        found = self.classes_in(cell)
        if len(found) == 1 and len(_tokens(cell)) <= 3:
            return found.pop()
        return normalise_name(cell) or None

    def defect_in(self, names: list[str]) -> str:
        for name in names:
            joined = "_" + "_".join(_tokens(name)) + "_"
            for defect in self._defects:
                if f"_{defect}_" in joined:
                    return defect
        return ""


@dataclass
class LabelVotes:
    """Label/recipe/defect candidates of one file, by source."""

    label: dict[str, set[str]] = field(default_factory=dict)  # source -> values
    recipe: dict[str, set[str]] = field(default_factory=dict)
    defect: str = ""


def path_votes(source_path: str, rules: LabelRules, class_folders: bool) -> LabelVotes:
    """Label and recipe candidates from a file's folder names and file name."""
    parts = source_path.split("/")
    folders, filename = parts[:-1], parts[-1]
    votes = LabelVotes()
    folder_labels: set[str] = set()
    for i, folder in enumerate(folders):
        found = rules.classes_in(folder)
        if class_folders and i == 0 and not found:
            found = {normalise_name(folder)} if normalise_name(folder) else set()
        folder_labels |= found
    if folder_labels:
        votes.label["folder"] = folder_labels
    # In a class-per-folder tree the user's folder is the label; a file name such as "Non defective 01.jpg"
    # or "scratch_ok_03.png" says nothing more and must not out-vote it.
    file_labels = set() if class_folders and folders else rules.classes_in(_stem(filename))
    if file_labels:
        votes.label["filename"] = file_labels
    if folders and not class_folders and not rules.classes_in(folders[0]) and normalise_name(folders[0]):
        votes.recipe["top_folder"] = {normalise_name(folders[0])}
    votes.defect = rules.defect_in([_stem(filename), *reversed(folders)])
    return votes


def safe_relpath(raw: str) -> str | None:
    """A relative POSIX path that stays inside its root, or None (absolute, drive, URL, '..', empty)."""
    p = raw.strip().replace("\\", "/")
    if not p or "://" in p or p.startswith("/") or re.match(r"^[A-Za-z]:", p) or "\x00" in p:
        return None
    parts = [s for s in p.split("/") if s not in ("", ".")]
    if not parts or any(s == ".." for s in parts):
        return None
    return "/".join(parts)


def resolve(
    path: str, votes: LabelVotes, table_rows: list[dict[str, str]], rules: LabelRules, config: IngestConfig
) -> tuple[str | None, str | None, str, str, dict[str, Any] | None]:
    """(label, recipe, defect, label_source, conflict) for one file from all its sources."""
    label_votes = {k: set(v) for k, v in votes.label.items()}
    recipe_votes = {k: set(v) for k, v in votes.recipe.items()}
    defect = votes.defect
    for row in table_rows:
        lab = rules.csv_label(row.get("label", ""))
        if lab:
            label_votes.setdefault("csv", set()).add(lab)
        rec = normalise_name(row.get("recipe", ""))
        if rec:
            recipe_votes.setdefault("csv", set()).add(rec)
        if row.get("defect_type", "").strip():
            defect = normalise_name(row["defect_type"])
    labels = set().union(*label_votes.values()) if label_votes else set()
    if len(labels) > 1:
        return None, None, "", "", {"source_path": path, "field": "label",
                                    "values": {k: sorted(v) for k, v in sorted(label_votes.items())}}
    recipe_sources = [s for s in ("labelstudio", *config.recipe_from) if s in recipe_votes]
    checked = {s: recipe_votes[s] for s in recipe_sources}
    recipes = set().union(*checked.values()) if checked else set()
    if len(recipes) > 1:
        return None, None, "", "", {"source_path": path, "field": "recipe",
                                    "values": {k: sorted(v) for k, v in sorted(checked.items())}}
    if not labels:
        return None, (recipes.pop() if recipes else None), defect, "", None
    label = labels.pop()
    source = next(s for s in ("labelstudio", "csv", "folder", "filename") if s in label_votes)
    return label, (recipes.pop() if recipes else None), defect, source, None


def recipe_from_filename(path: str, known: list[str]) -> str | None:
    toks = "_" + "_".join(_tokens(_stem(path))) + "_"
    hits = [r for r in known if f"_{r}_" in toks]
    if not hits:
        return None
    best = max(len(r) for r in hits)
    longest = [r for r in hits if len(r) == best]
    return longest[0] if len(longest) == 1 else None


