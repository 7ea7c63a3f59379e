"""The notebooks: committed without outputs, and executed top to bottom on a small config.

Each notebook's ``parameters`` cell is replaced by a smaller one (the way papermill does it)
and the notebook runs in a fresh kernel in a temporary folder with nbclient.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e._tiny import TINY

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install 'lineguard[dev]')")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
SMALL = {
    "01_classifier_from_scratch.ipynb":
        'RECIPES = 2\nPER_CLASS = 16\nSIZE = 48\nEPOCHS = 2\nWORK = "work"\n',
    "02_from_notebook_to_pipeline.ipynb":
        f'WORK = "work"\nOVERRIDES = {[*TINY, "pipeline.compress=false"]!r}\n',
}


def test_every_notebook_is_tested() -> None:
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(SMALL)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_notebooks_are_committed_without_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: clear the outputs"
    assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMALL))
def test_the_notebook_runs_top_to_bottom(name: str, tmp_path: Path) -> None:
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = SMALL[name]
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    assert (tmp_path / "work").is_dir()
