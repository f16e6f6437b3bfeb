"""The search space of a sweep: which training-time hardware levels Optuna explores.

The default space is every effect's declared ``search`` (``pipeline/effects/*.py``: a range, or a
fixed value). A YAML file (``sweeps/space.yaml`` by default) names the target hardware and
changes that default::

    target: target_hardware.yaml      # the hardware the objective scores (path relative to this file, or a mapping)
    params:                           # changes to the effects' default search ranges
      noise_sigma: {low: 0.0, high: 0.6}            # a float range, linear
      weight_dev_pct: {low: 1.0, high: 60.0, log: true}
      out_bits: {low: 3, high: 8}                   # an integer range (the parameter is an integer)
      tile_rows: {low: 64, high: 512, log: true}    # the tiles' rows (the target's tiles stay the chip's)
      # clip_min: {low: -256, high: -32}            # absolute saturation instead of clip_fraction:
      # clip_max: {low: 31, high: 255}              # ... both bounds, and `clip_fraction: null`
      weight_ber: null                              # not searched: the parameter keeps its default
      # drift_time_s: {low: 3600, high: 3.2e7, log: true}  # searched by default when the target drifts
      noise_mode: relative                          # a fixed value (or {fixed: relative})
      perturb_layers: hidden

Everything is validated before any trial: unknown names (the known ones are listed), low > high,
a log range touching 0, fractional bounds of an integer, and every corner of the space must be a
valid configuration (so a clip_min range that may overlap clip_max, absolute and relative
clipping together, a negative noise level ... each fail) -- a ConfigError naming the entry.
"""

from __future__ import annotations

import itertools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.effects import EFFECTS, SearchRange
from pipeline.perturbation import HARDWARE_PARAMETERS, PerturbationConfig, load_target, read_yaml_mapping, target_from_mapping
from pipeline.validation import ConfigError

DEFAULT_SPACE_FILE = "sweeps/space.yaml"
LAYERS = "perturb_layers"


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
    accuracy_spec: float | None = None  #: the target's specification (test accuracy a chip must reach)
    source: str = ""
    raw: dict = field(default_factory=dict)

    def suggest(self, trial) -> PerturbationConfig:
        """The trial's training-time levels (Optuna parameters named as the effect parameters)."""
        return levels_from({**self.fixed, **{name: spec.suggest(trial, name) for name, spec in self.ranges.items()}})

    def describe(self) -> dict:
        return {"source": self.source, "ranges": {name: vars(spec) for name, spec in self.ranges.items()},
                "fixed": self.fixed, **self.raw}


def levels_from(values: dict[str, Any]) -> PerturbationConfig:
    """The hardware of a point of the space (effects infer implicit parameters, e.g. clip_mode)."""
    return PerturbationConfig.from_text(**values)


def kind(name: str) -> str:
    """``float``, ``int`` or ``fixed`` (enums and text can only be fixed), from the parameter's declared type."""
    if name == LAYERS:
        return "fixed"
    declared = typing.get_type_hints(HARDWARE_PARAMETERS[name])[name]
    types = set(typing.get_args(declared)) or {declared}
    return "float" if float in types else "int" if int in types else "fixed"


def default_space() -> tuple[dict[str, Range], dict[str, Any]]:
    """Every effect's declared search: ranges, and fixed values."""
    ranges, fixed = {}, {}
    for effect in EFFECTS:
        for name, spec in effect.search.items():
            if isinstance(spec, SearchRange):
                ranges[name] = Range(spec.low, spec.high, spec.log, integer=kind(name) == "int")
            else:
                fixed[name] = spec
    return ranges, fixed


def load_space(path: str | Path, parameter: str = "space") -> SearchSpace:
    path = Path(path)
    spec = read_yaml_mapping(path, parameter, "search-space")
    if unknown := sorted(set(spec) - {"params", "target"}):
        raise ConfigError(parameter, f"{path}: unknown top-level key(s) {', '.join(unknown)}; allowed: params, target")
    ranges, fixed = parse_params(spec.get("params") or {}, f"{parameter}: params")
    target, accuracy_spec = parse_target(spec.get("target"), path, parameter)
    ranges, fixed = with_target_drift(ranges, fixed, target, set(spec.get("params") or {}))
    check_corners(ranges, fixed, f"{parameter}: params")
    return SearchSpace(ranges, fixed, target, accuracy_spec, source=str(path), raw=spec)


def parse_params(params: Any, where: str) -> tuple[dict[str, Range], dict[str, Any]]:
    """The default space changed by ``params``: a range, a fixed value, or null (not searched)."""
    if not isinstance(params, dict):
        raise ConfigError(where, "must be a mapping of parameter names to ranges or fixed values")
    ranges, fixed = default_space()
    allowed = [*HARDWARE_PARAMETERS, LAYERS]
    for name, spec in params.items():
        entry = f"{where}.{name}"
        if name not in allowed:
            raise ConfigError(entry, f"unknown parameter; known: {', '.join(allowed)}")
        ranges.pop(name, None)
        fixed.pop(name, None)
        if isinstance(spec, dict) and set(spec) == {"fixed"}:
            spec = spec["fixed"]
        if spec is None:
            continue
        if not isinstance(spec, dict):
            fixed[name] = spec
            continue
        if kind(name) == "fixed":
            raise ConfigError(entry, "can only be fixed (a value), not searched")
        ranges[name] = parse_range(entry, spec, integer=kind(name) == "int")
    return ranges, fixed


def with_target_drift(ranges: dict[str, Range], fixed: dict[str, Any], target: PerturbationConfig,
                      given: set[str]) -> tuple[dict[str, Range], dict[str, Any]]:
    """A target that drifts adds the training time of drift to the space (log, from 1 h or the
    target's time if sooner, to 10 x the target's time), with the target's devices (exponents, t0,
    compensation) fixed; parameters the file names itself are left as it says."""
    if target.drift_time_s <= 0:
        return ranges, fixed
    ranges, fixed = dict(ranges), dict(fixed)
    if "drift_time_s" not in given:
        ranges["drift_time_s"] = Range(min(3600.0, target.drift_time_s), min(10 * target.drift_time_s, 1e10), log=True)
    for name in ("drift_nu_mean", "drift_nu_std", "drift_t0_s", "drift_compensation"):
        if name not in given:
            fixed[name] = target.parameters()[name]
    return ranges, fixed


def parse_range(entry: str, spec: dict, integer: bool) -> Range:
    if unknown := sorted(set(spec) - {"low", "high", "log"}):
        raise ConfigError(entry, f"unknown key(s) {', '.join(unknown)}; a range has low, high and optional log")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(entry, "a range needs both low and high (or use {fixed: value})")
    try:
        low, high = float(spec["low"]), float(spec["high"])
    except (TypeError, ValueError):
        raise ConfigError(entry, f"low and high must be numbers; got {spec['low']!r}, {spec['high']!r}") from None
    log = bool(spec.get("log", False))
    if low > high:
        raise ConfigError(entry, f"low ({low:g}) > high ({high:g})")
    if log and low <= 0:
        raise ConfigError(entry, f"a log range needs low > 0; got low={low:g}")
    if integer and not (low.is_integer() and high.is_integer()):
        raise ConfigError(entry, "must be whole numbers")
    return Range(low, high, log=log, integer=integer)


def check_corners(ranges: dict[str, Range], fixed: dict[str, Any], where: str) -> None:
    """Every corner of the space must be a valid configuration (the parameters' own validation)."""
    names = list(ranges)
    for corner in itertools.product(*[(ranges[name].low, ranges[name].high) for name in names]):
        try:
            levels_from({**fixed, **dict(zip(names, corner))})
        except ConfigError as error:
            point = ", ".join(f"{name}={value:g}" for name, value in zip(names, corner))
            raise ConfigError(f"{where}.{error.parameter}", f"{str(error).split(': ', 1)[1]} (at the corner {point})") from None


def parse_target(target: Any, space_path: Path, parameter: str) -> tuple[PerturbationConfig, float | None]:
    if target is None:
        raise ConfigError(f"{parameter}: target", "the space must name the target hardware (a YAML path or a mapping)")
    if isinstance(target, dict):
        return target_from_mapping(target, f"{parameter}: target", str(space_path))
    target_path = Path(str(target))
    if not target_path.is_absolute():
        target_path = space_path.parent / target_path
    return load_target(target_path, parameter=f"{parameter}: target")
