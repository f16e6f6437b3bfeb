"""Hardware-aware Larq layers: one forward path that applies the active effects in order.

With ``x_q`` and ``W_q`` the input and latent kernel after the layer's own quantizers: 1. the kernel
effects (``pipeline.effects``, in order) give the weights as the chip reads them; 2. accumulate
``y = x_q . W_chip`` (dense) or the convolution, in accumulator units (a 1-bit dense layer of fan-in
N: integers in [-N, N]), as one partial sum per tile (and bit-serial pass, :mod:`pipeline.hwmodel.tiles`;
one tile: the whole sum); 3. the output effects, in order, on every partial; 4. the digital sum of the
partials, the layer's bias and activation; then BatchNorm and activation as in the plain model.
Training and evaluation differ only in where levels and randomness come from:

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

import numpy as np

import pipeline  # noqa: F401
import larq as lq
import tensorflow as tf

from pipeline.effects import EFFECTS, KERNEL_EFFECTS, OUTPUT_EFFECTS, converter_range, saturated_statically
from pipeline.effects.base import Accumulator, OutputContext, standard_normal, when
from pipeline.perturbation import PerturbationConfig
from pipeline.validation import ConfigError
from pipeline.hwmodel.quantizers import input_precision, integer_unit, kernel_precision
from pipeline.hwmodel.state import HardwareState
from pipeline.hwmodel.tiles import Tiling


class HardwareAwareMixin:
    """Adds the hardware model to a Larq layer with a ``kernel`` (dense or convolution)."""

    def __init__(self, *args, hardware: dict | PerturbationConfig | None = None, pixel_inputs: bool = False, **kwargs):
        self.perturbation = PerturbationConfig(**hardware) if isinstance(hardware, dict) else hardware or PerturbationConfig()
        self.pixel_inputs = bool(pixel_inputs)  #: reads the image's 8-bit pixels (the first layer)
        super().__init__(*args, **kwargs)
        self._hardware_state = None
        self.chips_per_pass = 1  #: chips side by side in one inference pass (run-time, set before the build)

    @property
    def hardware_state(self) -> HardwareState:
        if self._hardware_state is None:  # a plain holder: Keras does not track it
            object.__setattr__(self, "_hardware_state", HardwareState(self.name, tuple(self.kernel.shape), self.chips_per_pass,
                                                                      self.tiling.count))
        return self._hardware_state

    @property
    def tiling(self) -> Tiling:
        """The tiles (and bit-serial passes) of this layer's fan-in, fixed by its configuration."""
        return self.tiling_for(self.perturbation)

    def tiling_for(self, config: PerturbationConfig) -> Tiling:
        """The tiles this layer has when attached with ``config``."""
        return Tiling.of(int(np.prod(self.kernel.shape[:-1])), config.tile_rows, self.pixel_inputs and config.bit_serial)

    def accumulator(self, like=None) -> Accumulator:
        """What this layer's partial sums are (``rows`` broadcastable to the folded ``like``, when given)."""
        tiling, kernel = self.tiling, kernel_precision(self)
        inputs = input_precision(self, self.pixel_inputs)
        serial = tiling.passes > 1  # a pass reads +-1 planes
        unit = kernel.denominator if serial else integer_unit(inputs, kernel)
        popcount = kernel.sign and (inputs.sign or serial)
        rows = tiling.partial_rows if like is None else self._per_partial(tiling.partial_rows, like)
        return Accumulator(unit=None if unit is None else float(unit), popcount=popcount, rows=rows)

    def check_hardware(self, config: PerturbationConfig) -> None:
        """A ConfigError naming the parameter when ``config`` cannot run on this layer as built (its
        accumulator, its tiles, its bit-serial passes)."""
        if self.tiling_for(config).rows != self.tiling.rows:
            raise ConfigError("tile_rows", f"layer {self.name} is built on tiles of {self.tiling.rows} rows; "
                                           f"got tile_rows={config.tile_rows} (attach the hardware again)")
        if self.pixel_inputs and config.bit_serial and self.tiling.passes == 1:
            raise ConfigError("acc_format", f"layer {self.name} is not built bit-serial: popcount on its pixels needs "
                                            "a copy attached with acc_format=popcount")
        config.check_layer(self.name, self.accumulator())

    def build(self, input_shape):
        super().build(input_shape)
        if isinstance(self, lq.layers.QuantConv2D) and not self._is_native_padding:
            raise ValueError(f"{self.name}: hardware-aware convolutions need pad_values=0 or padding='valid'")
        if self.tiling.count > 1 and isinstance(self, lq.layers.QuantDense) and len(input_shape) != 2:
            raise ValueError(f"{self.name}: tiles on a dense layer need flat inputs; got shape {tuple(input_shape)}")
        self.perturbation.check_layer(self.name, self.accumulator())
        _ = self.hardware_state

    @tf.autograph.experimental.do_not_convert  # plain Python branches on static values: tracing stays fast
    def call(self, inputs, training=None):
        if tf.is_tensor(training):  # a symbolic learning phase: both paths, chosen at run time
            return tf.cond(training, lambda: self._forward(inputs, True), lambda: self._forward(inputs, False))
        return self._forward(inputs, bool(training))

    def _forward(self, inputs, training: bool):
        """Kernel effects -> partial sums -> output effects -> digital sum (module docstring)."""
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
            outputs, pending, scale = self._training_accumulate(quantized, levels, calls)
        else:  # the programmed chips when a kernel effect is on, else the plain kernel
            outputs = tf.cond(state.programmed, lambda: self._chips_accumulate(quantized),
                              lambda: self._accumulate(quantized, self.quantized_kernel()))
            pending, scale = None, state
        context = self._context(outputs, training, levels, normal)
        for effect in OUTPUT_EFFECTS:
            on = effect.is_on(levels[effect.name])
            added = effect.gaussian_variance(outputs, pending[0] if pending else 0.0, levels[effect.name]) if training and on else None
            if added is not None:  # drawn later, with every other pending Gaussian, as one
                pending = (pending[0] + added if pending else added, effect)
                continue
            outputs, pending = self._draw(outputs, pending, normal), None
            outputs = when(on, lambda values, e=effect: e.apply_output(values, levels[e.name], context), outputs)
        return self._finish(self._draw(outputs, pending, normal), scale)

    def _context(self, clean, training: bool, levels, normal) -> OutputContext:
        """What the output effects read about the clean partial sums ``clean``."""
        context = OutputContext(lambda: self._clean_range(clean, training), lambda effect: normal(clean, effect), self.accumulator(clean),
                                lambda: converter_range(levels, context), saturated_statically(levels))
        return context

    def _finish(self, partials, scale=None):
        """The digital sum of the partials, the compensation's digital scale (``scale``: a training step's
        number, the run-time state's chips at evaluation, or None), then the layer's bias and activation."""
        outputs = self.tiling.combine(partials) if self.tiling.count > 1 else partials
        if isinstance(scale, HardwareState):
            outputs = when(scale.compensating, lambda values: self._scaled(values, scale.output_scales), outputs)
        elif scale is not None:
            outputs = outputs * scale
        outputs = tf.nn.bias_add(outputs, self.bias) if self.use_bias else outputs
        return self.activation(outputs) if self.activation is not None else outputs

    @staticmethod
    def _scaled(outputs, scales):
        """Part k of the batch times ``scales[k]`` (one number per chip of the pass)."""
        parts = tf.reshape(outputs, tf.stack([tf.shape(scales)[0], -1]))
        return tf.reshape(parts * scales[:, None], tf.shape(outputs))

    @staticmethod
    def _draw(outputs, pending, normal):
        """``outputs + sqrt(variance) * n``: every pending Gaussian term in one draw (training)."""
        return outputs if pending is None else outputs + tf.sqrt(pending[0]) * normal(outputs, pending[1])

    def _training_accumulate(self, quantized, levels, calls):
        """Fresh draws of the active kernel effects, then accumulate; the last one stays pending at the
        outputs where exact (a dense layer on flat inputs, not read bit-serially). Returns the partial
        sums, the pending term and the compensation's scale (of the kernel read: without the pending term)."""
        active = [effect for effect in KERNEL_EFFECTS if effect.is_on(levels[effect.name])]
        effect_levels = [levels[effect.name] for effect in active]
        draws = self._training_draws(active[:-1], levels, calls)
        kernel = self._read_kernel(active[:-1], draws, effect_levels[:-1])
        if active and self.is_dense_on_flat(quantized) and self.tiling.passes == 1:
            signs = kernel_precision(self).sign and all(effect.keeps_signs for effect in active[:-1])
            accumulate = self.tiling.dense if self.tiling.count > 1 else None
            variance = active[-1].output_variance(quantized, kernel, effect_levels[-1], input_precision(self).sign, signs, accumulate)
            if variance is not None:
                scale = self._compensation(active[:-1], draws, effect_levels[:-1], kernel)
                return self._accumulate(quantized, kernel), (variance, active[-1]), scale
        draws += self._training_draws(active[-1:], levels, calls)
        kernel = self._read_kernel(active[-1:], draws[-1:], effect_levels[-1:], kernel)
        return self._accumulate(quantized, kernel), None, self._compensation(active, draws, effect_levels, kernel)

    def _training_draws(self, effects, levels, calls) -> list:
        state = self.hardware_state
        return [effect.training_draw(tuple(self.kernel.shape), state.seed(state.train_seed, effect, calls), levels[effect.name])
                for effect in effects]

    def program(self) -> None:
        """Program the chips: their kernels after every active kernel effect, once, eagerly -- new chips'
        draws made in the same compiled function (compiled per set of active effects, of those the
        periphery compensates and of draws to make; the levels are its arguments: a new level does not
        retrace). Until the function has returned, the layer has no chips (batches read the plain
        kernel) and the draws it replaces belong to no chips: an interrupted programming draws them again."""
        state = self.hardware_state
        static = {e: state.static_levels(e) for e in KERNEL_EFFECTS} if state.evaluating.numpy() else {}
        active = tuple(e for e, levels in static.items() if e.is_on(levels))
        compensated = tuple(e.compensated(static[e]) for e in active)
        state.programmed.assign(False)
        state.compensating.assign(False)
        if not active:  # batches read the plain kernel
            return
        chips = state.chips()
        stale = tuple(state.stale(e, chips) for e in active)
        if (active, compensated, stale) not in state.programmers:
            def programmer(seeds, levels):
                draws = [state.redraw(e, s) if new else state.chip_draws[e.name] for e, s, new in zip(active, seeds, stale)]
                kernels = tf.broadcast_to(self._read_kernel(active, draws, levels), state.chip_kernels.shape)
                scales = self._compensation(active, draws, levels, kernels, compensated)
                state.chip_kernels.assign(kernels)
                state.output_scales.assign(tf.ones([self.chips_per_pass]) if scales is None else scales)
            state.programmers[active, compensated, stale] = tf.function(programmer, autograph=False)
        levels = tuple({key: tf.constant(value, tf.bool if isinstance(value, bool) else tf.float32) for key, value in static[e].items()} for e in active)
        redrawn = [e.name for e, new in zip(active, stale) if new]
        for name in redrawn:
            state.draws_of.pop(name, None)  # (already gone after an interrupted programming)
        state.programmers[active, compensated, stale](tuple(state.chip_seeds(e, chips) for e in active), levels)
        state.draws_of.update(dict.fromkeys(redrawn, chips))
        state.programmed.assign(True)
        state.compensating.assign(any(compensated))

    def _compensation(self, effects, draws, levels, read, compensated=None):
        """The periphery's digital scale undoing the compensated effects' mean: ``sum |W_ref| / sum |W|``
        over each kernel ``read`` (a number; per chip for P stacked kernels), ``W_ref`` the kernel read
        without them; None when none is compensated (``compensated``: the decisions, else from ``levels``)."""
        compensated = [e.compensated(lv) for e, lv in zip(effects, levels)] if compensated is None else compensated
        if not any(compensated):
            return None
        kept = [(effect, draw, lv) for effect, draw, lv, undone in zip(effects, draws, levels, compensated) if not undone]
        reference = tf.broadcast_to(self._read_kernel(*(list(column) for column in zip(*kept))) if kept else self.quantized_kernel(),
                                    tf.shape(read))
        axes = list(range(read.shape.rank - len(self.kernel.shape), read.shape.rank))  # the kernel's own axes
        ratio = tf.reduce_sum(tf.abs(reference), axes) / tf.maximum(tf.reduce_sum(tf.abs(read), axes), 1e-30)
        return tf.stop_gradient(ratio)

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
        """The partial sums of what the Larq layer computes with ``kernel`` (one tile: the whole sum,
        before bias and activation); ``flat_chips`` P: P kernels on P parts, one batched product."""
        tiling = self.tiling
        if isinstance(self, lq.layers.QuantConv2D):
            return tiling.convolution(self.convolution_op, quantized, kernel) if tiling.count > 1 else self.convolution_op(quantized, kernel)
        if tiling.count > 1:
            return tiling.dense(quantized, kernel)
        if flat_chips:
            parts = tf.reshape(quantized, [flat_chips, -1, quantized.shape[-1]])
            return tf.reshape(tf.matmul(parts, kernel), [-1, kernel.shape[-1]])
        if quantized.shape.rank == 2:
            return tf.matmul(quantized, kernel)
        return tf.tensordot(quantized, kernel, [[quantized.shape.rank - 1], [0]])

    def _chips_accumulate(self, quantized):
        """Part k of the batch on chip k. Dense layers on flat inputs: one batched product for any number
        of chips, so a chip's numbers do not depend on it (2-D and batched matmuls may sum in other orders)."""
        kernels, chips = self.hardware_state.chip_kernels, self.chips_per_pass
        if self.is_dense_on_flat(quantized):
            return self._accumulate(quantized, kernels, flat_chips=chips)
        parts = tf.split(quantized, chips, axis=0) if chips > 1 else [quantized]
        return tf.concat([self._accumulate(part, kernels[index]) for index, part in enumerate(parts)], axis=0)

    def clean_partial_range(self, inputs):
        """[min, max] of every clean partial sum over the batch ``inputs`` (this layer's input): two ``[count]`` tensors."""
        quantized = self.input_quantizer(inputs) if self.input_quantizer else inputs
        return self.tiling.partial_range(self._accumulate(quantized, self.quantized_kernel()))

    def _clean_range(self, clean, training: bool):
        """Per partial: the batch's (training, gradient-stopped) or the calibrated [min, max]."""
        state, one = self.hardware_state, self.tiling.count == 1
        if training and one:
            return tf.stop_gradient(tf.reduce_min(clean)), tf.stop_gradient(tf.reduce_max(clean))
        lo, hi = self.tiling.partial_range(tf.stop_gradient(clean)) if training else (state.calibrated_lo, state.calibrated_hi)
        if one:
            return tf.reshape(lo, []), tf.reshape(hi, [])
        return self._per_partial(lo, clean), self._per_partial(hi, clean)

    def _per_partial(self, values, like):
        return self.tiling.per_partial(values, like) if self.tiling.count > 1 else tf.constant(values[0], tf.float32)

    @staticmethod
    def _normal(outputs, seeds):
        """N(0, 1) of the shape of ``outputs``, part k of the batch from ``seeds[k]``."""
        return standard_normal(tf.shape(outputs) // tf.constant([len(seeds)] + [1] * (outputs.shape.rank - 1)), seeds)

    def is_dense_on_flat(self, quantized) -> bool:
        return isinstance(self, lq.layers.QuantDense) and quantized.shape.rank == 2

    def get_config(self):
        return {**super().get_config(), "hardware": self.perturbation.parameters(), "pixel_inputs": self.pixel_inputs}


@tf.keras.utils.register_keras_serializable(package="hwlarq")
class HardwareAwareQuantDense(HardwareAwareMixin, lq.layers.QuantDense):
    """``larq.layers.QuantDense`` with the hardware model (see the module docstring)."""


@tf.keras.utils.register_keras_serializable(package="hwlarq")
class HardwareAwareQuantConv2D(HardwareAwareMixin, lq.layers.QuantConv2D):
    """``larq.layers.QuantConv2D`` with the hardware model (see the module docstring)."""


HARDWARE_CLASSES = {lq.layers.QuantDense: HardwareAwareQuantDense, lq.layers.QuantConv2D: HardwareAwareQuantConv2D}
PLAIN_CLASSES = {hardware: plain for plain, hardware in HARDWARE_CLASSES.items()}
