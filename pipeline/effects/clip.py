"""Saturation (`clip`) and the ADC: the accumulator (or the converter reading it) has a finite range and resolution.

**Saturation** ``y <- clip(y, lo, hi)``, gradient 1 inside [lo, hi] and 0 outside (the units that
saturate stop learning). ``absolute``: ``[lo, hi] = [clip_min, clip_max]``, accumulator units (an
unsigned 8-bit multiplier-accumulator is [0, 255], a signed one [-128, 127]). ``relative``:
``clip_fraction * [min, max]`` of the layer's clean output, calibrated on validation data with the
plain model at evaluation (:func:`pipeline.hwmodel.chips.calibrate`), the current batch's (gradient-stopped,
before the output effects) in training. **ADC** (``out_bits``): ``y <- lo + round((y - lo) / D) * D``,
``D = (hi - lo) / (2^out_bits - 1)``, straight-through gradient. Sampling: deterministic.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from pipeline.effects.base import Curve, EffectParams, OutputEffect, SearchRange, Sampling, select, tf, when
from pipeline.validation import ConfigError, parse_enum, require_float, require_int


class ClipMode(str, enum.Enum):
    NONE = "none"  #: no saturation
    ABSOLUTE = "absolute"  #: clip to [clip_min, clip_max] in the layer's output (accumulator) units
    RELATIVE = "relative"  #: clip to clip_fraction x the layer's clean output range [lo, hi]


@dataclass(frozen=True)
class ClipParams(EffectParams):
    clip_mode: ClipMode = ClipMode.NONE
    """``none``, ``absolute`` or ``relative`` (inferred from the bounds or the fraction when not given)."""
    clip_min: float | None = None
    """Absolute mode: lower saturation bound, accumulator units (e.g. 0 for an unsigned 8-bit multiplier)."""
    clip_max: float | None = None
    """Absolute mode: upper saturation bound, accumulator units (e.g. 255)."""
    clip_fraction: float = 1.0
    """Relative mode: the bounds are clip_fraction x the layer's clean output range, in (0, 1]."""
    out_bits: int | None = None
    """ADC after saturation: the clipped range quantized to 2^out_bits levels (1..16); none = no ADC."""

    def validate(self) -> None:
        mode = self._set("clip_mode", parse_enum(ClipMode, "clip_mode", self.clip_mode))
        bounds = [name for name in ("clip_min", "clip_max") if getattr(self, name) is not None]
        if mode is ClipMode.ABSOLUTE and len(bounds) < 2:
            raise ConfigError("clip_min", "clip_mode=absolute needs both clip_min and clip_max")
        if mode is not ClipMode.ABSOLUTE and bounds:
            raise ConfigError("clip_min", f"clip_min / clip_max need clip_mode=absolute; got clip_mode={mode.value}")
        for name in bounds:
            self._set(name, require_float(name, getattr(self, name)))
        if bounds and self.clip_min >= self.clip_max:
            raise ConfigError("clip_max", f"must be greater than clip_min; got [{self.clip_min}, {self.clip_max}]")
        fraction = self._set("clip_fraction", require_float("clip_fraction", self.clip_fraction, 0.0, 1.0, low_inclusive=False))
        if fraction != 1.0 and mode is not ClipMode.RELATIVE:
            raise ConfigError("clip_fraction", f"needs clip_mode=relative; got clip_mode={mode.value}")
        if self.out_bits is not None:
            bits = require_int("out_bits", self.out_bits)
            if not 1 <= bits <= 16:
                raise ConfigError("out_bits", f"must be an integer from 1 to 16 (or none); got {self.out_bits!r}")
            if mode is ClipMode.NONE:
                raise ConfigError("out_bits", "an ADC needs a finite range: set clip_mode=absolute or relative")
            self._set("out_bits", bits)

    active = property(lambda self: self.clip_mode is not ClipMode.NONE)

    def label(self) -> str:
        bounds = f"c[{self.clip_min:g},{self.clip_max:g}]" if self.clip_mode is ClipMode.ABSOLUTE else f"c{self.clip_fraction:.2f}"
        return bounds + (f"-adc{self.out_bits}" if self.out_bits else "")

    @classmethod
    def from_given(cls, given: dict[str, Any]) -> ClipParams:
        """``clip_mode`` not given (or ``auto``): absolute with clip_min / clip_max, relative with clip_fraction."""
        if str(given.get("clip_mode") or "auto").strip().lower() == "auto":
            inferred = "absolute" if {"clip_min", "clip_max"} & set(given) else "relative" if "clip_fraction" in given else "none"
            given = {**given, "clip_mode": inferred}
        return cls(**given)


class Clip(OutputEffect):
    # after the noise (order 0): the converter saturates on what it reads
    name, params, order, sampling, stream = "clip", ClipParams, 1, Sampling.DETERMINISTIC, -1
    formula = ("y ← clip(y, lo, hi), [lo, hi] = [clip_min, clip_max] (accumulator units) or clip_fraction·(calibrated clean range); "
               "ADC: y ← lo + round((y − lo)/Δ)·Δ, Δ = (hi − lo)/(2^out_bits − 1)")
    curve = Curve("clip_fraction", (1.0, 0.75, 0.5, 0.35, 0.25, 0.15, 0.1, 0.05), "saturation: fraction of clean output range",
                  stronger_when_smaller=True, fixed={"clip_mode": ClipMode.RELATIVE.value})
    search = {"clip_fraction": SearchRange(0.2, 1.0)}

    def run_levels(self, params: ClipParams) -> dict[str, float | bool]:
        absolute = params.clip_mode is ClipMode.ABSOLUTE
        return {"on": float(params.active), "relative": params.clip_mode is ClipMode.RELATIVE,
                "lo": params.clip_min if absolute else float("-inf"), "hi": params.clip_max if absolute else float("inf"),
                "fraction": params.clip_fraction, "adc_levels": float(2**params.out_bits) if params.out_bits else 0.0}

    def uses_clean_range(self, params: ClipParams) -> bool:
        return params.clip_mode is ClipMode.RELATIVE

    def manifest_entry(self, params: ClipParams, clean_range: tuple[float, float]) -> dict[str, Any]:
        """The bounds [lo, hi] in accumulator units, and the ADC's levels and step."""
        if params.clip_mode is ClipMode.ABSOLUTE:
            lo, hi = params.clip_min, params.clip_max
        else:
            lo, hi = (params.clip_fraction * float(bound) for bound in clean_range)
        adc = {"levels": 2**params.out_bits, "step": (hi - lo) / (2**params.out_bits - 1)} if params.out_bits else None
        return {"bounds": [lo, hi], "adc": adc}

    def apply_output(self, outputs, levels, context):
        lo, hi, relative = levels["lo"], levels["hi"], levels["relative"]
        if relative is not False:
            clean_lo, clean_hi = context.clean_range()
            lo, hi = select(relative, levels["fraction"] * clean_lo, lo), select(relative, levels["fraction"] * clean_hi, hi)
        converting = levels["adc_levels"] > 0
        if not isinstance(converting, bool):  # at evaluation: only on a finite (calibrated) range
            converting = tf.logical_and(converting, tf.logical_and(tf.math.is_finite(lo), tf.math.is_finite(hi)))
        return when(converting, lambda clipped: adc(clipped, lo, hi, levels["adc_levels"]), clip(outputs, lo, hi))


def clip(outputs, lo, hi):
    """``clip(outputs, lo, hi)``, gradient 1 inside and 0 outside, none for the bounds (constants or
    gradient-stopped): two passes backward instead of ``tf.clip_by_value``'s six."""

    @tf.custom_gradient
    def clipped(values):
        inside = tf.logical_and(values >= lo, values <= hi)
        return tf.clip_by_value(values, lo, hi), lambda upstream: tf.where(inside, upstream, tf.zeros_like(upstream))

    return clipped(outputs)


def adc(clipped, lo, hi, levels):
    """Exactly one of the ``levels`` values ``lo + k * step`` forward; identity backward (straight-through)."""
    step = (hi - lo) / (levels - 1.0)
    return tf.grad_pass_through(lambda values: lo + tf.round((values - lo) / step) * step)(clipped)
