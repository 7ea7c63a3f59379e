"""The import graph follows the lifecycle, and no module reaches into another's private names.

Read from the source with :mod:`ast` (nothing is imported), counting every import: module
level, inside functions (the lazy ones) and under ``TYPE_CHECKING``, since each of them is a
dependency a reader has to hold in their head.

- **Layers.** Each top-level module or subpackage of ``lineguard`` belongs to one layer of
  :data:`LAYERS`, in lifecycle order; a unit may import units of earlier layers (and of its own
  unit) only. The order is the DESIGN table's, with two deliberate placements: the contracts
  every stage shares (``preprocess``, and ``edge`` with the bundle, the ``Decision`` and the one
  ONNX runner -- torch-free, so evaluation and export may build on them) come right after the
  foundation (with ``monitor``, the pure drift statistics the edge runs on every frame), and ``tracking`` (the MLflow boundary that rebuilds models from runs) sits between
  the model code and everything that trains or evaluates.
- **No circles.** Follows from the layers, and is checked on its own so a failure names the cycle.
- **No private names across modules.** ``from lineguard.x import _y`` and ``x_module._y`` from
  another module are refused; a helper that another module needs gets a public name.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "lineguard"

LAYERS: list[tuple[str, ...]] = [
    ("lineguard",),  # the package: LineguardError and the version
    ("lineguard.config", "lineguard.storage", "lineguard.escaping"),  # foundation: config, every read and write, safe names
    ("lineguard.preprocess",),  # THE preprocessing contract
    ("lineguard.monitor",),  # pure signals and detectors: the edge runs them, export computes their reference
    ("lineguard.edge",),  # the runtime contracts: bundle, Decision, runner, predictor
    ("lineguard.synth",),  # data
    ("lineguard.manifest", "lineguard.labels"),
    ("lineguard.labelstudio",),
    ("lineguard.ingest",),
    ("lineguard.augment", "lineguard.models", "lineguard.profile"),  # model development
    ("lineguard.tracking",),  # the only module that imports MLflow
    ("lineguard.train",),
    ("lineguard.tune", "lineguard.baseline"),
    ("lineguard.gate",),  # evaluation: the pure release policy, then the evaluation that feeds it
    ("lineguard.evaluate",),
    ("lineguard.export",),  # deployment
    ("lineguard.compress",),
    ("lineguard.pipeline",),  # the lifecycle as plain calls, and the CLI over everything
    ("lineguard.cli",),
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}

# Known exceptions, each with the reason and the issue that removes it.
PRIVATE_ALLOWED: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _unit(module: str) -> str:
    """The lifecycle unit of a module: ``lineguard.edge.bundle`` -> ``lineguard.edge``."""
    return ".".join(module.split(".")[:2])


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imports(module: str) -> list[tuple[str, int]]:
    """(imported lineguard module, line) for every import in ``module``."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "lineguard"]
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, node)
            if target.split(".")[0] != "lineguard":
                continue
            for a in node.names:  # ``from lineguard import train`` imports the module lineguard.train
                sub = f"{target}.{a.name}"
                found.append((sub if sub in MODULES else target, node.lineno))
    return found


def _unit_graph() -> dict[str, dict[str, list[str]]]:
    """unit -> imported unit -> ['module:line', ...] (imports within a unit left out)."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for module in MODULES:
        for target, line in _imports(module):
            if _unit(target) != _unit(module):
                graph[_unit(module)][_unit(target)].append(f"{module}:{line}")
    return graph


def test_every_unit_has_a_layer() -> None:
    units = {_unit(m) for m in MODULES}
    assert units - set(RANK) == set(), "add the new module to LAYERS, where it belongs in the lifecycle"
    assert set(RANK) - units == set(), "LAYERS names a module that no longer exists"


def test_no_import_against_the_lifecycle() -> None:
    back = [
        f"{unit} -> {target} ({', '.join(where)})"
        for unit, targets in _unit_graph().items()
        for target, where in targets.items()
        if RANK[target] >= RANK[unit]
    ]
    assert back == [], "imports against the lifecycle's direction:\n" + "\n".join(back)


def test_no_import_cycles() -> None:
    graph = {u: set(t) for u, t in _unit_graph().items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for unit in sorted(graph):
        if unit not in state:
            visit(unit, [unit])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def _private_uses(module: str) -> list[tuple[str, int]]:
    """(``target._name``, line) where ``module`` uses a private name of another lineguard module."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    bound: dict[str, str] = {}  # local name -> the lineguard module it is bound to
    uses: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "lineguard":
                    bound[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, node)
            if target.split(".")[0] != "lineguard":
                continue
            for a in node.names:
                if f"{target}.{a.name}" in MODULES:
                    bound[a.asname or a.name] = f"{target}.{a.name}"
                elif a.name.startswith("_") and not a.name.startswith("__") and target != module:
                    uses.append((f"{target}.{a.name}", node.lineno))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                and node.attr.startswith("_") and not node.attr.startswith("__") and bound[node.value.id] != module):
            uses.append((f"{bound[node.value.id]}.{node.attr}", node.lineno))
    return uses


def test_no_module_uses_another_modules_private_names() -> None:
    found = [
        f"{module}:{line} uses {name}"
        for module in MODULES
        for name, line in _private_uses(module)
        if (module, name) not in PRIVATE_ALLOWED
    ]
    assert found == [], "private names used across modules (give them a public name):\n" + "\n".join(found)


def test_allowed_exceptions_are_still_needed() -> None:
    """An exception whose use is gone must leave the list, so the list cannot grow stale."""
    used = {(module, name) for module in MODULES for name, _ in _private_uses(module)}
    stale = [f"{m} -> {n}" for (m, n) in PRIVATE_ALLOWED if (m, n) not in used]
    assert stale == [], "remove from PRIVATE_ALLOWED: " + ", ".join(stale)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from lineguard.edge.predictor import _OrtRunner\n", ["lineguard.edge.predictor._OrtRunner"]),
        ("from lineguard import train as t\nt._fit()\n", ["lineguard.train._fit"]),
        ("from lineguard.edge import predictor\npredictor._x\n", ["lineguard.edge.predictor._x"]),
        ("from lineguard import __version__\n", []),
    ],
)
def test_the_private_name_check_can_fail(source: str, expected: list[str], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker itself, on snippets: each known kind of private use is caught, dunders are not."""
    path = tmp_path / "probe.py"
    path.write_text(source)
    monkeypatch.setitem(MODULES, "lineguard.probe", path)
    assert [name for name, _ in _private_uses("lineguard.probe")] == expected
