"""The search space of a sweep: which training-time perturbation levels Optuna explores.

A YAML file (``sweeps/space.yaml`` by default)::

    target: target_hardware.yaml      # the hardware the objective scores (path relative to this file, or a mapping)
    params:
      noise_sigma: {low: 0.0, high: 0.6}            # a float range, linear
      weight_dev_pct: {low: 1.0, high: 60.0, log: true}
      clip_fraction: {low: 0.2, high: 1.0}          # relative saturation ...
      # clip_min: {low: -256, high: -32}            # ... or absolute bounds (both, not with clip_fraction)
      # clip_max: {low: 31, high: 255}
      out_bits: {fixed: null}                        # a fixed value (or just `out_bits: null`)
      perturb_layers: hidden

Everything is validated before any trial: unknown names, low > high, negative ranges, a log
range touching 0, clip_min ranges that may overlap clip_max, absolute and relative clipping
together -- each a ConfigError naming the entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import (
    ClipMode,
    ConfigError,
    PerturbationConfig,
    load_target_hardware,
    perturbation_from_mapping,
    read_yaml_mapping,
)

DEFAULT_SPACE_FILE = "sweeps/space.yaml"

#: searchable levels: (lowest allowed value or None, highest or None, integer?)
SEARCHABLE = {
    "noise_sigma": (0.0, None, False),
    "weight_dev_pct": (0.0, 1000.0, False),
    "clip_min": (None, None, False),
    "clip_max": (None, None, False),
    "clip_fraction": (0.0, 1.0, False),
    "out_bits": (1, 16, True),
}
FIXED_ONLY = ("noise_mode", "perturb_layers")


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False
    integer: bool = False

    def suggest(self, trial, name: str):
        if self.integer:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)


@dataclass(frozen=True)
class SearchSpace:
    ranges: dict[str, Range]
    fixed: dict[str, Any]
    target: PerturbationConfig
    source: str = ""
    raw: dict = field(default_factory=dict)

    def suggest(self, trial) -> PerturbationConfig:
        """The trial's training-time levels (Optuna parameters named as the config fields)."""
        values = {**self.fixed, **{name: spec.suggest(trial, name) for name, spec in self.ranges.items()}}
        return levels_from(values)

    def describe(self) -> dict:
        return {"source": self.source, **self.raw}


def levels_from(values: dict[str, Any]) -> PerturbationConfig:
    values = {key: value for key, value in values.items() if value is not None}
    if "clip_min" in values or "clip_max" in values:
        values["clip_mode"] = ClipMode.ABSOLUTE
    elif "clip_fraction" in values:
        values["clip_mode"] = ClipMode.RELATIVE
    return PerturbationConfig(**values)


def load_space(path: str | Path, parameter: str = "space") -> SearchSpace:
    path = Path(path)
    spec = read_yaml_mapping(path, parameter, "search-space")
    if unknown := sorted(set(spec) - {"params", "target"}):
        raise ConfigError(parameter, f"{path}: unknown top-level key(s) {', '.join(unknown)}; allowed: params, target")
    ranges, fixed = parse_params(spec.get("params") or {}, f"{parameter}: params")
    check_clipping(ranges, fixed, f"{parameter}: params")
    target = parse_target(spec.get("target"), path, parameter)
    space = SearchSpace(ranges, fixed, target, source=str(path), raw=spec)
    try:  # every corner of the space must be a valid configuration
        levels_from({**fixed, **{name: r.low for name, r in ranges.items()}})
        levels_from({**fixed, **{name: r.high for name, r in ranges.items()}})
    except ConfigError as error:
        raise ConfigError(f"{parameter}: params.{error.parameter}", str(error).split(": ", 1)[1]) from None
    return space


def parse_params(params: Any, where: str) -> tuple[dict[str, Range], dict[str, Any]]:
    if not isinstance(params, dict):
        raise ConfigError(where, "must be a mapping of level names to ranges or fixed values")
    ranges, fixed = {}, {}
    allowed = sorted({*SEARCHABLE, *FIXED_ONLY})
    for name, spec in params.items():
        entry = f"{where}.{name}"
        if name not in allowed:
            raise ConfigError(entry, f"unknown name; allowed: {', '.join(allowed)}")
        if not isinstance(spec, dict):
            fixed[name] = spec
            continue
        if set(spec) == {"fixed"}:
            fixed[name] = spec["fixed"]
            continue
        if name in FIXED_ONLY:
            raise ConfigError(entry, "can only be fixed (a value), not searched")
        if unknown := sorted(set(spec) - {"low", "high", "log"}):
            raise ConfigError(entry, f"unknown key(s) {', '.join(unknown)}; a range has low, high and optional log")
        if "low" not in spec or "high" not in spec:
            raise ConfigError(entry, "a range needs both low and high (or use {fixed: value})")
        ranges[name] = parse_range(entry, name, spec)
    return ranges, fixed


def parse_range(entry: str, name: str, spec: dict) -> Range:
    minimum, maximum, integer = SEARCHABLE[name]
    try:
        low, high = float(spec["low"]), float(spec["high"])
    except (TypeError, ValueError):
        raise ConfigError(entry, f"low and high must be numbers; got {spec['low']!r}, {spec['high']!r}") from None
    log = bool(spec.get("log", False))
    if low > high:
        raise ConfigError(entry, f"low ({low:g}) > high ({high:g})")
    if minimum is not None and low < minimum:
        raise ConfigError(entry, f"must not go below {minimum:g}; got low={low:g}")
    if maximum is not None and high > maximum:
        raise ConfigError(entry, f"must not go above {maximum:g}; got high={high:g}")
    if name == "clip_fraction" and low <= 0:
        raise ConfigError(entry, "a clip fraction must be > 0")
    if log and low <= 0:
        raise ConfigError(entry, f"a log range needs low > 0; got low={low:g}")
    if integer and not (low.is_integer() and high.is_integer()):
        raise ConfigError(entry, "must be whole numbers")
    return Range(low, high, log=log, integer=integer)


def check_clipping(ranges: dict[str, Range], fixed: dict[str, Any], where: str) -> None:
    names = {*ranges, *(name for name, value in fixed.items() if value is not None)}
    absolute, relative = {"clip_min", "clip_max"} & names, "clip_fraction" in names
    if absolute and relative:
        raise ConfigError(f"{where}.clip_fraction", "choose absolute (clip_min, clip_max) or relative (clip_fraction) clipping, not both")
    if len(absolute) == 1:
        raise ConfigError(f"{where}.{absolute.pop()}", "absolute clipping needs both clip_min and clip_max")
    if absolute:
        low_max = ranges["clip_min"].high if "clip_min" in ranges else float(fixed["clip_min"])
        high_min = ranges["clip_max"].low if "clip_max" in ranges else float(fixed["clip_max"])
        if low_max >= high_min:
            raise ConfigError(f"{where}.clip_max", f"every clip_max must exceed every clip_min: {low_max:g} >= {high_min:g}")


def parse_target(target: Any, space_path: Path, parameter: str) -> PerturbationConfig:
    if target is None:
        raise ConfigError(f"{parameter}: target", "the space must name the target hardware (a YAML path or a mapping)")
    if isinstance(target, dict):
        return perturbation_from_mapping(target, f"{parameter}: target", str(space_path))
    target_path = Path(str(target))
    if not target_path.is_absolute():
        target_path = space_path.parent / target_path
    return load_target_hardware(target_path, parameter=f"{parameter}: target")
