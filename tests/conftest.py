"""Shared fixtures: tiny real data and a temporary MLflow tracking store (real SQLite, no mocks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pipeline  # noqa: F401  (TF_USE_LEGACY_KERAS before anything imports TensorFlow)
import numpy as np
import pytest

from pipeline.config import DataConfig
from pipeline.learning.data import PreparedData, prepare

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_data() -> PreparedData:
    """Real MNIST digits (the bundled subset), at most 300 per split, stratified."""
    return prepare(DataConfig(source="bundled", limit=300, seed=7))


@pytest.fixture()
def tracking_store(tmp_path, monkeypatch):
    """A fresh SQLite tracking store with its artifacts under ``tmp_path``; returns its URI.

    Sets MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_NAME for this process and its children.
    """
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = "test-experiment"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    client.create_experiment(experiment, artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment(experiment)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # set_experiment exports it; `mlflow run` refuses both
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


def all_runs(uri: str):
    """Every run of every experiment in the store at ``uri``."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, max_results=1000)


def run_cli(*args: str, cwd: Path = PROJECT_ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m pipeline.cli ARGS`` in a subprocess with the current environment."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, env=dict(os.environ),
    )


def run_mlflow_project(entry_point: str, params: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    """``mlflow run . -e ENTRY --env-manager local -P k=v ...`` from the project root."""
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow_cli), "run", str(PROJECT_ROOT), "-e", entry_point, "--env-manager", "local"]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    # `mlflow run --env-manager local` runs `python` from PATH: make it this interpreter.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def short_grids(levels: int) -> dict[str, str]:
    """``<effect>_grid`` parameters: every effect of the registry on ``levels`` of its default
    levels, the weakest and the strongest included (short robustness evaluations for tests)."""
    from pipeline.effects import EFFECTS

    grids = {}
    for effect in EFFECTS:
        grid = effect.curve.grid
        picked = sorted({round(i * (len(grid) - 1) / (levels - 1)) for i in range(levels)})
        grids[f"{effect.name}_grid"] = ",".join(f"{grid[i]:g}" for i in picked)
    return grids


def as_flags(params: dict[str, str]) -> list[str]:
    """``{"a": "1"}`` as ``["--a", "1"]``."""
    return [item for key, value in params.items() for item in (f"--{key}", str(value))]


def assert_close_rows(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
