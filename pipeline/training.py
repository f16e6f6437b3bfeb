"""One training function for every stage (baseline, QAT, and later perturbation-aware and sweep trials)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

import pipeline  # noqa: F401
import tensorflow as tf

from pipeline.config import TrainConfig
from pipeline.data import PreparedData


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the model's weights are unusable."""


@dataclass(frozen=True)
class TrainResult:
    history: dict[str, list[float]]  #: per-epoch loss, accuracy, val_loss, val_accuracy
    seconds: float  #: wall time of ``fit``
    epochs_run: int  #: epochs completed (fewer than asked if a callback stopped training)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow, and make TensorFlow's ops deterministic (CPU)."""
    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def compile_model(model: tf.keras.Model, config: TrainConfig) -> None:
    model.compile(
        optimizer=tf.keras.optimizers.Adam(learning_rate=config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def train(
    model: tf.keras.Model,
    data: PreparedData,
    config: TrainConfig,
    callbacks: Sequence[tf.keras.callbacks.Callback] = (),
    verbose: int = 2,
) -> TrainResult:
    """Compile ``model`` with Adam and fit it on the train split, validating on the val split.

    Progress is printed once per epoch. Raises :class:`TrainingDiverged` if the loss turns NaN.
    """
    compile_model(model, config)
    started = time.perf_counter()
    history = model.fit(
        data.images("train"),
        data.labels("train"),
        validation_data=(data.images("val"), data.labels("val")),
        epochs=config.epochs,
        batch_size=config.batch_size,
        shuffle=True,
        callbacks=[tf.keras.callbacks.TerminateOnNaN(), *callbacks],
        verbose=verbose,
    )
    seconds = time.perf_counter() - started
    curves = {name: [float(v) for v in values] for name, values in history.history.items()}
    if any(not np.isfinite(v) for v in curves.get("loss", [])):
        raise TrainingDiverged(f"training loss became {curves['loss'][-1]} at epoch {len(curves['loss'])}")
    return TrainResult(history=curves, seconds=seconds, epochs_run=len(curves.get("loss", [])))
