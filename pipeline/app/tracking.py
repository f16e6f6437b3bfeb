"""The MLflow edge: runs, params, metrics, artifacts, model logging and run reuse.

Nothing else in ``pipeline`` talks to MLflow. The store is MLflow's default (SQLite
``mlflow.db`` in the working directory, artifacts under ``mlruns/``) unless
``MLFLOW_TRACKING_URI`` says otherwise; the experiment is the one ``mlflow run`` chose, else
``MLFLOW_EXPERIMENT_NAME``, else :data:`DEFAULT_EXPERIMENT`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from collections.abc import Iterator, Mapping, Sequence

import mlflow
import numpy as np
from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

import pipeline  # noqa: F401
import tensorflow as tf

from pipeline.app.compare import ModelRow
from pipeline.config import ConfigError
from pipeline.interruption import caused_by_interruption, interruption_of
from pipeline.learning.data import PreparedData

DEFAULT_EXPERIMENT = "hardware-aware-larq"
PREPARED_ARTIFACT = "data/prepared.npz"
MODEL_ARTIFACT = "model"
MODEL_REQUIREMENTS = ("tensorflow", "tf-keras", "larq", "numpy")


def use_experiment() -> None:
    """Check the store answers, then select the experiment, unless ``mlflow run`` already did
    (it sets MLFLOW_EXPERIMENT_ID)."""
    check_reachable()
    if not os.environ.get("MLFLOW_EXPERIMENT_ID") and not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)


def use_store(uri: str, experiment: str) -> None:
    """Track into the store ``uri``, experiment ``experiment`` (a benchmark's throw-away store)."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)


def experiment_id_of(name: str) -> str | None:
    """The id of the experiment ``name`` in the current store, None if it does not exist."""
    experiment = MlflowClient().get_experiment_by_name(name)
    return experiment.experiment_id if experiment else None


def check_reachable(timeout_s: int = 10) -> None:
    """A ConfigError naming MLFLOW_TRACKING_URI when the tracking store does not answer -- at once,
    before any training, instead of MLflow's minutes of retries."""
    uri = mlflow.get_tracking_uri()
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    saved = {key: os.environ.get(key) for key in quick}
    os.environ.update(quick)
    try:
        MlflowClient().search_experiments(max_results=1)
    except Exception as error:
        raise ConfigError(
            "MLFLOW_TRACKING_URI",
            f"cannot reach the tracking store {uri} ({str(error).splitlines()[0][:300]}); start the server "
            "(see docs/mlflow-ui.md, team mode) or unset MLFLOW_TRACKING_URI to use the local mlflow.db",
        ) from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def stage_run(stage: str, run_name: str, description: str, tags: Mapping[str, str] | None = None) -> Iterator[str]:
    """The run of one stage, yielding its id.

    At top level it is the run ``mlflow run`` created (MLFLOW_RUN_ID) or a new one; inside
    another stage's run it is a nested child run. An exception ends it FAILED (MLflow's
    context manager), and the exception propagates.
    """
    all_tags = {"stage": stage, "mlflow.note.content": description, "host": socket.gethostname(),
                "pid": str(os.getpid()), **(tags or {})}
    nested = mlflow.active_run() is not None
    run = mlflow.start_run(run_name=run_name, nested=nested, tags=all_tags)
    try:
        mlflow.set_tags({"mlflow.runName": run_name, **all_tags})  # also names a run resumed from `mlflow run`
        yield run.info.run_id
    except BaseException as error:
        status = run_status_for(error)
        tag_failure(run.info.run_id, status, interruption_of(error) or error)
        with contextlib.suppress(Exception):  # end_run pops the run first: the stack stays right even if this fails
            mlflow.end_run(status=status)
        raise
    mlflow.set_tag("outcome", "finished")
    mlflow.end_run()


def tag_failure(run_id: str, status: str, error: BaseException, attempts: int = 3) -> None:
    """Tags ``outcome`` and ``failure`` on a run that ends with ``error``. An interruption can land in the
    middle of a request to the store and leave that connection unusable, so a failed write is tried
    again; the store may also be the thing that failed: then a warning says so and the run goes on ending."""
    tags = {"outcome": status.lower(), "failure": f"{type(error).__name__}: {error}"[:4000]}
    for attempt in range(attempts):
        try:
            MlflowClient().log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
            return
        except Exception as failure:
            last = failure
            time.sleep(0.2 * (attempt + 1))
    print(f"WARNING: could not tag run {run_id} as {status.lower()} ({str(last).splitlines()[0][:200]})", file=sys.stderr, flush=True)


def run_status_for(error: BaseException) -> str:
    """KILLED for interruptions (Ctrl-C, SIGTERM) and pruned sweep trials, FAILED for errors."""
    if isinstance(error, SystemExit) or caused_by_interruption(error):
        return "KILLED"
    return getattr(error, "mlflow_status", "FAILED")


def log_params(params: Mapping[str, object]) -> None:
    mlflow.log_params({key: str(value) for key, value in params.items()})


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({key: float(value) for key, value in metrics.items()}, step=step)


def log_step_metrics(steps: Sequence[tuple[Mapping[str, float], int]]) -> None:
    """Many ``(metrics, step)`` pairs in one request (one ``log_metrics`` per step costs a round trip each)."""
    from mlflow.entities import Metric

    timestamp = int(time.time() * 1000)
    metrics = [Metric(key, float(value), timestamp, step) for values, step in steps for key, value in values.items()]
    MlflowClient().log_batch(mlflow.active_run().info.run_id, metrics=metrics)


def log_tags(tags: Mapping[str, object]) -> None:
    mlflow.set_tags({key: str(value) for key, value in tags.items()})


def log_to_run(run_id: str, metrics: Mapping[str, float], tags: Mapping[str, object]) -> None:
    """Metrics and tags on a given run (active or not: the deployment of a sweep's best trial)."""
    from mlflow.entities import Metric

    timestamp = int(time.time() * 1000)
    MlflowClient().log_batch(run_id, metrics=[Metric(key, float(value), timestamp, 0) for key, value in metrics.items()],
                             tags=[RunTag(key, str(value)) for key, value in tags.items()])


def log_bytes(run_id: str, content: bytes, artifact_file: str) -> None:
    """A binary artifact (a flatbuffer) on a given run."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        path.write_bytes(content)
        MlflowClient().log_artifact(run_id, str(path), artifact_path=str(Path(artifact_file).parent))


def log_figure(figure, artifact_file: str) -> None:
    mlflow.log_figure(figure, artifact_file)


def log_text(text: str, artifact_file: str) -> None:
    mlflow.log_text(text, artifact_file)


def log_dict(data: dict, artifact_file: str) -> None:
    mlflow.log_dict(data, artifact_file)


def log_table(frame, artifact_stem: str, markdown: str | None = None) -> None:
    """A pandas table as CSV, as an MLflow table (UI-browsable) and optionally as markdown."""
    mlflow.log_text(frame.to_csv(index=False), f"{artifact_stem}.csv")
    mlflow.log_table(frame, f"{artifact_stem}.json")
    if markdown is not None:
        mlflow.log_text(markdown, f"{artifact_stem}.md")


class EpochMetricsLogger(tf.keras.callbacks.Callback):
    """Logs Keras' per-epoch logs (loss, accuracy, val_loss, val_accuracy) with step = epoch (1-based).

    If the tracking store stops answering, training goes on (with a loud warning): the stage then
    fails when it logs the result, and keeps the trained model on disk (:func:`rescue_model`)."""

    def __init__(self):
        super().__init__()
        self.failures = 0

    def on_epoch_end(self, epoch, logs=None):
        if not logs:
            return
        try:
            log_metrics({key: value for key, value in logs.items() if np.isfinite(value)}, step=epoch + 1)
        except Exception as error:
            self.failures += 1
            if self.failures == 1:
                print(f"WARNING: MLflow logging failed at epoch {epoch + 1} ({str(error).splitlines()[0][:200]}); "
                      "training goes on, the model will be saved locally", file=sys.stderr, flush=True)


class TrackingLost(RuntimeError):
    """The tracking store failed while a stage logged its results; the model was saved locally."""


def is_tracking_error(error: BaseException) -> bool:
    """Errors of the tracking store or its transport (as opposed to bugs in our own computation)."""
    import requests
    from mlflow.exceptions import MlflowException

    return isinstance(error, (MlflowException, requests.exceptions.RequestException, ConnectionError))


@contextlib.contextmanager
def rescue_on_failure(model: tf.keras.Model, run_id: str, title: str) -> Iterator[None]:
    """Inside: logging a trained model's results. When the tracking store fails, the model is saved
    locally (:func:`rescue_model`) and :class:`TrackingLost` names where; other errors pass unchanged."""
    try:
        yield
    except Exception as error:
        if not is_tracking_error(error):
            raise
        path = rescue_model(model, run_id)
        raise TrackingLost(f"the tracking store failed while logging {title} ({str(error).splitlines()[0][:300]}); "
                           f"the trained model is saved at {path}") from error


def rescue_model(model: tf.keras.Model, run_id: str) -> Path:
    """Save a trained model next to the working directory when it cannot reach the tracking store."""
    path = Path(os.environ.get("HWL_RESCUE_DIR", "outputs/rescued")) / run_id / "model.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path.resolve()


def find_stale_runs(stale_hours: float) -> list:
    """RUNNING runs whose process is gone (same host, pid dead or not ours) or that started more
    than ``stale_hours`` ago: left behind by a crash."""
    client = MlflowClient()
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'", max_results=5000)
    now_ms, host = time.time() * 1000, socket.gethostname()
    stale = []
    for run in runs:
        pid = run.data.tags.get("pid", "")
        dead = run.data.tags.get("host") == host and pid.isdigit() and not process_alive(int(pid))
        old = now_ms - run.info.start_time > stale_hours * 3600 * 1000
        if dead or old:
            stale.append(run)
    return stale


def process_alive(pid: int) -> bool:
    """True if ``pid`` runs one of our entry points (a reused pid running something else is not ours)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return b"pipeline" in cmdline or b"mlflow" in cmdline


def fail_stale_runs(stale_hours: float, found_by: str) -> list:
    """Mark the runs :func:`find_stale_runs` finds FAILED (tags ``outcome``, ``failure``); returns them."""
    client = MlflowClient()
    stale = find_stale_runs(stale_hours)
    for run in stale:
        client.set_tag(run.info.run_id, "outcome", "failed")
        client.set_tag(run.info.run_id, "failure", f"{found_by}: its process is gone or it started over {stale_hours:g} h ago")
        client.set_terminated(run.info.run_id, "FAILED")
    return stale


def log_prepared_data(data: PreparedData) -> str:
    """The prepared splits as one artifact plus a summary; returns the artifact URI."""
    with tempfile.TemporaryDirectory() as tmp:
        path = data.save(Path(tmp) / Path(PREPARED_ARTIFACT).name)
        mlflow.log_artifact(str(path), artifact_path=str(Path(PREPARED_ARTIFACT).parent))
    log_dict(data.summary(), "data/summary.json")
    return f"runs:/{mlflow.active_run().info.run_id}/{PREPARED_ARTIFACT}"


def log_data_input(data: PreparedData, split: str, context: str) -> None:
    """Registers a split as an MLflow dataset input of the active run (name, digest, schema)."""
    images, labels = data.arrays(split)
    dataset = mlflow.data.from_numpy(
        images.reshape(len(images), -1), targets=labels, name=f"{data.dataset.value}-{split}",
        digest=data.content_hash[:16],
    )
    mlflow.log_input(dataset, context=context)


def download_prepared_data(data_uri: str) -> PreparedData:
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=data_uri, dst_path=tmp)
        return PreparedData.load(local)


def find_finished_run(stage: str, tags: Mapping[str, str], params: Mapping[str, str]) -> str | None:
    """The newest FINISHED run of ``stage`` in the current experiment with these tags and params."""
    experiment_id = current_experiment_id()
    conditions = [f"tags.stage = '{stage}'", "attributes.status = 'FINISHED'"]
    conditions += [f"tags.`{key}` = '{value}'" for key, value in tags.items()]
    runs = MlflowClient().search_runs(
        [experiment_id], filter_string=" and ".join(conditions), order_by=["attributes.start_time DESC"], max_results=50
    )
    for run in runs:
        if all(run.data.params.get(key) == str(value) for key, value in params.items()):
            return run.info.run_id
    return None


def run_metrics(run_id: str) -> dict[str, float]:
    return dict(MlflowClient().get_run(run_id).data.metrics)


def run_name(run_id: str) -> str:
    return MlflowClient().get_run(run_id).info.run_name


def model_uri_of_run(run_id: str) -> str:
    """The model a training run logged (its ``model_uri`` tag)."""
    run = MlflowClient().get_run(run_id)
    if uri := run.data.tags.get("model_uri"):
        return uri
    raise ValueError(f"run {run_id} logged no model (no model_uri tag)")


def tag_of_run(run_id: str, key: str) -> str:
    return MlflowClient().get_run(run_id).data.tags.get(key, "")


def source_run_of_model(model_uri: str) -> str:
    """The run that logged a ``models:/m-...`` model ('' if MLflow does not know it)."""
    if model_uri.startswith("models:/m-"):
        return MlflowClient().get_logged_model(model_uri.removeprefix("models:/")).source_run_id or ""
    return ""


def run_row(run_id: str) -> ModelRow:
    """A finished training run as a comparison row: its metrics, identity and robustness curves."""
    import pandas as pd

    run = MlflowClient().get_run(run_id)
    tags, curves = run.data.tags, None
    with tempfile.TemporaryDirectory() as tmp, contextlib.suppress(Exception):
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="robustness/curves.csv", dst_path=tmp)
        curves = pd.read_csv(path)
    return ModelRow(tags.get("stage", ""), tags.get("model", ""), run_id, tags.get("model_uri", ""), dict(run.data.metrics),
                    tags.get("tflite_converter", ""), curves)


def current_experiment_id() -> str:
    if run := mlflow.active_run():
        return run.info.experiment_id
    if experiment_id := os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return experiment_id
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    experiment = mlflow.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else mlflow.create_experiment(name)


def model_requirements() -> list[str]:
    """Pinned requirements of the logged model, so MLflow need not infer them (slow)."""
    return [f"{name}=={metadata.version(name)}" for name in MODEL_REQUIREMENTS]


def log_model(model: tf.keras.Model, sample_images: np.ndarray) -> str:
    """The model in MLflow's tensorflow flavor; reloads (Larq objects included) after ``import pipeline``."""
    from mlflow.models import infer_signature

    signature = infer_signature(sample_images, model.predict(sample_images, verbose=0))
    info = mlflow.tensorflow.log_model(
        model, name=MODEL_ARTIFACT, signature=signature, pip_requirements=model_requirements(),
        # The Keras v3 file (config + weights): hardware-aware layers keep their configuration and
        # their run-time level variables stay out of the file (SavedModel would trace them in).
        keras_model_kwargs={"save_format": "keras"},
    )
    return info.model_uri


#: where the registered Keras objects lived when earlier runs logged their models: MLflow pickles the
#: global custom objects by module path, so those models load only with these names importable
LOGGED_MODULES = {"pipeline.layers": "pipeline.hwmodel.layers", "pipeline.export": "pipeline.deploy.export"}


def load_model(model_uri: str) -> tf.keras.Model:
    """A logged model, also one logged before the modules moved (:data:`LOGGED_MODULES`)."""
    import importlib

    for old, new in LOGGED_MODULES.items():
        sys.modules.setdefault(old, importlib.import_module(new))
    return mlflow.tensorflow.load_model(model_uri)



def log_robustness(result, title: str) -> None:
    """Curves as step metrics (step = level index; ``robustness/<effect>/level`` holds the level
    at that step), summaries as metrics, the tidy tables as CSV / MLflow tables, and PNGs: the
    curves, and the target condition's per-chip accuracies against the spec (CSV and histogram)."""
    from pipeline.app import plots

    statistics = ("acc_mean", "acc_low", "acc_high", "acc_std", "acc_min", "acc_p5", "yield", "yield_low", "yield_high")
    steps = []
    for row in result.curves.to_dict(orient="records"):
        prefix = f"robustness/{row['effect']}"
        values = {"level": row["level"], **{key: row[key] for key in statistics if key in row}}
        steps.append(({f"{prefix}/{key}": value for key, value in values.items()}, int(row["level_index"])))
    log_step_metrics(steps)
    log_metrics({**result.summaries, "robust_acc_clean": result.clean_accuracy,
                 "robust_eval_seconds": result.seconds, "robust_eval_traces": result.traces})
    mlflow.log_text(result.per_chip.to_csv(index=False), "robustness/chips.csv")
    target = result.per_chip.loc[result.per_chip.effect == "target", ["chip", "accuracy"]]
    mlflow.log_text(target.to_csv(index=False), "robustness/target_chips.csv")
    log_table(result.curves, "robustness/curves")
    log_figure(plots.robustness_figure({title: result.curves}, f"{title}: robustness"), "robustness/curves.png")
    log_figure(plots.target_distribution_figure(target["accuracy"].to_numpy(), result.summaries,
                                                f"{title}: accuracy of each chip at the target"), "robustness/target_histogram.png")
    if result.lifetime is not None:
        log_lifetime(result.lifetime, result.summaries, title)


def log_lifetime(lifetime, summaries: dict, title: str) -> None:
    """The target's chips over time: step metrics ``lifetime/<compensation>/<statistic>`` (step = time
    index; ``lifetime/<compensation>/time_s`` holds the time), the tables as CSV and the figure."""
    from pipeline.app import plots

    statistics = ("time_s", "acc_mean", "acc_low", "acc_high", "yield", "yield_low", "yield_high")
    log_step_metrics([({f"lifetime/{row['compensation']}/{key}": row[key] for key in statistics if key in row}, int(row["time_index"]))
                      for row in lifetime.curves.to_dict(orient="records")])
    mlflow.log_text(lifetime.per_chip.to_csv(index=False), "lifetime/chips.csv")
    log_table(lifetime.curves, "lifetime/curves")
    log_figure(plots.lifetime_figure(lifetime.curves, lifetime.lifetimes, summaries.get("accuracy_spec"), lifetime.lifetime_yield,
                                     f"{title}: the target's chips over time"),
               "lifetime/curves.png")
