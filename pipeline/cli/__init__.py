"""Entry points: ``python -m pipeline.cli <stage> --param value ...`` (what MLproject runs).

The arguments are derived from the config dataclasses and the effect registry (:mod:`pipeline.cli.arguments`),
so each parameter is declared once. Every bad value -- and every unknown parameter -- gets one line
naming it and what is allowed, exit code 2, before data is loaded, TensorFlow is imported or a run is
written to. The command line is the top of the import rule: it wires the stages and the sweep.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from pipeline.cli import commands as run
from pipeline.cli.arguments import (add_data_arguments, add_logged_model_arguments,
                                    add_model_arguments,
                                    add_perturbation_arguments, add_robustness_arguments, add_sweep_arguments,
                                    add_train_arguments)
from pipeline.config import SWEEP_TARGET_CHIPS
from pipeline.interruption import caused_by_interruption, raise_on_sigterm
from pipeline.native_logs import make_verbose
from pipeline.validation import ConfigError, require_bool


EXIT_BAD_INPUT = 2


EXIT_INTERRUPTED = 130


TRAINING_COMMANDS: list[tuple[str, str, str, int | None, bool]] = [  # name, help, handler, default bits, trains
    ("prepare", "load, check, split and log the data", "run_prepare", None, False),
    ("baseline", "train and evaluate the float baseline", "run_baseline", None, True),
    ("qat", "train and evaluate a Larq quantization-aware model", "run_qat", 1, True),
    ("perturb", "perturbation-aware training under the hardware model", "run_perturb", 1, True),
    ("main", "prepare -> baseline -> qat -> perturb -> comparison", "run_main", 1, True),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.cli", description=__doc__.splitlines()[0], allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)
    for spec in TRAINING_COMMANDS:
        add_training_command(commands, *spec)
    add_other_commands(commands)
    for command in commands.choices.values():
        command.add_argument("--verbose", default="0", help="1: also TensorFlow's and the converters' native log lines "
                             "(hidden by default; the environment variable HWL_VERBOSE=1 does the same)")
    return parser


def add_training_command(commands, name: str, help_text: str, handler: str, bits_default: int | None, trains: bool) -> None:
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
    command.set_defaults(handler=getattr(run, handler))


def add_other_commands(commands) -> None:
    sweep = commands.add_parser("sweep", help="Optuna sweep over training-time perturbation levels", allow_abbrev=False)
    add_data_arguments(sweep)
    add_model_arguments(sweep, 1)
    add_train_arguments(sweep)
    add_robustness_arguments(sweep, with_target=False, target_chips=SWEEP_TARGET_CHIPS)  # the space names the target hardware
    add_sweep_arguments(sweep)
    sweep.set_defaults(handler=run.run_sweep)
    cleanup = commands.add_parser("cleanup", help="mark runs left RUNNING by a crash as FAILED", allow_abbrev=False)
    cleanup.add_argument("--stale_hours", default="24", help="also fail RUNNING runs older than this (any host)")
    cleanup.set_defaults(handler=run.run_cleanup)
    evaluate = commands.add_parser("evaluate", help="robustness evaluation of a logged model", allow_abbrev=False)
    add_logged_model_arguments(evaluate)
    add_robustness_arguments(evaluate)
    evaluate.set_defaults(handler=run.run_evaluate)
    sensitivity = commands.add_parser("sensitivity", help="per-layer sensitivity of a logged model: which layer to protect first",
                                      allow_abbrev=False)
    add_logged_model_arguments(sensitivity)
    add_robustness_arguments(sensitivity, target_chips=SWEEP_TARGET_CHIPS)  # per layer: 200 chips rank the layers
    sensitivity.add_argument("--perturb_layers", default="",
                             help="the layers perturbed one at a time: hidden, dense, all or names [default: the target's layers]")
    sensitivity.set_defaults(handler=run.run_sensitivity)


def reject_unknown(args: argparse.Namespace, unknown: Sequence[str]) -> None:
    """No parameter is silently ignored (``mlflow run`` passes undeclared ``-P key=value`` on as ``--key value``)."""
    if unknown:
        flags = [token for token in unknown if token.startswith("--")] or list(unknown)
        name = flags[0].lstrip("-").split("=")[0]
        known = ", ".join(sorted(key for key in vars(args) if key not in ("command", "handler")))
        raise ConfigError(name, f"unknown parameter of `{args.command}`; known: {known}")


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, even when started with SIGINT ignored (a background job)
    args, unknown = build_parser().parse_known_args(argv)
    try:
        reject_unknown(args, unknown)
        if require_bool("verbose", args.verbose):
            make_verbose()
        args.handler(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BaseException as error:
        if not caused_by_interruption(error):
            raise
        print("interrupted: open runs were ended as KILLED", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0

