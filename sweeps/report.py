"""What a sweep leaves on its parent run: best trial, trials table, Optuna's plots, and the best
trial compared with the plain baseline and plain QAT of the same data and architecture."""

from __future__ import annotations

import dataclasses
import math
import warnings

import optuna
import pandas as pd
from matplotlib import pyplot

from pipeline.app import stages, tracking
from pipeline.evaluation.statistics import estimate_text
from pipeline.config import ModelConfig, RobustnessConfig, TrainConfig, flatten
from pipeline.validation import ConfigError
from sweeps.config import Objective, SweepConfig
from sweeps.space import Range, SearchSpace, levels_from
from sweeps.trials import FINISHED_STATES, TRIAL_RESULTS

TOP_TRIALS = 5
EDGE_FRACTION = 0.05  #: a best value this close to a bound (fraction of the range; of log-range for a log range) is "at the edge"
BEYOND = 1e-6  #: how far past a bound (fraction of the range) a value is checked against the parameter's own validation


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, objective value(s), parameters, results (target accuracy and
    yield with their intervals), seconds."""
    rows = []
    for trial in study.trials:
        row = {"number": trial.number, "state": trial.state.name, "mlflow_run_id": trial.user_attrs.get("mlflow_run_id", "")}
        if trial.values is not None:
            row["objective"] = trial.values[-1] if len(trial.values) == 1 else None
            row.update({"clean_accuracy": trial.values[0]} if len(trial.values) == 2 else {})
        row.update({f"param_{k}": v for k, v in trial.params.items()})
        row.update({k: v for k, v in trial.user_attrs.items() if k in (*TRIAL_RESULTS, "fail_reason")})
        row["seconds"] = trial.duration.total_seconds() if trial.duration else None
        rows.append(row)
    return pd.DataFrame(rows)


def best_trial(study: optuna.Study, objective: Objective) -> optuna.trial.FrozenTrial | None:
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        return None
    if not objective.is_pareto:
        return study.best_trial
    # the front's most robust member (equal yields: the more accurate on the target)
    return max(study.best_trials, key=lambda trial: (trial.values[1], trial.user_attrs.get("robust_acc_target", 0.0)))


def log_optuna_plots(study: optuna.Study, objective: Objective) -> list[str]:
    """Optuna's matplotlib plots as PNG artifacts; returns the names of those that could not be drawn."""
    vis = optuna.visualization.matplotlib
    params = set().union(*(trial.params for trial in study.get_trials(deepcopy=False, states=FINISHED_STATES)))
    target = None if not objective.is_pareto else (lambda trial: trial.values[1])
    label = objective.value_names[-1].replace("_", " ")
    plots = {
        "optimization_history": lambda: vis.plot_optimization_history(study, target=target, target_name=label),
        "param_importances": lambda: vis.plot_param_importances(study, target=target, target_name=label),
        "parallel_coordinate": lambda: vis.plot_parallel_coordinate(study, target=target, target_name=label),
    }
    if len(params) >= 2:  # the two parameters that matter most (Optuna's importances), else the first two
        plots["contour_top_two"] = lambda: vis.plot_contour(
            study, params=top_two(study, target, sorted(params)), target=target, target_name=label)
    if objective.is_pareto:
        plots["pareto_front"] = lambda: vis.plot_pareto_front(study, target_names=["clean accuracy", label])
    skipped = []
    for name, draw in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = draw()
        except Exception as error:  # e.g. importances need two finished trials with varying parameters
            skipped.append(f"{name}: {error}")
            continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
        figure.set_size_inches(10, 6)
        tracking.log_figure(figure, f"optuna/{name}.png")
        pyplot.close(figure)
    return skipped


def top_two(study: optuna.Study, target, params: list[str]) -> list[str]:
    try:
        ranked = list(optuna.importance.get_param_importances(study, target=target))
    except Exception:  # too few finished trials, or parameters that never varied
        ranked = []
    return (ranked + [name for name in params if name not in ranked])[:2]


def position(spec: Range, value: float) -> float:
    """Where ``value`` lies in the range: 0 at ``low``, 1 at ``high`` (in log space for a log range)."""
    if spec.log:
        return (math.log(value) - math.log(spec.low)) / (math.log(spec.high) - math.log(spec.low))
    return (value - spec.low) / (spec.high - spec.low)


def at_position(spec: Range, where: float) -> float:
    """The inverse of :func:`position`: the value at ``where`` (past 0 or 1 lies outside the range)."""
    if spec.log:
        return math.exp(math.log(spec.low) + where * (math.log(spec.high) - math.log(spec.low)))
    return spec.low + where * (spec.high - spec.low)


def edge(spec: Range, value: float) -> str | None:
    """``lower`` or ``upper`` when ``value`` lies in the outer EDGE_FRACTION of the range at that side, else None."""
    if spec.high <= spec.low:
        return None
    where = position(spec, value)
    return "lower" if where <= EDGE_FRACTION else "upper" if where >= 1 - EDGE_FRACTION else None


def allows_beyond(name: str, side: str, space: SearchSpace, point: dict) -> bool:
    """Whether the parameter's own validation (its effect's params dataclass, with the other values of
    ``point``) accepts a value just past the ``side`` bound: False at a hard limit such as a noise
    level's 0 or a clip fraction's 1."""
    spec = space.ranges[name]
    if spec.integer:
        beyond = spec.low - 1 if side == "lower" else spec.high + 1
    else:
        beyond = at_position(spec, -BEYOND if side == "lower" else 1 + BEYOND)
    try:
        params = levels_from(point).params_of(name)  # the best point's values of this effect (implicit ones inferred)
    except ConfigError:  # an older trial outside today's space: the space's lowest corner (a valid one)
        params = levels_from({**space.fixed, **{other: r.low for other, r in space.ranges.items()}}).params_of(name)
    try:
        dataclasses.replace(params, **{name: beyond})  # validated on construction
    except ConfigError:
        return False
    return True


def range_warnings(space: SearchSpace, best_params: dict, space_file: str = "sweeps/space.yaml") -> list[str]:
    """One line per searched parameter whose best value lies at an edge of its range that could be widened."""
    point = {**space.fixed, **{name: value for name, value in best_params.items() if name in space.ranges}}
    lines = []
    for name, spec in space.ranges.items():
        if name not in best_params or (side := edge(spec, best_params[name])) is None:
            continue
        if not allows_beyond(name, side, space, point):
            continue
        scale = ", log" if spec.log else ""
        lines.append(f"[sweep] best {name} = {best_params[name]:.4g} lies at the {side} edge of its range "
                     f"[{spec.low:g}, {spec.high:g}{scale}]: widen the range ({space_file} or -P space=...) and resume")
    return lines


def plain_reference(stage: str, model: ModelConfig, train: TrainConfig, robustness: RobustnessConfig, handle) -> dict:
    """A FINISHED plain run of ``stage`` with the same data, model, training and robustness settings, else a new one."""
    params = {**flatten("model", model), **flatten("train", train), **stages.flatten_robustness(robustness)}
    run_id = tracking.find_finished_run(stage, {"data_hash": handle.data.content_hash}, params)
    if run_id:
        print(f"[sweep] reusing finished {stage} run {run_id}")
        return tracking.run_row(run_id)
    return stages.training_stage(stage, model, train, lambda: handle, robustness)


def report_study(study: optuna.Study, config: SweepConfig, handle, model: ModelConfig, train: TrainConfig,
                 robustness: RobustnessConfig, space: SearchSpace | None = None) -> None:
    table = trials_table(study)
    tracking.log_table(table, "sweep/trials")
    counts = table["state"].value_counts().to_dict() if len(table) else {}
    tracking.log_metrics({f"trials_{state.lower()}": count for state, count in counts.items()})
    if skipped := log_optuna_plots(study, config.objective):
        tracking.log_text("\n".join(skipped), "optuna/skipped_plots.txt")
    best = best_trial(study, config.objective)
    if best is None:
        print("[sweep] no trial has completed yet: nothing to compare")
        return
    tracking.log_metrics({"best_trial": best.number, "best_test_accuracy": best.user_attrs["test_accuracy"],
                          **{best_name(key): value for key, value in best.user_attrs.items() if key in TRIAL_RESULTS[1:]}})
    tracking.log_params({f"best.{name}": value for name, value in best.params.items()})
    tracking.log_tags({"best_trial_run_id": best.user_attrs.get("mlflow_run_id", "")})
    warned = range_warnings(space, best.params, config.space) if space is not None else []
    if warned:  # the space may be too small: said at the end of the output, and on the parent run
        tracking.log_tags({"range_warnings": "\n".join(line.removeprefix("[sweep] ") for line in warned)[:5000]})
        tracking.log_text("\n".join(warned) + "\n", "sweep/range_warnings.txt")
    stages.deploy_logged_run(best.user_attrs["mlflow_run_id"], handle.data)
    if config.objective.is_pareto:
        front = table[table.number.isin([trial.number for trial in study.best_trials])]
        tracking.log_table(front, "sweep/pareto_front")
        print(f"\nPareto front (clean accuracy vs {config.objective.value_names[1].replace('_', ' ')})\n" + front.to_string(index=False))
    print_top_trials(table, config.objective)
    if config.compare:
        quantized = model if not model.is_float else dataclasses.replace(model, bits=1)
        rows = [plain_reference("baseline", dataclasses.replace(quantized, bits=32), train, robustness, handle),
                plain_reference("qat", quantized, train, robustness, handle),
                tracking.run_row(best.user_attrs["mlflow_run_id"])]
        stages.log_comparison(rows)
        if robustness.accuracy_spec is not None:
            print(f"\n[sweep] yield at spec {100 * robustness.accuracy_spec:.2f}% over {robustness.target_chips} chips (95% CI): "
                  + "; ".join(f"{label} {estimate_text(row, 'robust_yield_target', 1)}"
                              for label, row in zip(("float baseline", "plain QAT", "best trial"), rows)))
    if warned:
        print("\n" + "\n".join(warned), flush=True)
    parent = tracking.mlflow.active_run().info.run_id
    print(f"\nBrowse: mlflow ui  (experiment {tracking.current_experiment_id()}, sweep parent run {parent})")


def best_name(key: str) -> str:
    """``robust_acc_target_low`` -> ``best_target_accuracy_low``, ``robust_yield_target`` -> ``best_target_yield``."""
    return key.replace("robust_acc_target", "best_target_accuracy").replace("robust_yield_target", "best_target_yield")


def print_top_trials(table: pd.DataFrame, objective: Objective) -> None:
    key = "robust_yield_target" if objective.needs_spec else "robust_acc_target"
    done = table[table.state == "COMPLETE"].sort_values([key, "robust_acc_target"], ascending=False).head(TOP_TRIALS)
    columns = [c for c in ("number", "robust_acc_target", "robust_yield_target", "robust_yield_target_low", "robust_yield_target_high",
                           "clean_accuracy", "test_accuracy") if c in done]
    columns += [c for c in done.columns if c.startswith("param_")] + ["mlflow_run_id"]
    print(f"\nTop {len(done)} trials ({objective.value} objective)\n" + done[columns].to_string(index=False))

