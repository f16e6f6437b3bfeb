"""The Optuna sweep: search-space validation, end to end, resume, pruning, divergence, Pareto, many workers."""

import os
import re
import signal
import subprocess
import sys
import time

import mlflow
import optuna
import pytest

from pipeline.config import ConfigError
from sweeps.space import load_space

from conftest import PROJECT_ROOT, all_runs, as_flags, run_cli, short_grids

TINY = ["--limit", "100", "--epochs", "3", "--hidden_units", "32", "--chips", "1", "--target_chips", "5", *as_flags(short_grids(2)), "--source", "bundled"]


def write_space(tmp_path, body: str, name="space.yaml"):
    (tmp_path / "target.yaml").write_text("noise_sigma: 0.3\nweight_dev_pct: 20\nclip_mode: relative\nclip_fraction: 0.5\n")
    path = tmp_path / name
    path.write_text(body)
    return path


@pytest.mark.parametrize(
    "params, entry, message",
    [
        ("voltage: {low: 0, high: 1}", "params.voltage", "unknown parameter; known: .*noise_sigma"),
        ("noise_sigma: {low: 0.5, high: 0.1}", "params.noise_sigma", "low \\(0.5\\) > high \\(0.1\\)"),
        ("noise_sigma: {low: -0.5, high: 0.1}", "params.noise_sigma", "must be in \\[0.0, inf\\]; got -0.5 .at the corner"),
        ("weight_dev_pct: {low: 0, high: 50, log: true}", "params.weight_dev_pct", "log range needs low > 0"),
        ("weight_dev_pct: {low: 1, high: 50, step: 2}", "params.weight_dev_pct", "unknown key"),
        ("noise_sigma: {low: 0.1}", "params.noise_sigma", "needs both low and high"),
        ("clip_fraction: {low: 0, high: 1}", "params.clip_fraction", "must be in \\(0.0, 1.0\\]"),
        ("clip_fraction: null\n  clip_min: {low: -100, high: 10}\n  clip_max: {low: 5, high: 100}", "params.clip_max",
         "greater than clip_min.*clip_min=10, clip_max=5"),
        ("clip_min: -100", "params.clip_min", "needs both"),
        ("clip_min: -100\n  clip_max: 100\n  clip_fraction: {low: 0.2, high: 1}", "params.clip_fraction", "needs clip_mode=relative"),
        ("out_bits: {low: 0, high: 8}", "params.out_bits", "from 1 to 16"),
        ("perturb_layers: {low: 1, high: 2}", "params.perturb_layers", "only be fixed"),
        ("tile_rows: {low: 0, high: 256}", "params.tile_rows", "must be >= 1"),
        ("clip_fraction: null\n  acc_bits: 8\n  clip_min: -100\n  clip_max: 100", "params.acc_bits", "either acc_bits or clip_min"),
    ],
)
def test_search_space_errors_name_the_entry(tmp_path, params, entry, message):
    path = write_space(tmp_path, f"target: target.yaml\nparams:\n  {params}\n")
    with pytest.raises(ConfigError, match=message) as raised:
        load_space(path)
    assert raised.value.parameter == f"space: {entry}"


def test_search_space_file_level_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown top-level key.*trials"):
        load_space(write_space(tmp_path, "target: target.yaml\ntrials: 3\nparams: {}\n"))
    with pytest.raises(ConfigError, match="must name the target"):
        load_space(write_space(tmp_path, "params: {noise_sigma: {low: 0, high: 1}}\n"))
    with pytest.raises(ConfigError, match="unknown key.*volts"):
        load_space(write_space(tmp_path, "target: {volts: 3}\nparams: {}\n"))
    with pytest.raises(ConfigError, match="no such search-space file"):
        load_space(tmp_path / "missing.yaml")


def test_yield_objective_needs_the_targets_accuracy_spec(tracking_store, tmp_path):
    """A target without accuracy_spec cannot score yields: a named error before any data or run."""
    space = tmp_path / "space.yaml"
    space.write_text("target: {weight_dev_pct: 20, noise_sigma: 0.3}\nparams: {}\n")
    assert load_space(space).accuracy_spec is None
    space.write_text("target: {weight_dev_pct: 20, accuracy_spec: 0.8}\nparams: {}\n")
    assert load_space(space).accuracy_spec == 0.8
    space.write_text("target: {weight_dev_pct: 20, noise_sigma: 0.3}\nparams: {}\n")
    result = run_cli("sweep", "--space", str(space), "--objective", "yield")
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: accuracy_spec: objective=yield")
    assert all_runs(tracking_store) == []


def test_default_space_suggests_valid_levels_within_its_ranges():
    space = load_space(PROJECT_ROOT / "sweeps" / "space.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        levels = space.suggest(trial)
        for name, spec in space.ranges.items():
            assert spec.low <= getattr(levels, name) <= spec.high
        assert levels.clip_mode.value == "relative" and levels.perturb_layers == "hidden"
        study.tell(trial, 0.0)
    assert space.target.weight_dev_pct == 20


def test_a_target_that_drifts_adds_the_training_time_of_drift_to_the_space(tmp_path):
    space = write_space(tmp_path, "target: {weight_dev_pct: 20, drift_time_s: 2592000, drift_nu_mean: 0.06, "
                                  "drift_compensation: global}\nparams: {}\n")
    found = load_space(space)
    assert "drift_time_s" in found.ranges and vars(found.ranges["drift_time_s"]) == {
        "low": 3600.0, "high": 25_920_000.0, "log": True, "integer": False}
    assert found.fixed["drift_nu_mean"] == 0.06 and found.fixed["drift_compensation"] == "global"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    levels = found.suggest(study.ask())
    assert 3600 <= levels.drift_time_s <= 25_920_000 and levels.drift_nu_mean == 0.06
    fixed = load_space(write_space(tmp_path, "target: {drift_time_s: 60}\nparams: {drift_time_s: 0}\n", "fixed.yaml"))
    assert "drift_time_s" not in fixed.ranges and fixed.fixed["drift_time_s"] == 0  # the file's own choice wins
    plain = load_space(PROJECT_ROOT / "sweeps" / "space.yaml")  # a target without drift: the space is unchanged
    assert not any(name.startswith("drift") for name in [*plain.ranges, *plain.fixed])


EDGE_SPACE = {"noise_sigma": (0.0, 0.8), "weight_dev_pct": (0.0, 60.0), "clip_fraction": (0.2, 1.0),
              "weight_ber": (1e-4, 0.1, True), "out_bits": (3, 8)}


@pytest.mark.parametrize(
    "ranges, best, expected",
    [
        ({}, {"noise_sigma": 0.78}, ["noise_sigma upper [0, 0.8]"]),  # 0.78 of [0, 0.8]: the outer 5 %
        ({}, {"noise_sigma": 0.75}, []),  # 0.9375 of the range: inside
        ({}, {"noise_sigma": 0.01}, []),  # at the lower edge, but 0 is a hard limit (a noise level >= 0)
        ({}, {"weight_dev_pct": 59.0, "clip_fraction": 0.21}, ["weight_dev_pct upper [0, 60]", "clip_fraction lower [0.2, 1]"]),
        ({}, {"clip_fraction": 0.99}, []),  # clip_fraction <= 1: a hard limit
        ({"weight_dev_pct": (0.0, 1000.0)}, {"weight_dev_pct": 999.0}, []),  # the parameter's own maximum
        ({}, {"weight_ber": 0.08}, ["weight_ber upper [0.0001, 0.1, log]"]),  # 0.968 of the log range, 0.8 of the linear one
        ({}, {"weight_ber": 0.005}, []),  # 0.049 of the linear range, 0.57 of the log one: inside
        ({}, {"weight_ber": 1.3e-4}, ["weight_ber lower [0.0001, 0.1, log]"]),
        ({"weight_ber": (1e-3, 0.5, True)}, {"weight_ber": 0.45}, []),  # a bit-error rate <= 0.5
        ({}, {"out_bits": 8}, ["out_bits upper [3, 8]"]),  # an integer range: 9 bits are allowed
        ({"out_bits": (1, 16)}, {"out_bits": 16}, []),  # ... 17 are not
        ({"out_bits": (1, 16)}, {"out_bits": 1}, []),
        ({"noise_sigma": 0.3}, {"noise_sigma": 0.8}, []),  # fixed, not searched (an older trial's value): nothing
        ({"clip_fraction": None, "clip_min": (-256.0, -32.0), "clip_max": (31.0, 255.0)}, {"clip_min": -255.0, "clip_max": 250.0},
         ["clip_min lower [-256, -32]", "clip_max upper [31, 255]"]),
        ({"clip_fraction": None, "clip_min": (-256.0, -32.0), "clip_max": (-20.0, 255.0)}, {"clip_min": -33.0, "clip_max": -20.0},
         ["clip_min upper [-256, -32]", "clip_max lower [-20, 255]"]),  # clip_min < clip_max allows both
        ({"clip_fraction": None, "clip_min": (-256.0, -32.0), "clip_max": (31.0, 255.0)}, {"clip_min": 40.0, "clip_max": 35.0},
         ["clip_min upper [-256, -32]", "clip_max lower [31, 255]"]),  # a trial of an older space, invalid now: no error
    ],
)
def test_best_value_at_a_widenable_edge_of_its_range_is_reported(ranges, best, expected):
    from pipeline.perturbation import PerturbationConfig
    from sweeps.report import range_warnings
    from sweeps.space import Range, SearchSpace

    specs = {**EDGE_SPACE, **ranges}
    fixed = {"noise_mode": "relative", **{name: spec for name, spec in ranges.items() if isinstance(spec, float)}}
    space = SearchSpace({name: Range(spec[0], spec[1], log=spec[2] if len(spec) > 2 else False, integer=name == "out_bits")
                         for name, spec in specs.items() if isinstance(spec, tuple)}, fixed, PerturbationConfig())
    defaults = {"noise_sigma": 0.4, "weight_dev_pct": 30.0, "clip_fraction": 0.6, "weight_ber": 0.003, "out_bits": 5,
                "clip_min": -100.0, "clip_max": 100.0}
    point = {name: defaults[name] for name in space.ranges} | best  # the other parameters mid-range
    lines = range_warnings(space, point, "my_space.yaml")
    found = []
    for line in lines:
        name, value, side, bounds = re.fullmatch(
            r"\[sweep\] best (\w+) = (\S+) lies at the (lower|upper) edge of its range \[(.+)\]: "
            r"widen the range \(my_space.yaml or -P space=\.\.\.\) and resume", line).groups()
        assert float(value) == pytest.approx(best[name], rel=1e-3)
        found.append(f"{name} {side} [{bounds}]")
    assert found == expected


def only_noise_searched() -> str:
    """Space lines that stop every other default range from being searched (the trials differ only in noise)."""
    from sweeps.space import default_space

    ranges, _ = default_space()
    return "".join(f"  {name}: null\n" for name in ranges if name != "noise_sigma")


def runs_of(uri, stage):
    return [run for run in all_runs(uri) if run.data.tags.get("stage") == stage]


@pytest.mark.slow
def test_default_sweep_end_to_end_through_mlflow_run(shared):
    result = shared.result("sweep")  # `mlflow run . -e sweep` with SHARED_SWEEP, 3-level grids, its own Optuna store
    assert "Top 3 trials" in result["stdout"] and "mlflow ui" in result["stdout"]
    (parent,) = runs_of(shared.uri, "sweep")
    trials = runs_of(shared.uri, "trial")
    assert parent.info.status == "FINISHED" and len(trials) == 3
    assert sorted(run.info.run_name for run in trials) == ["trial-000", "trial-001", "trial-002"]
    for run in trials:
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["optuna_state"] == "COMPLETE"
        assert {"perturb.noise_sigma", "perturb.weight_dev_pct", "perturb.clip_fraction"} <= set(run.data.params)
        assert 0 <= run.data.metrics["robust_acc_target"] <= 1
        assert run.data.metrics["model_size_packed_bytes"] > 0
    # Trials skip the conversion (same architecture in each); the best trial is converted and run at the end.
    best_run = parent.data.tags["best_trial_run_id"]
    for run in trials:
        converted = run.info.run_id == best_run
        assert ("model_size_tflite_bytes" in run.data.metrics) == converted
        assert (run.data.tags["tflite_converter"] == "larq-compute-engine") == converted
        deployed = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "deploy")}
        assert ("deploy/model.tflite" in deployed) == converted and "deploy/hardware_manifest.json" in deployed
        if converted:  # verified by running it, on the best trial's run
            assert run.data.metrics["deployed_agreement"] >= 0.999 and run.data.metrics["deployed_latency_ms"] > 0
    study = optuna.load_study(study_name=parent.data.tags["optuna_study"], storage=f"sqlite:///{shared.directory / 'optuna.db'}")
    assert {t.user_attrs["mlflow_run_id"] for t in study.trials} == {run.info.run_id for run in trials}
    assert parent.data.metrics["best_target_accuracy"] == pytest.approx(study.best_value)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "optuna")}
    assert {"optuna/optimization_history.png", "optuna/param_importances.png", "optuna/parallel_coordinate.png",
            "optuna/contour_top_two.png"} <= artifacts
    top = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id)}
    assert {"sweep", "comparison"} <= top
    # The best trial was compared with a plain baseline and QAT, trained once under the sweep.
    under_sweep = [run for run in all_runs(shared.uri) if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(run.data.tags["stage"] for run in under_sweep if run.data.tags["stage"] not in ("trial",)) == ["baseline", "prepare", "qat"]


def sweep_command(storage, study, *extra):
    return [sys.executable, "-m", "pipeline.cli", "sweep", "--storage", storage, "--study_name", study, *TINY, *extra]


@pytest.mark.slow
def test_interrupted_sweep_resumes_and_leaves_nothing_running(tracking_store, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    # 30 epochs: trials long enough (seconds) that the signal lands inside trial 1, not after the study
    command = sweep_command(storage, "resume-me", "--n_trials", "3", "--compare", "false", "--epochs", "30")
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not any(run.data.tags.get("optuna_trial") == "1" for run in runs_of(tracking_store, "trial")):  # mid-study
        assert process.poll() is None and time.time() < deadline, process.stdout.read()[-3000:] if process.stdout else ""
        time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output[-3000:]
    statuses = {run.data.tags.get("optuna_trial", run.data.tags["stage"]): run.info.status for run in all_runs(tracking_store)}
    assert "RUNNING" not in statuses.values(), statuses
    assert statuses["sweep"] == "KILLED" and statuses["1"] in ("KILLED", "FAILED")
    study = optuna.load_study(study_name="resume-me", storage=storage)
    assert study.trials[1].state == optuna.trial.TrialState.FAIL

    resumed = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    study = optuna.load_study(study_name="resume-me", storage=storage)
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) == 3
    parents = runs_of(tracking_store, "sweep")
    assert len(parents) == 2
    newest = max(parents, key=lambda run: run.info.start_time)
    assert newest.data.tags["resumes_study"] == "True" and newest.info.run_name == "sweep-resume-me-resumed"
    assert all(run.info.status != "RUNNING" for run in all_runs(tracking_store))
    finished_runs = {t.user_attrs["mlflow_run_id"] for t in finished}
    assert all(mlflow.get_run(run_id).info.status == "FINISHED" for run_id in finished_runs)


@pytest.mark.slow
def test_trial_of_a_killed_worker_is_failed_and_retried_by_the_next_sweep(tracking_store, tmp_path):
    """SIGKILL leaves the trial RUNNING in Optuna (nothing cleans up) and its heartbeat fresh: the next
    sweep, started well inside the grace period, fails it at start-up and retries it once. The trial
    sits at the upper edge of the noise range, so the report says to widen it."""
    space = write_space(tmp_path, "target: target.yaml\nparams:\n  noise_sigma: {low: 0.0, high: 0.8}\n" + only_noise_searched())
    storage, name = f"sqlite:///{tmp_path / 'optuna.db'}", "kill-me"
    optuna.create_study(study_name=name, storage=storage, direction="maximize").enqueue_trial({"noise_sigma": 0.8})
    # 100 epochs: trial 0 is still training when it is killed
    process = subprocess.Popen(sweep_command(storage, name, "--space", str(space), "--n_trials", "1", "--compare", "false",
                                             "--epochs", "100"),
                               cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while True:  # until trial 0 holds its MLflow run id
        assert process.poll() is None and time.time() < deadline, process.stdout.read()[-3000:] if process.stdout else ""
        trials = optuna.load_study(study_name=name, storage=storage).trials
        if "mlflow_run_id" in trials[0].user_attrs:
            break
        time.sleep(0.3)
    process.kill()  # SIGKILL: no handler runs, the trial's heartbeat thread just stops
    process.communicate(timeout=60)
    dead_run = trials[0].user_attrs["mlflow_run_id"]
    assert optuna.load_study(study_name=name, storage=storage).trials[0].state == optuna.trial.TrialState.RUNNING
    assert mlflow.get_run(dead_run).info.status == "RUNNING"

    resumed = run_cli("sweep", "--storage", storage, "--study_name", name, "--space", str(space), *TINY, "--n_trials", "1",
                      "--compare", "false")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"[sweep] marked Optuna trial 0 of dead run {dead_run} FAILED" in resumed.stdout
    study = optuna.load_study(study_name=name, storage=storage)
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states and states[0] == optuna.trial.TrialState.FAIL, states
    # Retried once, as a heartbeat-failed trial is: the same levels, as the next trial; nothing else ran.
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    assert study.trials[1].params == study.trials[0].params and study.trials[1].system_attrs["failed_trial"] == 0
    assert study.trials[1].user_attrs["mlflow_run_id"] != dead_run
    assert mlflow.get_run(dead_run).info.status == "FAILED" and mlflow.get_run(dead_run).data.tags["optuna_state"] == "FAIL"
    assert all(run.info.status != "RUNNING" for run in all_runs(tracking_store))

    warning = f"best noise_sigma = 0.8 lies at the upper edge of its range [0, 0.8]: widen the range ({space} or -P space=...)"
    assert f"[sweep] {warning}" in resumed.stdout
    parent = max(runs_of(tracking_store, "sweep"), key=lambda run: run.info.start_time)
    assert parent.data.tags["range_warnings"].startswith(warning)
    assert warning in mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/sweep/range_warnings.txt")


@pytest.mark.slow
def test_hopeless_trial_is_pruned_and_diverging_trial_fails(tracking_store, tmp_path):
    space = write_space(tmp_path, "target: target.yaml\nparams:\n  noise_sigma: {low: 0.0, high: 1.0e+30}\n"
                                  "  noise_mode: absolute\n" + only_noise_searched())
    storage, name = f"sqlite:///{tmp_path / 'optuna.db'}", "prune-me"
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    # Four fine trials; one hopeless (noise 10^4 accumulator units drowns every signal); one diverging
    # (noise near float32's maximum overflows to inf, the loss to NaN); one fine.
    for sigma in (0.0, 0.0, 0.0, 0.0, 1.0e4, 3.0e38, 0.0):
        study.enqueue_trial({"noise_sigma": sigma})
    result = run_cli("sweep", "--storage", storage, "--study_name", name, "--space", str(space), *TINY,
                     "--n_trials", "6", "--compare", "false", "--epochs", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name=name, storage=storage)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE"] * 4 + ["PRUNED", "FAIL", "COMPLETE"], states
    assert "loss" in study.trials[5].user_attrs["fail_reason"]
    pruned_run = mlflow.get_run(study.trials[4].user_attrs["mlflow_run_id"])
    failed_run = mlflow.get_run(study.trials[5].user_attrs["mlflow_run_id"])
    assert pruned_run.info.status == "KILLED" and pruned_run.data.tags["optuna_state"] == "PRUNED"
    assert failed_run.info.status == "FAILED" and "loss" in failed_run.data.tags["fail_reason"]


def run_study(tmp_path, name: str, objective: str, *extra: str):
    """A tiny sweep through the command line (it must succeed), and its study."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    result = run_cli("sweep", "--storage", storage, "--study_name", name, "--objective", objective, *TINY, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, optuna.load_study(study_name=name, storage=storage)


@pytest.mark.slow
def test_pareto_objective_reports_a_non_dominated_front(tracking_store, tmp_path):
    result, study = run_study(tmp_path, "front", "pareto", "--n_trials", "5", "--compare", "false")
    assert "Pareto front" in result.stdout
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 5 and study.best_trials
    for member in study.best_trials:
        assert not any(all(o >= m for o, m in zip(other.values, member.values)) and other.values != member.values
                       for other in complete), member.number
    (parent,) = runs_of(tracking_store, "sweep")
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "optuna")}
    assert "optuna/pareto_front.png" in artifacts
    front = mlflow.MlflowClient().list_artifacts(parent.info.run_id, "sweep")
    assert "sweep/pareto_front.csv" in {a.path for a in front}


def test_yield_objective_breaks_ties_by_target_accuracy_without_reordering_yields():
    from sweeps.config import Objective
    from sweeps.study import objective_values

    def score(passed, accuracy, chips=200):
        return objective_values(Objective.YIELD, {"robust_yield_target": passed / chips, "robust_acc_target": accuracy}, chips)

    assert score(100, 0.90) > score(100, 0.89)  # same yield: the more accurate wins
    assert score(101, 0.0) > score(100, 1.0)  # one more chip passing beats any accuracy
    assert objective_values(Objective.PARETO_YIELD, {"test_accuracy": 0.9, "robust_yield_target": 0.4}, 200) == (0.9, 0.4)


@pytest.mark.slow
def test_yield_objective_reports_the_best_yield_next_to_the_plain_models(tracking_store, tmp_path):
    result, study = run_study(tmp_path, "yield", "yield", "--n_trials", "3", "--accuracy_spec", "0.3")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    for trial in complete:  # the value is the yield, ties broken by the target accuracy
        attrs = trial.user_attrs
        assert trial.value == pytest.approx(attrs["robust_yield_target"] + attrs["robust_acc_target"] / 10)
        assert attrs["robust_yield_target_low"] <= attrs["robust_yield_target"] <= attrs["robust_yield_target_high"]
    assert study.best_trial.user_attrs["robust_yield_target"] == max(t.user_attrs["robust_yield_target"] for t in complete)
    line = next(line for line in result.stdout.splitlines() if line.startswith("[sweep] yield at spec 30.00% over 5 chips"))
    assert all(f"{label} " in line for label in ("float baseline", "plain QAT", "best trial")) and line.count("[") == 4
    (parent,) = runs_of(tracking_store, "sweep")
    assert parent.data.metrics["best_target_yield"] == study.best_trial.user_attrs["robust_yield_target"]
    assert {"best_target_yield_low", "best_target_yield_high"} <= set(parent.data.metrics)


@pytest.mark.slow
def test_sweep_whose_models_meet_no_spec_finishes_with_its_comparison(tracking_store, tmp_path):
    """A spec no chip meets: every model's yield is 0 (its Wilson bound rounds to ~1e-18 above 0), and the
    sweep, its plain references and their comparison figure still finish."""
    result, study = run_study(tmp_path, "none-pass", "yield", "--n_trials", "2", "--accuracy_spec", "0.999")
    assert all(t.user_attrs["robust_yield_target"] == 0.0 == t.user_attrs["robust_yield_target_low"] for t in study.trials)
    (parent,) = runs_of(tracking_store, "sweep")
    assert parent.info.status == "FINISHED" and parent.data.metrics["best_target_yield"] == 0.0
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "comparison")}
    assert {"comparison/comparison.png", "comparison/comparison.md"} <= artifacts
    assert "[sweep] yield at spec 99.90% over 5 chips" in result.stdout


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_share_one_study_on_postgresql(tmp_path, monkeypatch):
    from services import mlflow_server, postgres

    with postgres() as storage, mlflow_server(tmp_path / "mlflow") as tracking_uri:
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_EXPERIMENT_NAME": "workers"}
        env.pop("MLFLOW_EXPERIMENT_ID", None)
        mlflow.MlflowClient(tracking_uri).create_experiment("workers")
        workers = [subprocess.Popen(sweep_command(storage, "shared", "--n_trials", "4", "--compare", "false", "--seed", str(seed)),
                                    cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                   for seed in (1, 2)]
        outputs = [worker.communicate(timeout=900)[0] for worker in workers]
        assert [worker.returncode for worker in workers] == [0, 0], [o[-2000:] for o in outputs]

        study = optuna.load_study(study_name="shared", storage=storage)
        numbers = [t.number for t in study.trials]
        assert len(numbers) == len(set(numbers))
        finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
        # Each worker stops once the study holds 4 finished trials; one may have had a trial in flight then.
        assert 4 <= len(finished) <= 5
        client = mlflow.MlflowClient(tracking_uri)
        runs = client.search_runs([client.get_experiment_by_name("workers").experiment_id], max_results=500)
        parents = {run.info.run_id for run in runs if run.data.tags.get("stage") == "sweep"}
        assert len(parents) == 2
        for trial in (t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE):
            children = [run for run in runs if run.data.tags.get("stage") == "trial"
                        and run.data.tags.get("optuna_trial") == str(trial.number)]
            assert len(children) == 1 and children[0].info.status == "FINISHED"
            assert children[0].data.tags["mlflow.parentRunId"] in parents
            assert children[0].info.run_id == trial.user_attrs["mlflow_run_id"]
