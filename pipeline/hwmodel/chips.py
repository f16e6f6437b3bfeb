"""Models with hardware-aware layers: attach the hardware model to a copy, evaluate it as chips, calibrate.

A **chip** is one seeded draw of every per-chip effect (``pipeline/effects``). Inside
:func:`hardware_evaluation` the model's hardware-aware layers apply given levels as given chips;
:func:`set_condition` changes levels or chips without rebuilding or retracing (each layer programs
its chips once, eagerly: :meth:`pipeline.hwmodel.layers.HardwareAwareMixin.program`). A model built with
``chips_per_pass`` P evaluates P chips side by side: its batches are P equal parts, part k on chip
k, with exactly the numbers of one chip at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np

import pipeline  # noqa: F401
import tensorflow as tf

from pipeline.perturbation import PerturbationConfig, select_layers
from pipeline.hwmodel.layers import HARDWARE_CLASSES, PLAIN_CLASSES, HardwareAwareMixin
from pipeline.hwmodel.quantizers import reads_pixels

def hardware_layers(model: tf.keras.Model) -> list[HardwareAwareMixin]:
    return [layer for layer in model.layers if isinstance(layer, HardwareAwareMixin)]


def plain_class(layer: tf.keras.layers.Layer) -> type:
    return PLAIN_CLASSES.get(type(layer), type(layer))


def attach_hardware(
    model: tf.keras.Sequential, config: PerturbationConfig, targets: Sequence[str], train_seed: int = 0,
    chips_per_pass: int = 1,
) -> tf.keras.Sequential:
    """A copy of ``model`` whose ``targets`` layers are hardware-aware with ``config`` (others plain).

    Weights are copied; ``model`` is untouched. Works on plain and hardware-aware models alike.
    ``config`` is also what the layers are built on (their tiles, bit-serial passes): a copy for
    evaluation gets the target's. ``chips_per_pass`` > 1 makes a copy for evaluation only that
    evaluates that many chips side by side: its batches are that many stacked copies of the images
    (see :func:`chip_ids`).
    """
    if isinstance(chips_per_pass, bool) or not isinstance(chips_per_pass, int) or chips_per_pass < 1:
        raise ValueError(f"chips_per_pass must be an integer >= 1; got {chips_per_pass!r}")
    names = {layer.name for layer in model.layers}
    if missing := [name for name in targets if name not in names]:
        raise ValueError(f"model {model.name} has no layer(s) {missing}")
    layers = []
    for layer in model.layers:
        layer_config = {key: value for key, value in layer.get_config().items() if key not in ("hardware", "pixel_inputs")}
        cls = plain_class(layer)
        if layer.name in targets:
            if cls not in HARDWARE_CLASSES:
                raise ValueError(f"layer {layer.name} ({cls.__name__}) cannot carry the hardware model")
            layers.append(HARDWARE_CLASSES[cls].from_config({**layer_config, "hardware": config.parameters(),
                                                              "pixel_inputs": reads_pixels(model, layer)}))
            layers[-1].chips_per_pass = chips_per_pass  # before the build creates the run-time state
        else:
            layers.append(cls.from_config(layer_config))
    copy = tf.keras.Sequential([tf.keras.Input(shape=model.input_shape[1:], name="image"), *layers], name=model.name)
    copy.set_weights(model.get_weights())
    for layer in hardware_layers(copy):
        layer.hardware_state.train_seed.assign(train_seed)
    return copy


def strip_hardware(model: tf.keras.Sequential) -> tf.keras.Sequential:
    """A plain copy of ``model`` (every layer its plain Larq class, weights copied): what gets deployed."""
    return attach_hardware(model, PerturbationConfig(), targets=())


def chips_per_pass(model: tf.keras.Model) -> int:
    """How many chips ``model`` evaluates side by side in one pass (1 for plain and training models)."""
    return max((layer.chips_per_pass for layer in hardware_layers(model)), default=1)


def chip_ids(model: tf.keras.Model, chip: int | Sequence[int]) -> list[int]:
    """The chips of a pass: ``chip`` and the ones after it, or exactly ``chips_per_pass`` given ids."""
    count = chips_per_pass(model)
    chips = [chip + index for index in range(count)] if isinstance(chip, (int, np.integer)) else [int(c) for c in chip]
    if len(chips) != count or any(c < 0 for c in chips):
        raise ValueError(f"chip: model {model.name} evaluates {count} chip(s) per pass; got {chip!r} "
                         f"(give the first chip id, or {count} ids >= 0)")
    return chips


@contextlib.contextmanager
def hardware_evaluation(model: tf.keras.Model, config: PerturbationConfig, chip: int | Sequence[int] = 0) -> Iterator[None]:
    """Inside: the model's hardware-aware layers apply ``config`` at inference, as chip ``chip``
    (a model with ``chips_per_pass`` P: chips ``chip .. chip + P - 1``, or P given ids).

    The chip seed fixes every per-chip draw; per-pass effects are fresh per forward pass but
    reproducible (each layer's pass counter restarts at 0). On exit inference is plain again and
    the pass counters are as they were: a model evaluated between training epochs (the sweep's
    pruning signal) keeps drawing fresh training noise, never the previous epoch's again.
    """
    layers = hardware_layers(model)
    chips = chip_ids(model, chip)
    for layer in layers:
        layer.check_hardware(config)
    counters = [int(layer.hardware_state.calls.numpy()) for layer in layers]
    try:
        for layer in layers:
            state = layer.hardware_state
            state.assign(config)
            state.chip_ids.assign(chips)
            state.calls.assign(0)
            state.evaluating.assign(True)
            layer.program()
        yield
    finally:
        end_evaluation(model)
        for layer, calls in zip(layers, counters):
            layer.hardware_state.calls.assign(calls)


def end_evaluation(model: tf.keras.Model) -> None:
    """Inference plain again: every hardware-aware layer's levels off, nothing programmed."""
    for layer in hardware_layers(model):
        layer.hardware_state.evaluating.assign(False)
        layer.hardware_state.assign(PerturbationConfig())
        layer.program()  # nothing to program: batches read the plain kernel again


def set_condition(model: tf.keras.Model, config: PerturbationConfig | None = None,
                  chip: int | Sequence[int] | None = None) -> None:
    """Inside :func:`hardware_evaluation`: other levels and / or other chips, then program the chips
    once (no rebuild, no retrace). New chips restart the pass counter."""
    chips = None if chip is None else chip_ids(model, chip)
    for layer in hardware_layers(model):
        state = layer.hardware_state
        if config is not None:
            layer.check_hardware(config)
            state.assign(config)
        if chips is not None:
            state.chip_ids.assign(chips)
            state.calls.assign(0)
        layer.program()


def calibrate(model: tf.keras.Model, images: np.ndarray, batch_size: int = 1024) -> dict[str, list[tuple[float, float]]]:
    """Measure each hardware-aware layer's clean output range [min, max] on ``images``, per partial sum
    (tile and pass; one for a layer on one tile), for relative saturation and the ADC."""
    return Calibration(model, batch_size)(images)


class Calibration:
    """Measures the clean partial sums' ranges of ``model``'s hardware-aware layers and stores them in
    the layers; the probe is built and compiled once, so measuring again (every epoch of a sweep
    trial) is one pass."""

    def __init__(self, model: tf.keras.Model, batch_size: int = 1024):
        self.model, self.layers, self.batch_size = model, hardware_layers(model), batch_size
        if self.layers:
            self._ranges = tf.function(lambda batch: [layer.clean_partial_range(x) for layer, x in zip(self.layers, layer_inputs(model, batch))],
                                       autograph=False, reduce_retracing=True)

    def __call__(self, images: np.ndarray) -> dict[str, list[tuple[float, float]]]:
        if not self.layers:
            return {}
        if any(bool(layer.hardware_state.evaluating.numpy()) for layer in self.layers):
            raise RuntimeError("calibrate() measures the clean outputs: call it outside hardware_evaluation()")
        parts = chips_per_pass(self.model)  # outside an evaluation every part computes the same: share the images
        ranges = [(np.full(layer.tiling.count, np.inf), np.full(layer.tiling.count, -np.inf)) for layer in self.layers]
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            if len(batch) % parts:  # equal parts, filled up with repeats of the batch (min and max unchanged)
                batch = np.resize(batch, (-(-len(batch) // parts) * parts, *batch.shape[1:]))
            found = self._ranges(tf.constant(batch, tf.float32))
            ranges = [(np.minimum(lo, found_lo.numpy()), np.maximum(hi, found_hi.numpy())) for (lo, hi), (found_lo, found_hi) in zip(ranges, found)]
        for layer, (lo, hi) in zip(self.layers, ranges):
            layer.hardware_state.calibrated_lo.assign(lo)
            layer.hardware_state.calibrated_hi.assign(hi)
        return {layer.name: [(float(a), float(b)) for a, b in zip(lo, hi)] for layer, (lo, hi) in zip(self.layers, ranges)}


def layer_inputs(model: tf.keras.Sequential, batch: tf.Tensor) -> list[tf.Tensor]:
    """What each hardware-aware layer of ``model`` reads for ``batch`` (clean), through ``model``'s own
    layer order (whatever other models share its layers: a split copy's chips,
    :mod:`pipeline.evaluation.bench`), up to the last one's input: its output is not needed."""
    last = max(index for index, layer in enumerate(model.layers) if isinstance(layer, HardwareAwareMixin))
    values, found = batch, []
    for layer in model.layers[:last]:
        if isinstance(layer, HardwareAwareMixin):
            found.append(values)
        values = layer(values, training=False)
    return [*found, values]


def needs_calibration(config: PerturbationConfig) -> bool:
    """Whether an active effect of ``config`` reads the calibrated clean output range."""
    return any(params.active and effect.uses_clean_range(params) for effect, params in config)


def model_targets(model: tf.keras.Model, perturb_layers: str) -> tuple[str, ...]:
    """The layers ``perturb_layers`` selects in a built model (dense = QuantDense, conv = QuantConv2D)."""
    import larq as lq

    dense = [layer.name for layer in model.layers if plain_class(layer) is lq.layers.QuantDense]
    conv = [layer.name for layer in model.layers if plain_class(layer) is lq.layers.QuantConv2D]
    return select_layers(perturb_layers, dense, conv, model.name)
