"""Robustness evaluation: accuracy under the hardware model, over Monte-Carlo chips.

Protocol (after IBM aihwkit's: program a chip once, read it many times):

* The model is copied with its targeted layers hardware-aware (:func:`attach_hardware`), and each
  layer's clean output range is calibrated on the validation split (for relative clipping).
* One-factor curves -- ``noise`` (relative sigma), ``weight_dev`` (percent), ``clip`` (fraction of
  the calibrated range) -- plus the ``target`` condition (every effect at the target hardware's
  levels). Each level is evaluated on K chips: chip ``c`` is a seeded draw of the weight deviation
  (the same chip ``c`` at every level) with seeded, fresh-per-batch output noise. Levels without
  randomness (pure clipping) are evaluated once.
* Per level: mean, std, min and 5th percentile of test accuracy over chips, and the **yield**:
  the fraction of chips whose accuracy is at least ``clean - yield_tolerance``.
* Summaries: ``robust_auc_<effect>`` = mean accuracy over the effect's grid (in [0, 1]),
  ``robust_acc_target`` and ``robust_yield_target``.

Levels and chips are variables: the whole grid runs through one traced function (no retracing).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

import pipeline  # noqa: F401
import tensorflow as tf

from pipeline.config import ClipMode, PerturbationConfig, RobustnessConfig, select_layers
from pipeline.data import PreparedData
from pipeline.perturbations import (
    attach_hardware,
    calibrate,
    hardware_evaluation,
    hardware_layers,
    plain_class,
    set_condition,
)

EFFECTS = ("noise", "weight_dev", "clip")
LEVEL_UNITS = {"noise": "sigma (x RMS of clean output)", "weight_dev": "weight deviation (%)",
               "clip": "clip fraction of clean range", "target": "target hardware"}
CHIP_SEED_STRIDE = 10_007


@dataclass(frozen=True)
class RobustnessResult:
    chips: pd.DataFrame  #: one row per (effect, level, chip): accuracy
    curves: pd.DataFrame  #: one row per (effect, level): acc_mean, acc_std, acc_min, acc_p5, yield
    clean_accuracy: float
    summaries: dict[str, float]
    traces: int  #: how often the evaluation function was traced (1 = no retracing across the grid)
    seconds: float


def model_targets(model: tf.keras.Model, perturb_layers: str) -> tuple[str, ...]:
    """The layers ``perturb_layers`` selects in a built model (dense = QuantDense, conv = QuantConv2D)."""
    import larq as lq

    dense = [layer.name for layer in model.layers if plain_class(layer) is lq.layers.QuantDense]
    conv = [layer.name for layer in model.layers if plain_class(layer) is lq.layers.QuantConv2D]
    return select_layers(perturb_layers, dense, conv, model.name)


def conditions(config: RobustnessConfig) -> list[tuple[str, int, float, PerturbationConfig]]:
    """(effect, level index, level, levels) for every point of the grids, then the target condition."""
    points = []
    for index, sigma in enumerate(config.noise_grid):
        points.append(("noise", index, sigma, PerturbationConfig(noise_sigma=sigma)))
    for index, pct in enumerate(config.weight_dev_grid):
        points.append(("weight_dev", index, pct, PerturbationConfig(weight_dev_pct=pct)))
    for index, fraction in enumerate(config.clip_grid):
        points.append(("clip", index, fraction, PerturbationConfig(clip_mode=ClipMode.RELATIVE, clip_fraction=fraction)))
    points.append(("target", 0, 1.0, config.target))
    return points


def is_random(levels: PerturbationConfig) -> bool:
    return levels.noise_sigma > 0 or levels.weight_dev_pct > 0


def accuracy_function(model: tf.keras.Model, batch_size: int) -> tuple[Callable[[np.ndarray, np.ndarray], float], list[int]]:
    """A compiled accuracy(images, labels) with one trace for any batch size; and its trace counter."""
    traces = [0]

    @tf.function(input_signature=[tf.TensorSpec([None, *model.input_shape[1:]], tf.float32),
                                  tf.TensorSpec([None], tf.int64)])
    def correct(images, labels):
        traces[0] += 1  # Python side effect: runs only while tracing
        predicted = tf.argmax(model(images, training=False), axis=1)
        return tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.int64))

    def accuracy(images: np.ndarray, labels: np.ndarray) -> float:
        hits = sum(int(correct(images[i : i + batch_size], labels[i : i + batch_size])) for i in range(0, len(labels), batch_size))
        return hits / len(labels)

    return accuracy, traces


def evaluate_robustness(
    model: tf.keras.Model, data: PreparedData, config: RobustnessConfig, progress: Callable[[str], None] | None = print
) -> RobustnessResult:
    started = time.perf_counter()
    targets = model_targets(model, config.target.perturb_layers)
    hardware = attach_hardware(model, PerturbationConfig(), targets)
    calibrate(hardware, data.images("val"))
    images, labels = data.images("test"), data.labels("test")
    accuracy, traces = accuracy_function(hardware, config.batch_size)
    clean = accuracy(images, labels)
    rows = []
    with hardware_evaluation(hardware, PerturbationConfig(), chip=0):
        for effect, index, level, levels in conditions(config):
            for chip in range(config.chips if is_random(levels) else 1):
                set_condition(hardware, levels, config.seed * CHIP_SEED_STRIDE + chip)  # one draw per chip
                rows.append({"effect": effect, "level_index": index, "level": level, "chip": chip,
                             "accuracy": accuracy(images, labels)})
            if progress and (effect == "target" or index == len(getattr(config, f"{effect}_grid")) - 1):
                done = pd.DataFrame([r for r in rows if r["effect"] == effect]).groupby("level", sort=False)["accuracy"].mean()
                progress(f"[robustness] {effect:<10} " + "  ".join(f"{lvl:g}:{100 * acc:.1f}%" for lvl, acc in done.items()))
    chips = pd.DataFrame(rows)
    curves = summarize(chips, clean, config.yield_tolerance)
    return RobustnessResult(chips, curves, clean, summaries(curves), traces[0], time.perf_counter() - started)


def summarize(chips: pd.DataFrame, clean: float, tolerance: float) -> pd.DataFrame:
    grouped = chips.groupby(["effect", "level_index", "level"], sort=False)["accuracy"]
    curves = grouped.agg(
        acc_mean="mean",
        acc_std=lambda a: float(np.std(a)),
        acc_min="min",
        acc_max="max",
        acc_p5=lambda a: float(np.percentile(a, 5)),
        yield_=lambda a: float(np.mean(np.asarray(a) >= clean - tolerance - 1e-12)),
        chips="count",
    ).reset_index()
    return curves.rename(columns={"yield_": "yield"})


def summaries(curves: pd.DataFrame) -> dict[str, float]:
    result = {f"robust_auc_{effect}": float(curves.loc[curves.effect == effect, "acc_mean"].mean()) for effect in EFFECTS}
    target = curves.loc[curves.effect == "target"].iloc[0]
    result["robust_acc_target"] = float(target["acc_mean"])
    result["robust_yield_target"] = float(target["yield"])
    return result



class TargetValidation(tf.keras.callbacks.Callback):
    """Adds ``val_target_accuracy`` to each epoch's logs: validation accuracy on one seeded chip of
    the target hardware, measured on the model being trained (its layers must be the target's).

    A sweep prunes on it, so a trial is judged by what it is optimized for -- robustness -- and
    not by its clean accuracy, which perturbation-aware training deliberately trades away.
    """

    def __init__(self, data: PreparedData, target: PerturbationConfig, chip: int = 0, batch_size: int = 1024):
        super().__init__()
        self.images, self.labels = data.images("val"), data.labels("val")
        self.target, self.chip, self.batch_size = target, chip, batch_size
        self.accuracy = None

    def on_train_begin(self, logs=None):
        names = {layer.name for layer in hardware_layers(self.model)}
        if names != set(model_targets(self.model, self.target.perturb_layers)):
            raise ValueError(f"TargetValidation needs the trained model's hardware-aware layers {sorted(names)} to be "
                             f"the target's ({self.target.perturb_layers})")
        self.accuracy, _ = accuracy_function(self.model, self.batch_size)

    def on_epoch_end(self, epoch, logs=None):
        calibrate(self.model, self.images)
        with hardware_evaluation(self.model, self.target, chip=self.chip):
            accuracy = self.accuracy(self.images, self.labels)
        if logs is not None:
            logs["val_target_accuracy"] = accuracy
