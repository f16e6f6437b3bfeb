"""Entry points: ``python -m pipeline.cli <stage> --param value ...`` (what MLproject runs).

The arguments are derived from the config dataclasses (a ``--<field>`` per field, its docstring
as help) and from the effect registry (every effect's parameters and its ``--<effect>_grid``), so
each parameter is declared once. Values are parsed as text and validated by the config objects:
every bad value -- and every unknown parameter -- gets one line naming it and what is allowed,
exit code 2, before data is loaded, TensorFlow is imported or a run is written to.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import os
import re
import signal
import sys
import textwrap
from pathlib import Path
from typing import Callable, Sequence

from pipeline.config import DataConfig, ModelConfig, RobustnessConfig, TrainConfig, as_text
from pipeline.effects import EFFECTS, PARAMETERS
from pipeline.hardware import TARGET_HARDWARE_FILE, PerturbationConfig, load_target
from pipeline.native_logs import make_verbose
from pipeline.validation import ConfigError, require_bool

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def field_help(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (units, default, what is allowed): the help text."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    return {node.target.id: plain_text(following.value.value)
            for node, following in zip(body, body[1:])
            if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str)}


def plain_text(docstring: str) -> str:
    """A field docstring as one line of terminal text (reStructuredText markup dropped)."""
    return re.sub(r":\w+:`~?([^`]*)`", r"\1", " ".join(docstring.split())).replace("``", "")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, title: str, skip: Sequence[str] = (),
                         defaults: dict | None = None, not_given: bool = False) -> None:
    """``--<field>`` for every field of the dataclass ``cls``, as text, with its docstring as help.

    ``not_given``: every default is empty ("not given"); the config decides what that means."""
    group = parser.add_argument_group(title)
    helps = field_help(cls)
    for item in dataclasses.fields(cls):
        if item.name in skip:
            continue
        default = "" if not_given else (defaults or {}).get(item.name, default_of(item))
        text = "" if default is None else as_text(default)
        help_text = f"{helps.get(item.name, '')} [default: {text or 'not given'}]".replace("%", "%%")
        group.add_argument(f"--{item.name}", default=text, help=help_text)


def default_of(item: dataclasses.Field):
    return item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default


def given(args: argparse.Namespace, cls: type, skip: Sequence[str] = ()) -> dict:
    """The fields of ``cls`` found in ``args`` with a value (empty text = not given: the config's default)."""
    names = {item.name for item in dataclasses.fields(cls)} - set(skip)
    return {name: value for name, value in vars(args).items() if name in names and value != ""}


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, DataConfig, "data")


def add_model_arguments(parser: argparse.ArgumentParser, bits_default: int | None) -> None:
    add_config_arguments(parser, ModelConfig, "model", skip=() if bits_default else ("bits",), defaults={"bits": bits_default})


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, TrainConfig, "training", skip=("seed",))  # one --seed: the data's


def add_perturbation_arguments(parser: argparse.ArgumentParser) -> None:
    """Every effect's parameters (``pipeline/effects``), and ``perturb_layers``; not given: the target's levels."""
    title = "hardware model for training (none given: the target hardware's levels, see --target)"
    for effect in EFFECTS:
        add_config_arguments(parser, effect.params, f"{title}: {effect.name}", not_given=True)
        title = "hardware model for training"
    parser.add_argument("--perturb_layers", default="", help="hidden | dense | all | comma-separated layer names")


SWEEP_TARGET_CHIPS = 200  #: target chips of a sweep trial / a layer's sensitivity: enough to rank them (yield +-7 points at worst)


def add_robustness_arguments(parser: argparse.ArgumentParser, with_target: bool = True, target_chips: int | None = None) -> None:
    defaults = {"target_chips": target_chips} if target_chips else None
    add_config_arguments(parser, RobustnessConfig, "robustness evaluation", skip=("grids", "target", "seed", "batch_size"),
                         defaults=defaults)
    group = parser.add_argument_group("robustness curves (one per effect)")
    for effect in EFFECTS:
        grid = as_text(effect.curve.grid)
        group.add_argument(f"--{effect.name}_grid", default=grid,
                           help=f"levels of {effect.curve.parameter} on the {effect.name} curve: {effect.curve.label} "
                                f"[default: {grid}]".replace("%", "%%"))
    if with_target:
        parser.add_argument("--target", default=TARGET_HARDWARE_FILE, help="YAML file of the target hardware's levels and accuracy_spec")


def resolve_project_file(path: str) -> Path:
    """A relative path from the working directory, else from the project root (where MLproject is)."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists():
        return candidate
    return Path(__file__).resolve().parents[1] / candidate


def robustness_config(args: argparse.Namespace,
                      target: tuple[PerturbationConfig, float | None] | None = None) -> RobustnessConfig:
    """From the arguments and the target (hardware, accuracy spec): ``--target``'s file unless given;
    ``--accuracy_spec`` overrides the target's spec."""
    grids = {effect.name: getattr(args, f"{effect.name}_grid") for effect in EFFECTS}
    hardware, accuracy_spec = target or load_target(resolve_project_file(args.target))
    values = {"accuracy_spec": accuracy_spec, **given(args, RobustnessConfig, skip=("grids", "target", "batch_size"))}
    return RobustnessConfig(**values, grids=grids, target=hardware)


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    from sweeps.config import SweepConfig

    add_config_arguments(parser, SweepConfig, "sweep")


def perturbation_config(args: argparse.Namespace, target: PerturbationConfig) -> PerturbationConfig:
    """The training levels: those given (others off), or the target hardware's when none is given;
    on ``perturb_layers`` when given, else the target's layers."""
    levels = {name: getattr(args, name) for name in PARAMETERS if getattr(args, name) != ""}
    layers = args.perturb_layers or target.perturb_layers
    return PerturbationConfig.from_text(**levels, perturb_layers=layers) if levels else target.replace(perturb_layers=layers)


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
    return DataConfig(**given(args, DataConfig))


def model_config(args: argparse.Namespace, bits: object) -> ModelConfig:
    return ModelConfig(**{**given(args, ModelConfig), "bits": bits})


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**given(args, TrainConfig))


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
    compared = compared_model_config(args, model_cfg)
    robust_cfg, perturbation = hardware_configs(args, model_cfg, with_perturbation=True)
    from pipeline import stages, tracking

    tracking.use_experiment()
    stages.main_stage(data_cfg, model_cfg, train_cfg, robust_cfg, perturbation, compared)


def compared_model_config(args: argparse.Namespace, quantized: ModelConfig) -> ModelConfig | None:
    """The second quantized model of ``main`` (``--compare_bits``; 0, none or the same as ``--bits``: no second model)."""
    if str(args.compare_bits).strip().lower() in ("0", "none"):
        return None
    try:
        config = model_config(args, args.compare_bits)
    except ConfigError as error:
        raise ConfigError("compare_bits", f"{error.message}; 0 = no second quantized model") from None
    if config.is_float:
        raise ConfigError("compare_bits", "the float model is always compared: use 1..8, or 0 for none")
    return None if config.bits == quantized.bits else config


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
    from pipeline import data as data_module

    data = data_module.prepare(data_cfg)
    from pipeline import tracking
    from sweeps.study import run_sweep as sweep

    tracking.use_experiment()
    sweep(data_cfg, model_cfg, train_cfg, robust_cfg, space, sweep_cfg, data)


def run_cleanup(args: argparse.Namespace) -> None:
    from pipeline.validation import require_float

    stale_hours = require_float("stale_hours", args.stale_hours, 0.0, None, low_inclusive=False)
    from pipeline import tracking

    tracking.check_reachable()
    stale = tracking.fail_stale_runs(stale_hours, "found RUNNING by cleanup")
    for run in stale:
        print(f"[cleanup] marked FAILED: {run.info.run_name} ({run.info.run_id})")
    print(f"[cleanup] {len(stale)} run(s) left RUNNING by a crash marked FAILED")


def logged_model(args: argparse.Namespace) -> tuple[str, str, str]:
    """(model URI, its training run id, its data URI) from ``--model_uri`` or ``--run_id`` (and ``--data_uri``)."""
    from pipeline import tracking

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
    from pipeline import stages

    stages.evaluate_stage(*logged_model(args), robust_cfg)


def run_sensitivity(args: argparse.Namespace) -> None:
    robust_cfg = robustness_config(args)
    from pipeline import stages

    stages.sensitivity_stage(*logged_model(args), robust_cfg, layers=args.perturb_layers)


def add_logged_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model_uri", default="", help="the model, e.g. models:/m-<id> (or give --run_id)")
    parser.add_argument("--run_id", default="", help="a training run whose model to use")
    parser.add_argument("--data_uri", default="", help="prepared data; default: the data the model's run used")
    parser.add_argument("--seed", default="0", help="seed of the Monte-Carlo chips")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.cli", description=__doc__.splitlines()[0], allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)
    specs: list[tuple[str, str, Callable, int | None, bool]] = [
        ("prepare", "load, check, split and log the data", run_prepare, None, False),
        ("baseline", "train and evaluate the float baseline", run_baseline, None, True),
        ("qat", "train and evaluate a Larq quantization-aware model", run_qat, 1, True),
        ("perturb", "perturbation-aware training under the hardware model", run_perturb, 1, True),
        ("main", "prepare -> baseline -> qat -> perturb -> comparison", run_main, 1, True),
    ]
    for name, help_text, handler, bits_default, trains in specs:
        command = commands.add_parser(name, help=help_text, allow_abbrev=False)
        add_data_arguments(command)
        if trains:
            add_model_arguments(command, bits_default)
            add_train_arguments(command)
            add_robustness_arguments(command)
        if name in ("perturb", "main"):
            add_perturbation_arguments(command)
        if name == "main":
            command.add_argument("--compare_bits", default="2", help="a second quantized model in the comparison "
                                 "(1..8, e.g. 2; 0, none or the same as --bits: no second model)")
        if name in ("baseline", "qat", "perturb"):
            command.add_argument("--data_uri", default="", help="prepared data of an earlier prepare run (artifact URI)")
        command.set_defaults(handler=handler)
    sweep = commands.add_parser("sweep", help="Optuna sweep over training-time perturbation levels", allow_abbrev=False)
    add_data_arguments(sweep)
    add_model_arguments(sweep, 1)
    add_train_arguments(sweep)
    add_robustness_arguments(sweep, with_target=False, target_chips=SWEEP_TARGET_CHIPS)  # the space names the target hardware
    add_sweep_arguments(sweep)
    sweep.set_defaults(handler=run_sweep)
    cleanup = commands.add_parser("cleanup", help="mark runs left RUNNING by a crash as FAILED", allow_abbrev=False)
    cleanup.add_argument("--stale_hours", default="24", help="also fail RUNNING runs older than this (any host)")
    cleanup.set_defaults(handler=run_cleanup)
    evaluate = commands.add_parser("evaluate", help="robustness evaluation of a logged model", allow_abbrev=False)
    add_logged_model_arguments(evaluate)
    add_robustness_arguments(evaluate)
    evaluate.set_defaults(handler=run_evaluate)
    sensitivity = commands.add_parser("sensitivity", help="per-layer sensitivity of a logged model: which layer to protect first",
                                      allow_abbrev=False)
    add_logged_model_arguments(sensitivity)
    add_robustness_arguments(sensitivity, target_chips=SWEEP_TARGET_CHIPS)  # per layer: 200 chips rank the layers
    sensitivity.add_argument("--perturb_layers", default="",
                             help="the layers perturbed one at a time: hidden, dense, all or names [default: the target's layers]")
    sensitivity.set_defaults(handler=run_sensitivity)
    for command in commands.choices.values():
        command.add_argument("--verbose", default="0", help="1: also TensorFlow's and the converters' native log lines "
                             "(hidden by default; the environment variable HWL_VERBOSE=1 does the same)")
    return parser


def reject_unknown(args: argparse.Namespace, unknown: Sequence[str]) -> None:
    """No parameter is silently ignored (``mlflow run`` passes undeclared ``-P key=value`` on as ``--key value``)."""
    if unknown:
        flags = [token for token in unknown if token.startswith("--")] or list(unknown)
        name = flags[0].lstrip("-").split("=")[0]
        known = ", ".join(sorted(key for key in vars(args) if key not in ("command", "handler")))
        raise ConfigError(name, f"unknown parameter of `{args.command}`; known: {known}")


def raise_on_sigterm(signum, frame):  # noqa: ARG001
    """SIGTERM unwinds like Ctrl-C: open runs end KILLED and a running Optuna trial is marked failed."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    args, unknown = build_parser().parse_known_args(argv)
    try:
        reject_unknown(args, unknown)
        if require_bool("verbose", args.verbose):
            make_verbose()
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
