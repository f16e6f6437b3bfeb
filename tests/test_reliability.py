"""Faults and bad input: every row of the reliability table (docs/reliability.md) is a test here (or named there)."""

import os
import signal
import subprocess
import sys
import time

import mlflow
import pandas as pd
import pytest

from conftest import PROJECT_ROOT, all_runs, as_flags, main_runs, run_cli, short_grids
from services import free_port, mlflow_server, postgres

TINY = ["--limit", "150", "--epochs", "2", "--hidden_units", "64", "--chips", "2", "--target_chips", "10", "--source", "bundled",
        *as_flags(short_grids(3))]
LONG = ["--limit", "400", "--epochs", "200", "--hidden_units", "256", "--source", "bundled"]


def start_cli(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=PROJECT_ROOT, env=env or dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_training(uri, process, stage="qat", timeout=300):
    """Until a run of ``stage`` has logged its first epoch."""
    client, deadline = mlflow.MlflowClient(uri), time.time() + timeout
    while True:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline, "training did not start"
        for run in all_runs(uri):
            if run.data.tags.get("stage") == stage and client.get_metric_history(run.info.run_id, "loss"):
                return run
        time.sleep(0.3)


def snapshot(uri):
    return sorted((r.info.run_id, r.info.status, tuple(sorted(r.data.metrics.items())), tuple(sorted(r.data.params.items())))
                  for r in all_runs(uri))


class Output:
    """A child's stdout and stderr lines as they come (read by threads, so neither pipe fills up)."""

    def __init__(self, process):
        import threading

        self.process, self.lines, self.errors = process, [], []
        self.threads = [threading.Thread(target=lambda stream=stream, found=found: found.extend(iter(stream.readline, "")), daemon=True)
                        for stream, found in ((process.stdout, self.lines), (process.stderr, self.errors))]
        for thread in self.threads:
            thread.start()

    def wait_for(self, prefix: str, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while not any(line.startswith(prefix) for line in self.lines):
            assert self.process.poll() is None, self.stderr()[-3000:]
            assert time.time() < deadline, f"no line starting with {prefix!r}"
            time.sleep(0.1)

    def stderr(self) -> str:
        return "".join(self.errors)

    def finish(self, timeout: float = 120) -> str:
        """Waits for the child's end and both streams; its stderr."""
        self.process.wait(timeout=timeout)
        for thread in self.threads:
            thread.join(timeout=10)
        return self.stderr()


EVALUATING = ["--limit", "400", "--epochs", "1", "--hidden_units", "256", "--source", "bundled", "--target_chips", "10000"]


@pytest.mark.slow
@pytest.mark.parametrize("moment, signum, delay", [("first epoch", signal.SIGTERM, 0.0), ("mid-training", signal.SIGTERM, 0.4),
                                                   ("evaluation", signal.SIGTERM, 0.0), ("mid-training", signal.SIGINT, 0.1)])
def test_an_interruption_ends_every_run_killed_and_exits_130(tracking_store, moment, signum, delay):
    """SIGTERM (a scheduler, `kill`) or SIGINT (Ctrl-C) at any moment of a stage: exit code 130, the
    stage's run KILLED with its outcome tagged, nothing left RUNNING -- and never an abort at exit."""
    process = start_cli("qat", *(EVALUATING if moment == "evaluation" else LONG), env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output = Output(process)
    if moment == "first epoch":
        output.wait_for("Epoch 1/")
    elif moment == "mid-training":
        wait_for_training(tracking_store, process)  # an epoch has ended: the signal lands inside a later one
    else:
        output.wait_for("[robustness]")  # the curves are being evaluated
    time.sleep(delay)
    process.send_signal(signum)
    stderr = output.finish()
    assert process.returncode == 130 and "interrupted" in stderr, (process.returncode, stderr[-3000:])
    runs = all_runs(tracking_store)
    assert {r.data.tags["stage"]: r.info.status for r in runs} == {"prepare": "FINISHED", "qat": "KILLED"}, stderr[-3000:]
    (qat,) = [r for r in runs if r.data.tags["stage"] == "qat"]
    assert qat.data.tags["outcome"] == "killed" and "KeyboardInterrupt" in qat.data.tags["failure"]


def test_an_interruption_that_breaks_a_library_context_still_ends_the_run_killed(tracking_store):
    """The signal's KeyboardInterrupt can land inside TensorFlow's ``tf_stack`` context manager, after it
    pushed itself and before it returned: the outer manager's exit then fails with ``AssertionError:
    Concurrent access?`` chained to the interruption. Reproduced here with TensorFlow's own classes."""
    from tensorflow.python.util import tf_stack

    from pipeline.app.tracking import stage_run
    from pipeline.interruption import caused_by_interruption

    class Mapper(tf_stack.StackTraceMapper):  # as autograph's: maps no source
        def get_effective_source_map(self):
            return {}

    class InterruptedWhileEntering(Mapper):
        def update(self):  # runs after the push, before __enter__ returns: where the signal landed
            raise KeyboardInterrupt("signal 15")

    with pytest.raises(AssertionError, match="Concurrent access") as raised:
        with stage_run("qat", "interrupted", "an interruption inside a library's context manager"):
            with Mapper():
                with InterruptedWhileEntering():
                    pass
    assert caused_by_interruption(raised.value) and not caused_by_interruption(AssertionError("Concurrent access?"))
    (run,) = all_runs(tracking_store)
    assert run.info.status == "KILLED" and run.data.tags["outcome"] == "killed"
    assert run.data.tags["failure"] == "KeyboardInterrupt: signal 15"


def test_unreachable_tracking_server_fails_before_training(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "qat", *TINY], cwd=PROJECT_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: MLFLOW_TRACKING_URI: cannot reach the tracking store")
    assert "Epoch" not in result.stdout  # no training was wasted
    assert time.time() - started < 120


@pytest.mark.slow
def test_tracking_lost_mid_run_is_loud_and_keeps_the_model(tmp_path):
    with mlflow_server(tmp_path / "server") as url:
        env = {**os.environ, "MLFLOW_TRACKING_URI": url, "MLFLOW_EXPERIMENT_NAME": "lost", "HWL_RESCUE_DIR": str(tmp_path / "rescued"),
               "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
        env.pop("MLFLOW_EXPERIMENT_ID", None)
        process = start_cli("qat", "--limit", "400", "--epochs", "40", "--hidden_units", "256", "--source", "bundled", env=env)
        wait_for_training(url, process)
        url.stop()  # the tracking server goes away mid-training
        stdout, stderr = process.communicate(timeout=600)
    assert process.returncode != 0
    assert "MLflow logging failed" in stderr and "the trained model is saved at" in stderr
    saved = list((tmp_path / "rescued").glob("*/model.keras"))
    assert len(saved) == 1 and str(saved[0]) in stderr
    import pipeline.hwmodel.layers  # noqa: F401  (registers Larq's and our layers)
    import tensorflow as tf

    model = tf.keras.models.load_model(saved[0])
    assert model.name == "mlp-1bit" and model.count_params() > 0


@pytest.mark.slow
def test_cleanup_marks_runs_of_crashed_processes_failed(tracking_store):
    process = start_cli("qat", *LONG)
    crashed = wait_for_training(tracking_store, process)
    process.kill()  # SIGKILL: nothing can clean up after itself
    process.wait()
    assert mlflow.get_run(crashed.info.run_id).info.status == "RUNNING"
    client = mlflow.MlflowClient(tracking_store)
    alive = client.create_run(crashed.info.experiment_id, tags={"host": crashed.data.tags["host"], "pid": str(os.getpid())})
    # pytest's own process counts as alive only if it runs one of our programs: give it one that does
    result = run_cli("cleanup")
    assert result.returncode == 0, result.stderr
    assert mlflow.get_run(crashed.info.run_id).info.status == "FAILED"
    assert "process is gone" in mlflow.get_run(crashed.info.run_id).data.tags["failure"]
    assert "1 run(s)" in result.stdout or "2 run(s)" in result.stdout
    assert client.get_run(alive.info.run_id).info.status in ("RUNNING", "FAILED")
    assert all(run.info.status != "RUNNING" or run.info.run_id == alive.info.run_id for run in all_runs(tracking_store))


def test_cleanup_leaves_live_runs_alone(tracking_store):
    client = mlflow.MlflowClient(tracking_store)
    experiment = client.get_experiment_by_name("test-experiment").experiment_id
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # pipeline"])
    try:
        import socket

        run = client.create_run(experiment, tags={"host": socket.gethostname(), "pid": str(live.pid)})
        result = run_cli("cleanup")
        assert result.returncode == 0, result.stderr
        assert client.get_run(run.info.run_id).info.status == "RUNNING"
        assert "0 run(s)" in result.stdout
    finally:
        live.kill()


@pytest.mark.slow
def test_same_command_same_seed_same_numbers(shared):
    """The shared store's two `main`s are the same command with the same seed: every model trains to the
    same numbers and every chip of its robustness table reads the same."""
    shared.result("main_again")
    children = [{r.data.tags["stage"]: r for r in all_runs(shared.uri) if r.data.tags.get("mlflow.parentRunId") == main.info.run_id}
                for main in main_runs(shared.uri)]
    trained = ("baseline", "qat", "compared", "perturb")
    assert all(set(trained) <= set(runs) for runs in children)
    for stage in trained:
        first, second = (runs[stage] for runs in children)
        for metric in ("test_accuracy", "test_loss", "robust_acc_target", "deployed_accuracy"):
            assert first.data.metrics[metric] == second.data.metrics[metric], (stage, metric)
        tables = [pd.read_csv(mlflow.artifacts.download_artifacts(f"runs:/{r.info.run_id}/robustness/chips.csv")) for r in (first, second)]
        pd.testing.assert_frame_equal(*tables)


@pytest.mark.slow
def test_two_mains_at_once_on_one_sqlite_store(tracking_store):
    processes = [start_cli("main", *TINY, "--compare_bits", "0", "--seed", str(seed)) for seed in (1, 2)]
    results = [process.communicate(timeout=900) for process in processes]
    assert [p.returncode for p in processes] == [0, 0], [r[1][-2000:] for r in results]
    runs = all_runs(tracking_store)
    parents = [r for r in runs if r.data.tags["stage"] == "main"]
    assert len(parents) == 2 and all(r.info.status == "FINISHED" for r in runs)
    for parent in parents:
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.data.tags["stage"] for r in children) == ["baseline", "perturb", "prepare", "qat"]


def test_bad_input_changes_nothing_already_recorded(tracking_store, tmp_path):
    assert run_cli("prepare", "--source", "bundled", "--limit", "100").returncode == 0
    before = snapshot(tracking_store)
    (tmp_path / "labels.npz").write_bytes(b"not a zip")
    for args in (["main", "--bits", "40"], ["qat", "--source", "path", "--data_path", str(tmp_path / "labels.npz")],
                 ["evaluate", "--run_id", before[0][0]], ["sweep", "--space", "missing.yaml"]):
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr[-2000:])
    assert snapshot(tracking_store) == before


@pytest.mark.slow
@pytest.mark.postgres
def test_team_mode_tracking_server_on_postgresql(tmp_path):
    with postgres() as database, mlflow_server(tmp_path / "server", backend_store_uri=database) as url:
        env = {**os.environ, "MLFLOW_TRACKING_URI": url, "MLFLOW_EXPERIMENT_NAME": "team"}
        env.pop("MLFLOW_EXPERIMENT_ID", None)
        result = subprocess.run([sys.executable, "-m", "pipeline.cli", "qat", *TINY], cwd=PROJECT_ROOT, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        client = mlflow.MlflowClient(url)
        runs = client.search_runs([client.get_experiment_by_name("team").experiment_id])
        assert sorted(r.data.tags["stage"] for r in runs) == ["prepare", "qat"]
        qat = next(r for r in runs if r.data.tags["stage"] == "qat")
        assert qat.info.status == "FINISHED" and qat.data.metrics["robust_acc_target"] > 0
        assert {a.path for a in client.list_artifacts(qat.info.run_id, "robustness")} >= {"robustness/curves.png"}
        assert qat.info.artifact_uri.startswith("mlflow-artifacts:")  # artifacts went through the server
