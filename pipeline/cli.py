"""Entry points: ``python -m pipeline.cli <stage> --param value ...`` (what MLproject runs).

Parameters are parsed as text and validated by the config objects, so every bad value gets
one line naming the parameter and what is allowed, exit code 2, before data is loaded,
TensorFlow is imported or a run is written to.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Callable, Sequence

from pathlib import Path

from pipeline.config import (
    TARGET_HARDWARE_FILE,
    ConfigError,
    DataConfig,
    ModelConfig,
    PerturbationConfig,
    RobustnessConfig,
    TrainConfig,
    load_target_hardware,
)

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = DataConfig()
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default=defaults.dataset.value, help="mnist | fashion_mnist")
    group.add_argument("--source", default=defaults.source.value, help="auto | keras | bundled | path")
    group.add_argument("--data_path", default="", help="with source=path: .npz file or directory of IDX files")
    group.add_argument("--val_fraction", default=str(defaults.val_fraction))
    group.add_argument("--test_fraction", default=str(defaults.test_fraction), help="used when no official test split")
    group.add_argument("--limit", default=str(defaults.limit), help="at most this many images per split; 0 = all")
    group.add_argument("--seed", default=str(defaults.seed), help="seed of splits, initialisation and training")


def add_model_arguments(parser: argparse.ArgumentParser, bits_default: int | None) -> None:
    defaults = ModelConfig()
    group = parser.add_argument_group("model")
    group.add_argument("--arch", default=defaults.arch.value, help="mlp | cnn")
    if bits_default is not None:
        group.add_argument("--bits", default=str(bits_default), help="1 = binarized, 2..8 = DoReFa k-bit")
    group.add_argument("--hidden_units", default=",".join(map(str, defaults.hidden_units)), help="MLP widths, e.g. 512,512")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", default=str(defaults.epochs))
    group.add_argument("--batch_size", default=str(defaults.batch_size))
    group.add_argument("--learning_rate", default=str(defaults.learning_rate))


PERTURBATION_PARAMETERS = ("noise_sigma", "noise_mode", "weight_dev_pct", "clip_mode", "clip_min", "clip_max",
                           "clip_fraction", "out_bits", "perturb_layers")


def add_perturbation_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "hardware model for training (all empty: the target hardware's levels, see --target)")
    group.add_argument("--noise_sigma", default="", help="output noise std, relative to the clean output RMS (>= 0)")
    group.add_argument("--noise_mode", default="", help="relative (default) | absolute (accumulator units)")
    group.add_argument("--weight_dev_pct", default="", help="process variation: std of the weight deviation, percent")
    group.add_argument("--clip_mode", default="", help="none | absolute | relative; empty = inferred from the clip values")
    group.add_argument("--clip_min", default="", help="absolute saturation: lower bound, accumulator units")
    group.add_argument("--clip_max", default="", help="absolute saturation: upper bound, accumulator units")
    group.add_argument("--clip_fraction", default="", help="relative saturation: fraction of the clean range, (0, 1]")
    group.add_argument("--out_bits", default="", help="ADC bits after saturation (1..16); empty = no ADC")
    group.add_argument("--perturb_layers", default="", help="hidden | dense | all | comma-separated layer names")


def add_robustness_arguments(parser: argparse.ArgumentParser, with_target: bool = True) -> None:
    defaults = RobustnessConfig()
    group = parser.add_argument_group("robustness evaluation")
    if with_target:
        group.add_argument("--target", default=TARGET_HARDWARE_FILE, help="YAML file of the target hardware's levels")
    group.add_argument("--chips", default=str(defaults.chips), help="Monte-Carlo chips per level")
    group.add_argument("--chips_per_pass", default=str(defaults.chips_per_pass),
                       help="chips evaluated side by side in one pass (same numbers); 0 = automatic")
    group.add_argument("--yield_tolerance", default=str(defaults.yield_tolerance), help="0.01 = 1 accuracy point")
    group.add_argument("--noise_grid", default=",".join(map(str, defaults.noise_grid)))
    group.add_argument("--weight_dev_grid", default=",".join(map(str, defaults.weight_dev_grid)))
    group.add_argument("--clip_grid", default=",".join(map(str, defaults.clip_grid)))


def resolve_project_file(path: str) -> Path:
    """A relative path from the working directory, else from the project root (where MLproject is)."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists():
        return candidate
    return Path(__file__).resolve().parents[1] / candidate


def robustness_config(args: argparse.Namespace, target: PerturbationConfig | None = None) -> RobustnessConfig:
    return RobustnessConfig(
        noise_grid=args.noise_grid, weight_dev_grid=args.weight_dev_grid, clip_grid=args.clip_grid,
        target=target or load_target_hardware(resolve_project_file(args.target)), chips=args.chips,
        chips_per_pass=args.chips_per_pass, yield_tolerance=args.yield_tolerance, seed=getattr(args, "seed", 0),
    )


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    from sweeps.config import SweepConfig

    defaults = SweepConfig()
    group = parser.add_argument_group("sweep")
    group.add_argument("--n_trials", default=str(defaults.n_trials), help="finished trials the study should hold")
    group.add_argument("--timeout", default="0", help="seconds after which no new trial starts (0 = none)")
    group.add_argument("--study_name", default="", help="Optuna study; same name + storage resumes it")
    group.add_argument("--storage", default="", help="Optuna storage URL; default: optuna.db next to the MLflow store")
    group.add_argument("--space", default=defaults.space, help="search-space YAML (names the target hardware)")
    group.add_argument("--objective", default=defaults.objective.value, help="target | pareto")
    group.add_argument("--compare", default="true", help="compare the best trial with plain baseline and QAT")


def perturbation_config(args: argparse.Namespace, target: PerturbationConfig) -> PerturbationConfig:
    """The training levels: those given, or the target hardware's when none is given."""
    given = {name: getattr(args, name) for name in PERTURBATION_PARAMETERS if getattr(args, name) != ""}
    if not given:
        return target
    given.setdefault("perturb_layers", target.perturb_layers)
    return PerturbationConfig.from_text(**given)


def hardware_configs(
    args: argparse.Namespace, model: ModelConfig, with_perturbation: bool
) -> tuple[RobustnessConfig, PerturbationConfig | None]:
    """The robustness evaluation and (optionally) the training levels, with their layer names
    checked against ``model`` -- unknown names fail here, before any training."""
    robustness = robustness_config(args)
    perturbation = perturbation_config(args, robustness.target) if with_perturbation else None
    for levels in (robustness.target, perturbation):
        if levels is not None:
            levels.targets(model)
    return robustness, perturbation


def data_config(args: argparse.Namespace) -> DataConfig:
    return DataConfig(
        dataset=args.dataset, source=args.source, data_path=args.data_path, val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, limit=args.limit, seed=args.seed,
    )


def model_config(args: argparse.Namespace, bits: object) -> ModelConfig:
    return ModelConfig(arch=args.arch, bits=bits, hidden_units=args.hidden_units)


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed)


def qat_model_config(args: argparse.Namespace) -> ModelConfig:
    config = model_config(args, args.bits)
    if config.is_float:
        raise ConfigError("bits", "qat trains a quantized model: use 1 (binarized) or 2..8; the float model is `baseline`")
    return config


# --------------------------------------------------------------------------- commands


def run_prepare(args: argparse.Namespace) -> None:
    config = data_config(args)
    from pipeline import data as data_module

    data = data_module.prepare(config)  # bad data fails here, before TensorFlow or MLflow are touched
    from pipeline import stages, tracking

    tracking.use_experiment()
    handle = stages.prepare_stage(config, reuse=False, data=data)
    print(f"data_uri={handle.uri}")


def run_training(stage: str, args: argparse.Namespace, model: ModelConfig, with_perturbation: bool = False) -> None:
    data_cfg, train_cfg = data_config(args), train_config(args)
    robust_cfg, perturbation = hardware_configs(args, model, with_perturbation)
    from pipeline import data as data_module

    data = None if args.data_uri else data_module.prepare(data_cfg)  # bad data fails before any run
    from pipeline import stages, tracking

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
    robust_cfg, perturbation = hardware_configs(args, model_cfg, with_perturbation=True)
    from pipeline import stages, tracking

    tracking.use_experiment()
    stages.main_stage(data_cfg, model_cfg, train_cfg, robust_cfg, perturbation)


def run_sweep(args: argparse.Namespace) -> None:
    from sweeps.config import SweepConfig
    from sweeps.space import levels_from, load_space

    data_cfg, model_cfg, train_cfg = data_config(args), model_config(args, args.bits), train_config(args)
    sweep_cfg = SweepConfig(n_trials=args.n_trials, timeout=args.timeout, study_name=args.study_name,
                            storage=args.storage, space=args.space, objective=args.objective, compare=args.compare)
    space = load_space(resolve_project_file(sweep_cfg.space))
    robust_cfg = robustness_config(args, target=space.target)
    space.target.targets(model_cfg)
    levels_from({**space.fixed, **{name: r.low for name, r in space.ranges.items()}}).targets(model_cfg)
    from pipeline import data as data_module

    data = data_module.prepare(data_cfg)
    from pipeline import tracking
    from sweeps.study import run_sweep as sweep

    tracking.use_experiment()
    sweep(data_cfg, model_cfg, train_cfg, robust_cfg, space, sweep_cfg, data)


def run_cleanup(args: argparse.Namespace) -> None:
    from pipeline.config import require_float

    stale_hours = require_float("stale_hours", args.stale_hours, 0.0, None, low_inclusive=False)
    from pipeline import tracking

    tracking.check_reachable()
    stale = tracking.fail_stale_runs(stale_hours, "found RUNNING by cleanup")
    for run in stale:
        print(f"[cleanup] marked FAILED: {run.info.run_name} ({run.info.run_id})")
    print(f"[cleanup] {len(stale)} run(s) left RUNNING by a crash marked FAILED")


def run_evaluate(args: argparse.Namespace) -> None:
    if bool(args.model_uri) == bool(args.run_id):
        raise ConfigError("model_uri", "give exactly one of model_uri (e.g. models:/m-...) or run_id (a training run)")
    robust_cfg = robustness_config(args)
    from pipeline import stages, tracking

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
    stages.evaluate_stage(model_uri, run_id, data_uri, robust_cfg)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.cli", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    specs: list[tuple[str, str, Callable, int | None, bool]] = [
        ("prepare", "load, check, split and log the data", run_prepare, None, False),
        ("baseline", "train and evaluate the float baseline", run_baseline, None, True),
        ("qat", "train and evaluate a Larq quantization-aware model", run_qat, 1, True),
        ("perturb", "perturbation-aware training under the hardware model", run_perturb, 1, True),
        ("main", "prepare -> baseline -> qat -> perturb -> comparison", run_main, 1, True),
    ]
    for name, help_text, handler, bits_default, trains in specs:
        command = commands.add_parser(name, help=help_text)
        add_data_arguments(command)
        if trains:
            add_model_arguments(command, bits_default)
            add_train_arguments(command)
            add_robustness_arguments(command)
        if name in ("perturb", "main"):
            add_perturbation_arguments(command)
        if name in ("baseline", "qat", "perturb"):
            command.add_argument("--data_uri", default="", help="prepared data of an earlier prepare run (artifact URI)")
        command.set_defaults(handler=handler)
    sweep = commands.add_parser("sweep", help="Optuna sweep over training-time perturbation levels")
    add_data_arguments(sweep)
    add_model_arguments(sweep, 1)
    add_train_arguments(sweep)
    add_robustness_arguments(sweep, with_target=False)  # the search space names the target hardware
    add_sweep_arguments(sweep)
    sweep.set_defaults(handler=run_sweep)
    cleanup = commands.add_parser("cleanup", help="mark runs left RUNNING by a crash as FAILED")
    cleanup.add_argument("--stale_hours", default="24", help="also fail RUNNING runs older than this (any host)")
    cleanup.set_defaults(handler=run_cleanup)
    evaluate = commands.add_parser("evaluate", help="robustness evaluation of a logged model")
    evaluate.add_argument("--model_uri", default="", help="the model, e.g. models:/m-<id> (or give --run_id)")
    evaluate.add_argument("--run_id", default="", help="a training run whose model to evaluate")
    evaluate.add_argument("--data_uri", default="", help="prepared data; default: the data the model's run used")
    evaluate.add_argument("--seed", default="0", help="seed of the Monte-Carlo chips")
    add_robustness_arguments(evaluate)
    evaluate.set_defaults(handler=run_evaluate)
    return parser


def raise_on_sigterm(signum, frame):  # noqa: ARG001
    """SIGTERM unwinds like Ctrl-C: open runs end KILLED and a running Optuna trial is marked failed."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: open runs were ended as KILLED", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
