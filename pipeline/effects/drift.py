"""Conductance drift: the stored weights decay with the time since the chip was programmed.

``W(t) = W_prog * ((t + t0) / t0)^(-nu)`` on the kernel after the layer's quantizer (and after bit
errors: a cell read in the wrong state drifts from that state), with ``t = drift_time_s`` seconds
counted from the end of programming and ``t0 = drift_t0_s`` the first read, as IBM aihwkit's PCM model
(``src/aihwkit/inference/noise/pcm.py``: ``t = t_inference + t_0``; for ``t >> t0`` it is the usual
``(t / t0)^(-nu)``). One exponent per stored weight, ``nu = max(0, drift_nu_mean + drift_nu_std * z)``,
``z ~ N(0, 1)`` (dimensionless; clamped at 0: a device does not gain conductance), drawn when the chip
is programmed: the same chip read at two times has the same ``nu``.

What is stored: a weight is a pair of devices, ``w ~ G+ - G-``, one programmed to ``|w| * G_max``, the
other left at reset (no conductance to drift). A binarized weight keeps its sign and its magnitude
decays device by device, so the columns of a crossbar lose their balance; a k-bit level ``|w| < 1``
sits on a device at that fraction of ``G_max`` and decays by the same law. The defaults are aihwkit's
law at full conductance (``g_T = G_max``: ``mu_nu = clamp(0.0244, 0.049, 0.1) = 0.049``, ``sigma_nu =
clamp(-0.0059, 0.008, 0.045) = 0.008``), the state a +-1 weight is stored in; aihwkit gives lower
conductances larger exponents (up to 0.1 +- 0.045), which a k-bit user can set here. Not modelled: the
read noise that grows with time in aihwkit's model (``sig_noise``; see the output noise) and the
exponent's fold at 0 (aihwkit's ``abs``: the same as the clamp more than 6 standard deviations away).

**Global drift compensation** (``drift_compensation=global``), as aihwkit's
``GlobalDriftCompensation`` (``src/aihwkit/inference/compensation/drift.py``): the periphery reads the
array with a reference input (the one-hot vectors: every stored weight) when the chip is programmed
and again at time t, and multiplies the layer's output digitally (after the tiles' sum) by
``alpha = mean |W_prog| / mean |W(t)|``, one number per layer and chip; read exactly here (aihwkit reads
through the tile, with its read noise).

Sampling: per chip; a fresh draw every training step (drift-aware training at ``drift_time_s``).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from pipeline.effects.base import Curve, EffectParams, KernelEffect, Sampling, standard_normal, tf
from pipeline.validation import parse_enum, require_float

TEN_YEARS_S = 10 * 365 * 86_400.0


class DriftCompensation(str, enum.Enum):
    NONE = "none"  #: the outputs shrink with the weights
    GLOBAL = "global"  #: one digital scale per layer and chip: mean |W_prog| / mean |W(t)|


@dataclass(frozen=True)
class DriftParams(EffectParams):
    drift_time_s: float = 0.0
    """Time since programming at which the chip is read, seconds, in [0, 1e10]. 0 = off (as programmed)."""
    drift_nu_mean: float = 0.049
    """Mean drift exponent nu (dimensionless), in [0, 1]: aihwkit's PCM at full conductance."""
    drift_nu_std: float = 0.008
    """Device-to-device std of nu (dimensionless), in [0, 1]: aihwkit's PCM at full conductance."""
    drift_t0_s: float = 20.0
    """First read after programming t0, seconds, > 0 (aihwkit's t_0): W(t) = W_prog ((t + t0)/t0)^-nu."""
    drift_compensation: DriftCompensation = DriftCompensation.NONE
    """``none`` or ``global`` (one digital scale per layer, mean |W_prog| / mean |W(t)|, aihwkit's)."""

    def validate(self) -> None:
        self._set("drift_time_s", require_float("drift_time_s", self.drift_time_s, 0.0, 1e10))
        self._set("drift_nu_mean", require_float("drift_nu_mean", self.drift_nu_mean, 0.0, 1.0))
        self._set("drift_nu_std", require_float("drift_nu_std", self.drift_nu_std, 0.0, 1.0))
        self._set("drift_t0_s", require_float("drift_t0_s", self.drift_t0_s, 0.0, None, low_inclusive=False))
        self._set("drift_compensation", parse_enum(DriftCompensation, "drift_compensation", self.drift_compensation))

    active = property(lambda self: self.drift_time_s > 0)

    def label(self) -> str:
        return f"drift{self.drift_time_s:g}s{'g' if self.drift_compensation is DriftCompensation.GLOBAL else ''}"


class Drift(KernelEffect):
    # after bit errors (order 0), before the deviation (order 2): both multiply the stored value, so
    # the order does not matter to the product, and the deviation stays last (drawn at the outputs in training)
    name, params, order, sampling, stream = "drift", DriftParams, 1, Sampling.PER_CHIP, 3
    formula = ("W ← W_prog·((t + t0)/t0)^(−ν), ν = max(0, drift_nu_mean + drift_nu_std·z), z ~ N(0, 1) per weight; "
               "global compensation: output × mean|W_prog| / mean|W(t)|")
    curve = Curve("drift_time_s", (0.0, 3600.0, 86_400.0, 2_592_000.0, 31_536_000.0, TEN_YEARS_S),
                  "time since programming (s)", log=True)
    search = {}  #: not searched by default: a target with drift adds its time (sweeps/space.py)

    def run_levels(self, params: DriftParams) -> dict[str, float | bool]:
        return {"log_time": math.log1p(params.drift_time_s / params.drift_t0_s), "nu_mean": params.drift_nu_mean,
                "nu_std": params.drift_nu_std, "global": params.drift_compensation is DriftCompensation.GLOBAL}

    def draw(self, shape, seed):
        return standard_normal(shape, seed)

    def apply_kernel(self, kernel, draws, levels, precision):
        nu = tf.maximum(levels["nu_mean"] + levels["nu_std"] * draws, 0.0)
        return kernel * tf.exp(-levels["log_time"] * nu)

    def compensated(self, levels) -> bool:
        return levels["global"]
