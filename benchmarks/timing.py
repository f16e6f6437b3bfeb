"""Timing helpers of the benchmarks: compiled training steps interleaved, the target's chips timed, and the
random numbers each needs drawn alone (the floor no implementation of the effects goes below)."""

from __future__ import annotations

import statistics
import time

import numpy as np

import pipeline  # noqa: F401
import tensorflow as tf

from pipeline.config import RobustnessConfig, TrainConfig
from pipeline.deploy.interpreter import median_seconds
from pipeline.effects import EFFECTS, KERNEL_EFFECTS, Effect, Sampling, Site
from pipeline.effects.base import KernelEffect, standard_normal
from pipeline.evaluation.bench import new_bench
from pipeline.evaluation.robustness import condition_accuracies, model_targets, target_chips_per_pass
from pipeline.hwmodel.chips import attach_hardware, hardware_evaluation, hardware_layers
from pipeline.learning.models import build_model
from pipeline.learning.training import compile_model, seed_everything
from pipeline.perturbation import PerturbationConfig

BATCH = 64  #: training batch of the step benchmarks (the default batch size)
QUICK_GRIDS = {effect.name: effect.curve.grid[:: len(effect.curve.grid) - 1] for effect in EFFECTS}  #: a smoke run: each curve's ends


def train_step_runner(model, images, labels, steps_per_round: int = 10):
    """A function running ``steps_per_round`` compiled training steps of ``model`` on one batch."""
    compile_model(model, TrainConfig())
    batches = iter(tf.data.Dataset.from_tensors((images, labels)).repeat())
    train_function = model.make_train_function()

    def run():
        for _ in range(steps_per_round):
            logs = train_function(batches)
        float(logs["loss"])  # wait for the last step

    run()  # warm-up: the trace
    return run


def hardware_aware_model(config, levels: PerturbationConfig | None):
    """The plain model of ``config`` (seed 0), attached with ``levels`` for training (none: plain)."""
    seed_everything(0)
    model = build_model(config)
    return model if levels is None else attach_hardware(model, levels, levels.targets(config), train_seed=0)


def plain_chip_seconds(model: tf.keras.Model, targets: tuple[str, ...], images: np.ndarray, chips: int,
                       rounds: int) -> dict[str, float]:
    """Seconds of the plain layers the chips compute -- ``model``'s from the first of ``targets`` on,
    reading what the layers before it give once per image -- on ``chips`` copies of ``images``:
    ``apart`` in ``chips`` calls, ``together`` in one call (interleaved medians), one shared kernel."""
    first = next(index for index, layer in enumerate(model.layers) if layer.name in targets)
    features = tf.constant(images, tf.float32)
    for layer in model.layers[:first]:
        features = layer(features, training=False)
    suffix = model.layers[first:]

    @tf.function(autograph=False)
    def forward(batch):
        for layer in suffix:
            batch = layer(batch, training=False)
        return batch

    stacked = tf.tile(features, [chips] + [1] * (features.shape.rank - 1))
    runners = {"apart": lambda: [forward(features).numpy() for _ in range(chips)], "together": lambda: forward(stacked).numpy()}
    for run in runners.values():
        run()  # warm-up: the traces
    return interleaved_seconds(runners, rounds, steps_per_round=1)


def batching_gain(model: tf.keras.Model, targets: tuple[str, ...], images: np.ndarray, chips: int, rounds: int) -> float:
    """How much faster the plain layers the chips compute read ``chips`` copies of ``images`` in one
    call than in ``chips`` calls: what a larger batch alone gains those products. Context for chips
    side by side, not a bound: a pass of chips also programs them together and shares every call's
    fixed cost."""
    seconds = plain_chip_seconds(model, targets, images, chips, rounds)
    return seconds["apart"] / seconds["together"]


def ratio_text(ratio: float | None) -> str:
    """``1.08x``, or ``-`` for a figure a kept earlier result does not have."""
    return "-" if ratio is None else f"{ratio:.2f}x"


def interleaved_seconds(runners: dict, rounds: int, steps_per_round: int = 10) -> dict[str, float]:
    """Median seconds per step of each runner, rounds interleaved so that drift hits all alike."""
    times = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            started = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - started) / steps_per_round)
    return {name: statistics.median(values) for name, values in times.items()}


class TargetChips:
    """The target condition of ``model`` on ``chips`` chips of the test split, as the evaluation runs it
    (on a bench: the plain layers before the first perturbed one once per image, chips side by side,
    calibrated on the validation split), traced once; :meth:`seconds` times one evaluation of every
    chip, programming included. The plain layers' output on the test images is computed once, here,
    and not timed (an evaluation computes it once too, before its chips)."""

    def __init__(self, model: tf.keras.Model, target: PerturbationConfig, accuracy_spec: float | None, chips: int, data,
                 over_time: bool = False, chips_per_pass: int | None = None):
        config = RobustnessConfig(target=target, target_chips=chips, accuracy_spec=accuracy_spec)
        targets = model_targets(model, target.perturb_layers)
        self.target, self.chips = target, chips
        self.chips_per_pass = chips_per_pass or target_chips_per_pass(model, targets, config, over_time)
        bench = new_bench(model, target, targets, self.chips_per_pass, config.batch_size)
        bench.calibration(bench.features(data.images("val")))
        self.model, self.accuracy = bench.model, bench.accuracy
        self.images, self.labels = bench.features(data.images("test")), data.labels("test")
        with hardware_evaluation(self.model, target, chip=0):
            self.accuracy.per_chip(self.images, self.labels)  # warm-up: the one trace

    def seconds(self) -> tuple[float, np.ndarray]:
        """Seconds for every chip, and their accuracies."""
        with hardware_evaluation(self.model, self.target, chip=0):
            started = time.perf_counter()
            found = condition_accuracies(self.model, self.accuracy, self.target, self.chips, 0, self.images, self.labels)
            seconds = time.perf_counter() - started
        return seconds, np.asarray([accuracy for _, accuracy in found])


def chip_draw_seconds(chip_model, target: PerturbationConfig, images: int, quick: bool) -> float:
    """The random numbers of one chip at ``target``, drawn alone: every active per-chip kernel
    effect's draw for each perturbed kernel, and one N(0, 1) per output element of each random
    per-pass output effect (the output noise) for every image, partial sum and output element (a
    convolution's every position and channel)."""
    shapes = [(effect, tuple(layer.kernel.shape)) for layer in hardware_layers(chip_model) for effect, params in target
              if params.active and effect.site is Site.KERNEL]
    outputs = [(images * layer.tiling.count, *layer.output_shape[1:]) for layer in hardware_layers(chip_model)
               for effect, params in target if params.active and effect.site is Site.OUTPUT and effect.sampling is Sampling.PER_PASS]

    @tf.function(autograph=False)
    def draw_all(seed):
        total = tf.constant(0.0)
        for effect, shape in shapes:
            total += tf.reduce_sum(effect.draw(tf.constant(shape, tf.int32), seed))
        for shape in outputs:
            total += tf.reduce_sum(standard_normal(shape, seed))
        return total

    seed = tf.constant([1, 2], tf.int64)
    float(draw_all(seed))
    return median_seconds(lambda: float(draw_all(seed)), 5 if quick else 20)


def draws_at_outputs(effect: Effect, layer, active_kernel_effects: list[Effect]) -> bool:
    """Whether training draws ``effect`` at the layer's outputs (output effects; the last kernel
    effect of a dense layer on flat inputs when it has an exact output form)."""
    if effect.site is Site.OUTPUT:
        return True
    reparameterized = type(effect).output_variance is not KernelEffect.output_variance
    return reparameterized and effect is active_kernel_effects[-1] and len(layer.input_shape) == 2


def training_draws(model) -> list[tuple[str, Effect, tuple[int, ...], bool, dict]]:
    """(layer, effect, shape, drawn at the outputs?, levels) of every random draw of one training step of ``model``."""
    return [(layer.name, *draw) for layer in hardware_layers(model) for draw in training_draws_of(layer)]


def training_draws_of(layer) -> list[tuple[Effect, tuple[int, ...], bool, dict]]:
    active = [effect for effect, params in layer.perturbation if params.active and effect.sampling is not Sampling.DETERMINISTIC]
    kernel_effects = [effect for effect in active if effect in KERNEL_EFFECTS]
    draws = []
    for effect in active:
        at_outputs = draws_at_outputs(effect, layer, kernel_effects)
        shape = (BATCH * layer.tiling.count, *layer.output_shape[1:]) if at_outputs else tuple(layer.kernel.shape)
        draws.append((effect, shape, at_outputs, effect.run_levels(layer.perturbation.params(effect))))
    return draws


def gaussians_at_outputs(model) -> int:
    """N(0, 1) numbers a training step draws at the layers' outputs (one per output element of each
    partial sum of a layer with a Gaussian output term: they are drawn as one)."""
    return sum(int(np.prod(layer.output_shape[1:])) * BATCH * layer.tiling.count for layer in hardware_layers(model)
               if any(at_outputs for _, _, at_outputs, _ in training_draws_of(layer)))


def draw_seconds(draws: list[tuple[str, Effect, tuple[int, ...], bool, dict]], rounds: int) -> float:
    """Median seconds to make the random draws of one step, in one compiled function (the RNG floor;
    Gaussian terms at the outputs of one layer are drawn as one, as the layer does)."""
    def draw_all(seed):
        total = tf.constant(0.0)
        outputs_drawn = set()
        for layer, effect, shape, at_outputs, levels in draws:
            if at_outputs and layer not in outputs_drawn:
                outputs_drawn.add(layer)
                total += tf.reduce_sum(standard_normal(shape, seed))
            elif not at_outputs:
                drawn = effect.training_draw(shape, seed, levels)
                parts = drawn if isinstance(drawn, tuple) else [drawn]
                total += sum(tf.reduce_sum(tf.cast(part, tf.float32)) for part in parts)
        return total

    draw = tf.function(draw_all, autograph=False)
    seed = tf.constant([1, 2], tf.int64)
    empty = tf.function(lambda seed: tf.reduce_sum(tf.cast(seed, tf.float32)))  # the call overhead alone
    float(draw(seed)), float(empty(seed))  # traces
    drawing = median_seconds(lambda: float(draw(seed)), rounds)
    return max(drawing - median_seconds(lambda: float(empty(seed)), rounds), 0.0)
