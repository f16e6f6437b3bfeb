"""The hardware-aware Larq layers: one forward path that applies the active effects in order.

For input ``x`` and latent kernel ``W``, with ``x_q`` and ``W_q`` the layer's own quantizers'
outputs, a hardware-aware layer computes

1. **kernel effects** (``pipeline.effects``, stage ``kernel``, in their declared order): the
   weights as the chip reads them, ``W_chip = f(W_q, draws)``;
2. **accumulate**: ``y = x_q . W_chip`` (dense) or the convolution (the accumulator, in its own
   units: for a 1-bit dense layer of fan-in N, integers in [-N, N]);
3. **output effects** (stage ``output``, in their declared order) on ``y``;

then the model's BatchNorm and activation follow, as in the plain model. Training and evaluation
share this path; they differ only in where levels and randomness come from:

* **training** -- the layer's own levels (its config, static: an effect that is off costs nothing),
  a fresh draw of every random effect each step, seeded by (training seed, layer, step), the clean
  range of the current batch for relative saturation. A dense layer on flat inputs draws the last
  kernel effect at its outputs where that is exact (local reparameterization,
  :meth:`Effect.output_variance`), and zero-mean Gaussian terms on the outputs (that one, output
  noise: :meth:`Effect.gaussian_variance`) are drawn as one Gaussian with the sum of their variances.
* **evaluation** -- inside :func:`pipeline.chips.hardware_evaluation`: levels in ``tf.Variable`` s (a new level
  neither rebuilds nor retraces), a **programmed chip**: per-chip draws (seeded by chip, layer and
  effect) turned into the chip's kernel once, when the chip or the level changes, and read by every
  batch after that; per-pass effects seeded by (chip, layer, pass); the calibrated clean range
  (:func:`pipeline.chips.calibrate`). Several chips can be evaluated side by side (``chips_per_pass``
  P in :func:`pipeline.chips.attach_hardware`): batches of P equal parts, part k on chip k, with exactly the numbers of
  one chip at a time.

Outside an evaluation, inference is the plain layer's, bit for bit (as is evaluation with every
level off). The run-time state is kept out of the layer's weights (model size and checkpoints are
the plain model's); the training configuration is in ``get_config`` and survives save / load.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

import pipeline  # noqa: F401
import larq as lq
import tensorflow as tf

from pipeline.effects import EFFECTS, KERNEL_EFFECTS, OUTPUT_EFFECTS, Effect
from pipeline.effects.base import OutputContext, standard_normal, when
from pipeline.hardware import PerturbationConfig

SEED_MIX = 1_000_003  #: mixes the chip / training seed with the layer salt into one stateless seed
UNIT_MAGNITUDE_QUANTIZERS = (lq.quantizers.SteSign, lq.quantizers.ApproxSign, lq.quantizers.SwishSign)


class HardwareState:
    """The run-time state of one layer, as variables (deliberately not tracked by Keras)."""

    def __init__(self, salt: int, kernel_shape: Sequence[int], chips_per_pass: int):
        self.salt = salt  #: stable per-layer integer (CRC32 of the layer name): independent draws per layer
        variable = lambda value, dtype=tf.float32: tf.Variable(value, dtype=dtype, trainable=False)  # noqa: E731
        ideal = PerturbationConfig()
        #: every effect's run-time levels (:meth:`Effect.run_levels`); the ideal chip outside an evaluation
        self.levels = {effect.name: {key: variable(value) for key, value in effect.run_levels(ideal.params(effect)).items()}
                       for effect in EFFECTS}
        self.calibrated_lo = variable(-np.inf)  #: clean output range on calibration data (relative saturation)
        self.calibrated_hi = variable(np.inf)
        self.evaluating = variable(False, tf.bool)  #: inside hardware_evaluation
        self.programmed = variable(False, tf.bool)  #: batches read ``chip_kernels`` (a kernel effect is on)
        self.chips = tf.Variable(tf.zeros([chips_per_pass], tf.int64), trainable=False)  #: the P chips of a pass
        self.train_seed = variable(0, tf.int64)
        self.calls = variable(0, tf.int64)  #: forward passes so far: fresh draws per pass, reproducibly
        self.kernel_shape = tuple(kernel_shape)
        #: the programmed chips' kernels (P x kernel), read by every batch of an evaluation
        self.chip_kernels = tf.Variable(tf.zeros([chips_per_pass, *kernel_shape]), trainable=False)
        self.chip_draws: dict[str, tf.Variable] = {}  #: per-chip kernel effects: each chip's draws (P x ...)
        self.draws_of: dict[str, tuple[int, ...]] = {}  #: the chips whose draws are in ``chip_draws``
        self.programmers: dict = {}  #: compiled programming, by the tuple of active kernel effects

    def assign(self, config: PerturbationConfig) -> None:
        for effect, params in config:
            for key, value in effect.run_levels(params).items():
                self.levels[effect.name][key].assign(value)

    def static_levels(self, effect: Effect) -> dict[str, float]:
        """The current levels of ``effect`` as Python numbers (for programming a chip)."""
        return {key: float(value.numpy()) for key, value in self.levels[effect.name].items()}

    def seed(self, base, effect: Effect, calls):
        return tf.stack([base * SEED_MIX + self.salt + effect.stream, calls])

    def draws(self, effect: Effect) -> tf.Variable:
        """Every chip's draws of ``effect``: drawn when the chips change, not when only the level does."""
        chips = tuple(int(chip) for chip in self.chips.numpy())
        if self.draws_of.get(effect.name) != chips:
            seeds = tf.constant([[chip * SEED_MIX + self.salt + effect.stream, 0] for chip in chips], tf.int64)
            drawn = compiled_draws(effect)(tf.constant(self.kernel_shape, tf.int32), seeds)
            if effect.name not in self.chip_draws:  # an effect's draws may have more axes than the kernel
                self.chip_draws[effect.name] = tf.Variable(drawn, trainable=False)
            else:
                self.chip_draws[effect.name].assign(drawn)
            self.draws_of[effect.name] = chips
        return self.chip_draws[effect.name]


_COMPILED_DRAWS: dict[str, tf.types.experimental.GenericFunction] = {}


def compiled_draws(effect: Effect):
    """``effect.draw`` of every chip (one seed each, stacked), compiled once for every kernel shape
    and number of chips: one call programs all chips of a pass."""
    if effect.name not in _COMPILED_DRAWS:
        def draw_all(shape, seeds):
            return tf.map_fn(lambda seed: effect.draw(shape, seed), seeds, fn_output_signature=tf.float32)

        _COMPILED_DRAWS[effect.name] = tf.function(
            draw_all, autograph=False, input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, 2], tf.int64)])
    return _COMPILED_DRAWS[effect.name]


@dataclass
class PassSource:
    """Where one forward pass takes its levels and randomness from (the only thing training and
    evaluation do differently)."""

    levels: dict  #: effect name -> levels (Python numbers in training, variables at evaluation)
    seeds: list  #: one seed base per chip of the pass (the training seed in training)
    calls: tf.Tensor  #: this layer's pass counter


@dataclass
class PendingGaussian:
    """Training: zero-mean Gaussian terms on the outputs not drawn yet (their variances add up)."""

    variance: object  #: per element, or broadcastable
    effect: Effect  #: whose random stream the one draw uses (the last one added)


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
            state = HardwareState(zlib.crc32(self.name.encode()), self.kernel.shape, self.chips_per_pass)
            object.__setattr__(self, "_hardware_state", state)  # a plain holder: Keras does not track it
        return self._hardware_state

    def build(self, input_shape):
        super().build(input_shape)
        if isinstance(self, lq.layers.QuantConv2D) and not self._is_native_padding:
            raise ValueError(f"{self.name}: hardware-aware convolutions need pad_values=0 or padding='valid'")
        _ = self.hardware_state

    @tf.autograph.experimental.do_not_convert  # plain Python branches on static values: tracing stays fast
    def call(self, inputs, training=None):
        if tf.is_tensor(training):  # a symbolic learning phase: both paths, chosen at run time
            return tf.cond(training, lambda: self._forward(inputs, True), lambda: self._forward(inputs, False))
        return self._forward(inputs, bool(training))

    def _forward(self, inputs, training: bool):
        """The one forward path: kernel effects -> accumulate -> output effects (module docstring)."""
        if training and self.hardware.is_ideal:
            return super().call(inputs)  # the plain training step, nothing added
        state = self.hardware_state
        source = self._source(training, state.calls.assign_add(1))
        quantized = self.input_quantizer(inputs) if self.input_quantizer else inputs
        pending = None
        if training:
            outputs, pending = self._training_accumulate(quantized, source)
        else:  # the programmed chips when a kernel effect is on, else the plain kernel (read as the plain layer reads it)
            outputs = tf.cond(state.programmed, lambda: self._chips_accumulate(quantized, state.chip_kernels),
                              lambda: self._accumulate(quantized, self.quantized_kernel()))
        clean = outputs
        context = OutputContext(lambda: self._clean_range(clean, training), lambda effect: self._normal(clean, effect, source))
        for effect in OUTPUT_EFFECTS:
            levels = source.levels[effect.name]
            on = effect.is_on(levels)
            if training and on:
                added = effect.gaussian_variance(outputs, 0.0 if pending is None else pending.variance, levels)
                if added is not None:  # drawn below, with every other pending Gaussian, as one
                    pending = PendingGaussian(added if pending is None else pending.variance + added, effect)
                    continue
            outputs, pending = self._draw(outputs, pending, source), None
            outputs = when(on, lambda values, e=effect, lv=levels: e.apply_output(values, lv, context), outputs)
        return self._draw(outputs, pending, source)

    def _draw(self, outputs, pending: "PendingGaussian | None", source: PassSource):
        """``outputs + sqrt(variance) * n``: every pending zero-mean Gaussian term in one draw (training)."""
        if pending is None:
            return outputs
        return outputs + tf.sqrt(pending.variance) * self._normal(outputs, pending.effect, source)

    def _source(self, training: bool, calls) -> PassSource:
        state = self.hardware_state
        if training:
            levels = {effect.name: effect.run_levels(self.hardware.params(effect)) for effect in EFFECTS}
            return PassSource(levels, [state.train_seed], calls)
        return PassSource(state.levels, [state.chips[index] for index in range(self.chips_per_pass)], calls)

    def _training_accumulate(self, quantized, source: PassSource):
        """Fresh draws of the kernel effects, then accumulate; the last one stays pending at the
        outputs where that is exact (a dense layer on flat inputs, :meth:`Effect.output_variance`)."""
        state = self.hardware_state
        kernel = self.quantized_kernel()
        active = [effect for effect in KERNEL_EFFECTS if effect.is_on(source.levels[effect.name])]
        signs = unit_magnitude(self.kernel_quantizer)
        variance = None
        for index, effect in enumerate(active):
            levels = source.levels[effect.name]
            if index == len(active) - 1 and self.is_dense_on_flat(quantized):
                variance = effect.output_variance(quantized, kernel, levels, unit_magnitude(self.input_quantizer), signs)
            if variance is None:
                draws = effect.training_draw(tuple(kernel.shape), state.seed(source.seeds[0], effect, source.calls), levels)
                kernel = effect.apply_kernel(kernel, draws, levels, self.kernel_quantizer)
                signs = signs and effect.keeps_signs
        outputs = self._accumulate(quantized, kernel)
        return outputs, None if variance is None else PendingGaussian(variance, active[-1])

    def program(self) -> None:
        """Program the chips once: their kernels after every active kernel effect, read by every batch
        of the evaluation (one compiled function per set of active effects; the levels are its
        arguments, so a new level does not retrace). Each per-chip draw is made only when the chips change."""
        state = self.hardware_state
        evaluating = bool(state.evaluating.numpy())
        active = tuple(effect for effect in KERNEL_EFFECTS if evaluating and effect.is_on(state.static_levels(effect)))
        state.programmed.assign(bool(active))
        if not active:  # every kernel effect off: batches read the plain kernel
            return
        if active not in state.programmers:
            state.programmers[active] = tf.function(lambda draws, levels: self._programmed(active, draws, levels))
        draws = tuple(state.draws(effect) for effect in active)
        levels = tuple({key: tf.constant(value, tf.float32) for key, value in state.static_levels(effect).items()} for effect in active)
        state.chip_kernels.assign(state.programmers[active](draws, levels))

    def _programmed(self, effects, draws, levels):
        kernel = self.quantized_kernel()
        for effect, effect_draws, effect_levels in zip(effects, draws, levels):
            kernel = effect.apply_kernel(kernel, effect_draws, effect_levels, self.kernel_quantizer)
        return tf.broadcast_to(kernel, self.hardware_state.chip_kernels.shape)

    def quantized_kernel(self):
        """``W_q``: the latent kernel after the layer's quantizer (what Larq's call reads)."""
        latent = tf.convert_to_tensor(getattr(self.kernel, "latent_variable", self.kernel))
        return self.kernel_quantizer(latent) if self.kernel_quantizer else latent

    def _accumulate(self, quantized, kernel):
        """What the Larq / Keras layer computes, with ``kernel``: matmul or convolution, bias, activation."""
        if isinstance(self, lq.layers.QuantConv2D):
            outputs = self.convolution_op(quantized, kernel)
        elif quantized.shape.rank == 2:
            outputs = tf.matmul(quantized, kernel)
        else:
            outputs = tf.tensordot(quantized, kernel, [[quantized.shape.rank - 1], [0]])
        return self._bias_and_activation(outputs)

    def _bias_and_activation(self, outputs):
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, self.bias)
        return self.activation(outputs) if self.activation is not None else outputs

    def _chips_accumulate(self, quantized, kernels):
        """Each chip's part of the batch with that chip's kernel, stacked (one part when P = 1): dense
        layers on flat inputs as one batched matmul (P x part x fan-in times P x fan-in x units) --
        for one chip too, so that a chip's numbers do not depend on P (a 2-D and a batched matmul
        may sum in different orders on some CPUs)."""
        chips = self.chips_per_pass
        if self.is_dense_on_flat(quantized):
            parts = tf.reshape(quantized, [chips, -1, quantized.shape[-1]])
            return self._bias_and_activation(tf.reshape(tf.matmul(parts, kernels), [-1, kernels.shape[-1]]))
        if chips == 1:
            return self._accumulate(quantized, kernels[0])
        parts = tf.split(quantized, chips, axis=0)
        return tf.concat([self._accumulate(part, kernels[index]) for index, part in enumerate(parts)], axis=0)

    def _clean_range(self, clean, training: bool):
        if training:  # the current batch's, gradient-stopped
            return tf.stop_gradient(tf.reduce_min(clean)), tf.stop_gradient(tf.reduce_max(clean))
        return self.hardware_state.calibrated_lo, self.hardware_state.calibrated_hi

    def _normal(self, outputs, effect: Effect, source: PassSource):
        """N(0, 1) of the shape of ``outputs`` for ``effect``: part k of the batch seeded by chip k
        (or the training seed) and the pass."""
        seeds = [self.hardware_state.seed(base, effect, source.calls) for base in source.seeds]
        if len(seeds) == 1:
            return standard_normal(tf.shape(outputs), seeds[0])
        part = tf.shape(outputs) // tf.constant([len(seeds)] + [1] * (outputs.shape.rank - 1))
        return standard_normal(part, seeds)

    def is_dense_on_flat(self, quantized) -> bool:
        """Dense layers on flat inputs: every output element uses its own column of weights (not convolutions)."""
        return isinstance(self, lq.layers.QuantDense) and quantized.shape.rank == 2

    def get_config(self):
        return {**super().get_config(), "hardware": self.hardware.levels()}


def unit_magnitude(quantizer) -> bool:
    """Whether ``quantizer`` only ever returns -1 or +1 (so its square is exactly 1)."""
    return isinstance(quantizer, UNIT_MAGNITUDE_QUANTIZERS)


@tf.keras.utils.register_keras_serializable(package="hwlarq")
class HardwareAwareQuantDense(HardwareAwareMixin, lq.layers.QuantDense):
    """``larq.layers.QuantDense`` with the hardware model (see the module docstring)."""


@tf.keras.utils.register_keras_serializable(package="hwlarq")
class HardwareAwareQuantConv2D(HardwareAwareMixin, lq.layers.QuantConv2D):
    """``larq.layers.QuantConv2D`` with the hardware model (see the module docstring)."""


HARDWARE_CLASSES = {lq.layers.QuantDense: HardwareAwareQuantDense, lq.layers.QuantConv2D: HardwareAwareQuantConv2D}
PLAIN_CLASSES = {hardware: plain for plain, hardware in HARDWARE_CLASSES.items()}
