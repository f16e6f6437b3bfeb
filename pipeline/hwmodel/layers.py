"""Hardware-aware Larq layers: one forward path that applies the active effects in order.

With ``x_q`` and ``W_q`` the input and latent kernel after the layer's own quantizers: 1. the kernel
effects (``pipeline.effects``, in order) give the weights as the chip reads them; 2. accumulate
``y = x_q . W_chip`` (dense) or the convolution, in accumulator units (a 1-bit dense layer of fan-in
N: integers in [-N, N]); 3. the output effects, in order; then BatchNorm and activation as in the
plain model. Training and evaluation differ only in where levels and randomness come from:

* **training**: the layer's configuration (static: an effect that is off costs nothing), fresh
  draws seeded by (training seed, layer, step), the batch's clean range. A dense layer on flat inputs
  draws its last kernel effect at the outputs where exact (:meth:`KernelEffect.output_variance`), and
  zero-mean Gaussian output terms (:meth:`OutputEffect.gaussian_variance`) are drawn as one.
* **evaluation** (:func:`pipeline.hwmodel.chips.hardware_evaluation`): levels in ``tf.Variable`` s (no
  rebuild, no retrace); programmed chips -- per-chip draws (seeded by chip, layer, effect) made into
  kernels once per chip and level; per-pass draws seeded by (chip, layer, pass); the calibrated clean
  range. ``chips_per_pass`` P chips side by side: part k of a batch on chip k, with exactly the
  numbers of one chip at a time.

Otherwise (and with every level off) inference is the plain layer's, bit for bit. The run-time
state is not in the weights; the training configuration is in ``get_config``.
"""

from __future__ import annotations

import zlib

import numpy as np

import pipeline  # noqa: F401
import larq as lq
import tensorflow as tf

from pipeline.effects import EFFECTS, KERNEL_EFFECTS, OUTPUT_EFFECTS, Effect
from pipeline.effects.base import OutputContext, standard_normal, when
from pipeline.perturbation import PerturbationConfig
from pipeline.hwmodel.quantizers import input_precision, kernel_precision

SEED_MIX = 1_000_003  #: mixes the chip / training seed with the layer salt into one stateless seed


class HardwareState:
    """One layer's run-time state, in variables Keras does not track."""

    def __init__(self, name: str, kernel_shape: tuple[int, ...], chips_per_pass: int):
        variable = lambda value, dtype=tf.float32: tf.Variable(value, dtype=dtype, trainable=False)  # noqa: E731
        self.salt, self.kernel_shape = zlib.crc32(name.encode()), kernel_shape  # the salt: independent draws per layer
        self.levels = {e.name: {key: variable(value, tf.bool if isinstance(value, bool) else tf.float32)
                                for key, value in e.run_levels(e.params()).items()} for e in EFFECTS}
        self.calibrated_lo, self.calibrated_hi = variable(-np.inf), variable(np.inf)  # clean output range
        self.evaluating, self.programmed = variable(False, tf.bool), variable(False, tf.bool)  # programmed: read chip_kernels
        self.chip_ids, self.train_seed = variable(tf.zeros([chips_per_pass], tf.int64), tf.int64), variable(0, tf.int64)
        self.calls = variable(0, tf.int64)  # forward passes so far: fresh draws per pass, reproducibly
        self.chip_kernels = variable(tf.zeros([chips_per_pass, *kernel_shape]))  # P x kernel, read by every batch
        self.chip_draws, self.draws_of, self.programmers = {}, {}, {}  # per effect: draws (P x ...), of which chips

    def assign(self, config: PerturbationConfig) -> None:
        for effect, params in config:
            for key, value in effect.run_levels(params).items():
                self.levels[effect.name][key].assign(value)

    def static_levels(self, effect: Effect) -> dict[str, float | bool]:
        return {key: value.numpy().item() for key, value in self.levels[effect.name].items()}

    def seed_base(self, base, effect: Effect):
        """The chip (or training) seed ``base`` mixed with this layer and ``effect``: a Python int or an int64 tensor."""
        return base * SEED_MIX + self.salt + effect.stream

    def seed(self, base, effect: Effect, calls):
        return tf.stack([self.seed_base(base, effect), calls])

    def draws(self, effect: Effect) -> tf.Variable:
        """Every chip's draws of ``effect``, drawn again only when the chips change (a level rescales them)."""
        chips = tuple(int(chip) for chip in self.chip_ids.numpy())
        if self.draws_of.get(effect.name) != chips:
            seeds = tf.constant([[self.seed_base(chip, effect), 0] for chip in chips], tf.int64)
            drawn = compiled_draws(effect)(tf.constant(self.kernel_shape, tf.int32), seeds)
            if effect.name in self.chip_draws:  # (the draws may have more axes than the kernel)
                self.chip_draws[effect.name].assign(drawn)
            else:
                self.chip_draws[effect.name] = tf.Variable(drawn, trainable=False)
            self.draws_of[effect.name] = chips
        return self.chip_draws[effect.name]


COMPILED_DRAWS: dict[str, tf.types.experimental.GenericFunction] = {}


def compiled_draws(effect: Effect):
    """``effect.draw`` for every chip of a pass (one seed each, stacked), compiled once for all kernel shapes."""
    if effect.name not in COMPILED_DRAWS:
        COMPILED_DRAWS[effect.name] = tf.function(
            lambda shape, seeds: tf.map_fn(lambda seed: effect.draw(shape, seed), seeds, fn_output_signature=tf.float32),
            autograph=False, input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, 2], tf.int64)])
    return COMPILED_DRAWS[effect.name]


class HardwareAwareMixin:
    """Adds the hardware model to a Larq layer with a ``kernel`` (dense or convolution)."""

    def __init__(self, *args, hardware: dict | PerturbationConfig | None = None, **kwargs):
        self.perturbation = PerturbationConfig(**hardware) if isinstance(hardware, dict) else hardware or PerturbationConfig()
        super().__init__(*args, **kwargs)
        self._hardware_state = None
        self.chips_per_pass = 1  #: chips side by side in one inference pass (run-time, set before the build)

    @property
    def hardware_state(self) -> HardwareState:
        if self._hardware_state is None:  # a plain holder: Keras does not track it
            object.__setattr__(self, "_hardware_state", HardwareState(self.name, tuple(self.kernel.shape), self.chips_per_pass))
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
        """Kernel effects -> accumulate -> output effects (module docstring)."""
        if training and self.perturbation.is_ideal:
            return super().call(inputs)  # the plain training step, nothing added
        state, calls = self.hardware_state, self.hardware_state.calls.assign_add(1)
        if training:
            levels, seeds = {e.name: e.run_levels(self.perturbation.params(e)) for e in EFFECTS}, [state.train_seed]
        else:
            levels, seeds = state.levels, [state.chip_ids[index] for index in range(self.chips_per_pass)]
        normal = lambda like, effect: self._normal(like, [state.seed(base, effect, calls) for base in seeds])  # noqa: E731
        quantized = self.input_quantizer(inputs) if self.input_quantizer else inputs
        if training:  # pending: zero-mean Gaussian output terms not drawn yet, (summed variance, whose stream)
            outputs, pending = self._training_accumulate(quantized, levels, calls)
        else:  # the programmed chips when a kernel effect is on, else the plain kernel
            outputs = tf.cond(state.programmed, lambda: self._chips_accumulate(quantized),
                              lambda: self._accumulate(quantized, self.quantized_kernel()))
            pending = None
        clean = outputs
        context = OutputContext(lambda: self._clean_range(clean, training), lambda effect: normal(clean, effect))
        for effect in OUTPUT_EFFECTS:
            on = effect.is_on(levels[effect.name])
            added = effect.gaussian_variance(outputs, pending[0] if pending else 0.0, levels[effect.name]) if training and on else None
            if added is not None:  # drawn later, with every other pending Gaussian, as one
                pending = (pending[0] + added if pending else added, effect)
                continue
            outputs, pending = self._draw(outputs, pending, normal), None
            outputs = when(on, lambda values, e=effect: e.apply_output(values, levels[e.name], context), outputs)
        return self._draw(outputs, pending, normal)

    @staticmethod
    def _draw(outputs, pending, normal):
        """``outputs + sqrt(variance) * n``: every pending Gaussian term in one draw (training)."""
        return outputs if pending is None else outputs + tf.sqrt(pending[0]) * normal(outputs, pending[1])

    def _training_accumulate(self, quantized, levels, calls):
        """Fresh draws of the active kernel effects, then accumulate; the last one stays pending at the
        outputs where exact (a dense layer on flat inputs)."""
        active = [effect for effect in KERNEL_EFFECTS if effect.is_on(levels[effect.name])]
        effect_levels = [levels[effect.name] for effect in active]
        if not active or not self.is_dense_on_flat(quantized):
            return self._accumulate(quantized, self._read_kernel(active, self._training_draws(active, levels, calls), effect_levels)), None
        *before, last = active
        kernel = self._read_kernel(before, self._training_draws(before, levels, calls), effect_levels[:-1])
        signs = kernel_precision(self).sign and all(effect.keeps_signs for effect in before)
        variance = last.output_variance(quantized, kernel, levels[last.name], input_precision(self).sign, signs)
        if variance is not None:
            return self._accumulate(quantized, kernel), (variance, last)
        kernel = self._read_kernel([last], self._training_draws([last], levels, calls), effect_levels[-1:], kernel)
        return self._accumulate(quantized, kernel), None

    def _training_draws(self, effects, levels, calls) -> list:
        state = self.hardware_state
        return [effect.training_draw(tuple(self.kernel.shape), state.seed(state.train_seed, effect, calls), levels[effect.name])
                for effect in effects]

    def program(self) -> None:
        """Program the chips: their kernels after every active kernel effect, once, eagerly (compiled
        per set of active effects, the levels its arguments: a new level does not retrace)."""
        state = self.hardware_state
        static = {e: state.static_levels(e) for e in KERNEL_EFFECTS} if state.evaluating.numpy() else {}
        active = tuple(e for e, levels in static.items() if e.is_on(levels))
        state.programmed.assign(bool(active))
        if not active:  # batches read the plain kernel
            return
        if active not in state.programmers:
            state.programmers[active] = tf.function(lambda draws, levels: tf.broadcast_to(
                self._read_kernel(active, draws, levels), state.chip_kernels.shape))
        levels = tuple({key: tf.constant(value, tf.bool if isinstance(value, bool) else tf.float32) for key, value in static[e].items()} for e in active)
        state.chip_kernels.assign(state.programmers[active](tuple(state.draws(e) for e in active), levels))

    def _read_kernel(self, effects, draws, levels, kernel=None):
        """The kernel as read: ``kernel`` (default ``W_q``) after each of ``effects`` with its draws and
        levels, in order -- the one loop of training steps and programmed chips."""
        kernel = self.quantized_kernel() if kernel is None else kernel
        precision = kernel_precision(self)
        for effect, effect_draws, effect_levels in zip(effects, draws, levels):
            kernel = effect.apply_kernel(kernel, effect_draws, effect_levels, precision)
        return kernel

    def quantized_kernel(self):
        """``W_q``: the latent kernel after the layer's quantizer (what Larq's call reads)."""
        latent = tf.convert_to_tensor(getattr(self.kernel, "latent_variable", self.kernel))
        return self.kernel_quantizer(latent) if self.kernel_quantizer else latent

    def _accumulate(self, quantized, kernel, flat_chips: int = 0):
        """What the Larq layer computes with ``kernel``; ``flat_chips`` P: P kernels on P parts, one batched matmul."""
        if flat_chips:
            parts = tf.reshape(quantized, [flat_chips, -1, quantized.shape[-1]])
            outputs = tf.reshape(tf.matmul(parts, kernel), [-1, kernel.shape[-1]])
        elif isinstance(self, lq.layers.QuantConv2D):
            outputs = self.convolution_op(quantized, kernel)
        elif quantized.shape.rank == 2:
            outputs = tf.matmul(quantized, kernel)
        else:
            outputs = tf.tensordot(quantized, kernel, [[quantized.shape.rank - 1], [0]])
        outputs = tf.nn.bias_add(outputs, self.bias) if self.use_bias else outputs
        return self.activation(outputs) if self.activation is not None else outputs

    def _chips_accumulate(self, quantized):
        """Part k of the batch on chip k. Dense layers on flat inputs: one batched matmul for any number
        of chips, so a chip's numbers do not depend on it (2-D and batched matmuls may sum in other orders)."""
        kernels, chips = self.hardware_state.chip_kernels, self.chips_per_pass
        if self.is_dense_on_flat(quantized):
            return self._accumulate(quantized, kernels, flat_chips=chips)
        parts = tf.split(quantized, chips, axis=0) if chips > 1 else [quantized]
        return tf.concat([self._accumulate(part, kernels[index]) for index, part in enumerate(parts)], axis=0)

    def _clean_range(self, clean, training: bool):
        if training:  # the current batch's, gradient-stopped
            return tf.stop_gradient(tf.reduce_min(clean)), tf.stop_gradient(tf.reduce_max(clean))
        return self.hardware_state.calibrated_lo, self.hardware_state.calibrated_hi

    @staticmethod
    def _normal(outputs, seeds):
        """N(0, 1) of the shape of ``outputs``, part k of the batch from ``seeds[k]``."""
        return standard_normal(tf.shape(outputs) // tf.constant([len(seeds)] + [1] * (outputs.shape.rank - 1)), seeds)

    def is_dense_on_flat(self, quantized) -> bool:
        return isinstance(self, lq.layers.QuantDense) and quantized.shape.rank == 2

    def get_config(self):
        return {**super().get_config(), "hardware": self.perturbation.parameters()}


@tf.keras.utils.register_keras_serializable(package="hwlarq")
class HardwareAwareQuantDense(HardwareAwareMixin, lq.layers.QuantDense):
    """``larq.layers.QuantDense`` with the hardware model (see the module docstring)."""


@tf.keras.utils.register_keras_serializable(package="hwlarq")
class HardwareAwareQuantConv2D(HardwareAwareMixin, lq.layers.QuantConv2D):
    """``larq.layers.QuantConv2D`` with the hardware model (see the module docstring)."""


HARDWARE_CLASSES = {lq.layers.QuantDense: HardwareAwareQuantDense, lq.layers.QuantConv2D: HardwareAwareQuantConv2D}
PLAIN_CLASSES = {hardware: plain for plain, hardware in HARDWARE_CLASSES.items()}
