"""Per-layer sensitivity: one layer perturbed at a time, on float, 1-bit and k-bit MLPs and CNNs."""

import dataclasses

import mlflow
import pytest

from conftest import all_runs, first_main_id, run_cli, short_grids
from pipeline.config import ModelConfig, RobustnessConfig, TrainConfig
from pipeline.effects import EFFECT_NAMES
from pipeline.perturbation import PerturbationConfig
from pipeline.learning.models import build_model
from pipeline.evaluation.robustness import evaluate_robustness
from pipeline.evaluation.sensitivity import layer_sensitivity
from pipeline.learning.training import seed_everything, train

TARGET = PerturbationConfig(noise_sigma=0.3, weight_dev_pct=30, clip_mode="relative", clip_fraction=0.5, perturb_layers="all")


def small_config(levels: int = 2) -> RobustnessConfig:
    grids = {name.removesuffix("_grid"): grid for name, grid in short_grids(levels).items()}
    return RobustnessConfig(grids=grids, chips=2, target_chips=6, accuracy_spec=0.5, target=TARGET)


@pytest.mark.parametrize("arch, bits", [("mlp", 32), ("mlp", 1), ("mlp", 2), ("cnn", 1), ("cnn", 32), ("cnn", 2)])
def test_every_layer_alone_on_every_kind_of_model(tiny_data, arch, bits):
    seed_everything(0)
    config = ModelConfig(arch=arch, bits=bits, hidden_units=(32,))
    model = build_model(config)
    train(model, tiny_data, TrainConfig(epochs=1, batch_size=64), verbose=0)
    result = layer_sensitivity(model, tiny_data, small_config(), progress=None)
    layers = list(config.quantized_layer_names)  # perturb_layers=all: every dense and convolution layer
    assert list(dict.fromkeys(result.table.layer)) == layers
    assert len(result.table) == len(layers) * (len(EFFECT_NAMES) + 1)
    assert list(result.layer_seconds) == layers and all(seconds > 0 for seconds in result.layer_seconds.values())
    assert (result.table["drop"] == result.clean_accuracy - result.table["accuracy"]).all()
    target = result.table[result.table.effect == "target"].set_index("layer")
    assert list(result.ranking.layer) == list(target["drop"].sort_values(ascending=False, kind="stable").index)
    assert ((target["low"] <= target["accuracy"]) & (target["accuracy"] <= target["high"])).all()
    metrics = result.metrics()
    assert {f"sensitivity/{layer}/{effect}" for layer in layers for effect in (*EFFECT_NAMES, "target")} <= set(metrics)
    assert all(f"sensitivity/{layer}/target_yield" in metrics for layer in layers)


def test_a_layer_alone_is_the_robustness_evaluation_of_that_layer(tiny_data):
    """The sensitivity of a layer is exactly the robustness evaluation with perturb_layers = that layer."""
    seed_everything(1)
    model = build_model(ModelConfig(bits=1, hidden_units=(32, 32)))
    train(model, tiny_data, TrainConfig(epochs=2, batch_size=64), verbose=0)
    config = small_config()
    result = layer_sensitivity(model, tiny_data, config, layers=["dense_2"], progress=None)
    alone = evaluate_robustness(model, tiny_data, dataclasses.replace(config, target=TARGET.replace(perturb_layers="dense_2")),
                                progress=None)
    table = result.table.set_index("effect")
    for effect in EFFECT_NAMES:
        assert table.loc[effect, "accuracy"] == alone.summaries[f"robust_auc_{effect}"]
    assert table.loc["target", "accuracy"] == alone.summaries["robust_acc_target"]
    assert table.loc["target", "yield"] == alone.summaries["robust_yield_target"]


@pytest.mark.slow
def test_sensitivity_entry_point_logs_a_linked_run_with_heatmap_and_ranking(shared):
    """The shared store's `sensitivity` of its first main's 1-bit model (`--perturb_layers dense`)."""
    result = shared.result("sensitivity")
    assert "Which layer to protect first" in result["stdout"] and "**first**" in result["stdout"]
    (run,) = [run for run in all_runs(shared.uri) if run.data.tags.get("stage") == "sensitivity"]
    qat = mlflow.get_run(run.data.tags["model_run_id"])
    assert qat.data.tags["stage"] == "qat" and qat.data.tags["mlflow.parentRunId"] == first_main_id(shared.uri)
    assert run.info.status == "FINISHED"
    assert run.data.tags["most_sensitive_layer"] in ("dense_1", "dense_2", "dense_out")
    assert {f"sensitivity/{layer}/target_drop" for layer in ("dense_1", "dense_2", "dense_out")} <= set(run.data.metrics)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "sensitivity")}
    assert {"sensitivity/heatmap.png", "sensitivity/ranking.md", "sensitivity/table.csv"} <= artifacts
    # an unknown layer: a named error before any run; nothing recorded changes
    bad = run_cli("sensitivity", "--run_id", qat.info.run_id, "--perturb_layers", "dense_9")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: perturb_layers: ")
    assert len([r for r in all_runs(shared.uri) if r.data.tags.get("stage") == "sensitivity"]) == 1
