"""The label vocabulary: how a messy name becomes an id, and which class a word means.

One rule, shared by everything that reads labels written by people -- folder and file
names and CSV cells (:mod:`lineguard.ingest`), Label Studio choices
(:mod:`lineguard.labelstudio`) -- so "OK parts", ``ok/`` and a Label Studio "OK" all
mean the same class. Pure functions over strings; only the standard library.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

_SPLIT = re.compile(r"[^0-9a-z]+")


def normalise_name(name: str) -> str:
    """Recipe/class id from a messy name: lower-case, runs of non-alphanumerics -> '_', trimmed."""
    return _SPLIT.sub("_", str(name).strip().lower()).strip("_")


def tokens(name: str) -> list[str]:
    """The lower-case alphanumeric words of ``name`` (``"Not_OK-2"`` -> ``["not", "ok", "2"]``)."""
    return [t for t in _SPLIT.split(str(name).lower()) if t]


class SynonymMatcher:
    """Which classes a name mentions, by whole-word synonyms, longest synonym first.

    ``synonyms`` maps a class to the words that mean it (the class name itself always
    does). Matching walks the name's words and takes the longest synonym at each
    position, so "not ok" is the class of "not ok" and never the "ok" inside it.
    """

    def __init__(self, synonyms: Mapping[str, Iterable[str]]) -> None:
        table: set[tuple[tuple[str, ...], str]] = set()
        for cls, words in synonyms.items():
            for word in {cls, *words}:
                toks = tuple(tokens(word))
                if toks:
                    table.add((toks, cls))
        self._synonyms = sorted(table, key=lambda t: (-len(t[0]), t))
        self._cache: dict[str, frozenset[str]] = {}

    def classes_in(self, name: str) -> set[str]:
        """Every class whose synonym appears as whole words in ``name``."""
        cached = self._cache.get(name)
        if cached is None:
            cached = self._cache[name] = frozenset(self._match(name))
        return set(cached)

    def _match(self, name: str) -> set[str]:
        toks, found, i = tokens(name), set(), 0
        while i < len(toks):
            for syn, cls in self._synonyms:
                if tuple(toks[i : i + len(syn)]) == syn:
                    found.add(cls)
                    i += len(syn)
                    break
            else:
                i += 1
        return found
