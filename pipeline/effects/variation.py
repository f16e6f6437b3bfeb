"""Process variation: every stored weight deviates from its nominal value, the same way for a chip's life.

``W_chip = W_q * (1 + eps)``, ``eps = (weight_dev_pct / 100) * z``, ``z ~ N(0, 1)`` i.i.d. per weight
(dimensionless), applied to the kernel after the layer's quantizer.

Sampling: per chip. ``z`` is a function of (chip seed, layer) only, drawn once when the chip is
programmed; a new level only rescales it. In training a fresh draw every step (variation-aware
training); a dense layer on flat inputs draws it at its outputs instead (local reparameterization,
:meth:`Variation.output_variance`): every example gets exactly the output distribution of a fresh kernel
draw, for batch x units Gaussian numbers instead of fan-in x units. The kernel variable itself is
never modified.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.effects.base import Curve, Effect, EffectParams, SearchRange, Stage, Sampling, standard_normal, tf
from pipeline.validation import require_float


@dataclass(frozen=True)
class VariationParams(EffectParams):
    weight_dev_pct: float = 0.0
    """Process variation, percent, in [0, 1000]: the std of the relative deviation of every weight,
    ``eps ~ N(0, (pct/100)^2)``. One draw per chip; a fresh draw every training step. 0 = off."""

    def validate(self) -> None:
        self._set("weight_dev_pct", require_float("weight_dev_pct", self.weight_dev_pct, 0.0, 1000.0))

    @property
    def active(self) -> bool:
        return self.weight_dev_pct > 0

    def label(self) -> str:
        return f"d{self.weight_dev_pct:g}"


class Variation(Effect):
    name = "weight_dev"
    params = VariationParams
    stage = Stage.KERNEL
    order = 1  # after bit errors: a cell read in the wrong state still has its device's deviation
    sampling = Sampling.PER_CHIP
    stream = 0
    formula = "W ← W_q·(1 + ε), ε = (weight_dev_pct/100)·z, z ~ N(0, 1) per weight"
    curve = Curve("weight_dev_pct", (0.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0), "weight deviation (%)")
    search = {"weight_dev_pct": SearchRange(0.0, 60.0)}

    def run_levels(self, params: VariationParams) -> dict[str, float]:
        return {"deviation": params.weight_dev_pct / 100.0}

    def is_on(self, levels):
        return levels["deviation"] > 0

    def draw(self, shape, seed):
        return standard_normal(shape, seed)

    def apply_kernel(self, kernel, draws, levels, kernel_quantizer):
        return kernel * (1.0 + levels["deviation"] * draws)

    def output_variance(self, quantized_inputs, kernel, levels, inputs_are_signs, kernel_is_signs):
        """The variance of ``x_q . (W * eps)`` per example and unit.

        Local reparameterization (Kingma, Salimans & Welling, 2015): with ``eps`` i.i.d. per weight,
        output ``j`` of example ``b`` gets ``sum_i x_bi W_ij eps_ij ~ N(0, dev^2 sum_i x_bi^2 W_ij^2)``,
        and outputs of different units use disjoint weights, so they are independent. Drawing that
        Gaussian at the outputs gives every example exactly the distribution (and the expected loss
        and gradient) of a fresh kernel draw; examples of one batch see independent chips instead of
        one shared chip, which lowers the variance of the gradient estimate.
        """
        variance = squares_matmul(quantized_inputs, kernel, inputs_are_signs, kernel_is_signs)
        return levels["deviation"] ** 2 * tf.maximum(variance, 1e-12)  # all-zero inputs: zero gradient


def squares_matmul(inputs, kernel, inputs_are_signs: bool, kernel_are_signs: bool):
    """``inputs^2 @ kernel^2`` (batch x fan-in times fan-in x units). A factor known to be +-1 has
    the square 1: then the product is a row sum, a column sum or the fan-in, with no work and no
    gradient through that factor (its square is constant; a straight-through estimator would
    otherwise invent a gradient for it)."""
    shape = [tf.shape(inputs)[0], tf.shape(kernel)[1]]
    if inputs_are_signs and kernel_are_signs:
        return tf.fill(shape, tf.cast(tf.shape(kernel)[0], inputs.dtype))
    if kernel_are_signs:
        return tf.broadcast_to(tf.reduce_sum(tf.square(inputs), axis=1, keepdims=True), shape)
    if inputs_are_signs:
        return tf.broadcast_to(tf.reduce_sum(tf.square(kernel), axis=0, keepdims=True), shape)
    return tf.matmul(tf.square(inputs), tf.square(kernel))
