"""Robustness evaluation: accuracy under the hardware model, over Monte-Carlo chips.

Protocol (after IBM aihwkit's: program a chip once, read it many times):

* The model is copied with its targeted layers hardware-aware (:func:`attach_hardware`), and each
  layer's clean output range is calibrated on the validation split (for relative clipping).
* One-factor curves, one per effect of the registry (``pipeline/effects``: its grid, every other
  effect off) -- plus the ``target`` condition (every effect at the target hardware's levels).
  Each level is evaluated on K chips: chip ``c`` is a seeded draw of every per-chip effect (the
  same chip ``c`` at every level) with seeded, fresh-per-batch per-pass effects. Levels without
  randomness (pure saturation) are evaluated once.
* Per level: mean, std, min and 5th percentile of test accuracy over chips, and the **yield**:
  the fraction of chips whose accuracy is at least ``clean - yield_tolerance``.
* Summaries: ``robust_auc_<effect>`` = mean accuracy over the effect's grid (in [0, 1]),
  ``robust_acc_target`` and ``robust_yield_target``.

Levels and chips are variables: the whole grid runs through one traced function (no retracing).
Several chips can share one forward pass (``RobustnessConfig.chips_per_pass``; automatic: every
chip of a level when only dense layers are perturbed, the first one included): the table is the
same, bit for bit, as one chip per pass; the calls are fewer and larger.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

import pipeline  # noqa: F401
import tensorflow as tf

from pipeline.config import RobustnessConfig
from pipeline.data import PreparedData
from pipeline.effects import EFFECTS, Sampling
from pipeline.hardware import PerturbationConfig, curve_point, select_layers
from pipeline.chips import (
    attach_hardware,
    calibrate,
    chips_per_pass,
    hardware_evaluation,
    hardware_layers,
    plain_class,
    set_condition,
)

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
    """(effect, level index, level, hardware) for every point of every effect's curve, then the target condition."""
    points = [(effect.name, index, level, curve_point(effect, level))
              for effect in EFFECTS for index, level in enumerate(config.grids[effect.name])]
    return [*points, ("target", 0, 1.0, config.target)]


def chips_side_by_side(model: tf.keras.Model, targets: tuple[str, ...], config: RobustnessConfig) -> int:
    """How many chips one pass evaluates (see ``RobustnessConfig.chips_per_pass``; 0 = automatic)."""
    if config.chips_per_pass:
        return min(config.chips_per_pass, config.chips)
    import larq as lq

    weighted = [layer for layer in model.layers if plain_class(layer) in (lq.layers.QuantDense, lq.layers.QuantConv2D)]
    perturbed = [layer for layer in weighted if layer.name in targets]
    dense_only = all(plain_class(layer) is lq.layers.QuantDense for layer in perturbed)
    return config.chips if perturbed and dense_only and weighted[0] is perturbed[0] else 1


def is_random(levels: PerturbationConfig) -> bool:
    """Whether any active effect of ``levels`` draws random numbers (else one chip says it all)."""
    return any(params.active and effect.sampling is not Sampling.DETERMINISTIC for effect, params in levels)


class CompiledAccuracy:
    """Test accuracy of ``model``, compiled once (one trace for any batch size, level and chip).

    A model that evaluates P chips per pass (``chips_per_pass``) gets batches of P equal parts,
    part k on chip k. :meth:`per_chip` gives every chip every image (each part the same batch of
    ``batch_size`` images: what that chip alone would see); :meth:`one_chip` shares the images
    among the parts -- for when every chip computes the same (clean, or a level without
    randomness), it costs one chip's evaluation, not P.
    """

    def __init__(self, model: tf.keras.Model, batch_size: int):
        self.chips = chips_per_pass(model)
        self.batch_size = batch_size
        self.traces = 0
        chips = self.chips

        @tf.function(input_signature=[tf.TensorSpec([None, *model.input_shape[1:]], tf.float32),
                                      tf.TensorSpec([None], tf.int64), tf.TensorSpec([], tf.bool)])
        def correct(images, labels, stack):
            """Hits per chip; ``stack``: give every chip all of ``images`` (else they are the parts)."""
            self.traces += 1  # Python side effect: runs only while tracing
            if chips > 1:
                copies = lambda tensor: tf.tile(tensor, [chips] + [1] * (tensor.shape.rank - 1))  # noqa: E731
                images = tf.cond(stack, lambda: copies(images), lambda: images)
                labels = tf.cond(stack, lambda: copies(labels), lambda: labels)
            hits = tf.cast(tf.equal(tf.argmax(model(images, training=False), axis=1), labels), tf.int64)
            return tf.reduce_sum(tf.reshape(hits, [chips, -1]), axis=1)

        self._correct = correct

    def per_chip(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Accuracy of each chip of the pass on all of ``images``."""
        hits = np.zeros(self.chips, np.int64)
        for start in range(0, len(labels), self.batch_size):
            hits += self._correct(images[start : start + self.batch_size], labels[start : start + self.batch_size], True).numpy()
        return hits / len(labels)

    def one_chip(self, images: np.ndarray, labels: np.ndarray) -> float:
        """Accuracy on ``images`` when every chip of the pass computes the same."""
        step = self.batch_size * self.chips
        hits = 0
        for start in range(0, len(labels), step):
            batch, truth = images[start : start + step], labels[start : start + step]
            if pad := -len(truth) % self.chips:  # equal parts; padded images count for nothing
                batch = np.concatenate([batch, np.zeros((pad, *batch.shape[1:]), batch.dtype)])
                truth = np.concatenate([truth, np.full(pad, -1, truth.dtype)])
            hits += int(self._correct(batch, truth, False).numpy().sum())
        return hits / len(labels)


def evaluate_robustness(
    model: tf.keras.Model, data: PreparedData, config: RobustnessConfig, progress: Callable[[str], None] | None = print
) -> RobustnessResult:
    started = time.perf_counter()
    targets = model_targets(model, config.target.perturb_layers)
    side_by_side = chips_side_by_side(model, targets, config)
    hardware = attach_hardware(model, PerturbationConfig(), targets, chips_per_pass=side_by_side)
    calibrate(hardware, data.images("val"))
    images, labels = data.images("test"), data.labels("test")
    accuracy = CompiledAccuracy(hardware, config.batch_size)
    clean = accuracy.one_chip(images, labels)
    first_chip = config.seed * CHIP_SEED_STRIDE
    rows = []
    with hardware_evaluation(hardware, PerturbationConfig(), chip=first_chip):
        for effect, index, level, levels in conditions(config):
            point = {"effect": effect, "level_index": index, "level": level}
            if not is_random(levels):  # no randomness: one chip says it all
                set_condition(hardware, levels, first_chip)
                rows.append({**point, "chip": 0, "accuracy": accuracy.one_chip(images, labels)})
            for start in range(0, config.chips if is_random(levels) else 0, side_by_side):
                set_condition(hardware, levels, first_chip + start)  # programs the pass's chips once
                for chip, chip_accuracy in enumerate(accuracy.per_chip(images, labels)[: config.chips - start], start=start):
                    rows.append({**point, "chip": chip, "accuracy": float(chip_accuracy)})
            if progress and (effect == "target" or index == len(config.grids[effect]) - 1):
                done = pd.DataFrame([r for r in rows if r["effect"] == effect]).groupby("level", sort=False)["accuracy"].mean()
                progress(f"[robustness] {effect:<10} " + "  ".join(f"{lvl:g}:{100 * acc:.1f}%" for lvl, acc in done.items()))
    chips = pd.DataFrame(rows)
    curves = summarize(chips, clean, config.yield_tolerance)
    return RobustnessResult(chips, curves, clean, summaries(curves), accuracy.traces, time.perf_counter() - started)


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
    result = {f"robust_auc_{effect.name}": float(curves.loc[curves.effect == effect.name, "acc_mean"].mean()) for effect in EFFECTS}
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
        self.accuracy = CompiledAccuracy(self.model, self.batch_size)

    def on_epoch_end(self, epoch, logs=None):
        calibrate(self.model, self.images)
        with hardware_evaluation(self.model, self.target, chip=self.chip):
            accuracy = self.accuracy.one_chip(self.images, self.labels)
        if logs is not None:
            logs["val_target_accuracy"] = accuracy
