"""The hardware model: process variation, output noise and saturation inside Larq layers.

One mechanism, :class:`HardwareAwareMixin`, and thin public layers that combine it with Larq's
``QuantDense`` and ``QuantConv2D`` (float layers are Larq layers without quantizers, so the same
classes serve float, 1-bit and k-bit models). For input ``x`` and latent kernel ``W``, with
``W_q = q(W)`` the kernel after the layer's own quantizer, a hardware-aware layer computes

1. **process variation** -- ``W_chip = W_q * (1 + eps)``, ``eps ~ N(0, (weight_dev_pct/100)^2)``
   i.i.d. per weight (dimensionless). At evaluation one draw per *chip*: ``eps`` is a function of
   (chip seed, layer) only, fixed for every input of that chip. In training a fresh draw every
   step (variation-aware training). The kernel variable itself is never modified.
2. **matmul / convolution** -- ``y = x . W_chip`` (the accumulator, in its own units: for a
   1-bit dense layer of fan-in N, integers in [-N, N]).
3. **output noise** -- ``y <- y + sigma * s * n``, ``n ~ N(0, 1)`` fresh on every forward pass and
   element. ``relative`` mode: ``s`` is the RMS of this example's clean output over the layer's
   units, ``s = sqrt(mean(y^2))``, gradient-stopped, so ``sigma`` is a noise-to-signal ratio that
   means the same on every layer and model; ``absolute`` mode: ``s = 1`` (accumulator units).
4. **saturation** -- ``y <- clip(y, lo, hi)``; gradient 1 inside [lo, hi], 0 outside.
   ``absolute``: ``[lo, hi] = [clip_min, clip_max]`` in accumulator units (a signed 8-bit
   accumulator is [-128, 127]). ``relative``: ``[lo, hi] = clip_fraction * [min, max]`` of the
   layer's clean output -- measured by :func:`calibrate` on calibration data at evaluation, and
   on the current batch (gradient-stopped) in training.
5. **ADC** (optional) -- ``y <- lo + round((y - lo) / D) * D``, ``D = (hi - lo) / (2^out_bits - 1)``:
   at most ``2^out_bits`` distinct values; straight-through gradient.

Then the model's BatchNorm and activation follow, as in the plain model.

The effects are active in training, and at evaluation only inside :func:`hardware_evaluation`
(an explicit setting with a chip seed). Levels live in ``tf.Variable`` s, so changing them for an
evaluation grid neither rebuilds nor retraces the model. These variables are run-time state, not
parameters: they are kept out of the layer's weights (so model size and checkpoints are those of
the plain model); the training configuration is in ``get_config`` and survives save / load. With
every level zero a hardware-aware layer returns exactly (bit for bit) what the plain layer returns.
"""

from __future__ import annotations

import contextlib
import zlib
from typing import Iterator, Sequence

import numpy as np

import pipeline  # noqa: F401
import larq as lq
import tensorflow as tf

from pipeline.config import ClipMode, NoiseMode, PerturbationConfig

SEED_MIX = 1_000_003  #: mixes the chip / training seed with the layer salt into one stateless seed


class HardwareState:
    """The run-time levels of one layer, as variables (deliberately not tracked by Keras)."""

    def __init__(self, config: PerturbationConfig, salt: int):
        self.salt = salt  #: stable per-layer integer (CRC32 of the layer name): independent draws per layer
        scalar = lambda value, dtype=tf.float32: tf.Variable(value, dtype=dtype, trainable=False)  # noqa: E731
        self.noise_sigma = scalar(0.0)
        self.noise_relative = scalar(True, tf.bool)
        self.weight_dev = scalar(0.0)  #: weight_dev_pct / 100
        self.clip_on = scalar(False, tf.bool)
        self.clip_relative = scalar(False, tf.bool)
        self.clip_lo = scalar(-np.inf)
        self.clip_hi = scalar(np.inf)
        self.clip_fraction = scalar(1.0)
        self.adc_levels = scalar(0.0)  #: 2^out_bits, 0 = no ADC
        self.calibrated_lo = scalar(-np.inf)  #: clean output range on calibration data (relative clip)
        self.calibrated_hi = scalar(np.inf)
        self.evaluating = scalar(False, tf.bool)  #: inside hardware_evaluation
        self.chip = scalar(0, tf.int64)
        self.train_seed = scalar(0, tf.int64)
        self.calls = scalar(0, tf.int64)  #: forward passes so far: fresh noise per pass, reproducibly
        self.kernel_factor = None  #: (1 + eps) of the current forward pass, read by VariedKernel
        self.assign(config)

    def assign(self, config: PerturbationConfig) -> None:
        self.noise_sigma.assign(config.noise_sigma)
        self.noise_relative.assign(config.noise_mode is NoiseMode.RELATIVE)
        self.weight_dev.assign(config.weight_dev_pct / 100.0)
        self.clip_on.assign(config.clip_mode is not ClipMode.NONE)
        self.clip_relative.assign(config.clip_mode is ClipMode.RELATIVE)
        absolute = config.clip_mode is ClipMode.ABSOLUTE
        self.clip_lo.assign(config.clip_min if absolute else -np.inf)
        self.clip_hi.assign(config.clip_max if absolute else np.inf)
        self.clip_fraction.assign(config.clip_fraction)
        self.adc_levels.assign(float(2**config.out_bits) if config.out_bits else 0.0)


class VariedKernel:
    """The kernel quantizer of a hardware-aware layer: the layer's own quantizer, then ``* (1 + eps)``.

    Larq applies it when the kernel is read inside the layer's call; it declares the precision of
    the wrapped quantizer (32 for float), so model sizes are unchanged.
    """

    def __init__(self, layer: "HardwareAwareMixin", base):
        self.layer = layer
        self.base = base
        self.precision = getattr(base, "precision", None) or 32

    def __call__(self, kernel):
        quantized = self.base(kernel) if self.base is not None else tf.convert_to_tensor(kernel)
        factor = self.layer.hardware_state.kernel_factor
        return quantized if factor is None else quantized * factor


class HardwareAwareMixin:
    """Adds the hardware model to a Larq layer with a ``kernel`` (dense or convolution)."""

    def __init__(self, *args, hardware: dict | PerturbationConfig | None = None, **kwargs):
        if isinstance(hardware, dict):
            hardware = PerturbationConfig(**hardware)
        self.hardware = hardware or PerturbationConfig()
        super().__init__(*args, **kwargs)
        self._hardware_state = None

    @property
    def hardware_state(self) -> HardwareState:
        if self._hardware_state is None:
            # A plain attribute holder: Keras does not track the variables inside it.
            object.__setattr__(self, "_hardware_state", HardwareState(self.hardware, zlib.crc32(self.name.encode())))
        return self._hardware_state

    def _get_quantizer(self, name):
        base = super()._get_quantizer(name)
        return VariedKernel(self, base) if name == "kernel" else base

    def build(self, input_shape):
        super().build(input_shape)
        _ = self.hardware_state

    def call(self, inputs, training=None):
        state = self.hardware_state
        training = tf.cast(bool(training) if not tf.is_tensor(training) else training, tf.bool)
        active = tf.logical_or(training, state.evaluating)
        calls = state.calls.assign_add(1)
        chip_or_step = tf.where(training, state.train_seed * SEED_MIX + state.salt, state.chip * SEED_MIX + state.salt)
        # 1. process variation: per chip (evaluation) or per step (training)
        deviation = tf.where(active, state.weight_dev, 0.0)
        kernel_seed = tf.stack([chip_or_step, tf.where(training, calls, tf.constant(0, tf.int64))])
        kernel_shape = self.kernel.shape
        state.kernel_factor = tf.cond(
            deviation > 0,
            lambda: 1.0 + deviation * tf.random.stateless_normal(kernel_shape, seed=kernel_seed),
            lambda: tf.ones(kernel_shape),
        )
        try:
            outputs = super().call(inputs)  # 2. the Larq layer's own computation, with the varied kernel
        finally:
            state.kernel_factor = None
        clean = outputs
        # 3. output noise
        sigma = tf.where(active, state.noise_sigma, 0.0)
        noise_seed = tf.stack([chip_or_step + 1, calls])
        outputs = tf.cond(sigma > 0, lambda: add_noise(outputs, sigma, state.noise_relative, noise_seed), lambda: outputs)
        # 4. saturation and 5. ADC
        lo, hi = saturation_bounds(state, clean, training)
        clipping = tf.logical_and(active, state.clip_on)
        outputs = tf.cond(clipping, lambda: saturate(outputs, lo, hi, state.adc_levels), lambda: outputs)
        return outputs

    def get_config(self):
        return {**super().get_config(), "hardware": self.hardware.levels()}


def add_noise(outputs: tf.Tensor, sigma: tf.Tensor, relative: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    axes = list(range(1, outputs.shape.rank))
    rms = tf.sqrt(tf.reduce_mean(tf.square(tf.stop_gradient(outputs)), axis=axes, keepdims=True))
    scale = tf.where(relative, rms, tf.ones_like(rms))
    return outputs + sigma * scale * tf.random.stateless_normal(tf.shape(outputs), seed=seed)


def saturation_bounds(state: HardwareState, clean: tf.Tensor, training: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """[lo, hi]: absolute bounds, or clip_fraction x the clean range (batch in training, calibrated otherwise)."""
    batch_lo = tf.stop_gradient(tf.reduce_min(clean))
    batch_hi = tf.stop_gradient(tf.reduce_max(clean))
    range_lo = tf.where(training, batch_lo, state.calibrated_lo)
    range_hi = tf.where(training, batch_hi, state.calibrated_hi)
    lo = tf.where(state.clip_relative, state.clip_fraction * range_lo, state.clip_lo)
    hi = tf.where(state.clip_relative, state.clip_fraction * range_hi, state.clip_hi)
    return lo, hi


def saturate(outputs: tf.Tensor, lo: tf.Tensor, hi: tf.Tensor, adc_levels: tf.Tensor) -> tf.Tensor:
    clipped = tf.clip_by_value(outputs, lo, hi)
    finite = tf.logical_and(tf.math.is_finite(lo), tf.math.is_finite(hi))
    return tf.cond(tf.logical_and(adc_levels > 0, finite), lambda: adc(clipped, lo, hi, adc_levels), lambda: clipped)


def adc(clipped: tf.Tensor, lo: tf.Tensor, hi: tf.Tensor, levels: tf.Tensor) -> tf.Tensor:
    step = (hi - lo) / (levels - 1.0)
    # Forward: exactly one of the levels lo + k * step; backward: identity (straight-through).
    return tf.grad_pass_through(lambda values: lo + tf.round((values - lo) / step) * step)(clipped)


@tf.keras.utils.register_keras_serializable(package="hwlarq")
class HardwareAwareQuantDense(HardwareAwareMixin, lq.layers.QuantDense):
    """``larq.layers.QuantDense`` with the hardware model (see the module docstring)."""


@tf.keras.utils.register_keras_serializable(package="hwlarq")
class HardwareAwareQuantConv2D(HardwareAwareMixin, lq.layers.QuantConv2D):
    """``larq.layers.QuantConv2D`` with the hardware model (see the module docstring)."""


HARDWARE_CLASSES = {lq.layers.QuantDense: HardwareAwareQuantDense, lq.layers.QuantConv2D: HardwareAwareQuantConv2D}
PLAIN_CLASSES = {hardware: plain for plain, hardware in HARDWARE_CLASSES.items()}


# --------------------------------------------------------------------------- models


def hardware_layers(model: tf.keras.Model) -> list[HardwareAwareMixin]:
    return [layer for layer in model.layers if isinstance(layer, HardwareAwareMixin)]


def plain_class(layer: tf.keras.layers.Layer) -> type:
    return PLAIN_CLASSES.get(type(layer), type(layer))


def attach_hardware(
    model: tf.keras.Sequential, config: PerturbationConfig, targets: Sequence[str], train_seed: int = 0
) -> tf.keras.Sequential:
    """A copy of ``model`` whose ``targets`` layers are hardware-aware with ``config`` (others plain).

    Weights are copied; ``model`` is untouched. Works on plain and hardware-aware models alike.
    """
    names = {layer.name for layer in model.layers}
    if missing := [name for name in targets if name not in names]:
        raise ValueError(f"model {model.name} has no layer(s) {missing}")
    layers = []
    for layer in model.layers:
        layer_config = {key: value for key, value in layer.get_config().items() if key != "hardware"}
        cls = plain_class(layer)
        if layer.name in targets:
            if cls not in HARDWARE_CLASSES:
                raise ValueError(f"layer {layer.name} ({cls.__name__}) cannot carry the hardware model")
            layers.append(HARDWARE_CLASSES[cls].from_config({**layer_config, "hardware": config.levels()}))
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


@contextlib.contextmanager
def hardware_evaluation(model: tf.keras.Model, config: PerturbationConfig, chip: int = 0) -> Iterator[None]:
    """Inside: the model's hardware-aware layers apply ``config`` at inference, as chip ``chip``.

    The chip seed fixes the weight deviation; output noise is fresh per forward pass but
    reproducible (each layer's pass counter restarts at 0). On exit the training levels return.
    """
    layers = hardware_layers(model)
    for layer in layers:
        state = layer.hardware_state
        state.assign(config)
        state.chip.assign(chip)
        state.calls.assign(0)
        state.evaluating.assign(True)
    try:
        yield
    finally:
        for layer in layers:
            state = layer.hardware_state
            state.evaluating.assign(False)
            state.assign(layer.hardware)


def set_chip(model: tf.keras.Model, chip: int) -> None:
    """Switch to another chip inside :func:`hardware_evaluation` (no rebuild, no retrace)."""
    for layer in hardware_layers(model):
        layer.hardware_state.chip.assign(chip)
        layer.hardware_state.calls.assign(0)


def set_levels(model: tf.keras.Model, config: PerturbationConfig) -> None:
    """Change the levels inside :func:`hardware_evaluation` (no rebuild, no retrace)."""
    for layer in hardware_layers(model):
        layer.hardware_state.assign(config)


def calibrate(model: tf.keras.Model, images: np.ndarray, batch_size: int = 1024) -> dict[str, tuple[float, float]]:
    """Measure each hardware-aware layer's clean output range [min, max] on ``images`` (for relative clipping)."""
    layers = hardware_layers(model)
    if not layers:
        return {}
    if any(bool(layer.hardware_state.evaluating.numpy()) for layer in layers):
        raise RuntimeError("calibrate() measures the clean outputs: call it outside hardware_evaluation()")
    probe = tf.keras.Model(model.inputs, [layer.output for layer in layers])
    ranges = {layer.name: [np.inf, -np.inf] for layer in layers}
    for start in range(0, len(images), batch_size):
        outputs = probe(images[start : start + batch_size], training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for layer, output in zip(layers, outputs):
            ranges[layer.name][0] = min(ranges[layer.name][0], float(tf.reduce_min(output)))
            ranges[layer.name][1] = max(ranges[layer.name][1], float(tf.reduce_max(output)))
    for layer in layers:
        layer.hardware_state.calibrated_lo.assign(ranges[layer.name][0])
        layer.hardware_state.calibrated_hi.assign(ranges[layer.name][1])
    return {name: (lo, hi) for name, (lo, hi) in ranges.items()}
