"""Bad input at the command line: one clear line naming the parameter, exit 2, nothing FINISHED."""

import numpy as np
import pytest

from conftest import all_runs, run_cli, run_mlflow_project
from pipeline.config import RobustnessConfig
from pipeline.validation import ConfigError
from pipeline.perturbation import PerturbationConfig


@pytest.mark.parametrize(
    "args, parameter",
    [
        (["main", "--dataset", "cifar10"], "dataset"),
        (["main", "--source", "internet"], "source"),
        (["main", "--arch", "resnet"], "arch"),
        (["main", "--bits", "9"], "bits"),
        (["main", "--bits", "32"], "bits"),
        (["main", "--compare_bits", "9"], "compare_bits"),
        (["main", "--compare_bits", "32"], "compare_bits"),  # the float model is always compared
        (["main", "--compare_bits", "two"], "compare_bits"),
        (["qat", "--compare_bits", "2"], "compare_bits"),  # main only
        (["qat", "--verbose", "loud"], "verbose"),
        (["qat", "--bits", "0"], "bits"),
        (["baseline", "--epochs", "0"], "epochs"),
        (["baseline", "--epochs", "two"], "epochs"),
        (["qat", "--batch_size", "-1"], "batch_size"),
        (["main", "--learning_rate", "-0.1"], "learning_rate"),
        (["prepare", "--val_fraction", "1.5"], "val_fraction"),
        (["prepare", "--source", "path"], "data_path"),
        (["prepare", "--source", "path", "--data_path", "/nonexistent/mnist.npz"], "data_path"),
        (["main", "--hidden_units", "512,abc"], "hidden_units"),
        (["perturb", "--noise_sigma", "-0.5"], "noise_sigma"),
        (["perturb", "--weight_dev_pct", "-1"], "weight_dev_pct"),
        (["perturb", "--clip_min", "10", "--clip_max", "5"], "clip_max"),
        (["perturb", "--clip_min", "0", "--clip_max", "255", "--out_bits", "0"], "out_bits"),
        (["perturb", "--clip_fraction", "1.5"], "clip_fraction"),
        (["perturb", "--tile_rows", "0"], "tile_rows"),
        (["perturb", "--tile_rows", "2.5"], "tile_rows"),
        (["perturb", "--acc_bits", "33"], "acc_bits"),
        (["perturb", "--acc_bits", "8", "--acc_format", "gray"], "acc_format"),
        (["perturb", "--acc_bits", "8", "--clip_min", "0", "--clip_max", "255"], "acc_bits"),
        (["perturb", "--bits", "2", "--acc_bits", "8", "--acc_format", "popcount"], "acc_format"),  # no +-1 products
        (["main", "--target", "sweeps/target_hardware_tiles.yaml"], "acc_format"),  # the float baseline has no +-1 products
        (["baseline", "--target", "sweeps/target_hardware_tiles.yaml"], "acc_format"),
        (["main", "--perturb_layers", "dense_1,dense_7"], "perturb_layers"),
        (["perturb", "--arch", "cnn", "--perturb_layers", "dense_2"], "perturb_layers"),
        (["qat", "--chips", "0"], "chips"),
        (["qat", "--chips_per_pass", "-1"], "chips_per_pass"),
        (["qat", "--target_chips", "0"], "target_chips"),
        (["qat", "--accuracy_spec", "1.5"], "accuracy_spec"),
        (["qat", "--accuracy_spec", "ninety"], "accuracy_spec"),
        (["qat", "--yield_tolerance", "0.01"], "yield_tolerance"),  # gone: an unknown parameter
        (["sweep", "--objective", "yield", "--accuracy_spec", "none"], "accuracy_spec"),  # a yield needs a spec  # gone: an unknown parameter
        (["perturb", "--drift_time_s=-1"], "drift_time_s"),
        (["perturb", "--drift_time_s", "3600", "--drift_nu_std", "-0.1"], "drift_nu_std"),
        (["perturb", "--drift_compensation", "per_column"], "drift_compensation"),
        (["qat", "--drift_times", ","], "drift_times"),  # empty
        (["qat", "--drift_times", "3600,60"], "drift_times"),  # not increasing
        (["qat", "--drift_times=-1,60"], "drift_times"),
        (["qat", "--lifetime_yield", "0"], "lifetime_yield"),
        (["qat", "--lifetime_yield", "1.5"], "lifetime_yield"),
        (["qat", "--noise_grid", "0,-1"], "noise_grid"),
        (["qat", "--clip_grid", "1,0"], "clip_grid"),
        (["baseline", "--target", "missing.yaml"], "target"),
        (["qat", "--weight_dev_grid", "0,2000"], "weight_dev_grid"),
        (["main", "--voltage", "3"], "voltage"),
        (["qat", "--noise", "0.3"], "noise"),  # no abbreviations: --noise is not --noise_grid
        (["qat", "--noise_sigma", "0.3"], "noise_sigma"),  # qat trains plainly: no training levels
        (["evaluate"], "model_uri"),
        (["evaluate", "--run_id", "0123456789abcdef0123456789abcdef"], "run_id"),
    ],
)
def test_bad_parameters_fail_fast_with_a_named_error(tracking_store, args, parameter):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: {parameter}: "), result.stderr
    assert "Traceback" not in result.stderr
    assert all_runs(tracking_store) == []  # nothing was started, nothing recorded


def test_corrupt_data_file_fails_before_training(tracking_store, tmp_path):
    path = tmp_path / "broken.npz"
    np.savez(path, images=np.zeros((5, 28, 28)))
    result = run_cli("main", "--source", "path", "--data_path", str(path))
    assert result.returncode == 2
    assert "error: data_path:" in result.stderr and "x_train" in result.stderr
    assert all_runs(tracking_store) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "params, message",
    [({"bits": "12"}, "error: bits:"), ({"source": "path", "data_path": "/nope"}, "error: data_path:"),
     ({"voltage": "3"}, "error: voltage: unknown parameter of `main`; known: ")],  # passed on as --voltage 3
)
def test_bad_input_through_mlflow_run_leaves_a_failed_run(tracking_store, params, message):
    result = run_mlflow_project("main", params)
    assert result.returncode != 0
    assert message in result.stderr
    runs = all_runs(tracking_store)
    assert len(runs) == 1 and runs[0].info.status == "FAILED"


def test_training_levels_default_to_the_target_on_the_given_layers():
    from pipeline.cli import build_parser
    from pipeline.cli.arguments import hardware_configs, qat_model_config

    def levels(*argv):
        args = build_parser().parse_args(["main", *argv])
        return hardware_configs(args, qat_model_config(args), with_perturbation=True)

    robustness, target_levels = levels()
    assert target_levels == robustness.target and not target_levels.is_ideal
    _, on_dense = levels("--perturb_layers", "dense")  # only the layers given: the target's levels there
    assert on_dense == robustness.target.replace(perturb_layers="dense")
    _, noise_only = levels("--noise_sigma", "0.2")  # a level given: the others off, the target's layers
    assert noise_only == PerturbationConfig(noise_sigma=0.2, perturb_layers=robustness.target.perturb_layers)
    assert robustness.batch_size == RobustnessConfig().batch_size  # not the training batch size


def test_the_accuracy_spec_comes_from_the_target_file_unless_given(tmp_path):
    from pipeline.cli import build_parser
    from pipeline.cli.arguments import robustness_config

    def spec(*argv):
        return robustness_config(build_parser().parse_args(["qat", *argv])).accuracy_spec

    target = tmp_path / "target.yaml"
    target.write_text("weight_dev_pct: 10\naccuracy_spec: 0.9\n")
    assert spec("--target", str(target)) == 0.9
    assert spec("--target", str(target), "--accuracy_spec", "0.8") == 0.8  # -P accuracy_spec=... overrides the file
    assert spec("--target", str(target), "--accuracy_spec", "none") is None  # no yield asked for
    target.write_text("weight_dev_pct: 10\n")
    assert spec("--target", str(target)) is None
    target.write_text("weight_dev_pct: 10\naccuracy_spec: 90\n")  # a percentage where a fraction is meant
    with pytest.raises(ConfigError, match="target: accuracy_spec: must be in \\[0.0, 1.0\\]; got 90"):
        spec("--target", str(target))


@pytest.mark.parametrize("verbose", [False, True])
def test_tensorflow_native_log_lines_stay_out_of_the_terminal_unless_verbose(verbose):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HWL_VERBOSE": "1" if verbose else "0"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    code = ("import pipeline, sys; import tensorflow as tf; print('loaded', file=sys.stderr); "
            "print(int(sum(tf.data.Dataset.range(4).map(lambda x: 2 * x, num_parallel_calls=2))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "12", result.stderr
    native = [line for line in result.stderr.splitlines() if line[:1] in "IWE" and line[1:5].isdigit()]
    assert "loaded" in result.stderr
    assert bool(native) == verbose, result.stderr  # oneDNN / CUDA notices at import: there, and only when asked for
