"""The command line's arguments, derived from the config dataclasses and the effect registry.

A ``--<field>`` per field of a config (its docstring as help) and every effect's parameters with its
``--<effect>_grid``, so each parameter is declared once; values are parsed as text and validated by the
config objects (one line naming a bad value, before data is loaded or TensorFlow is imported).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
import textwrap
from pathlib import Path
from collections.abc import Sequence

from pipeline.config import DataConfig, ModelConfig, RobustnessConfig, TrainConfig, as_text
from pipeline.effects import EFFECTS
from pipeline.perturbation import HARDWARE_PARAMETERS, TARGET_HARDWARE_FILE, PerturbationConfig, TileParams, load_target
from pipeline.validation import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]  #: where MLproject is


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
    add_config_arguments(parser, TileParams, f"{title}: tiles", not_given=True)
    parser.add_argument("--perturb_layers", default="", help="hidden | dense | all | comma-separated layer names")


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
    return PROJECT_ROOT / candidate


def robustness_config(args: argparse.Namespace,
                      target: tuple[PerturbationConfig, float | None] | None = None) -> RobustnessConfig:
    """From the arguments and the target (hardware, accuracy spec): ``--target``'s file unless given;
    ``--accuracy_spec`` overrides the target's spec."""
    grids = {effect.name: getattr(args, f"{effect.name}_grid") for effect in EFFECTS}
    perturbation, accuracy_spec = target or load_target(resolve_project_file(args.target))
    values = {"accuracy_spec": accuracy_spec, **given(args, RobustnessConfig, skip=("grids", "target", "batch_size"))}
    return RobustnessConfig(**values, grids=grids, target=perturbation)


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    from sweeps.config import SweepConfig

    add_config_arguments(parser, SweepConfig, "sweep")


def perturbation_config(args: argparse.Namespace, target: PerturbationConfig) -> PerturbationConfig:
    """The training levels: those given (others off), or the target hardware's when none is given;
    on ``perturb_layers`` when given, else the target's layers."""
    levels = {name: getattr(args, name) for name in HARDWARE_PARAMETERS if getattr(args, name) != ""}
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


def add_logged_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model_uri", default="", help="the model, e.g. models:/m-<id> (or give --run_id)")
    parser.add_argument("--run_id", default="", help="a training run whose model to use")
    parser.add_argument("--data_uri", default="", help="prepared data; default: the data the model's run used")
    parser.add_argument("--seed", default="0", help="seed of the Monte-Carlo chips")
