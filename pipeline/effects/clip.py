"""Saturation (`clip`): the accumulator of each tile (or the converter reading it) has a finite range.

``y <- clip(y, lo, hi)`` on every partial sum of a layer (one per tile, :mod:`pipeline.hwmodel.tiles`),
gradient 1 inside [lo, hi] and 0 outside (the units that saturate stop learning). The bounds:

* ``absolute``: ``[clip_min, clip_max]``, accumulator units ``y`` (the layer's sum before BatchNorm);
* ``relative``: ``clip_fraction * [min, max]`` of the tile's clean partial sum, calibrated on
  validation data with the plain model at evaluation (:func:`pipeline.hwmodel.chips.calibrate`), the
  current batch's (gradient-stopped, before the output effects) in training;
* ``accumulator``: a k-bit (``acc_bits``) register in the layer's **integer hardware units**
  ``u * y`` (``u``: the product of the input and weight levels' denominators, 1 for +-1 x +-1, 255
  for 8-bit pixels x +-1 weights, docs/hardware-model.md; a float layer has none: u = 1, its
  accumulator units, as absolute bounds), format ``acc_format``:
  ``signed`` (two's complement) ``u y in [-2^(k-1), 2^(k-1) - 1]``; ``unsigned`` ``u y in [0, 2^k - 1]``;
  ``popcount`` (+-1 inputs and weights only; a layer reading pixels is read bit-serially, one
  popcount per bit plane): the count of matching XNORs of a tile of N_t rows, ``c = (y + N_t)/2``,
  in an unsigned k-bit counter, ``c in [0, min(N_t, 2^k - 1)]``, i.e. ``y in [-N_t, min(N_t, 2(2^k - 1) - N_t)]``.

Sampling: deterministic (every chip saturates the same way).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from pipeline.effects.base import Accumulator, Curve, EffectParams, OutputEffect, SearchRange, Sampling, select, tf
from pipeline.validation import ConfigError, parse_enum, require_float, require_int

MAX_ACC_BITS = 32


class ClipMode(str, enum.Enum):
    NONE = "none"  #: no saturation
    ABSOLUTE = "absolute"  #: clip to [clip_min, clip_max] in the layer's output (accumulator) units
    RELATIVE = "relative"  #: clip to clip_fraction x each tile's clean output range [lo, hi]
    ACCUMULATOR = "accumulator"  #: an acc_bits register of format acc_format, in integer hardware units


class AccFormat(str, enum.Enum):
    SIGNED = "signed"  #: two's complement: [-2^(k-1), 2^(k-1) - 1]
    UNSIGNED = "unsigned"  #: [0, 2^k - 1]
    POPCOUNT = "popcount"  #: an unsigned k-bit counter of the matching XNORs of a tile, c = (y + N_t) / 2


@dataclass(frozen=True)
class ClipParams(EffectParams):
    clip_mode: ClipMode = ClipMode.NONE
    """``none``, ``absolute``, ``relative`` or ``accumulator`` (inferred from the other parameters when not given)."""
    clip_min: float | None = None
    """Absolute mode: lower saturation bound, accumulator units (e.g. 0 for an unsigned 8-bit multiplier)."""
    clip_max: float | None = None
    """Absolute mode: upper saturation bound, accumulator units (e.g. 255)."""
    clip_fraction: float = 1.0
    """Relative mode: the bounds are clip_fraction x each tile's clean output range, in (0, 1]."""
    acc_bits: int | None = None
    """Accumulator mode: the register's width k in bits, 1..32 (integer hardware units; see acc_format)."""
    acc_format: AccFormat = AccFormat.SIGNED
    """Accumulator mode: ``signed`` [-2^(k-1), 2^(k-1)-1], ``unsigned`` [0, 2^k-1] or ``popcount`` (the
    count of matching XNORs of each tile, +-1 layers only)."""

    def validate(self) -> None:
        mode = self._set("clip_mode", parse_enum(ClipMode, "clip_mode", self.clip_mode))
        self._set("acc_format", parse_enum(AccFormat, "acc_format", self.acc_format))
        self._validate_bounds(mode)
        fraction = self._set("clip_fraction", require_float("clip_fraction", self.clip_fraction, 0.0, 1.0, low_inclusive=False))
        if fraction != 1.0 and mode is not ClipMode.RELATIVE:
            raise ConfigError("clip_fraction", f"needs clip_mode=relative; got clip_mode={mode.value}")
        if mode is ClipMode.ACCUMULATOR and self.acc_bits is None:
            raise ConfigError("acc_bits", "clip_mode=accumulator needs acc_bits (the register's width, 1 to 32)")
        if self.acc_bits is not None:
            if mode is not ClipMode.ACCUMULATOR:
                raise ConfigError("acc_bits", f"needs clip_mode=accumulator; got clip_mode={mode.value}")
            bits = require_int("acc_bits", self.acc_bits)
            if not 1 <= bits <= MAX_ACC_BITS:
                raise ConfigError("acc_bits", f"must be an integer from 1 to {MAX_ACC_BITS}; got {self.acc_bits!r}")
            self._set("acc_bits", bits)
        if self.acc_format is not AccFormat.SIGNED and mode is not ClipMode.ACCUMULATOR:
            raise ConfigError("acc_format", f"needs acc_bits (clip_mode=accumulator); got clip_mode={mode.value}")

    def _validate_bounds(self, mode: ClipMode) -> None:
        bounds = [name for name in ("clip_min", "clip_max") if getattr(self, name) is not None]
        if mode is ClipMode.ABSOLUTE and len(bounds) < 2:
            raise ConfigError("clip_min", "clip_mode=absolute needs both clip_min and clip_max")
        if mode is not ClipMode.ABSOLUTE and bounds:
            if self.acc_bits is not None:
                raise ConfigError("acc_bits", "acc_bits sets the bounds itself: give either acc_bits or clip_min / clip_max")
            raise ConfigError("clip_min", f"clip_min / clip_max need clip_mode=absolute; got clip_mode={mode.value}")
        for name in bounds:
            self._set(name, require_float(name, getattr(self, name)))
        if bounds and self.clip_min >= self.clip_max:
            raise ConfigError("clip_max", f"must be greater than clip_min; got [{self.clip_min}, {self.clip_max}]")

    active = property(lambda self: self.clip_mode is not ClipMode.NONE)

    def label(self) -> str:
        if self.clip_mode is ClipMode.ACCUMULATOR:
            return f"acc{self.acc_bits}{self.acc_format.value[0]}"  # e.g. acc8p: an 8-bit popcount counter
        return f"c[{self.clip_min:g},{self.clip_max:g}]" if self.clip_mode is ClipMode.ABSOLUTE else f"c{self.clip_fraction:.2f}"

    @classmethod
    def from_given(cls, given: dict[str, Any]) -> ClipParams:
        """``clip_mode`` not given (or ``auto``): absolute with clip_min / clip_max, accumulator with
        acc_bits, relative with clip_fraction (acc_bits and bounds together: the error names acc_bits)."""
        if str(given.get("clip_mode") or "auto").strip().lower() == "auto":
            inferred = ("absolute" if {"clip_min", "clip_max"} & set(given) and "acc_bits" not in given
                        else "accumulator" if "acc_bits" in given else "relative" if "clip_fraction" in given else "none")
            given = {**given, "clip_mode": inferred}
        return cls(**given)


class Clip(OutputEffect):
    # after the noise (order 0): the register saturates on what it accumulates
    name, params, order, sampling, stream = "clip", ClipParams, 1, Sampling.DETERMINISTIC, -1
    formula = ("y ← clip(y, lo, hi) per tile; [lo, hi] = [clip_min, clip_max] (accumulator units), clip_fraction·(tile's "
               "calibrated clean range), or an acc_bits register in integer units u·y: signed [−2^(k−1), 2^(k−1)−1], "
               "unsigned [0, 2^k−1], popcount c = (y + N_t)/2 in [0, min(N_t, 2^k−1)]")
    curve = Curve("clip_fraction", (1.0, 0.75, 0.5, 0.35, 0.25, 0.15, 0.1, 0.05), "saturation: fraction of clean output range",
                  stronger_when_smaller=True, fixed={"clip_mode": ClipMode.RELATIVE.value})
    search = {"clip_fraction": SearchRange(0.2, 1.0)}

    def run_levels(self, params: ClipParams) -> dict[str, float | bool]:
        absolute, accumulator = params.clip_mode is ClipMode.ABSOLUTE, params.clip_mode is ClipMode.ACCUMULATOR
        return {"on": float(params.active), "relative": params.clip_mode is ClipMode.RELATIVE, "accumulator": accumulator,
                "lo": params.clip_min if absolute else float("-inf"), "hi": params.clip_max if absolute else float("inf"),
                "fraction": params.clip_fraction, "acc_bits": float(params.acc_bits or MAX_ACC_BITS),
                "signed": params.acc_format is AccFormat.SIGNED, "popcount": params.acc_format is AccFormat.POPCOUNT}

    def uses_clean_range(self, params: ClipParams) -> bool:
        return params.clip_mode is ClipMode.RELATIVE

    def reads_bit_serially(self, params: ClipParams) -> bool:
        return params.clip_mode is ClipMode.ACCUMULATOR and params.acc_format is AccFormat.POPCOUNT

    def check_layer(self, params: ClipParams, layer: str, accumulator: Accumulator) -> None:
        if params.clip_mode is ClipMode.ACCUMULATOR and params.acc_format is AccFormat.POPCOUNT and not accumulator.popcount:
            raise ConfigError("acc_format", f"popcount counts +-1 x +-1 products: layer {layer} has inputs or weights "
                                            "that are not +-1 (nor bit-serial pixels); use signed or unsigned")

    def manifest_entry(self, params: ClipParams, full_scale: tuple[float, float]) -> dict[str, Any]:
        """The bounds; a popcount counter also its count range ``c = (y - lo) / 2`` in [0, min(N_t, 2^k - 1)]."""
        lo, hi = (float(bound) for bound in full_scale)
        popcount = params.clip_mode is ClipMode.ACCUMULATOR and params.acc_format is AccFormat.POPCOUNT
        return {"bounds": [lo, hi], **({"count_range": [0.0, (hi - lo) / 2.0]} if popcount else {})}

    def limits(self, levels, context):
        lo, hi, relative, accumulator = levels["lo"], levels["hi"], levels["relative"], levels["accumulator"]
        if relative is not False:
            clean_lo, clean_hi = context.clean_range()
            lo, hi = select(relative, levels["fraction"] * clean_lo, lo), select(relative, levels["fraction"] * clean_hi, hi)
        if accumulator is not False:
            register_lo, register_hi = register_bounds(levels, context.accumulator)
            lo, hi = select(accumulator, register_lo, lo), select(accumulator, register_hi, hi)
        return lo, hi

    def apply_output(self, outputs, levels, context):
        lo, hi = self.limits(levels, context)
        return clip(outputs, lo, hi)


def register_bounds(levels, accumulator: Accumulator):
    """[lo, hi] of a k-bit register in accumulator units ``y`` (the module docstring); a Python number
    or a tensor, per partial where the tile's rows matter (popcount)."""
    top = 2.0 ** levels["acc_bits"]  # 2^k
    unit = accumulator.unit or 1.0  # a real-valued layer (float weights): accumulator units, as absolute bounds
    signed_lo, signed_hi = -top / 2.0 / unit, (top / 2.0 - 1.0) / unit
    unsigned_lo, unsigned_hi = 0.0, (top - 1.0) / unit
    rows = accumulator.rows
    count_hi = tf.minimum(rows, 2.0 * (top - 1.0) - rows)
    lo = select(levels["popcount"], -rows, select(levels["signed"], signed_lo, unsigned_lo))
    hi = select(levels["popcount"], count_hi, select(levels["signed"], signed_hi, unsigned_hi))
    return lo, hi


def clip(outputs, lo, hi):
    """``clip(outputs, lo, hi)``, gradient 1 inside and 0 outside, none for the bounds (constants or
    gradient-stopped): two passes backward instead of ``tf.clip_by_value``'s six; inside is where the
    clip changes nothing (one comparison, not two and their conjunction)."""

    @tf.custom_gradient
    def clipped(values):
        bounded = tf.clip_by_value(values, lo, hi)
        inside = tf.equal(bounded, values)
        return bounded, lambda upstream: tf.where(inside, upstream, tf.zeros_like(upstream))

    return clipped(outputs)
