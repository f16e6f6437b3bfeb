"""The ADC (`adc`): each tile's column is read by a converter of ``out_bits`` bits.

``y <- lo + round((clip(y, lo, hi) - lo) / D) * D``, ``D = (hi - lo) / (2^out_bits - 1)``: exactly
2^out_bits values per tile, straight-through gradient. ``[lo, hi]`` is the converter's full scale:
the saturation bounds when saturation (``clip``) is on -- the register's range, or a fraction of the
tile's clean range -- else the tile's own clean range (calibrated on validation data at evaluation,
the batch's in training, as relative saturation). Per tile: a layer split into tiles
(``tile_rows``) has one converter per column of every tile, each reading its own range.

Sampling: deterministic. Its curve -- accuracy over the resolution, 1 to 8 bits per tile, every other
effect off -- answers "how many ADC bits does this network need".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.effects.base import Curve, EffectParams, OutputEffect, SearchRange, Sampling, tf, when
from pipeline.effects.clip import clip
from pipeline.validation import ConfigError, require_int

MAX_OUT_BITS = 16


@dataclass(frozen=True)
class AdcParams(EffectParams):
    out_bits: int | None = None
    """ADC resolution per tile, bits (1..16): 2^out_bits levels over the converter's full scale (the
    saturation bounds, else the tile's clean range); none = no ADC."""

    def validate(self) -> None:
        if self.out_bits is not None:
            bits = require_int("out_bits", self.out_bits)
            if not 1 <= bits <= MAX_OUT_BITS:
                raise ConfigError("out_bits", f"must be an integer from 1 to {MAX_OUT_BITS} (or none); got {self.out_bits!r}")
            self._set("out_bits", bits)

    active = property(lambda self: self.out_bits is not None)

    def label(self) -> str:
        return f"adc{self.out_bits}"


class Adc(OutputEffect):
    # after saturation (order 1): the converter reads the saturated value
    name, params, order, sampling, stream = "adc", AdcParams, 2, Sampling.DETERMINISTIC, -1
    formula = ("y ← lo + round((clip(y, lo, hi) − lo)/Δ)·Δ per tile, Δ = (hi − lo)/(2^out_bits − 1); [lo, hi] = the "
               "saturation bounds, else the tile's calibrated clean range")
    curve = Curve("out_bits", (8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0), "ADC resolution per tile (bits)",
                  stronger_when_smaller=True, integer=True)
    search = {"out_bits": SearchRange(2, 8)}

    def run_levels(self, params: AdcParams) -> dict[str, float | bool]:
        return {"levels": float(2**params.out_bits) if params.out_bits else 0.0}

    def uses_clean_range(self, params: AdcParams) -> bool:
        return params.active  # without saturation the converter reads the clean range

    def manifest_entry(self, params: AdcParams, full_scale: tuple[float, float]) -> dict[str, Any]:
        levels = 2**params.out_bits
        return {"levels": levels, "step": (float(full_scale[1]) - float(full_scale[0])) / (levels - 1)}

    def apply_output(self, outputs, levels, context):
        lo, hi = context.full_scale()
        converting = True
        if not isinstance(levels["levels"], (int, float)):  # at evaluation: only on a finite (calibrated) range
            converting = tf.reduce_all(tf.logical_and(tf.math.is_finite(lo), tf.math.is_finite(hi)))
        read = (lambda values: values) if context.saturated else (lambda values: clip(values, lo, hi))
        return when(converting, lambda values: convert(read(values), lo, hi, levels["levels"]), outputs)


def convert(clipped, lo, hi, levels):
    """Exactly one of the ``levels`` values ``lo + k * step`` forward (``lo`` on an empty range, a tile
    whose clean partial is constant); identity backward (straight-through)."""
    step = (hi - lo) / (levels - 1.0)
    safe = tf.where(step > 0, step, tf.ones_like(step))
    return tf.grad_pass_through(lambda values: lo + tf.round((values - lo) / safe) * safe)(clipped)
