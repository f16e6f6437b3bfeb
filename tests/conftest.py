"""Shared fixtures: tiny real data, a temporary MLflow tracking store (real SQLite, no mocks), and one
store of end-to-end runs built once per test session and read by the tests that check them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pipeline  # noqa: F401  (TF_USE_LEGACY_KERAS before anything imports TensorFlow)
import numpy as np
import pytest

from pipeline.config import DataConfig
from pipeline.learning.data import PreparedData, prepare

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TEST_EXPERIMENT = "test-experiment"  #: the experiment of every test store


@pytest.fixture(scope="session")
def tiny_data() -> PreparedData:
    """Real MNIST digits (the bundled subset), at most 300 per split, stratified."""
    return prepare(DataConfig(source="bundled", limit=300, seed=7))


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An empty SQLite tracking store, its schema created by MLflow once per test process (two
    seconds of migrations that every fresh store would otherwise repeat)."""
    import mlflow

    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments(max_results=1)
    return path


@pytest.fixture()
def tracking_store(tmp_path, monkeypatch, empty_store):
    """A fresh SQLite tracking store with its artifacts under ``tmp_path``; returns its URI.

    Sets MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_NAME for this process and its children.
    """
    import mlflow

    path = tmp_path / "mlflow.db"
    shutil.copyfile(empty_store, path)
    with contextlib.closing(sqlite3.connect(path)) as db, db:  # this store's own default experiment folder
        db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (str(tmp_path / "mlruns" / "0"),))
    uri = f"sqlite:///{path}"
    use_tracking_store(uri, monkeypatch)
    mlflow.MlflowClient(uri).create_experiment(TEST_EXPERIMENT, artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment(TEST_EXPERIMENT)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # set_experiment exports it; `mlflow run` refuses both
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


def use_tracking_store(uri: str, monkeypatch) -> None:
    """This process and its children log to, and read from, the store at ``uri``."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", TEST_EXPERIMENT)
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    mlflow.set_tracking_uri(uri)


def all_runs(uri: str):
    """Every run of every experiment in the store at ``uri``."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, max_results=1000)


def run_cli(*args: str, cwd: Path = PROJECT_ROOT, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m pipeline.cli ARGS`` in a subprocess (default: with the current environment)."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, env=env if env is not None else dict(os.environ),
    )


def run_mlflow_project(entry_point: str, params: dict, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """``mlflow run . -e ENTRY --env-manager local -P k=v ...`` from the project root (default: this environment)."""
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow_cli), "run", str(PROJECT_ROOT), "-e", entry_point, "--env-manager", "local"]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    # `mlflow run --env-manager local` runs `python` from PATH: make it this interpreter.
    env = env if env is not None else dict(os.environ)
    env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout, env=env)


#: the tiny settings of the shared end-to-end runs (tests compare what they read with these)
SHARED_MAIN = {"epochs": 2, "limit": 200, "hidden_units": "128,128", "source": "bundled", "chips": 2, "target_chips": 10}
SHARED_SENSITIVITY = {"perturb_layers": "dense", "chips": 2, "target_chips": 4}  #: of the first main's 1-bit model, 2-level grids
SHARED_SWEEP = {"n_trials": 3, "limit": 150, "epochs": 2, "hidden_units": "64", "chips": 2, "target_chips": 10}


@dataclass(frozen=True)
class SharedStore:
    """The session's store of end-to-end runs, made as a user would, in this order: ``main``, the same
    ``main`` again (it reuses the first one's prepare run), ``sweep`` (each through ``mlflow run``),
    ``sensitivity`` of the first main's 1-bit model (the command line).
    ``results`` holds each command's return code, stdout and stderr, by name."""

    uri: str
    directory: Path
    results: dict[str, dict]

    def result(self, name: str) -> dict:
        assert name in self.results, f"the shared store was not built: {self.results.get('error', {}).get('stderr', '')}"
        found = self.results[name]
        assert found["returncode"] == 0, f"the shared `{name}` failed:\n{found['stderr'][-3000:]}"
        return found


def shared_directory(config) -> Path:
    """Where the session's shared store lives: beside the workers' temporary directories (one per session)."""
    base = config._tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-store"


def reads_shared_store(item) -> bool:
    return "shared_store" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(config, items):
    """The tests reading the shared store run last, so that its build overlaps the rest of the suite."""
    items.sort(key=reads_shared_store)  # stable: the order of the others is kept


def pytest_collection_finish(session):
    """If a selected test reads the shared store, the first test process to get here starts building it
    in the background, so that no worker waits idle for it (four commands, a few minutes); not when
    the tests are only listed (``--collect-only``)."""
    if session.config.option.collectonly or not any(reads_shared_store(item) for item in session.items):
        return
    directory = shared_directory(session.config)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(directory / "started", os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return  # another worker builds it
    log = open(directory / "build.log", "w")
    code = "import sys, pathlib; sys.path.insert(0, sys.argv[1]); import conftest; conftest.build_shared_store(pathlib.Path(sys.argv[2]))"
    session.config.shared_builder = subprocess.Popen([sys.executable, "-c", code, str(Path(__file__).parent), str(directory)],
                                                     stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT, start_new_session=True)


def pytest_sessionfinish(session, exitstatus):
    """The builder never outlives the session: waited for, or stopped when the session was interrupted."""
    builder = getattr(session.config, "shared_builder", None)
    if builder is not None and builder.poll() is None:
        if exitstatus == pytest.ExitCode.INTERRUPTED:
            os.killpg(builder.pid, signal.SIGKILL)  # the builder and the commands it runs
        builder.wait()


@pytest.fixture(scope="session")
def shared_store(request) -> SharedStore:
    """The runs of :class:`SharedStore`, built once per session
    in the background (:func:`pytest_collection_finish`); waits until they are done."""
    directory = shared_directory(request.config)
    deadline = time.time() + 1800
    while not (directory / "results.json").exists():
        assert time.time() < deadline, f"the shared store was not built in 30 minutes: {(directory / 'build.log').read_text()[-3000:]}"
        time.sleep(1)
    return SharedStore(f"sqlite:///{directory / 'mlflow.db'}", directory, json.loads((directory / "results.json").read_text()))


def main_runs(uri: str) -> list:
    """The store's ``main`` runs, oldest first."""
    return sorted((run for run in all_runs(uri) if run.data.tags.get("stage") == "main"), key=lambda run: run.info.start_time)


def first_main_id(uri: str) -> str:
    """The run id of the store's first ``main``."""
    return main_runs(uri)[0].info.run_id


def build_shared_store(directory: Path) -> None:
    """Makes the shared store's runs (in the builder process); ``results.json`` appears last, complete."""
    import mlflow

    uri = f"sqlite:///{directory / 'mlflow.db'}"
    results = {}
    try:
        mlflow.MlflowClient(uri).create_experiment(TEST_EXPERIMENT, artifact_location=(directory / "artifacts").as_uri())
        env = {key: value for key, value in os.environ.items() if key not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")}
        env |= {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": TEST_EXPERIMENT}
        grids = short_grids(3)
        commands = {"main": ("main", {**SHARED_MAIN, **grids}), "main_again": ("main", {**SHARED_MAIN, **grids}),
                    "sweep": ("sweep", {**SHARED_SWEEP, **grids, "storage": f"sqlite:///{directory / 'optuna.db'}"})}
        kept = lambda done: {"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}  # noqa: E731
        for name, (entry_point, params) in commands.items():
            results[name] = kept(run_mlflow_project(entry_point, params, env=env))
        first_main = first_main_id(uri)
        (qat,) = [run for run in all_runs(uri) if run.data.tags.get("stage") == "qat" and run.data.tags.get("mlflow.parentRunId") == first_main]
        arguments = ["--run_id", qat.info.run_id, *as_flags({**SHARED_SENSITIVITY, **short_grids(2)})]
        results["sensitivity"] = kept(run_cli("sensitivity", *arguments, timeout=900, env=env))
    except Exception as error:  # every reader gets the reason instead of waiting for a file that never comes
        results.setdefault("error", {"returncode": 1, "stdout": "", "stderr": repr(error)})
    finally:
        (directory / "results.part").write_text(json.dumps(results))
        (directory / "results.part").rename(directory / "results.json")


@pytest.fixture()
def shared(shared_store, monkeypatch) -> SharedStore:
    """The session's shared store, as this test's tracking store (read it; do not write to it)."""
    use_tracking_store(shared_store.uri, monkeypatch)
    return shared_store


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
