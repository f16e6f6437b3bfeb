"""The hardware model: process variation, output noise and saturation inside Larq layers.

One mechanism, :class:`HardwareAwareMixin`, and thin public layers that combine it with Larq's
``QuantDense`` and ``QuantConv2D`` (float layers are Larq layers without quantizers, so the same
classes serve float, 1-bit and k-bit models). For input ``x`` and latent kernel ``W``, with
``W_q = q(W)`` the kernel after the layer's own quantizer, a hardware-aware layer computes

1. **process variation** -- ``W_chip = W_q * (1 + eps)``, ``eps ~ N(0, (weight_dev_pct/100)^2)``
   i.i.d. per weight (dimensionless). At evaluation one draw per *chip*: ``eps = (weight_dev_pct/100) * z``
   with ``z ~ N(0, 1)`` a function of (chip seed, layer) only, fixed for every input of that chip --
   drawn once when the chip is programmed (entering :func:`hardware_evaluation`,
   :func:`set_condition`, :func:`set_chip`; a new level only rescales ``z``) and read by every
   batch after that. Several chips can be evaluated side by side in one pass (``chips_per_pass``
   in :func:`attach_hardware`), with exactly the numbers of one chip at a time. In training a fresh draw every
   step (variation-aware training); a dense layer on flat inputs draws it at its outputs instead
   (local reparameterization, see :meth:`HardwareAwareMixin._output_variation_std`): every example
   gets exactly the output distribution of a fresh kernel draw, for batch x units Gaussian numbers
   instead of fan-in x units. The kernel variable itself is never modified.
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

    def __init__(self, config: PerturbationConfig, salt: int, kernel_shape: Sequence[int], chips_per_pass: int = 1):
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
        self.chips = tf.Variable(tf.zeros([chips_per_pass], tf.int64), trainable=False)  #: the P chips of a pass
        self.train_seed = scalar(0, tf.int64)
        self.calls = scalar(0, tf.int64)  #: forward passes so far: fresh noise per pass, reproducibly
        shape = [chips_per_pass, *kernel_shape]
        #: each chip's ``z ~ N(0, 1)`` per weight (``eps = weight_dev * z``): a function of the chip
        #: seed and the layer only, drawn when the chips change (not when only the level does)
        self.chip_normals = tf.Variable(tf.zeros(shape), trainable=False)
        self._normals_of = None  #: the chips whose normals are in ``chip_normals``
        #: the programmed chips' ``1 + eps`` (P x kernel): set once per chip and level by
        #: :meth:`program`, read by every batch of every pass; ones outside an evaluation
        self.chip_factor = tf.Variable(tf.ones(shape), trainable=False)
        self.kernel_factor = None  #: (1 + eps) of the current forward pass, read by VariedKernel
        self.quantized_kernel = None  #: W_q of the current forward pass, written by VariedKernel
        self.assign(config)

    def program(self) -> None:
        """Program the chips once: ``1 + eps`` for the current chips and level (``eps`` drawn only for new chips)."""
        if bool(self.evaluating.numpy()) and float(self.weight_dev.numpy()) > 0:
            chips = tuple(int(chip) for chip in self.chips.numpy())
            if chips != self._normals_of:
                kernel_shape = tf.constant(self.chip_factor.shape[1:], tf.int32)
                for index, chip in enumerate(chips):
                    seed = tf.constant([chip * SEED_MIX + self.salt, 0], tf.int64)
                    self.chip_normals[index].assign(draw_chip_normals(kernel_shape, seed))
                self._normals_of = chips
            self.chip_factor.assign(programmed_factor(self.chip_normals, self.weight_dev))
        else:
            self.chip_factor.assign(tf.ones(self.chip_factor.shape))

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
        state = self.layer.hardware_state
        state.quantized_kernel = quantized
        return quantized if state.kernel_factor is None else quantized * state.kernel_factor


class HardwareAwareMixin:
    """Adds the hardware model to a Larq layer with a ``kernel`` (dense or convolution)."""

    def __init__(self, *args, hardware: dict | PerturbationConfig | None = None, **kwargs):
        if isinstance(hardware, dict):
            hardware = PerturbationConfig(**hardware)
        self.hardware = hardware or PerturbationConfig()
        super().__init__(*args, **kwargs)
        self._hardware_state = None
        #: chips evaluated side by side in one inference pass (run-time, not saved): with P > 1 a
        #: batch holds P stacked copies of the same images, copy k evaluated on the k-th chip
        self.chips_per_pass = 1

    @property
    def hardware_state(self) -> HardwareState:
        if self._hardware_state is None:
            # A plain attribute holder: Keras does not track the variables inside it.
            salt = zlib.crc32(self.name.encode())
            state = HardwareState(self.hardware, salt, self.kernel.shape, self.chips_per_pass)
            object.__setattr__(self, "_hardware_state", state)
        return self._hardware_state

    def _get_quantizer(self, name):
        base = super()._get_quantizer(name)
        return VariedKernel(self, base) if name == "kernel" else base

    def build(self, input_shape):
        super().build(input_shape)
        _ = self.hardware_state

    @tf.autograph.experimental.do_not_convert  # plain Python branches on static values: tracing stays fast
    def call(self, inputs, training=None):
        if tf.is_tensor(training):  # a symbolic learning phase: both paths, chosen at run time
            return tf.cond(training, lambda: self._training_call(inputs), lambda: self._inference_call(inputs))
        return self._training_call(inputs) if training else self._inference_call(inputs)

    def _training_call(self, inputs):
        """Variation-aware training: the layer's own levels (static, from its config), fresh draws every step.

        The levels are Python numbers here, so effects that are off cost nothing and no branch
        is evaluated at run time (the training step is as close to the plain one as the draws allow).
        """
        config = self.hardware
        if config.is_ideal:
            return super().call(inputs)
        state = self.hardware_state
        calls = state.calls.assign_add(1)
        step = state.train_seed * SEED_MIX + state.salt
        deviation = config.weight_dev_pct / 100.0
        if deviation and self.draws_deviation_at_outputs(inputs.shape.rank):
            outputs = self._varied_call(inputs, None)
            std = deviation * self._output_variation_std(inputs, state.quantized_kernel)
            outputs = outputs + std * standard_normal(tf.shape(outputs), seed=tf.stack([step, calls]))
        elif deviation:
            outputs = self._varied_call(inputs, 1.0 + deviation * standard_normal(self.kernel.shape, seed=tf.stack([step, calls])))
        else:
            outputs = super().call(inputs)
        clean = outputs
        if config.noise_sigma:
            relative = config.noise_mode is NoiseMode.RELATIVE
            outputs = add_noise(outputs, config.noise_sigma, relative, tf.stack([step + 1, calls]))
        if config.clip_mode is ClipMode.ABSOLUTE:
            lo, hi = tf.constant(config.clip_min, tf.float32), tf.constant(config.clip_max, tf.float32)
        elif config.clip_mode is ClipMode.RELATIVE:  # the current batch's clean range
            lo = config.clip_fraction * tf.stop_gradient(tf.reduce_min(clean))
            hi = config.clip_fraction * tf.stop_gradient(tf.reduce_max(clean))
        else:
            return outputs
        outputs = clip(outputs, lo, hi)
        return adc(outputs, lo, hi, float(2**config.out_bits)) if config.out_bits else outputs

    def _inference_call(self, inputs):
        """Inference: plain, unless inside :func:`hardware_evaluation` (levels and chips from the variables).

        With ``chips_per_pass`` P > 1 the batch is P equal parts, part k evaluated on chip k with
        exactly the operations (and noise seeds) of a pass of that chip alone: the results equal
        one-chip-at-a-time evaluation bit for bit, in one call instead of P.
        """
        state = self.hardware_state
        active = state.evaluating
        calls = state.calls.assign_add(1)
        sigma = tf.where(active, state.noise_sigma, 0.0)
        # 1. process variation: chip k's programmed factor (ones outside an evaluation), then
        # 2. the Larq layer's own computation with the varied kernel, for each chip's part
        outputs = self._chips_call(inputs)
        # 3. output noise, seeded by the chip and the pass
        seeds = [tf.stack([state.chips[index] * SEED_MIX + state.salt + 1, calls]) for index in range(self.chips_per_pass)]
        outputs = tf.cond(sigma > 0, lambda: add_noise(outputs, sigma, state.noise_relative, seeds), lambda: outputs)
        # 4. saturation and 5. ADC
        lo = tf.where(state.clip_relative, state.clip_fraction * state.calibrated_lo, state.clip_lo)
        hi = tf.where(state.clip_relative, state.clip_fraction * state.calibrated_hi, state.clip_hi)
        clipping = tf.logical_and(active, state.clip_on)
        return tf.cond(clipping, lambda: saturate(outputs, lo, hi, state.adc_levels), lambda: outputs)

    def _chips_call(self, inputs):
        """``x . W_chip`` for each chip's part of the batch, stacked (see :meth:`_inference_call`)."""
        state = self.hardware_state
        count = self.chips_per_pass
        if count == 1:
            return self._varied_call(inputs, state.chip_factor[0])
        if not self.draws_deviation_at_outputs(inputs.shape.rank):  # convolutions: the Larq call per chip
            parts = tf.split(inputs, count, axis=0)
            return tf.concat([self._varied_call(part, state.chip_factor[index]) for index, part in enumerate(parts)], axis=0)
        # A dense layer on flat inputs: what Larq's and Keras' calls compute, with the input and the
        # kernel quantized once for every chip instead of once per chip (same operations per chip).
        quantized = self._quantized_inputs(inputs)
        kernel = tf.convert_to_tensor(self.kernel.latent_variable)
        kernel = self.kernel_quantizer(kernel) if self.kernel_quantizer else kernel
        parts = tf.split(quantized, count, axis=0)
        outputs = tf.concat([tf.matmul(part, kernel * state.chip_factor[index]) for index, part in enumerate(parts)], axis=0)
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, self.bias)
        return self.activation(outputs) if self.activation is not None else outputs

    def _varied_call(self, inputs, factor):
        """The Larq layer's own computation with the kernel ``W_q * factor`` (``None``: ``W_q`` itself)."""
        state = self.hardware_state
        state.kernel_factor = factor
        try:
            return super().call(inputs)
        finally:
            state.kernel_factor = None

    def _quantized_inputs(self, inputs):
        """``x_q``: the inputs after the layer's input quantizer (if any), as Larq's call computes them."""
        return self.input_quantizer(inputs) if self.input_quantizer else inputs

    def draws_deviation_at_outputs(self, input_rank: int) -> bool:
        """Whether training draws the weight deviation at the outputs instead of on the kernel (see
        :meth:`_output_variation_std`): dense layers on flat inputs, where every output element
        uses its own column of weights. Not convolutions: their outputs share weights across positions."""
        return isinstance(self, lq.layers.QuantDense) and input_rank == 2

    def _output_variation_std(self, inputs, kernel):
        """Standard deviation of ``x_q . (W_q * eps)`` per example and unit, divided by ``weight_dev``.

        Local reparameterization (Kingma, Salimans & Welling, 2015): with ``eps`` i.i.d. per weight,
        output ``j`` of example ``b`` gets ``sum_i x_bi W_ij eps_ij ~ N(0, dev^2 sum_i x_bi^2 W_ij^2)``,
        and outputs of different units use disjoint weights, so they are independent. Drawing that
        Gaussian at the outputs gives every example exactly the distribution (and the expected loss
        and gradient) of a fresh kernel draw, for batch x units numbers instead of fan-in x units;
        examples of one batch see independent chips instead of one shared chip, which lowers the
        variance of the gradient estimate. Used in training only: at evaluation a chip stays one
        kernel draw shared by every input.
        """
        quantized = self._quantized_inputs(inputs)
        variance = squares_matmul(
            tf.square(quantized), tf.square(kernel), unit_magnitude(self.input_quantizer), unit_magnitude(self.kernel_quantizer)
        )
        return tf.sqrt(tf.maximum(variance, 1e-12))  # zero-variance outputs (all-zero inputs) get zero gradient

    def get_config(self):
        return {**super().get_config(), "hardware": self.hardware.levels()}


def add_noise(outputs: tf.Tensor, sigma, relative, seed: tf.Tensor | Sequence[tf.Tensor]) -> tf.Tensor:
    """``outputs + sigma * s * n``; ``s`` = per-example RMS of ``outputs`` if ``relative`` (bool or tensor), else 1.

    ``seed``: one seed, or one per chip when ``outputs`` stacks the equal parts of several chips
    (part k's noise is then exactly what chip k's pass alone draws)."""
    if isinstance(seed, (list, tuple)):
        noise = standard_normal(tf.shape(outputs) // tf.constant([len(seed)] + [1] * (outputs.shape.rank - 1)), seed=seed)
    else:
        noise = standard_normal(tf.shape(outputs), seed=seed)
    if relative is False:
        return outputs + sigma * noise
    axes = list(range(1, outputs.shape.rank))
    rms = tf.sqrt(tf.reduce_mean(tf.square(tf.stop_gradient(outputs)), axis=axes, keepdims=True))
    scale = sigma * (rms if relative is True else tf.where(relative, rms, tf.ones_like(rms)))  # per example
    return outputs + scale * noise


@tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([2], tf.int64)])
def draw_chip_normals(shape: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """A chip's ``z ~ N(0, 1)`` of ``shape``, a stateless function of ``seed`` (compiled once for
    every shape: twice as fast as the same ops run eagerly)."""
    return standard_normal(shape, seed=seed)


@tf.function(autograph=False, input_signature=[tf.TensorSpec(None, tf.float32), tf.TensorSpec([], tf.float32)])
def programmed_factor(normals: tf.Tensor, deviation: tf.Tensor) -> tf.Tensor:
    """``1 + eps = 1 + deviation * z``: the factor of the programmed weights."""
    return 1.0 + deviation * normals


def standard_normal(shape, seed: tf.Tensor | Sequence[tf.Tensor]) -> tf.Tensor:
    """N(0, 1) numbers, a stateless function of ``seed`` (Box-Muller on counter-based Philox uniforms).

    Same distribution as ``tf.random.stateless_normal`` (tails to 5.8 sigma, from 24-bit uniforms),
    about 1.4x faster on CPU for large tensors: both numbers of each Box-Muller pair are used.
    ``seed`` may be a list of P seeds: then P draws of ``shape``, each exactly the draw of its own
    seed, are concatenated along the first axis (one Box-Muller transform for all of them).
    """
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed]
    shape = tf.convert_to_tensor(shape, tf.int32)
    size = tf.reduce_prod(shape)
    half = (size + 1) // 2
    uniform = tf.stack([tf.random.stateless_uniform(tf.stack([2, half]), seed=one) for one in seeds])  # (P, 2, half)
    radius = tf.sqrt(-2.0 * tf.math.log(1.0 - uniform[:, 0]))  # 1 - u in (0, 1]: finite
    angle = (2.0 * np.pi) * uniform[:, 1]
    pairs = tf.concat([radius * tf.cos(angle), radius * tf.sin(angle)], axis=1)[:, :size]
    if len(seeds) == 1:
        return tf.reshape(pairs, shape)
    return tf.reshape(pairs, tf.concat([[len(seeds) * shape[0]], shape[1:]], axis=0))


UNIT_MAGNITUDE_QUANTIZERS = (lq.quantizers.SteSign, lq.quantizers.ApproxSign, lq.quantizers.SwishSign)


def unit_magnitude(quantizer) -> bool:
    """Whether ``quantizer`` only ever returns -1 or +1 (so its square is exactly 1)."""
    quantizer = getattr(quantizer, "base", quantizer)  # through VariedKernel
    return isinstance(quantizer, UNIT_MAGNITUDE_QUANTIZERS)


def squares_matmul(x_sq: tf.Tensor, w_sq: tf.Tensor, x_is_ones: bool, w_is_ones: bool) -> tf.Tensor:
    """``x_sq @ w_sq`` (batch x fan-in times fan-in x units), skipping the work a factor known to be
    all ones makes redundant (the squares of 1-bit activations or kernels): then the product is a
    row or column sum, and so are the gradients. Values and gradients equal those of ``tf.matmul``."""
    if not (x_is_ones or w_is_ones):
        return tf.matmul(x_sq, w_sq)

    @tf.custom_gradient
    def product(x_sq, w_sq):
        units = tf.shape(w_sq)[1]
        if x_is_ones:
            column = tf.reduce_sum(w_sq, axis=0, keepdims=True)  # (1, units)
            value = tf.broadcast_to(column, [tf.shape(x_sq)[0], units])
        else:
            value = tf.broadcast_to(tf.reduce_sum(x_sq, axis=1, keepdims=True), [tf.shape(x_sq)[0], units])

        def gradient(upstream):
            if w_is_ones:  # upstream @ w_sq^T, w_sq all ones: the row sums of upstream
                d_x = tf.broadcast_to(tf.reduce_sum(upstream, axis=1, keepdims=True), tf.shape(x_sq))
            else:
                d_x = tf.matmul(upstream, w_sq, transpose_b=True)
            if x_is_ones:  # x_sq^T @ upstream, x_sq all ones: the column sums of upstream
                d_w = tf.broadcast_to(tf.reduce_sum(upstream, axis=0, keepdims=True), tf.shape(w_sq))
            else:
                d_w = tf.matmul(x_sq, upstream, transpose_a=True)
            return d_x, d_w

        return value, gradient

    return product(x_sq, w_sq)


def clip(outputs: tf.Tensor, lo, hi) -> tf.Tensor:
    """``clip(outputs, lo, hi)`` with gradient 1 inside [lo, hi] and 0 outside; none for the bounds
    (they are constants or gradient-stopped): two passes backward instead of ``tf.clip_by_value``'s six."""

    @tf.custom_gradient
    def clipped(values):
        inside = tf.logical_and(values >= lo, values <= hi)
        return tf.clip_by_value(values, lo, hi), lambda upstream: tf.where(inside, upstream, tf.zeros_like(upstream))

    return clipped(outputs)


def saturate(outputs: tf.Tensor, lo: tf.Tensor, hi: tf.Tensor, adc_levels: tf.Tensor) -> tf.Tensor:
    clipped = clip(outputs, lo, hi)
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
    model: tf.keras.Sequential, config: PerturbationConfig, targets: Sequence[str], train_seed: int = 0,
    chips_per_pass: int = 1,
) -> tf.keras.Sequential:
    """A copy of ``model`` whose ``targets`` layers are hardware-aware with ``config`` (others plain).

    Weights are copied; ``model`` is untouched. Works on plain and hardware-aware models alike.
    ``chips_per_pass`` > 1 makes a copy for evaluation only that evaluates that many chips side by
    side: its batches are that many stacked copies of the images (see :func:`chip_ids`).
    """
    if isinstance(chips_per_pass, bool) or not isinstance(chips_per_pass, int) or chips_per_pass < 1:
        raise ValueError(f"chips_per_pass must be an integer >= 1; got {chips_per_pass!r}")
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

    The chip seed fixes the weight deviation; output noise is fresh per forward pass but
    reproducible (each layer's pass counter restarts at 0). On exit the training levels return.
    """
    layers = hardware_layers(model)
    chips = chip_ids(model, chip)
    for layer in layers:
        state = layer.hardware_state
        state.assign(config)
        state.chips.assign(chips)
        state.calls.assign(0)
        state.evaluating.assign(True)
        state.program()
    try:
        yield
    finally:
        for layer in layers:
            state = layer.hardware_state
            state.evaluating.assign(False)
            state.assign(layer.hardware)
            state.program()


def set_condition(model: tf.keras.Model, config: PerturbationConfig | None = None,
                  chip: int | Sequence[int] | None = None) -> None:
    """Inside :func:`hardware_evaluation`: other levels and / or other chips, then program the chips
    once (no rebuild, no retrace). New chips restart the noise pass counter."""
    chips = None if chip is None else chip_ids(model, chip)
    for layer in hardware_layers(model):
        state = layer.hardware_state
        if config is not None:
            state.assign(config)
        if chips is not None:
            state.chips.assign(chips)
            state.calls.assign(0)
        state.program()


def set_chip(model: tf.keras.Model, chip: int | Sequence[int]) -> None:
    """Switch to other chips inside :func:`hardware_evaluation` (no rebuild, no retrace)."""
    set_condition(model, chip=chip)


def calibrate(model: tf.keras.Model, images: np.ndarray, batch_size: int = 1024) -> dict[str, tuple[float, float]]:
    """Measure each hardware-aware layer's clean output range [min, max] on ``images`` (for relative clipping)."""
    layers = hardware_layers(model)
    if not layers:
        return {}
    if any(bool(layer.hardware_state.evaluating.numpy()) for layer in layers):
        raise RuntimeError("calibrate() measures the clean outputs: call it outside hardware_evaluation()")
    probe = tf.keras.Model(model.inputs, [layer.output for layer in layers])
    parts = chips_per_pass(model)  # outside an evaluation every part computes the same: share the images
    ranges = {layer.name: [np.inf, -np.inf] for layer in layers}
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        if len(batch) % parts:  # equal parts, filled up with repeats of the batch (min and max unchanged)
            batch = np.resize(batch, (-(-len(batch) // parts) * parts, *batch.shape[1:]))
        outputs = probe(batch, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for layer, output in zip(layers, outputs):
            ranges[layer.name][0] = min(ranges[layer.name][0], float(tf.reduce_min(output)))
            ranges[layer.name][1] = max(ranges[layer.name][1], float(tf.reduce_max(output)))
    for layer in layers:
        layer.hardware_state.calibrated_lo.assign(ranges[layer.name][0])
        layer.hardware_state.calibrated_hi.assign(ranges[layer.name][1])
    return {name: (lo, hi) for name, (lo, hi) in ranges.items()}
