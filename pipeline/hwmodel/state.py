"""A hardware-aware layer's run-time state: levels, chips, calibration and the chips' draws, in
variables Keras does not track (they are not weights: sizes and checkpoints are the plain model's)."""

from __future__ import annotations

import zlib

import numpy as np

import pipeline  # noqa: F401
import tensorflow as tf

from pipeline.effects import EFFECTS, Effect
from pipeline.perturbation import PerturbationConfig

SEED_MIX = 1_000_003  #: mixes the chip / training seed with the layer salt into one stateless seed


class HardwareState:
    """One layer's run-time state, in variables Keras does not track."""

    def __init__(self, name: str, kernel_shape: tuple[int, ...], chips_per_pass: int, partials: int):
        variable = lambda value, dtype=tf.float32: tf.Variable(value, dtype=dtype, trainable=False)  # noqa: E731
        self.salt, self.kernel_shape = zlib.crc32(name.encode()), kernel_shape  # the salt: independent draws per layer
        self.levels = {e.name: {key: variable(value, tf.bool if isinstance(value, bool) else tf.float32)
                                for key, value in e.run_levels(e.params()).items()} for e in EFFECTS}
        self.calibrated_lo, self.calibrated_hi = variable([-np.inf] * partials), variable([np.inf] * partials)  # per partial
        self.evaluating, self.programmed = variable(False, tf.bool), variable(False, tf.bool)  # programmed: read chip_kernels
        self.chip_ids, self.train_seed = variable(tf.zeros([chips_per_pass], tf.int64), tf.int64), variable(0, tf.int64)
        self.calls = variable(0, tf.int64)  # forward passes so far: fresh draws per pass, reproducibly
        self.chip_kernels = variable(tf.zeros([chips_per_pass, *kernel_shape]))  # P x kernel, read by every batch
        self.output_scales, self.compensating = variable(tf.ones([chips_per_pass])), variable(False, tf.bool)  # per chip: drift compensation
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

    def chips(self) -> tuple[int, ...]:
        return tuple(int(chip) for chip in self.chip_ids.numpy())

    def chip_seeds(self, effect: Effect, chips: tuple[int, ...]) -> tf.Tensor:
        """``[P, 2]``: the stateless seed of each chip's draws of ``effect``."""
        return tf.constant([[self.seed_base(chip, effect), 0] for chip in chips], tf.int64)

    def stale(self, effect: Effect, chips: tuple[int, ...]) -> bool:
        """Whether ``effect``'s stored draws are not those of ``chips`` (to be drawn by :meth:`redraw` in
        the graph that programs them). The first time they are drawn here, eagerly, making their variable."""
        if effect.name not in self.chip_draws:  # (the draws may have more axes than the kernel)
            drawn = compiled_draws(effect)(tf.constant(self.kernel_shape, tf.int32), self.chip_seeds(effect, chips))
            self.chip_draws[effect.name], self.draws_of[effect.name] = tf.Variable(drawn, trainable=False), chips
        return self.draws_of.get(effect.name) != chips

    def redraw(self, effect: Effect, seeds: tf.Tensor) -> tf.Tensor:
        """Inside a compiled function: the draws of ``effect`` for the chips of ``seeds`` (exactly those
        :meth:`stale` makes the first time), stored for a later level; the caller records their chips
        in ``draws_of`` once the function has returned (and forgets the old ones before calling it)."""
        drawn = chip_draws(effect, tf.constant(self.kernel_shape, tf.int32), seeds)
        self.chip_draws[effect.name].assign(drawn)
        return drawn


COMPILED_DRAWS: dict[str, tf.types.experimental.GenericFunction] = {}


def chip_draws(effect: Effect, shape: tf.Tensor, seeds: tf.Tensor) -> tf.Tensor:
    """``effect.draw`` for every chip of a pass (one seed each, stacked on a first axis)."""
    return tf.map_fn(lambda seed: effect.draw(shape, seed), seeds, fn_output_signature=tf.float32)


def compiled_draws(effect: Effect):
    """:func:`chip_draws` of ``effect``, compiled once for all kernel shapes (a layer's first draws)."""
    if effect.name not in COMPILED_DRAWS:
        COMPILED_DRAWS[effect.name] = tf.function(
            lambda shape, seeds: chip_draws(effect, shape, seeds),
            autograph=False, input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, 2], tf.int64)])
    return COMPILED_DRAWS[effect.name]
