"""The sweep: Optuna explores training-time perturbation levels; every trial is an MLflow child run.

One invocation = one worker = one parent MLflow run (tag ``stage=sweep``). Trials run in-process
on data prepared once; each is a nested run ``trial-007`` (tag ``stage=trial``) whose id is stored
on the Optuna trial (user attribute ``mlflow_run_id``). Many workers -- processes or machines
started with the same ``storage`` (PostgreSQL) and the same MLflow tracking server -- share one
study through Optuna's RDB storage, with heartbeats: a trial whose worker died is marked failed and
retried once. Re-running with the same study name and storage resumes: only missing trials run.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping

import pipeline  # noqa: F401
import optuna
from optuna.storages import RDBStorage, RetryFailedTrialCallback
from optuna.trial import TrialState
from optuna_integration import TFKerasPruningCallback

from pipeline.app import stages, tracking
from pipeline.app.compare import ModelRow
from pipeline.config import ConfigError, DataConfig, ModelConfig, RobustnessConfig, TrainConfig, flatten
from pipeline.learning.data import PreparedData
from pipeline.evaluation.robustness import TargetValidation
from pipeline.learning.training import TrainingDiverged
from sweeps.config import Objective, SweepConfig
from sweeps import report
from sweeps.space import SearchSpace
from sweeps.trials import FINISHED_STATES, TRIAL_RESULTS

HEARTBEAT_SECONDS = 20
STORAGE_ATTEMPTS = 3  #: workers starting together race to create the storage's tables: the loser retries
GRACE_SECONDS = 90


class PrunedTrial(optuna.TrialPruned):
    """A trial stopped by the pruner: PRUNED in Optuna, its MLflow run KILLED."""

    mlflow_status = "KILLED"


class PruneOnValidationAccuracy(TFKerasPruningCallback):
    """optuna-integration's tf.keras (Keras 2) callback, raising :class:`PrunedTrial`."""

    def on_epoch_end(self, epoch, logs=None):
        try:
            super().on_epoch_end(epoch, logs)
        except optuna.TrialPruned as pruned:
            raise PrunedTrial(str(pruned)) from None


def default_storage() -> str:
    """A SQLite file next to the MLflow store (the store's directory for sqlite:///, else the cwd)."""
    uri = tracking.mlflow.get_tracking_uri()
    if match := re.match(r"sqlite:///(.+)", uri):
        return f"sqlite:///{os.path.join(os.path.dirname(match.group(1)) or '.', 'optuna.db')}"
    return "sqlite:///optuna.db"


def masked(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def study_name(config: SweepConfig, data: DataConfig, model: ModelConfig) -> str:
    return config.study_name or f"{data.dataset.value}-{model.label}-{config.objective.value}"


def open_study(config: SweepConfig, name: str, seed: int) -> optuna.Study:
    """Create or load the study; a clear ConfigError when the storage cannot be reached or disagrees."""
    url = config.storage or default_storage()
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            storage = RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                                 failed_trial_callback=RetryFailedTrialCallback(max_retry=1),
                                 engine_kwargs={"pool_pre_ping": True})
            break
        except Exception as error:  # bad URL, server down, missing driver -- or another worker creating the tables
            if attempt == STORAGE_ATTEMPTS - 1 or "://" not in url:
                raise ConfigError("storage", f"cannot open Optuna storage {masked(url)}: {str(error).splitlines()[0]}") from None
            time.sleep(1.0 + attempt)
    if not config.objective.is_pareto:
        directions = ["maximize"]
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=6)
        # Prune only the hopeless: keep the top 75 % at each epoch, i.e. cut the bottom quarter (a median
        # cut pruned 32 of 40 default trials on one-chip, mid-training estimates).
        pruner = optuna.pruners.PercentilePruner(75.0, n_startup_trials=4, n_warmup_steps=2)
    else:
        directions = ["maximize", "maximize"]
        sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
        pruner = optuna.pruners.NopPruner()  # Optuna cannot prune multi-objective trials
    try:
        existing = optuna.load_study(study_name=name, storage=storage)
        if len(existing.directions) != len(directions):
            raise ConfigError("objective", f"study {name} was created for {len(existing.directions)} objective(s); "
                                           f"objective={config.objective.value} needs {len(directions)} (choose another study_name)")
    except KeyError:
        pass
    return optuna.create_study(study_name=name, storage=storage, directions=directions, sampler=sampler,
                               pruner=pruner, load_if_exists=True)


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED_STATES))


class StopWhenDone:
    """Stop this worker once the study holds n_trials finished trials (all workers counted) or as many failures."""

    def __init__(self, n_trials: int):
        self.n_trials = n_trials

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
        if finished_count(study) >= self.n_trials or failed >= self.n_trials:
            study.stop()


def resident_memory_mb(field: str = "VmRSS") -> float:
    """This process's resident memory now (``VmHWM``: its peak, which starts afresh at ``exec``,
    unlike ``ru_maxrss``; Linux /proc; 0 where unavailable)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def record_outcome(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """After each trial: its state on the MLflow run (tag ``optuna_state``) and a progress line."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        tracking.MlflowClient().set_tag(run_id, "optuna_state", trial.state.name)
        if reason := trial.user_attrs.get("fail_reason"):
            tracking.MlflowClient().set_tag(run_id, "fail_reason", reason[:4000])
    if trial.state is TrialState.PRUNED and trial.intermediate_values:
        step = max(trial.intermediate_values)
        value = f"pruned at epoch {step + 1}: target val. accuracy {trial.intermediate_values[step]:.4f}"
    else:
        value = "" if trial.values is None else "objective " + " ".join(f"{v:.4f}" for v in trial.values)
    print(f"[sweep] trial {trial.number:03d} {trial.state.name:<8} {value} ({finished_count(study)} finished in the study)",
          flush=True)


def make_objective(space: SearchSpace, objective: Objective, get_data: Callable, model: ModelConfig,
                   train: TrainConfig, robustness: RobustnessConfig, name: str) -> Callable[[optuna.Trial], object]:
    def run_trial(trial: optuna.Trial):
        levels = space.suggest(trial)
        monitors, pruning = [], []
        if not objective.is_pareto:  # prune on a validation estimate of what is optimized: accuracy on the target hardware
            monitors = [TargetValidation(get_data().data, robustness.target, chip=train.seed)]
            pruning = [PruneOnValidationAccuracy(trial, "val_target_accuracy")]
        try:
            row = stages.training_stage(
                "trial", model, train, get_data, robustness, levels, run_name=f"trial-{trial.number:03d}",
                monitors=monitors, callbacks=pruning, tags={"optuna_study": name, "optuna_trial": str(trial.number)},
                on_start=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id),
                convert_tflite=False,  # same architecture in every trial: the best trial's is converted at the end
            )
        except TrainingDiverged as error:
            trial.set_user_attr("fail_reason", str(error))
            raise
        for key in TRIAL_RESULTS:
            if key in row:
                trial.set_user_attr(key, row[key])
        trial.set_user_attr("worker_rss_mb", resident_memory_mb())  # memory must stay flat across trials
        return objective_values(objective, row, robustness.target_chips)

    return run_trial


def objective_values(objective: Objective, row: ModelRow | Mapping[str, float], target_chips: int) -> float | tuple[float, float]:
    """What a trial scores. ``yield``: the target yield plus the target accuracy / (2 x chips), which
    breaks ties between equal yields (k / chips) without ever reordering different ones."""
    if objective is Objective.TARGET:
        return row["robust_acc_target"]
    if objective is Objective.YIELD:
        return row["robust_yield_target"] + row["robust_acc_target"] / (2 * target_chips)
    return row["test_accuracy"], row["robust_yield_target" if objective.needs_spec else "robust_acc_target"]


def fail_trials_of_dead_runs(study: optuna.Study, run_ids: set[str]) -> list[int]:
    """Fail the study's RUNNING trials whose MLflow run (user attr ``mlflow_run_id``) is one of ``run_ids``
    -- runs just found left by a dead worker -- and retry each once, as Optuna does for a trial whose
    heartbeat went stale (the storage's callback: a WAITING copy with the same parameters, run first).

    Without this such a trial stays RUNNING for good when the next worker finishes the study before the
    heartbeat grace period (GRACE_SECONDS) has passed. Returns the numbers of the trials failed."""
    storage = study._storage
    # Optuna 4.9 renamed the storage's failed_trial_callback (the older name is deprecated, gone in 6).
    get_retry = getattr(storage, "get_heartbeat_stale_trial_callback", None) or storage.get_failed_trial_callback
    retry = get_retry()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id not in run_ids:
            continue
        try:
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed it first
            continue
        failed.append(trial.number)
        print(f"[sweep] marked Optuna trial {trial.number} of dead run {run_id} FAILED", flush=True)
        tracking.MlflowClient().set_tag(run_id, "optuna_state", TrialState.FAIL.name)
        if retry is not None:
            retry(study, storage.get_trial(trial._trial_id))
    return failed


def run_sweep(data_config: DataConfig, model_config: ModelConfig, train_config: TrainConfig,
              robustness: RobustnessConfig, space: SearchSpace, config: SweepConfig, data: PreparedData) -> optuna.Study:
    """One worker of the sweep, as one parent run; returns the study."""

    name = study_name(config, data_config, model_config)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one progress line per trial is ours (record_outcome)
    study = open_study(config, name, seed=train_config.seed)
    if stale := tracking.fail_stale_runs(24, "found RUNNING at the start of a sweep"):  # left by a crashed worker
        print(f"[sweep] marked {len(stale)} run(s) left RUNNING by a crash as FAILED")
        fail_trials_of_dead_runs(study, {run.info.run_id for run in stale})
    before = finished_count(study)
    resumed = len(study.trials) > 0
    description = (f"Optuna sweep `{name}` ({config.objective.value} objective, {config.n_trials} trials) over "
                   f"training-time perturbations of the `{model_config.label}`; target hardware {space.target.label}."
                   + (f" Resumes the study ({before} finished trials before)." if resumed else ""))
    tags = {"optuna_study": name, "optuna_storage": masked(config.storage or default_storage()),
            "objective": config.objective.value, "resumes_study": str(resumed), "model": model_config.label}
    with tracking.stage_run("sweep", f"sweep-{name}" + ("-resumed" if resumed else ""), description, tags) as run_id:
        tracking.log_params({**flatten("sweep", config), **flatten("model", model_config), **flatten("train", train_config),
                             **flatten("data", data_config), **stages.flatten_robustness(robustness)})
        tracking.log_dict(space.describe(), "sweep/space.json")
        handle = stages.prepare_stage(data_config, data=data)
        tracking.log_tags({**handle.tags, "trials_finished_before": before})
        missing = config.n_trials - before
        print(f"[sweep] study {name}: {before} finished trial(s), running up to {max(missing, 0)} more "
              f"(parent run {run_id})", flush=True)
        if missing > 0:
            objective = make_objective(space, config.objective, lambda: handle, model_config, train_config, robustness, name)
            # No n_trials here: failed trials do not count, and other workers' trials do (StopWhenDone).
            study.optimize(objective, n_trials=None, timeout=config.timeout or None, catch=(TrainingDiverged,),
                           callbacks=[record_outcome, StopWhenDone(config.n_trials)], gc_after_trial=True)
        report.report_study(study, config, handle, model_config, train_config, robustness, space)
    return study

