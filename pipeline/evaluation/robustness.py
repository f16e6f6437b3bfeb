"""Robustness evaluation: accuracy under the hardware model, over Monte-Carlo chips.

Protocol (after IBM aihwkit's: program a chip once, read it many times):

* The model is copied with its targeted layers hardware-aware (:func:`attach_hardware`), on the
  target's tiles (``tile_rows``; every curve is read on the same arrays), and each layer's clean
  output range is calibrated per tile on the validation split (for relative clipping and the ADC).
  The copy is built and traced once and reused by the next evaluation of a model of the same
  architecture (:mod:`pipeline.evaluation.bench`): a repeated evaluation pays the chips, not the copy.
* One-factor curves, one per effect of the registry (``pipeline/effects``: its grid, every other
  effect off), each level on ``chips`` chips -- then the ``target`` condition (every effect at the
  target hardware's levels) on ``target_chips`` chips (default 1,000). Chip ``c`` is a seeded
  draw of every per-chip effect (the same chip ``c`` at every level, whatever the batching) with
  seeded, fresh-per-batch per-pass effects. Levels without randomness (pure saturation) are
  evaluated once: every chip is the same.
* Per level: mean accuracy over chips with its 95 % interval, std, min, max and 5th percentile,
  and -- given a specification ``accuracy_spec`` (the test accuracy a chip must reach; the target
  file's) -- the **yield**, the fraction of chips at or above it, with its 95 % Wilson interval
  (:mod:`pipeline.evaluation.statistics`).
* Summaries: ``robust_auc_<effect>`` = mean accuracy over the effect's grid (in [0, 1]),
  ``robust_acc_target`` (``_low``, ``_high``) and ``robust_yield_target`` (``_low``, ``_high``).

Levels and chips are variables: the whole grid runs through one traced function (no retracing).
The plain layers before the first perturbed one compute the same for every chip: they run once per
image, and the chips start from their output (:mod:`pipeline.evaluation.bench`). Several chips
share one forward pass (``RobustnessConfig.chips_per_pass``; automatic: the chips of a level in
passes of at most 10 when the layers from the first perturbed one on are dense; the target's
chips in the curves' passes when those have at least 5 and the target reads at most 5,000 chips,
which saves building a second copy): the
table is the same, bit for bit, as one chip per pass; the calls are fewer and larger.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from collections.abc import Callable

import numpy as np
import pandas as pd

import pipeline  # noqa: F401
import tensorflow as tf

from pipeline.config import CHIP_SEED_STRIDE, RobustnessConfig
from pipeline.learning.data import PreparedData
from pipeline.effects import EFFECTS, Sampling
from pipeline.perturbation import PerturbationConfig, curve_point
from pipeline.evaluation.lifetime import Lifetime, lifetime_reads, over_time
from pipeline.evaluation.lifetime import describe as describe_lifetime
from pipeline.evaluation.statistics import estimate_text, summarize
from pipeline.evaluation.bench import CompiledAccuracy, chip_bench
from pipeline.hwmodel.chips import (
    Calibration,
    attach_hardware,
    chips_per_pass,
    hardware_evaluation,
    hardware_layers,
    needs_calibration,
    model_targets,
    plain_class,
    set_condition,
)

MAX_CHIPS_PER_PASS = 10  #: automatic side by side: at most this many chips per pass (measured fastest: 5-10; memory: P kernels, P x batch activations)
MIN_SHARED_PASS = 5  #: automatic: a larger target pass reads the curves' copy when it has at least this many chips per pass
MAX_SHARED_READS = 5000  #: ... and reads its chips at most this many times in all (chips x reads: 15 each with a lifetime):
#: 5 per pass costs about 2 % more per chip read than 10 (500 chips: 5.27 vs 5.18 s, measured), ~0.2 ms; a second copy ~1.5 s once
PROGRESS_CHIPS = 200  #: a condition of at least this many chips reports its progress


@dataclass(frozen=True)
class RobustnessResult:
    per_chip: pd.DataFrame  #: one row per (effect, level, chip): accuracy; ``random``: False where every chip is the same
    curves: pd.DataFrame  #: one row per (effect, level): acc_mean with acc_low..acc_high, acc_std, acc_min, acc_p5, yield..
    clean_accuracy: float
    summaries: dict[str, float]
    traces: int  #: how often an evaluation function was traced at most (1 = no retracing across the grid)
    seconds: float
    lifetime: Lifetime | None = None  #: the target's chips over time (a target that drifts), else None

    def describe_target(self) -> str:
        """``target accuracy 86.30% [85.91, 86.69] over 1000 chips, yield at spec 88.00%: 12.3% [10.4, 14.5]``."""
        summaries = self.summaries
        text = f"target accuracy {estimate_text(summaries, 'robust_acc_target')} over {summaries['robust_target_chips']:.0f} chips"
        if "robust_yield_target" in summaries:
            text += f", yield at spec {100 * summaries['accuracy_spec']:.2f}%: {estimate_text(summaries, 'robust_yield_target', 1)}"
        return text


def conditions(config: RobustnessConfig) -> list[tuple[str, int, float, PerturbationConfig]]:
    """(effect, level index, level, hardware) for every point of every effect's curve, then the target condition."""
    points = [(effect.name, index, level, curve_point(effect, level, config.target.tile_rows))
              for effect in EFFECTS for index, level in enumerate(config.grids[effect.name])]
    return [*points, ("target", 0, 1.0, config.target)]


def chips_side_by_side(model: tf.keras.Model, targets: tuple[str, ...], config: RobustnessConfig, chips: int) -> int:
    """How many of ``chips`` chips one pass evaluates (``RobustnessConfig.chips_per_pass``; 0 =
    automatic: all of them, at most :data:`MAX_CHIPS_PER_PASS`, in passes of equal size, when the
    layers the chips compute -- from the first perturbed one on -- are dense; the plain layers before it
    run once for all chips, :mod:`pipeline.evaluation.bench`)."""
    if config.chips_per_pass:
        return min(config.chips_per_pass, chips)
    import larq as lq

    weighted = [layer for layer in model.layers if plain_class(layer) in (lq.layers.QuantDense, lq.layers.QuantConv2D)]
    chips_read = weighted[next((index for index, layer in enumerate(weighted) if layer.name in targets), len(weighted)):]
    if not (chips_read and all(plain_class(layer) is lq.layers.QuantDense for layer in chips_read)):
        return 1  # a convolution from the first perturbed layer on (or nothing perturbed): one chip per pass
    passes = -(-chips // MAX_CHIPS_PER_PASS)
    return -(-chips // passes)


def target_chips_per_pass(model: tf.keras.Model, targets: tuple[str, ...], config: RobustnessConfig, over_time: bool) -> int:
    """How many of the target's chips one pass reads, as :func:`evaluate_robustness` reads them: in the
    curves' passes when :func:`reads_curves_copy`, else in its own."""
    curves, wanted = (chips_side_by_side(model, targets, config, chips) for chips in (config.chips, config.target_chips))
    return curves if reads_curves_copy(config, curves, wanted, over_time) else wanted


def reads_curves_copy(config: RobustnessConfig, built: int, wanted: int, over_time: bool) -> bool:
    """Whether the target's chips are read on the curves' copy (``built`` chips per pass) rather than on
    a new copy of its own ``wanted``: automatic pass sizes, ``built`` at least :data:`MIN_SHARED_PASS`,
    and at most :data:`MAX_SHARED_READS` chip reads (the target once, and at every time of a lifetime)."""
    reads = config.target_chips * (1 + (lifetime_reads(config.drift_times) if over_time and config.target.drift_time_s > 0 else 0))
    return config.chips_per_pass == 0 and MIN_SHARED_PASS <= built < wanted and reads <= MAX_SHARED_READS


def is_random(levels: PerturbationConfig) -> bool:
    """Whether any active effect of ``levels`` draws random numbers (else one chip says it all)."""
    return any(params.active and effect.sampling is not Sampling.DETERMINISTIC for effect, params in levels)


def evaluate_robustness(
    model: tf.keras.Model, data: PreparedData, config: RobustnessConfig, progress: Callable[[str], None] | None = print,
    over_time: bool = True,
) -> RobustnessResult:
    """Every effect's curve and the target condition (the module docstring); with ``over_time`` and a
    target that drifts, also the target's chips over time (:mod:`pipeline.evaluation.lifetime`)."""
    started = time.perf_counter()
    targets = model_targets(model, config.target.perturb_layers)
    labels = data.labels("test")
    first_chip = config.seed * CHIP_SEED_STRIDE
    rows, traces, clean, chip_model = [], 0, None, None
    points = conditions(config)
    passes = (chips_side_by_side(model, targets, config, config.chips), target_chips_per_pass(model, targets, config, over_time))
    for chips, conditions_of_pass, side_by_side in ((config.chips, points[:-1], passes[0]), (config.target_chips, points[-1:], passes[1])):
        if chip_model is None or chips_per_pass(chip_model) != side_by_side:  # the curves' copy serves the target when it can
            bench = chip_bench(model, config.target, targets, side_by_side, config.batch_size, data.images("val"))  # the target's tiles
            chip_model, accuracy, images = bench.model, bench.accuracy, bench.features(data.images("test"))
        clean = accuracy.one_chip(images, labels) if clean is None else clean
        with hardware_evaluation(chip_model, PerturbationConfig(tile_rows=config.target.tile_rows), chip=first_chip):
            for effect, index, level, levels in conditions_of_pass:
                point = {"effect": effect, "level_index": index, "level": level, "random": is_random(levels)}
                rows += [{**point, "chip": chip, "accuracy": value}
                         for chip, value in condition_accuracies(chip_model, accuracy, levels, chips, first_chip, images, labels,
                                                                 progress if effect == "target" else None)]
                if progress and (effect == "target" or index == len(config.grids[effect]) - 1):
                    done = pd.DataFrame([r for r in rows if r["effect"] == effect]).groupby("level", sort=False)["accuracy"].mean()
                    progress(f"[robustness] {effect:<10} " + "  ".join(f"{lvl:g}:{100 * acc:.1f}%" for lvl, acc in done.items()))
        traces = max(traces, accuracy.traces)
    per_chip = pd.DataFrame(rows)
    curves = summarize(per_chip, config.accuracy_spec)
    found = summaries(curves, config.accuracy_spec)
    lifetime = target_over_time(chip_model, accuracy, config, images, labels, progress) if over_time else None
    if lifetime is not None:
        found.update(lifetime.summaries(config.target.drift_compensation.value))
    return RobustnessResult(per_chip, curves, clean, found, max(traces, accuracy.traces), time.perf_counter() - started, lifetime)


def target_over_time(chip_model: tf.keras.Model, accuracy: CompiledAccuracy, config: RobustnessConfig, images: np.ndarray,
                     labels: np.ndarray, progress: Callable[[str], None] | None) -> Lifetime | None:
    """The target's chips at every time of ``config.drift_times`` (None when the target does not drift)."""
    if config.target.drift_time_s <= 0:
        return None
    with hardware_evaluation(chip_model, PerturbationConfig(tile_rows=config.target.tile_rows), chip=config.seed * CHIP_SEED_STRIDE):
        result = over_time(chip_model, accuracy, config.target, config.drift_times, config.target_chips,
                           config.seed * CHIP_SEED_STRIDE, images, labels, config.accuracy_spec, config.lifetime_yield, progress)
    if progress:
        progress(f"[lifetime] {describe_lifetime(result, config.lifetime_yield)}, {result.seconds:.1f} s")
    return result


def condition_accuracies(chip_model: tf.keras.Model, accuracy: CompiledAccuracy, levels: PerturbationConfig, chips: int,
                         first_chip: int, images: np.ndarray, labels: np.ndarray,
                         progress: Callable[[str], None] | None = None) -> list[tuple[int, float]]:
    """(chip, accuracy) of ``chips`` chips at ``levels`` (one chip when nothing is random: they are all the same)."""
    if not is_random(levels):
        set_condition(chip_model, levels, first_chip)
        return [(0, accuracy.one_chip(images, labels))]
    found, reported, started = [], 0, time.perf_counter()
    for start in range(0, chips, accuracy.chips):
        set_condition(chip_model, levels, first_chip + start)  # programs the pass's chips once
        found += list(enumerate(map(float, accuracy.per_chip(images, labels)[: chips - start]), start=start))
        if progress and chips >= PROGRESS_CHIPS and len(found) >= (reported + 1) * chips // 4 and len(found) < chips:
            reported = 4 * len(found) // chips
            progress(f"[robustness] target: {len(found)}/{chips} chips, {time.perf_counter() - started:.0f} s")
    return found


def summaries(curves: pd.DataFrame, accuracy_spec: float | None) -> dict[str, float]:
    result = {f"robust_auc_{effect.name}": float(curves.loc[curves.effect == effect.name, "acc_mean"].mean()) for effect in EFFECTS}
    target = curves.loc[curves.effect == "target"].iloc[0]
    result.update({"robust_acc_target": float(target["acc_mean"]), "robust_acc_target_low": float(target["acc_low"]),
                   "robust_acc_target_high": float(target["acc_high"]), "robust_target_chips": float(target["chips"])})
    if accuracy_spec is not None:
        result.update({"robust_yield_target": float(target["yield"]), "robust_yield_target_low": float(target["yield_low"]),
                       "robust_yield_target_high": float(target["yield_high"]), "accuracy_spec": accuracy_spec})
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
        self.accuracy = self.calibration = self.chip_model = None

    def on_train_begin(self, logs=None):
        layers = hardware_layers(self.model)
        names = {layer.name for layer in layers}
        if names != set(model_targets(self.model, self.target.perturb_layers)):
            raise ValueError(f"TargetValidation needs the trained model's hardware-aware layers {sorted(names)} to be "
                             f"the target's ({self.target.perturb_layers})")
        same_arrays = all(layer.tiling == layer.tiling_for(self.target) for layer in layers)
        self.chip_model = self.model if same_arrays else attach_hardware(self.model, self.target, sorted(names))
        self.accuracy = CompiledAccuracy(self.chip_model, self.batch_size)
        self.calibration = Calibration(self.chip_model, self.batch_size) if needs_calibration(self.target) else None

    def on_epoch_end(self, epoch, logs=None):
        if self.chip_model is not self.model:  # the target's arrays: a copy of the weights being trained
            self.chip_model.set_weights(self.model.get_weights())
        if self.calibration is not None:  # the clean range moves as the model learns
            self.calibration(self.images)
        with hardware_evaluation(self.chip_model, self.target, chip=self.chip):
            accuracy = self.accuracy.one_chip(self.images, self.labels)
        if logs is not None:
            logs["val_target_accuracy"] = accuracy

