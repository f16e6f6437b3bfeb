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

from pipeline.config import ConfigError, DataConfig, ModelConfig, TrainConfig

EXIT_BAD_INPUT = 2


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


def run_training(stage: str, args: argparse.Namespace, model: ModelConfig) -> None:
    data_cfg, train_cfg = data_config(args), train_config(args)
    from pipeline import data as data_module

    data = None if args.data_uri else data_module.prepare(data_cfg)  # bad data fails before any run
    from pipeline import stages, tracking

    tracking.use_experiment()
    if data is None:
        handle = stages.load_data_uri(args.data_uri)
        get_data = lambda: handle  # noqa: E731
    else:
        get_data = lambda: stages.prepare_stage(data_cfg, data=data)  # noqa: E731
    stages.training_stage(stage, model, train_cfg, get_data)


def run_baseline(args: argparse.Namespace) -> None:
    run_training("baseline", args, model_config(args, 32))


def run_qat(args: argparse.Namespace) -> None:
    run_training("qat", args, qat_model_config(args))


def run_main(args: argparse.Namespace) -> None:
    data_cfg, model_cfg, train_cfg = data_config(args), qat_model_config(args), train_config(args)
    from pipeline import stages, tracking

    tracking.use_experiment()
    stages.main_stage(data_cfg, model_cfg, train_cfg)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.cli", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    specs: list[tuple[str, str, Callable, int | None, bool]] = [
        ("prepare", "load, check, split and log the data", run_prepare, None, False),
        ("baseline", "train and evaluate the float baseline", run_baseline, None, True),
        ("qat", "train and evaluate a Larq quantization-aware model", run_qat, 1, True),
        ("main", "prepare -> baseline -> qat -> comparison", run_main, 1, True),
    ]
    for name, help_text, handler, bits_default, trains in specs:
        command = commands.add_parser(name, help=help_text)
        add_data_arguments(command)
        if trains:
            add_model_arguments(command, bits_default)
            add_train_arguments(command)
        if name in ("baseline", "qat"):
            command.add_argument("--data_uri", default="", help="prepared data of an earlier prepare run (artifact URI)")
        command.set_defaults(handler=handler)
    return parser


def raise_on_sigterm(signum, frame):  # noqa: ARG001
    """SIGTERM unwinds like Ctrl-C, so open runs end FAILED instead of staying RUNNING."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
