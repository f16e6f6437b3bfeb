"""One training function for every stage (baseline, QAT, and later perturbation-aware and sweep trials)."""

from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import dataclass
from collections.abc import Iterator, Sequence

import numpy as np

import pipeline  # noqa: F401
import tensorflow as tf

from pipeline.config import TrainConfig
from pipeline.learning.data import PreparedData


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


@contextlib.contextmanager
def graph_memory_released() -> Iterator[None]:
    """Inside: build, train and evaluate models; on exit the memory of their traced graphs is freed.

    TensorFlow registers every ``tf.custom_gradient`` traced into a graph -- Larq's quantizers, ours,
    and the cross-replica sum Keras' metrics use in every train / test function -- under a fresh
    name in a global gradient registry and never removes it; each entry's closure pins its whole
    graph (tensorflow/tensorflow#97697, #27492; ``clear_session`` does not help: tf-keras#898). In a
    process that trains model after model (a sweep worker) that grows resident memory by 10-70 MB
    per model. On exit, the entries registered inside are dropped (their graphs are then
    collectable). Models built inside must not be differentiated again after the block.
    """
    from tensorflow.python.framework import ops  # the registry is not public API

    registry = ops._gradient_registry._registry
    before = set(registry)
    try:
        yield
    finally:
        for name in [name for name in registry if name not in before and name.startswith("CustomGradient-")]:
            del registry[name]
        gc.collect()


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
