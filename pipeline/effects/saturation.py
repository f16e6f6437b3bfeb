"""Saturation and the ADC: the accumulator (or the converter reading it) has a finite range and resolution.

1. **saturation** -- ``y <- clip(y, lo, hi)``; gradient 1 inside [lo, hi], 0 outside.
   ``absolute``: ``[lo, hi] = [clip_min, clip_max]`` in accumulator units (an unsigned 8-bit
   multiplier-accumulator saturating outside 0..255 is ``[0, 255]``; a signed 8-bit one ``[-128, 127]``).
   ``relative``: ``[lo, hi] = clip_fraction * [min, max]`` of the layer's clean output -- calibrated
   on validation data with the plain model at evaluation (:func:`pipeline.chips.calibrate`); in
   training the current batch's range (gradient-stopped) of the output before the output effects
   (for a dense layer that draws its process variation at the outputs, the mean over that draw).
2. **ADC** (optional, ``out_bits``) -- ``y <- lo + round((y - lo) / D) * D``,
   ``D = (hi - lo) / (2^out_bits - 1)``: at most ``2^out_bits`` distinct values; straight-through
   gradient.

Sampling: deterministic. Zero gradient outside [lo, hi] is what makes training under strong
saturation hard: the units that saturate stop learning.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from pipeline.effects.base import Curve, Effect, EffectParams, SearchRange, Stage, Sampling, select, tf
from pipeline.validation import ConfigError, parse_enum, require_float, require_int

MAX_OUT_BITS = 16


class ClipMode(str, enum.Enum):
    NONE = "none"  #: no saturation
    ABSOLUTE = "absolute"  #: clip to [clip_min, clip_max] in the layer's output (accumulator) units
    RELATIVE = "relative"  #: clip to clip_fraction x the layer's clean output range [lo, hi]


@dataclass(frozen=True)
class SaturationParams(EffectParams):
    clip_mode: ClipMode = ClipMode.NONE
    """Saturation of the layer output: ``none``, ``absolute`` or ``relative`` (inferred from the
    bounds or the fraction when not given)."""
    clip_min: float | None = None
    """Absolute mode: lower saturation bound, accumulator units (e.g. 0 for an unsigned 8-bit multiplier)."""
    clip_max: float | None = None
    """Absolute mode: upper saturation bound, accumulator units (e.g. 255)."""
    clip_fraction: float = 1.0
    """Relative mode: the bounds are clip_fraction x the layer's clean output range, in (0, 1]."""
    out_bits: int | None = None
    """ADC after saturation: the clipped range quantized to 2^out_bits levels (1..16); none = no ADC."""

    def validate(self) -> None:
        self._set("clip_mode", parse_enum(ClipMode, "clip_mode", self.clip_mode))
        if self.clip_mode is ClipMode.ABSOLUTE:
            if self.clip_min is None or self.clip_max is None:
                raise ConfigError("clip_min", "clip_mode=absolute needs both clip_min and clip_max")
            self._set("clip_min", require_float("clip_min", self.clip_min))
            self._set("clip_max", require_float("clip_max", self.clip_max))
            if self.clip_min >= self.clip_max:
                raise ConfigError("clip_max", f"must be greater than clip_min; got [{self.clip_min}, {self.clip_max}]")
        elif self.clip_min is not None or self.clip_max is not None:
            raise ConfigError("clip_min", f"clip_min / clip_max need clip_mode=absolute; got clip_mode={self.clip_mode.value}")
        self._set("clip_fraction", require_float("clip_fraction", self.clip_fraction, 0.0, 1.0, low_inclusive=False))
        if self.clip_fraction != 1.0 and self.clip_mode is not ClipMode.RELATIVE:
            raise ConfigError("clip_fraction", f"needs clip_mode=relative; got clip_mode={self.clip_mode.value}")
        if self.out_bits is not None:
            bits = require_int("out_bits", self.out_bits)
            if not 1 <= bits <= MAX_OUT_BITS:
                raise ConfigError("out_bits", f"must be an integer from 1 to {MAX_OUT_BITS} (or none); got {self.out_bits!r}")
            if self.clip_mode is ClipMode.NONE:
                raise ConfigError("out_bits", "an ADC needs a finite range: set clip_mode=absolute or relative")
            self._set("out_bits", bits)

    @property
    def active(self) -> bool:
        return self.clip_mode is not ClipMode.NONE

    def label(self) -> str:
        bounds = f"c[{self.clip_min:g},{self.clip_max:g}]" if self.clip_mode is ClipMode.ABSOLUTE else f"c{self.clip_fraction:.2f}"
        return bounds + (f"-adc{self.out_bits}" if self.out_bits else "")

    @classmethod
    def from_given(cls, given: dict[str, Any]) -> "SaturationParams":
        """``clip_mode`` inferred when not given: absolute with clip_min / clip_max, relative with clip_fraction."""
        given = dict(given)
        if str(given.get("clip_mode") or "auto").strip().lower() == "auto":
            if "clip_min" in given or "clip_max" in given:
                given["clip_mode"] = ClipMode.ABSOLUTE
            elif "clip_fraction" in given:
                given["clip_mode"] = ClipMode.RELATIVE
            else:
                given["clip_mode"] = ClipMode.NONE
        return cls(**given)


class Saturation(Effect):
    name = "clip"
    params = SaturationParams
    stage = Stage.OUTPUT
    order = 1  # after the noise: the converter saturates on what it reads
    sampling = Sampling.DETERMINISTIC
    stream = -1  # draws nothing
    formula = ("y ← clip(y, lo, hi), [lo, hi] = [clip_min, clip_max] (accumulator units) or clip_fraction·(calibrated clean range); "
               "ADC: y ← lo + round((y − lo)/Δ)·Δ, Δ = (hi − lo)/(2^out_bits − 1)")
    curve = Curve("clip_fraction", (1.0, 0.75, 0.5, 0.35, 0.25, 0.15, 0.1, 0.05), "saturation: fraction of clean output range",
                  stronger_when_smaller=True, fixed={"clip_mode": ClipMode.RELATIVE.value})
    search = {"clip_fraction": SearchRange(0.2, 1.0)}

    def run_levels(self, params: SaturationParams) -> dict[str, float]:
        absolute = params.clip_mode is ClipMode.ABSOLUTE
        return {"on": float(params.active), "relative": float(params.clip_mode is ClipMode.RELATIVE),
                "lo": params.clip_min if absolute else float("-inf"), "hi": params.clip_max if absolute else float("inf"),
                "fraction": params.clip_fraction, "adc_levels": float(2**params.out_bits) if params.out_bits else 0.0}

    def is_on(self, levels):
        return levels["on"] > 0.5

    def apply_output(self, outputs, levels, context):
        lo, hi = self.bounds(levels, context)
        clipped = clip(outputs, lo, hi)
        converting = levels["adc_levels"] > 0
        if not isinstance(converting, bool):  # at evaluation: only on a finite (calibrated) range
            converting = tf.logical_and(converting, tf.logical_and(tf.math.is_finite(lo), tf.math.is_finite(hi)))
        if isinstance(converting, bool):
            return adc(clipped, lo, hi, levels["adc_levels"]) if converting else clipped
        return tf.cond(converting, lambda: adc(clipped, lo, hi, levels["adc_levels"]), lambda: clipped)

    def uses_clean_range(self, params: SaturationParams) -> bool:
        return params.clip_mode is ClipMode.RELATIVE

    @staticmethod
    def bounds(levels, context):
        relative = levels["relative"] > 0.5
        if relative is False:
            return levels["lo"], levels["hi"]
        clean_lo, clean_hi = context.clean_range()
        fraction = levels["fraction"]
        return select(relative, fraction * clean_lo, levels["lo"]), select(relative, fraction * clean_hi, levels["hi"])


def clip(outputs, lo, hi):
    """``clip(outputs, lo, hi)`` with gradient 1 inside [lo, hi] and 0 outside; none for the bounds
    (they are constants or gradient-stopped): two passes backward instead of ``tf.clip_by_value``'s six."""

    @tf.custom_gradient
    def clipped(values):
        inside = tf.logical_and(values >= lo, values <= hi)
        return tf.clip_by_value(values, lo, hi), lambda upstream: tf.where(inside, upstream, tf.zeros_like(upstream))

    return clipped(outputs)


def adc(clipped, lo, hi, levels):
    """Exactly one of the ``levels`` values ``lo + k * step`` forward; identity backward (straight-through)."""
    step = (hi - lo) / (levels - 1.0)
    return tf.grad_pass_through(lambda values: lo + tf.round((values - lo) / step) * step)(clipped)
