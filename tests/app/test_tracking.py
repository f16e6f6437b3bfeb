"""Stages against a real (temporary) SQLite tracking store."""

import mlflow
import numpy as np
import pytest

from pipeline.app import stages, tracking
from pipeline.config import DataConfig, ModelConfig, TrainConfig
from pipeline.learning.data import prepare

from conftest import all_runs


def test_prepare_run_is_reused_only_for_same_params_and_data(tracking_store):
    config = DataConfig(source="bundled", limit=100, seed=1)
    first = stages.prepare_stage(config)
    second = stages.prepare_stage(config)
    assert not first.reused and second.reused and second.run_id == first.run_id
    other = stages.prepare_stage(DataConfig(source="bundled", limit=100, seed=2))
    assert not other.reused and other.run_id != first.run_id
    runs = [r for r in all_runs(tracking_store) if r.data.tags.get("stage") == "prepare"]
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    reloaded = tracking.download_prepared_data(first.uri)
    assert reloaded.content_hash == first.data.content_hash
    run = mlflow.get_run(first.run_id)
    assert run.data.tags["data_source"] == "bundled" and run.data.tags["data_hash"] == first.data.content_hash
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"mnist-train", "mnist-val", "mnist-test"}


def test_training_stage_logs_everything_and_model_reloads(tracking_store):
    data = prepare(DataConfig(source="bundled", limit=100, seed=3))
    row = stages.training_stage(
        "qat", ModelConfig(bits=1, hidden_units=(32,)), TrainConfig(epochs=2, batch_size=32),
        lambda: stages.prepare_stage(DataConfig(source="bundled", limit=100, seed=3), data=data),
    )
    run = mlflow.get_run(row["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "qat-mlp-1bit"
    assert run.data.tags["stage"] == "qat" and run.data.tags["mlflow.note.content"]
    for metric in ("test_accuracy", "test_loss", "model_size_float32_bytes", "model_size_packed_bytes",
                   "compression_ratio", "model_size_file_bytes", "model_size_tflite_bytes", "training_seconds",
                   "deployed_accuracy", "deployed_agreement", "deployed_latency_ms", "deployed_images_per_s"):
        assert metric in run.data.metrics, metric
    assert run.data.metrics["deployed_agreement"] >= 0.999 and run.data.tags["tflite_converter"] == "larq-compute-engine"
    deployed = {a.path: a.file_size for a in mlflow.MlflowClient().list_artifacts(row["run_id"], "deploy")}
    assert deployed["deploy/model.tflite"] == run.data.metrics["model_size_tflite_bytes"]
    history = mlflow.MlflowClient().get_metric_history(row["run_id"], "val_accuracy")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(row["run_id"], "plots")}
    assert artifacts == {"plots/confusion_matrix.png", "plots/training_curves.png"}
    # The prepare run it started is nested under it.
    prepare_run = mlflow.get_run(run.data.tags["data_run_id"])
    assert prepare_run.data.tags["mlflow.parentRunId"] == row["run_id"]

    reloaded = tracking.load_model(row["model_uri"])
    assert reloaded.predict(data.images("test")[:4], verbose=0).shape == (4, 10)


@pytest.mark.parametrize("bits", [1, 3])
def test_logged_model_reloads_with_the_same_predictions(tracking_store, tiny_data, bits):
    from pipeline.learning.models import build_model
    from pipeline.learning.training import seed_everything, train

    seed_everything(0)
    model = build_model(ModelConfig(bits=bits, hidden_units=(32,)))
    train(model, tiny_data, TrainConfig(epochs=1, batch_size=64), verbose=0)
    images = tiny_data.images("test")
    with mlflow.start_run():
        uri = tracking.log_model(model, images[:4])
    reloaded = tracking.load_model(uri)
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)
    assert type(reloaded.get_layer("dense_1")).__name__ == "QuantDense"


def test_failing_stage_ends_failed(tracking_store):
    def broken_data():
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        stages.training_stage("baseline", ModelConfig(bits=32), TrainConfig(epochs=1), broken_data)
    runs = all_runs(tracking_store)
    assert [r.info.status for r in runs] == ["FAILED"]


def test_a_target_that_drifts_logs_the_chips_over_time_and_the_comparison_shows_the_lifetimes(tracking_store):
    from pipeline.app import compare
    from pipeline.config import RobustnessConfig
    from pipeline.effects import EFFECTS
    from pipeline.perturbation import PerturbationConfig

    data = prepare(DataConfig(source="bundled", limit=100, seed=3))
    target = PerturbationConfig(weight_dev_pct=10, drift_time_s=86_400.0, drift_compensation="global")
    robustness = RobustnessConfig(grids={effect.name: (effect.curve.grid[0],) for effect in EFFECTS}, chips=1, target_chips=3,
                                  accuracy_spec=0.3, target=target, drift_times=(1.0, 86_400.0, 31_536_000.0))
    row = stages.training_stage("qat", ModelConfig(bits=1, hidden_units=(32,)), TrainConfig(epochs=1, batch_size=32),
                                lambda: stages.prepare_stage(DataConfig(source="bundled", limit=100, seed=3), data=data),
                                robustness=robustness, convert_tflite=False)
    run, client = mlflow.get_run(row["run_id"]), mlflow.MlflowClient()
    for mode in ("none", "global"):
        history = client.get_metric_history(row["run_id"], f"lifetime/{mode}/yield_low")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [0, 1, 2]
        assert run.data.metrics[f"robust_lifetime_s_{mode}"] in (0.0, 1.0, 86_400.0, 31_536_000.0)
    times = sorted(client.get_metric_history(row["run_id"], "lifetime/global/time_s"), key=lambda m: m.step)
    assert [m.value for m in times] == [1.0, 86_400.0, 31_536_000.0]
    assert run.data.metrics["robust_lifetime_s"] == run.data.metrics["robust_lifetime_s_global"]
    artifacts = {a.path for a in client.list_artifacts(row["run_id"], "lifetime")}
    assert {"lifetime/chips.csv", "lifetime/curves.png"} <= artifacts
    shown = compare.to_markdown(compare.comparison_table([tracking.run_row(row["run_id"])]))
    assert "lifetime (none compensation)" in shown and "lifetime (global compensation)" in shown
    plain = compare.ModelRow("qat", "mlp-1bit", "0" * 32, "models:/m-0", {"test_accuracy": 0.9})
    assert "lifetime" not in compare.to_markdown(compare.comparison_table([plain]))  # no drift: no lifetime columns
