"""The tutorial notebooks (tutorial/*.ipynb) are tests: each one runs top to bottom, in its small-data
mode (HWL_TUTORIAL_QUICK=1), against a temporary tracking store, and logs runs there."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import all_runs

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

TUTORIAL = Path(__file__).resolve().parent.parent / "tutorial"
NOTEBOOKS = sorted(TUTORIAL.glob("[0-9][0-9]_*.ipynb"))


def test_there_are_seven_mornings():
    assert [path.name[:2] for path in NOTEBOOKS] == [f"{day:02d}" for day in range(1, 8)]


def test_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}: strip the outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs(path, tracking_store, monkeypatch):
    monkeypatch.setenv("HWL_TUTORIAL_QUICK", "1")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(TUTORIAL)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    runs = all_runs(tracking_store)
    assert runs, f"{path.name} logged no MLflow run"
    assert all(run.info.status == "FINISHED" for run in runs), [(run.info.run_name, run.info.status) for run in runs]
