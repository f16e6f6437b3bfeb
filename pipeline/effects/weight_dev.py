"""Process variation: every stored weight deviates from its nominal value, the same way for a chip's life.

``W_chip = W_q * (1 + eps)``, ``eps = (weight_dev_pct / 100) * z``, ``z ~ N(0, 1)`` i.i.d. per weight
(dimensionless), on the kernel after the layer's quantizer.

Sampling: per chip -- ``z`` depends on (chip seed, layer) only, drawn when the chip is programmed; a
new level rescales it. A fresh draw every training step, which a dense layer on flat inputs makes at
its outputs (local reparameterization, :meth:`WeightDev.output_variance`): batch x units numbers
instead of fan-in x units, the same output distribution (per tile: each tile's own rows). The kernel
variable is never modified.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.effects.base import Curve, EffectParams, KernelEffect, SearchRange, Sampling, standard_normal, tf
from pipeline.validation import require_float


@dataclass(frozen=True)
class WeightDevParams(EffectParams):
    weight_dev_pct: float = 0.0
    """Process variation, percent, in [0, 1000]: the std of the relative deviation of every weight,
    ``eps ~ N(0, (pct/100)^2)``. One draw per chip; a fresh draw every training step. 0 = off."""

    def validate(self) -> None:
        self._set("weight_dev_pct", require_float("weight_dev_pct", self.weight_dev_pct, 0.0, 1000.0))

    active = property(lambda self: self.weight_dev_pct > 0)

    def label(self) -> str:
        return f"d{self.weight_dev_pct:g}"


class WeightDev(KernelEffect):
    # after bit errors (order 0): a cell read in the wrong state still has its device's deviation; last
    # of the kernel effects (after drift, order 1, which multiplies the stored value too), so training
    # can draw it at the outputs
    name, params, order, sampling, stream = "weight_dev", WeightDevParams, 2, Sampling.PER_CHIP, 0
    formula = "W ← W_q·(1 + ε), ε = (weight_dev_pct/100)·z, z ~ N(0, 1) per weight"
    curve = Curve("weight_dev_pct", (0.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0), "weight deviation (%)")
    search = {"weight_dev_pct": SearchRange(0.0, 60.0)}

    def run_levels(self, params: WeightDevParams) -> dict[str, float]:
        return {"deviation": params.weight_dev_pct / 100.0}

    def draw(self, shape, seed):
        return standard_normal(shape, seed)

    def apply_kernel(self, kernel, draws, levels, precision):
        return kernel * (1.0 + levels["deviation"] * draws)

    def output_variance(self, quantized_inputs, kernel, levels, inputs_are_signs, kernel_is_signs, accumulate):
        """``x_q . (W * eps)`` per example and unit is ``N(0, dev^2 sum_i x_i^2 W_ij^2)``, independent
        across units (Kingma, Salimans & Welling, 2015): each example sees its own fresh chip. Per tile
        the sum runs over the tile's rows (``accumulate``, the layer's own sum)."""
        variance = squares_matmul(quantized_inputs, kernel, inputs_are_signs, kernel_is_signs, accumulate)
        return levels["deviation"] ** 2 * tf.maximum(variance, 1e-12)  # all-zero inputs: zero gradient


def squares_matmul(inputs, kernel, inputs_are_signs: bool, kernel_are_signs: bool, accumulate=None):
    """``accumulate(inputs^2, kernel^2)``, by default ``inputs^2 @ kernel^2``, broadcastable to the
    outputs. A +-1 factor squares to 1: a row sum, a column sum or the fan-in (per tile: of the
    tile's rows), with no gradient through it (a straight-through estimator would otherwise invent one)."""
    if accumulate is not None:
        return tiled_squares(inputs, kernel, inputs_are_signs, kernel_are_signs, accumulate)
    if inputs_are_signs and kernel_are_signs:
        return tf.fill([1, 1], tf.cast(tf.shape(kernel)[0], inputs.dtype))
    if kernel_are_signs:
        return tf.reduce_sum(tf.square(inputs), axis=1, keepdims=True)  # [B, 1]: the same for every unit
    if inputs_are_signs:
        return tf.reduce_sum(tf.square(kernel), axis=0, keepdims=True)  # [1, M]: the same for every example
    return tf.matmul(tf.square(inputs), tf.square(kernel))


def tiled_squares(inputs, kernel, inputs_are_signs: bool, kernel_are_signs: bool, accumulate):
    """:func:`squares_matmul` per tile: ``accumulate`` gives each tile's partial sums (one row per
    example and tile); a +-1 factor is one example (or one unit) of ones, the result broadcast."""
    examples, ones = tf.shape(inputs)[0], tf.ones([kernel.shape[0], 1], kernel.dtype)
    if kernel_are_signs and inputs_are_signs:  # per tile: its rows, for every example and unit
        return tf.tile(accumulate(tf.ones_like(inputs[:1]), ones), [examples, 1])
    if kernel_are_signs:  # [B T, 1]: the same for every unit
        return accumulate(tf.square(inputs), ones)
    if inputs_are_signs:  # [T, M] for every example
        return tf.tile(accumulate(tf.ones([1, kernel.shape[0]], kernel.dtype), tf.square(kernel)), [examples, 1])
    return accumulate(tf.square(inputs), tf.square(kernel))
