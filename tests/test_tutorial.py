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


#: what each morning writes by hand, with Larq and Keras, before the project does it
BY_HAND = {"01": ["mnist_data()", "/ 127.5 - 1.0"],
           "02": ["tf.keras.layers.Dense(", "tf.keras.layers.BatchNormalization(", ".compile(", ".fit(", ".evaluate("],
           "03": ["lq.layers.QuantDense(", 'kernel_quantizer="ste_sign"', "lq.quantizers.DoReFa(", "lq.models.summary("],
           "04": ["lce.convert_keras_model(", "lce.testing.Interpreter("],
           **{day: ["(tf.keras.layers.Layer):", "def call(", ".fit("] for day in ("05", "06", "07")},  # each effect, a layer of one's own
           "08": ["optuna.create_study(", ".optimize("]}
AGREEMENT = {"01", "02", "03", "04", "05", "06", "07"}  #: the sweep (08) searches; there is no single number to agree on


def test_there_are_eight_mornings():
    assert [path.name[:2] for path in NOTEBOOKS] == [f"{day:02d}" for day in range(1, 9)]


def tagged(notebook, tag):
    return [cell.source for cell in notebook.cells if cell.cell_type == "code" and tag in cell.metadata.get("tags", [])]


@pytest.mark.parametrize("day", sorted(BY_HAND))
def test_a_morning_writes_the_step_by_hand_then_checks_the_project_agrees(day):
    """The step in plain Larq / Keras code ("a-mano" cells), then an agreement cell that asserts what it
    claims (run by test_notebook_runs, so a disagreement fails it)."""
    (path,) = [path for path in NOTEBOOKS if path.name.startswith(day)]
    notebook = nbformat.read(path, as_version=4)
    by_hand, agreement = "\n".join(tagged(notebook, "a-mano")), tagged(notebook, "concordancia")
    missing = [snippet for snippet in BY_HAND[day] if snippet not in by_hand]
    assert not missing, f"{path.name}: no by-hand cell writes {missing}"
    if day not in AGREEMENT:
        return
    assert agreement and all("assert " in source for source in agreement), f"{path.name}: an agreement cell asserts nothing"
    first_hand = min(i for i, cell in enumerate(notebook.cells) if "a-mano" in cell.metadata.get("tags", []))
    first_check = min(i for i, cell in enumerate(notebook.cells) if "concordancia" in cell.metadata.get("tags", []))
    assert first_hand < first_check, f"{path.name}: the agreement is checked before the step is written by hand"


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
