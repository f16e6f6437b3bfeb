"""Weight bit errors: a stored weight reads as a wrong value (faulty cells of a resistive memory).

Each stored weight is faulty with probability ``weight_ber`` (dimensionless, in [0, 0.5]),
independently of every other weight. A faulty weight reads as another of its possible values:

* binarized (1-bit) kernel: its sign flips, ``W <- -W_q``;
* k-bit kernel (DoReFa, levels ``-1 + 2i / (2^k - 1)``, ``i = 0 .. 2^k - 1``): one of the
  ``2^k - 1`` *other* levels, chosen uniformly -- it never reads outside the levels;
* float kernel (the baseline): its sign flips (a sign-bit error; exponent and mantissa errors of a
  float memory are not modelled).

Sampling: per chip -- faulty cells are a property of the chip, drawn once when it is programmed,
seeded by chip and layer: two uniforms per weight, ``u`` (the weight is faulty when
``u < weight_ber``) and ``v`` (which wrong level it reads). So at a higher rate a chip keeps its
faulty cells, reading the same wrong values, and gains more (nested, like a real chip ageing). In
training a fresh draw every step (error-aware training), drawn sparsely. The kernel variable
itself is never modified.

Anchor: Hirtzlin et al. (2019-2020), binarized networks on hafnium-oxide RRAM: a plain binarized
network loses nothing on MNIST at a bit-error rate of 1e-4, and error-aware training extends the
tolerated rate to about 4e-2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.effects.base import Curve, Effect, EffectParams, SearchRange, Stage, Sampling, tf
from pipeline.validation import require_float


@dataclass(frozen=True)
class BitErrorParams(EffectParams):
    weight_ber: float = 0.0
    """Weight bit-error rate: probability that a stored weight reads wrong, in [0, 0.5]
    (dimensionless). One draw per chip; a fresh draw every training step. 0 = off."""

    def validate(self) -> None:
        self._set("weight_ber", require_float("weight_ber", self.weight_ber, 0.0, 0.5))

    @property
    def active(self) -> bool:
        return self.weight_ber > 0

    def label(self) -> str:
        return f"ber{self.weight_ber:g}"


class BitErrors(Effect):
    name = "weight_ber"
    params = BitErrorParams
    stage = Stage.KERNEL
    order = 0  # first: the cell reads the wrong state, then its device's deviation applies
    sampling = Sampling.PER_CHIP
    stream = 2
    keeps_signs = True
    formula = ("with probability weight_ber per weight: W ← −W_q (1-bit, float); "
               "a k-bit W_q reads as one of its other 2^k − 1 levels, uniformly")
    curve = Curve("weight_ber", (0.0, 1e-4, 1e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1), "weight bit-error rate (per stored weight)",
                  log=True)
    search = {"weight_ber": SearchRange(1e-4, 0.1, log=True)}  # a log range needs low > 0; 1e-4 costs a BNN nothing

    def run_levels(self, params: BitErrorParams) -> dict[str, float]:
        return {"ber": params.weight_ber}

    def is_on(self, levels):
        return levels["ber"] > 0

    def draw(self, shape, seed):
        """``(u, v)`` per weight, stacked on a last axis of 2: faulty when ``u < weight_ber``; ``v`` picks the level."""
        return tf.random.stateless_uniform(tf.concat([shape, [2]], axis=0), seed=seed)

    def training_draw(self, shape, seed, levels):
        """Sparse, with the effect of :meth:`draw` on the kernel: only the faulty weights are drawn.

        The faulty positions are a Bernoulli(weight_ber) process over the weights, drawn as its
        geometric gaps ``floor(log(1 - u) / log(1 - weight_ber)) + 1``, each with a uniform ``v``
        choosing the wrong level: about ``weight_ber * size`` numbers instead of ``size``, and the
        kernel is changed where it is faulty only. Exact, except that flips beyond the first
        ``mean + 6 std + 16`` of a step are dropped (probability below 1e-9).
        """
        ber = levels["ber"]
        size = int(np.prod(shape))  # a static kernel shape
        expected = ber * size
        count = int(expected + 6.0 * np.sqrt(expected) + 16)
        if count >= size / 4:  # dense is as cheap
            return self.draw(shape, seed)
        uniforms = tf.random.stateless_uniform([2, count], seed=seed)
        gaps = tf.cast(tf.floor(tf.math.log1p(-uniforms[0]) / np.log1p(-ber)), tf.int64) + 1
        positions = tf.cumsum(gaps) - 1
        inside = positions < size
        return SparseFaults(tf.boolean_mask(positions, inside), tf.boolean_mask(uniforms[1], inside))

    def apply_kernel(self, kernel, draws, levels, kernel_quantizer):
        count = values_per_weight(kernel_quantizer)
        if isinstance(draws, SparseFaults):
            return draws.apply(kernel, count)
        faulty = draws[..., 0] < levels["ber"]
        if count == 2:
            return tf.where(faulty, -kernel, kernel)
        return tf.where(faulty, other_level(kernel, draws[..., 1], count), kernel)


@dataclass(frozen=True)
class SparseFaults:
    """The faulty weights of one training step: flat positions, and a uniform choosing each one's wrong level."""

    positions: object  #: int64 (faulty,) flat indices into the kernel
    choices: object  #: float (faulty,) uniform on [0, 1)

    def apply(self, kernel, count: int):
        flat, where = tf.reshape(kernel, [-1]), self.positions[:, None]
        if count == 2:  # multiply by -1 where faulty: one product forward and backward
            signs = tf.tensor_scatter_nd_update(tf.ones_like(flat), where, -tf.ones_like(self.choices))
            return kernel * tf.reshape(signs, tf.shape(kernel))
        wrong = other_level(tf.gather(flat, self.positions), self.choices, count)
        return tf.reshape(tf.tensor_scatter_nd_update(flat, where, wrong), tf.shape(kernel))


def other_level(values, choices, count: int):
    """For k-bit values (DoReFa levels ``-1 + 2i / (count - 1)``): another level, ``choices`` in [0, 1)
    picking one of the ``count - 1`` others uniformly -- never a value outside the levels."""
    top = float(count - 1)  # the highest level index
    index = tf.round((values + 1.0) * (top / 2.0))
    offset = tf.minimum(1.0 + tf.floor(choices * top), top)  # 1 .. count - 1
    return 2.0 * (tf.math.floormod(index + offset, float(count)) / top) - 1.0  # DoReFa's own arithmetic


def values_per_weight(kernel_quantizer) -> int:
    """How many values a stored weight can take for the purpose of a bit error: 2 for a sign
    (1-bit, and the float kernel's sign bit), 2^k for a DoReFa k-bit kernel."""
    import larq as lq

    precision = getattr(kernel_quantizer, "precision", None)
    if kernel_quantizer is None or precision == 1:
        return 2
    if isinstance(kernel_quantizer, lq.quantizers.DoReFa):
        return 2**precision
    raise ValueError(f"weight bit errors know 1-bit, DoReFa k-bit and float kernels; got {type(kernel_quantizer).__name__}")
