"""Weight bit errors: a stored weight reads as a wrong value (faulty cells of a resistive memory).

Each stored weight is faulty with probability ``weight_ber`` (dimensionless, in [0, 0.5]),
independently, and then reads as another of its values: a binarized (1-bit) weight flips its sign,
``W <- -W_q``; a k-bit DoReFa weight (levels ``-1 + 2i / (2^k - 1)``) reads as one of its ``2^k - 1``
other levels, chosen uniformly -- never outside the levels; a float weight flips its sign bit
(exponent and mantissa errors are not modelled).

Sampling: per chip -- drawn when the chip is programmed, seeded by chip and layer: two uniforms per
weight, ``u`` (faulty when ``u < weight_ber``) and ``v`` (which wrong level), so at a higher rate a
chip keeps its faulty cells and gains more (nested, like a chip ageing). A fresh draw every training
step (error-aware training), drawn sparsely. The kernel variable is never modified.

Anchor: Hirtzlin et al. (2019-2020), binarized networks on hafnium-oxide RRAM: a plain binarized
network loses nothing on MNIST at a bit-error rate of 1e-4; error-aware training tolerates about 4e-2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from pipeline.effects.base import Curve, EffectParams, KernelEffect, SearchRange, Sampling, tf
from pipeline.validation import require_float


@dataclass(frozen=True)
class WeightBerParams(EffectParams):
    weight_ber: float = 0.0
    """Weight bit-error rate: probability that a stored weight reads wrong, in [0, 0.5]
    (dimensionless). One draw per chip; a fresh draw every training step. 0 = off."""

    def validate(self) -> None:
        self._set("weight_ber", require_float("weight_ber", self.weight_ber, 0.0, 0.5))

    active = property(lambda self: self.weight_ber > 0)

    def label(self) -> str:
        return f"ber{self.weight_ber:g}"


class WeightBer(KernelEffect):
    # first (order 0): the cell reads the wrong state, then its device's deviation applies
    name, params, order, sampling, stream = "weight_ber", WeightBerParams, 0, Sampling.PER_CHIP, 2
    keeps_signs = True
    formula = ("with probability weight_ber per weight: W ← −W_q (1-bit, float); "
               "a k-bit W_q reads as one of its other 2^k − 1 levels, uniformly")
    curve = Curve("weight_ber", (0.0, 1e-4, 1e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1), "weight bit-error rate (per stored weight)",
                  log=True)
    search = {"weight_ber": SearchRange(1e-4, 0.1, log=True)}  # a log range needs low > 0; 1e-4 costs a BNN nothing

    def run_levels(self, params: WeightBerParams) -> dict[str, float]:
        return {"ber": params.weight_ber}

    def draw(self, shape, seed):
        """``(u, v)`` per weight on a last axis of 2."""
        return tf.random.stateless_uniform(tf.concat([shape, [2]], axis=0), seed=seed)

    def training_draw(self, shape, seed, levels):
        """Only the faulty weights: flat positions from the geometric gaps of the Bernoulli process,
        ``floor(log(1 - u) / log(1 - weight_ber)) + 1``, each with its ``v``: about ``weight_ber * size``
        numbers. Exact but for flips beyond ``mean + 6 std + 16`` in one step (probability < 1e-9)."""
        ber, size = levels["ber"], int(np.prod(shape))  # a static kernel shape
        count = int(ber * size + 6.0 * np.sqrt(ber * size) + 16)
        if count >= size / 4:  # dense is as cheap
            return self.draw(shape, seed)
        uniforms = tf.random.stateless_uniform([2, count], seed=seed)
        positions = tf.cumsum(tf.cast(tf.floor(tf.math.log1p(-uniforms[0]) / np.log1p(-ber)), tf.int64) + 1) - 1
        return SparseFaults(tf.minimum(positions, size), uniforms[1])  # beyond the kernel: the spare slot ``size``

    def apply_kernel(self, kernel, draws, levels, precision):
        count = precision.states  # 2: a sign (1-bit, and a float kernel's sign bit); 2^k: a k-bit kernel
        if isinstance(draws, SparseFaults):  # scattered on the flat kernel and a spare slot, dropped after
            size, where = tf.size(kernel), draws.positions[:, None]
            if count == 2:  # times -1 where faulty: one product forward and backward
                signs = tf.tensor_scatter_nd_update(tf.ones([size + 1]), where, -tf.ones_like(draws.choices))
                return kernel * tf.reshape(signs[:size], tf.shape(kernel))
            flat = tf.pad(tf.reshape(kernel, [-1]), [[0, 1]])
            wrong = other_level(tf.gather(flat, draws.positions), draws.choices, count)
            return tf.reshape(tf.tensor_scatter_nd_update(flat, where, wrong)[:size], tf.shape(kernel))
        faulty = draws[..., 0] < levels["ber"]
        return tf.where(faulty, -kernel if count == 2 else other_level(kernel, draws[..., 1], count), kernel)


class SparseFaults(NamedTuple):
    """A training step's faulty weights: flat positions (int64; the kernel's size: none) and uniforms
    in [0, 1) choosing their wrong levels."""

    positions: object
    choices: object


def other_level(values, choices, count: int):
    """Another of the ``count`` DoReFa levels ``-1 + 2i / (count - 1)``, ``choices`` in [0, 1) picking one
    of the ``count - 1`` others uniformly."""
    top = float(count - 1)  # the highest level index
    index = tf.round((values + 1.0) * (top / 2.0))
    offset = tf.minimum(1.0 + tf.floor(choices * top), top)  # 1 .. count - 1
    return 2.0 * (tf.math.floormod(index + offset, float(count)) / top) - 1.0  # DoReFa's own arithmetic

