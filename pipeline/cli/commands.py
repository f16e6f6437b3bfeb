"""The commands of the command line: each reads its arguments into configs (bad input fails here,
before data, TensorFlow or MLflow), then hands them to a stage or the sweep."""

from __future__ import annotations

import argparse
import dataclasses

from pipeline.cli.arguments import (compared_model_config, data_config, given, hardware_configs, qat_model_config,
                                    model_config, resolve_project_file, robustness_config, train_config)
from pipeline.config import ModelConfig
from pipeline.validation import ConfigError


def run_prepare(args: argparse.Namespace) -> None:
    config = data_config(args)
    from pipeline.learning import data as data_module

    data = data_module.prepare(config)  # bad data fails here, before TensorFlow or MLflow are touched
    from pipeline.app import stages, tracking

    tracking.use_experiment()
    handle = stages.prepare_stage(config, reuse=False, data=data)
    print(f"data_uri={handle.uri}")


def run_training(stage: str, args: argparse.Namespace, model: ModelConfig, with_perturbation: bool = False) -> None:
    data_cfg, train_cfg = data_config(args), train_config(args)
    robust_cfg, perturbation = hardware_configs(args, model, with_perturbation)
    from pipeline.learning import data as data_module

    data = None if args.data_uri else data_module.prepare(data_cfg)  # bad data fails before any run
    from pipeline.app import stages, tracking

    tracking.use_experiment()
    if data is None:
        handle = stages.load_data_uri(args.data_uri)
        get_data = lambda: handle  # noqa: E731
    else:
        get_data = lambda: stages.prepare_stage(data_cfg, data=data)  # noqa: E731
    stages.training_stage(stage, model, train_cfg, get_data, robust_cfg, perturbation)


def run_baseline(args: argparse.Namespace) -> None:
    run_training("baseline", args, model_config(args, 32))


def run_qat(args: argparse.Namespace) -> None:
    run_training("qat", args, qat_model_config(args))


def run_perturb(args: argparse.Namespace) -> None:
    run_training("perturb", args, model_config(args, args.bits), with_perturbation=True)


def run_main(args: argparse.Namespace) -> None:
    data_cfg, model_cfg, train_cfg = data_config(args), qat_model_config(args), train_config(args)
    compared = compared_model_config(args, model_cfg)
    robust_cfg, perturbation = hardware_configs(args, model_cfg, with_perturbation=True)
    for evaluated in (dataclasses.replace(model_cfg, bits=32), compared):  # every model main evaluates at the target
        if evaluated is not None:
            robust_cfg.target.targets(evaluated)
    from pipeline.app import stages, tracking

    tracking.use_experiment()
    stages.main_stage(data_cfg, model_cfg, train_cfg, robust_cfg, perturbation, compared)


def run_sweep(args: argparse.Namespace) -> None:
    from sweeps.config import SweepConfig
    from sweeps.space import levels_from, load_space

    data_cfg, model_cfg, train_cfg = data_config(args), model_config(args, args.bits), train_config(args)
    sweep_cfg = SweepConfig(**given(args, SweepConfig))
    space = load_space(resolve_project_file(sweep_cfg.space))
    robust_cfg = robustness_config(args, target=(space.target, space.accuracy_spec))
    if sweep_cfg.objective.needs_spec and robust_cfg.accuracy_spec is None:
        raise ConfigError("accuracy_spec", f"objective={sweep_cfg.objective.value} needs a specification: set accuracy_spec "
                                           f"in the target hardware file or pass accuracy_spec=0.9 (a test accuracy in [0, 1])")
    space.target.targets(model_cfg)
    levels_from({**space.fixed, **{name: r.low for name, r in space.ranges.items()}}).targets(model_cfg)
    from pipeline.learning import data as data_module

    data = data_module.prepare(data_cfg)
    from pipeline.app import tracking
    from sweeps.study import run_sweep as sweep

    tracking.use_experiment()
    sweep(data_cfg, model_cfg, train_cfg, robust_cfg, space, sweep_cfg, data)


def run_cleanup(args: argparse.Namespace) -> None:
    from pipeline.validation import require_float

    stale_hours = require_float("stale_hours", args.stale_hours, 0.0, None, low_inclusive=False)
    from pipeline.app import tracking

    tracking.check_reachable()
    stale = tracking.fail_stale_runs(stale_hours, "found RUNNING by cleanup")
    for run in stale:
        print(f"[cleanup] marked FAILED: {run.info.run_name} ({run.info.run_id})")
    print(f"[cleanup] {len(stale)} run(s) left RUNNING by a crash marked FAILED")


def logged_model(args: argparse.Namespace) -> tuple[str, str, str]:
    """(model URI, its training run id, its data URI) from ``--model_uri`` or ``--run_id`` (and ``--data_uri``)."""
    from pipeline.app import tracking

    if bool(args.model_uri) == bool(args.run_id):
        raise ConfigError("model_uri", "give exactly one of model_uri (e.g. models:/m-...) or run_id (a training run)")
    tracking.use_experiment()
    try:
        run_id = args.run_id
        model_uri = args.model_uri or tracking.model_uri_of_run(run_id)
        if not run_id and model_uri.startswith("runs:/"):
            run_id = model_uri.split("/")[1]
        if not run_id:
            run_id = tracking.source_run_of_model(model_uri)
        data_uri = args.data_uri or (tracking.tag_of_run(run_id, "data_uri") if run_id else "")
    except Exception as error:  # unknown run id or model URI: a bad parameter, not a crash
        raise ConfigError("run_id" if args.run_id else "model_uri", str(error).splitlines()[0]) from None
    if not data_uri:
        raise ConfigError("data_uri", "the model's run records no data_uri: pass data_uri=runs:/<prepare run>/data/prepared.npz")
    return model_uri, run_id, data_uri


def run_evaluate(args: argparse.Namespace) -> None:
    robust_cfg = robustness_config(args)
    from pipeline.app import stages

    stages.evaluate_stage(*logged_model(args), robust_cfg)


def run_sensitivity(args: argparse.Namespace) -> None:
    robust_cfg = robustness_config(args)
    from pipeline.app import stages

    stages.sensitivity_stage(*logged_model(args), robust_cfg, layers=args.perturb_layers)


