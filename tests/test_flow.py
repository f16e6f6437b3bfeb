"""The stage's work without a tracking store: pipeline.flow runs, returns a typed outcome, imports no MLflow."""

import subprocess
import sys

import pytest

from conftest import PROJECT_ROOT
from pipeline import flow
from pipeline.config import ModelConfig, RobustnessConfig, TrainConfig
from pipeline.perturbation import PerturbationConfig


def test_the_core_imports_no_mlflow():
    code = ("import sys, pipeline.flow, pipeline.evaluation.sensitivity, pipeline.deploy.manifest; "
            "sys.exit('mlflow' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT).returncode == 0


@pytest.fixture(scope="module")
def outcome(tiny_data):
    robustness = RobustnessConfig(chips=2, target_chips=3, grids={"noise": "0,0.5"}, accuracy_spec=0.5,
                                  target=PerturbationConfig(noise_sigma=0.3))
    return flow.run_stage(ModelConfig(bits=1, hidden_units=(32,)), TrainConfig(epochs=1, seed=3), tiny_data, "flow-test",
                          PerturbationConfig(weight_dev_pct=10.0), robustness, convert_tflite=False)


def test_a_stage_runs_without_a_tracking_store(outcome):
    assert "mlflow" not in sys.modules or sys.modules["mlflow"].active_run() is None
    assert outcome.deployment.converter == flow.SKIPPED and outcome.deployment.metrics() == {}
    assert outcome.manifest is not None and outcome.manifest_error is None
    assert outcome.robustness is not None and outcome.robustness.summaries["robust_target_chips"] == 3
    metrics = outcome.metrics()
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["epochs"] == 1
    assert metrics["model_size_packed_bytes"] < metrics["model_size_float32_bytes"]
    assert metrics["robust_yield_target_low"] <= metrics["robust_yield_target"] <= metrics["robust_yield_target_high"]


def test_timings_add_up_to_the_total(outcome):
    timings = outcome.timings.as_metrics(logging=0.25)
    parts = [value for key, value in timings.items() if key not in ("time_total_s", "time_logging_s")]
    assert set(timings) == {"time_build_s", "time_fit_s", "time_evaluate_s", "time_size_s", "time_deploy_s",
                            "time_robustness_s", "time_logging_s", "time_total_s"}
    assert all(value >= 0 for value in parts) and timings["time_fit_s"] > 0
    assert timings["time_total_s"] == pytest.approx(sum(parts) + 0.25)


def test_the_outcome_is_frozen(outcome):
    with pytest.raises(AttributeError):
        outcome.manifest = None
