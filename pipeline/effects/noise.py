"""Output noise: read / thermal noise on the accumulator output, fresh on every read.

``y <- y + sigma * s * n``, ``n ~ N(0, 1)`` per element. ``relative`` mode (default): ``s`` is the
RMS of the example's output over the layer's units, ``sqrt(mean(y^2))``, gradient-stopped, so
``sigma`` is a noise-to-signal ratio; ``absolute``: ``s = 1``, ``sigma`` in accumulator units (a
1-bit dense layer of fan-in N accumulates integers in [-N, N]).

Sampling: per pass, seeded by (chip, layer, pass) at evaluation; a fresh draw every training step,
drawn as one Gaussian with a process variation drawn at the outputs (:meth:`Noise.gaussian_variance`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pipeline.effects.base import Curve, EffectParams, OutputEffect, SearchRange, Sampling, select, tf
from pipeline.validation import parse_enum, require_float


class NoiseMode(str, enum.Enum):
    RELATIVE = "relative"  #: std = noise_sigma x RMS of the example's clean partial sum (per tile; scale-free)
    ABSOLUTE = "absolute"  #: std = noise_sigma, in the layer's output (accumulator) units


@dataclass(frozen=True)
class NoiseParams(EffectParams):
    noise_sigma: float = 0.0
    """Output noise std, >= 0: relative mode, a fraction of the RMS of the example's clean partial sum
    (per tile; the layer's output with one tile; dimensionless); absolute mode, accumulator units. 0 = off."""
    noise_mode: NoiseMode = NoiseMode.RELATIVE
    """``relative`` (scale-free, the default) or ``absolute`` (accumulator units)."""

    def validate(self) -> None:
        self._set("noise_sigma", require_float("noise_sigma", self.noise_sigma, 0.0, None))
        self._set("noise_mode", parse_enum(NoiseMode, "noise_mode", self.noise_mode))

    active = property(lambda self: self.noise_sigma > 0)

    def label(self) -> str:
        return f"s{self.noise_sigma:.2f}" + ("abs" if self.noise_mode is NoiseMode.ABSOLUTE else "")


class Noise(OutputEffect):
    name, params, order, sampling, stream = "noise", NoiseParams, 0, Sampling.PER_PASS, 1
    formula = ("y ← y + σ·s·n, n ~ N(0, 1) per tile; relative: s = RMS of the example's clean partial sum over the units (σ a ratio), "
               "absolute: s = 1 (σ in accumulator units)")
    curve = Curve("noise_sigma", (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0), "output noise sigma (x RMS of clean output)")
    search = {"noise_sigma": SearchRange(0.0, 0.8), "noise_mode": NoiseMode.RELATIVE.value}

    def run_levels(self, params: NoiseParams) -> dict[str, float | bool]:
        return {"sigma": params.noise_sigma, "relative": params.noise_mode is NoiseMode.RELATIVE}

    def apply_output(self, outputs, levels, context):
        noise, relative = context.normal(self), levels["relative"]
        if relative is False:  # decided in training: no RMS to compute
            return outputs + levels["sigma"] * noise
        axes = list(range(1, outputs.shape.rank))
        rms = tf.sqrt(tf.reduce_mean(tf.square(tf.stop_gradient(outputs)), axis=axes, keepdims=True))
        return outputs + levels["sigma"] * select(relative, rms, tf.ones_like(rms)) * noise

    def gaussian_variance(self, outputs, variance, levels):
        """``(sigma * s)^2``; with a pending ``variance`` (process variation at the outputs), ``s^2`` is the
        output's mean square in expectation over it, ``mean(y^2 + variance)``."""
        if not levels["relative"]:
            return levels["sigma"] ** 2
        axes = list(range(1, outputs.shape.rank))
        return levels["sigma"] ** 2 * tf.reduce_mean(tf.stop_gradient(tf.square(outputs) + variance), axis=axes, keepdims=True)
