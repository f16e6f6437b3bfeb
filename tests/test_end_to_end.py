"""The MLflow project end to end, through `mlflow run`, against a temporary SQLite store."""

import mlflow
import pytest

from conftest import SHARED_MAIN, all_runs, first_main_id, main_runs, run_cli, run_mlflow_project, short_grids
from pipeline.app.compare import ROBUSTNESS_COLUMNS as ROBUSTNESS_METRICS

TINY = {**SHARED_MAIN, **short_grids(3)}


def runs_by_stage(uri, parent_id: str | None = None):
    """The runs of the store by stage (only the children of ``parent_id`` if given)."""
    grouped = {}
    for run in all_runs(uri):
        if parent_id is None or run.data.tags.get("mlflow.parentRunId") == parent_id:
            grouped.setdefault(run.data.tags.get("stage"), []).append(run)
    return grouped


def first_main(uri):
    return mlflow.get_run(first_main_id(uri))


@pytest.mark.slow
def test_main_entry_point(shared):
    result = shared.result("main")  # `mlflow run . -e main` with SHARED_MAIN and 3-level grids
    assert "Comparison" in result["stdout"] and "mlp-1bit" in result["stdout"]
    terminal = result["stdout"] + result["stderr"]
    native = [line for line in terminal.splitlines() if line[:1] in "IWE" and line[1:5].isdigit()]
    assert not native, native[:3]  # a quiet terminal: no TensorFlow / converter C++ log lines
    assert "retracing" not in terminal  # each model's first trace is no warning
    assert "INFO: Created TensorFlow Lite" not in result["stderr"]  # nor TFLite's

    parent = first_main(shared.uri)
    stages = runs_by_stage(shared.uri, parent.info.run_id)
    assert {k: len(v) for k, v in stages.items()} == {"prepare": 1, "baseline": 1, "qat": 1, "compared": 1, "perturb": 1}
    assert parent.info.status == "FINISHED" and all(run.info.status == "FINISHED" for runs in stages.values() for run in runs)
    for stage in ("prepare", "baseline", "qat", "compared", "perturb"):
        assert stages[stage][0].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.info.run_name == "main-mlp-1bit"
    assert parent.data.tags["data_source"] == "bundled"

    baseline, qat, kbit, perturb = (stages[stage][0].data for stage in ("baseline", "qat", "compared", "perturb"))
    assert kbit.tags["model"] == "mlp-2bit" and parent.data.params["main.compare_bits"] == "2"
    # The perturbation-aware model trains at the target hardware's levels by default.
    assert stages["perturb"][0].info.run_name == "perturb-mlp-1bit-d20-s0.30-c0.50"
    assert perturb.params["perturb.noise_sigma"] == "0.3" and perturb.tags["perturbed_layers"] == "dense_1,dense_2"
    for run in (baseline, qat, kbit, perturb):
        for metric in ROBUSTNESS_METRICS:
            assert 0 <= run.metrics[metric] <= 1, metric
        for metric in ("test_accuracy", "test_loss", "model_size_float32_bytes", "model_size_packed_bytes",
                       "compression_ratio", "model_size_file_bytes", "model_size_tflite_bytes", "training_seconds"):
            assert metric in run.metrics
        assert run.tags["tflite_converter"] == ("tflite" if run is baseline else "larq-compute-engine")
        assert run.metrics["deployed_agreement"] >= 0.999 and "deployed_warning" not in run.tags
    for run in (baseline, qat):  # 10 classes, 2 epochs on 200 images: far above chance
        assert run.metrics["test_accuracy"] > 0.3
    assert perturb.metrics["test_accuracy"] > 0.15  # trained under the target hardware's noise: slower to learn
    assert qat.tags["tflite_converter"] == "larq-compute-engine"
    assert qat.metrics["model_size_packed_bytes"] <= baseline.metrics["model_size_packed_bytes"] / 20
    assert parent.data.metrics["test_accuracy"] == qat.metrics["test_accuracy"]
    assert parent.data.metrics["baseline_test_accuracy"] == baseline.metrics["test_accuracy"]

    client = mlflow.MlflowClient(shared.uri)
    parent_artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")}
    assert {"comparison/comparison.csv", "comparison/comparison.md", "comparison/comparison.png",
            "comparison/comparison.json", "comparison/robustness_overlay.png"} <= parent_artifacts
    assert parent.data.metrics["perturb_robust_acc_target"] == perturb.metrics["robust_acc_target"]
    for stage, run in (("baseline", baseline), ("qat", qat), ("compared", kbit)):  # the deployed models side by side
        assert parent.data.metrics[f"{stage}_deployed_latency_ms"] == run.metrics["deployed_latency_ms"]
    file_bytes = [run.metrics["model_size_tflite_bytes"] for run in (qat, kbit, baseline)]
    assert file_bytes[0] < file_bytes[1] < file_bytes[2] / 4  # 1-bit < 2-bit < float32 / 4
    markdown = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/comparison/comparison.md")
    assert "target accuracy" in markdown and "ms/image" in markdown and markdown.count("mlp-1bit") == 2
    qat_artifacts = {a.path for a in client.list_artifacts(stages["qat"][0].info.run_id)}
    assert {"plots", "larq_summary.txt", "robustness", "deploy"} <= qat_artifacts
    manifest = mlflow.artifacts.load_dict(f"runs:/{stages['perturb'][0].info.run_id}/deploy/hardware_manifest.json")
    assert [layer["name"] for layer in manifest["layers"]] == ["dense_1", "dense_2", "dense_out"]
    assert [bool(layer["effects"]["trained_with"]) for layer in manifest["layers"]] == [True, True, False]
    deployed = {a.path for a in client.list_artifacts(stages["qat"][0].info.run_id, "deploy")}
    assert deployed == {"deploy/model.tflite", "deploy/hardware_manifest.json"}
    robustness = {a.path for a in client.list_artifacts(stages["qat"][0].info.run_id, "robustness")}
    assert {"robustness/curves.png", "robustness/curves.csv", "robustness/chips.csv", "robustness/curves.json"} <= robustness
    curve = client.get_metric_history(stages["qat"][0].info.run_id, "robustness/noise/acc_mean")
    levels = client.get_metric_history(stages["qat"][0].info.run_id, "robustness/noise/level")
    assert [m.step for m in curve] == [0, 1, 2]
    assert [m.value for m in levels] == pytest.approx([float(level) for level in TINY["noise_grid"].split(",")])
    # MLflow 3 keeps the model as a LoggedModel linked to the run; its URI is recorded on the run.
    assert qat.tags["model_uri"].startswith("models:/")
    reloaded = mlflow.tensorflow.load_model(qat.tags["model_uri"])
    assert reloaded.name == "mlp-1bit"
    summary = mlflow.artifacts.load_text(f"runs:/{stages['qat'][0].info.run_id}/larq_summary.txt")
    assert "# 1-bit" in summary



@pytest.mark.slow
def test_a_second_main_with_the_same_parameters_reuses_the_finished_prepare_run(shared):
    shared.result("main_again")
    tops = {}
    for run in all_runs(shared.uri):
        if "mlflow.parentRunId" not in run.data.tags:
            tops.setdefault(run.data.tags["stage"], []).append(run)
    assert {stage: len(runs) for stage, runs in tops.items()} == {"main": 2, "sweep": 1, "sensitivity": 1}  # nothing else at the top
    first, newest = main_runs(shared.uri)
    assert len(runs_by_stage(shared.uri, newest.info.run_id).get("prepare", [])) == 0  # no new prepare run under it
    assert newest.data.tags["data_run_id"] == first.data.tags["data_run_id"]
    assert newest.data.tags["data_reused"] == "True" and first.data.tags["data_reused"] == "False"
    assert newest.info.status == "FINISHED"


@pytest.mark.slow
def test_stages_hand_over_artifact_uris(tracking_store):
    prepared = run_cli("prepare", "--source", "bundled", "--limit", "100")
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    data_uri = prepared.stdout.strip().splitlines()[-1].removeprefix("data_uri=")
    assert data_uri.startswith("runs:/") and data_uri.endswith("data/prepared.npz")

    trained = run_cli("qat", "--data_uri", data_uri, "--bits", "2", "--epochs", "1", "--hidden_units", "32")
    assert trained.returncode == 0, trained.stderr[-2000:]
    stages = runs_by_stage(tracking_store)
    assert set(stages) == {"prepare", "qat"} and len(stages["prepare"]) == 1
    qat = stages["qat"][0]
    assert qat.info.status == "FINISHED" and qat.info.run_name == "qat-mlp-2bit"
    assert qat.data.tags["data_run_id"] == stages["prepare"][0].info.run_id
    assert qat.data.metrics["compression_ratio"] > 10


@pytest.mark.slow
def test_perturb_and_evaluate_entry_points(tracking_store):
    params = {**TINY, "noise_sigma": "0.2", "weight_dev_pct": "10", "clip_min": "-40", "clip_max": "40", "out_bits": "6"}
    trained = run_mlflow_project("perturb", params)
    assert trained.returncode == 0, trained.stderr[-3000:]
    perturb = runs_by_stage(tracking_store)["perturb"][0]
    assert perturb.info.status == "FINISHED"
    assert perturb.info.run_name == "perturb-mlp-1bit-d10-s0.20-c[-40,40]-adc6"
    assert perturb.data.params["perturb.clip_mode"] == "absolute"

    # The logged model reloads with its hardware configuration.
    from pipeline.hwmodel.layers import HardwareAwareQuantDense

    model = mlflow.tensorflow.load_model(perturb.data.tags["model_uri"])
    layer = model.get_layer("dense_1")
    assert isinstance(layer, HardwareAwareQuantDense) and layer.perturbation.out_bits == 6 and layer.perturbation.clip_max == 40

    evaluated = run_mlflow_project("evaluate", {"run_id": perturb.info.run_id, "chips": 2, "target_chips": 10, **short_grids(2)})
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    evaluation = runs_by_stage(tracking_store)["evaluate"][0]
    assert evaluation.info.status == "FINISHED"
    assert evaluation.data.tags["model_run_id"] == perturb.info.run_id
    assert evaluation.data.tags["data_run_id"] == perturb.data.tags["data_run_id"]
    assert evaluation.data.metrics["test_accuracy"] == pytest.approx(perturb.data.metrics["test_accuracy"])
    for metric in ROBUSTNESS_METRICS:
        assert metric in evaluation.data.metrics
