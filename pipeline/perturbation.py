"""The hardware a network runs on: every effect's parameters at once, which layers they hit, and the tiles.

:class:`PerturbationConfig` is one frozen value object over the effect registry: it holds one
validated parameters object per effect (``pipeline/effects/*.py``), the crossbar tiles the
targeted layers are mapped on (:class:`TileParams`) and ``perturb_layers``. Its parameters are
addressed by their flat names (``noise_sigma``, ``weight_ber``, ``tile_rows`` ...), which every
effect (and the tiles) declares once and which the command line, the YAML files, the MLflow params
(``perturb.<name>``) and the sweep share. No TensorFlow is imported here.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any
from collections.abc import Iterator, Sequence

from dataclasses import dataclass

from pipeline.effects import EFFECTS, PARAMETERS, Effect, EffectParams
from pipeline.validation import ConfigError, optional_float, require_int

EMPTY = (None, "")  #: text that means "not given" (and "none" where the parameter's default is None)


class LayerSet(str, enum.Enum):
    HIDDEN = "hidden"  #: the hidden dense layers (not the output layer, not convolutions)
    DENSE = "dense"  #: every dense layer, the output layer included
    ALL = "all"  #: every dense and convolution layer


@dataclass(frozen=True)
class TileParams(EffectParams):
    tile_rows: int | None = None
    """Rows per array (crossbar tile), >= 1: a targeted layer of fan-in N is split into ceil(N/R)
    tiles along its fan-in, whose partial sums get the output effects each on its own, then are
    summed digitally (pipeline/hwmodel/tiles.py); none = one tile of all N rows."""

    def validate(self) -> None:
        if self.tile_rows is not None:
            self._set("tile_rows", require_int("tile_rows", self.tile_rows, minimum=1))

    active = property(lambda self: self.tile_rows is not None)

    def label(self) -> str:
        return f"t{self.tile_rows}"


HARDWARE_PARAMETERS: dict[str, type[EffectParams]] = {**{name: effect.params for name, effect in PARAMETERS.items()},
                                                       **{name: TileParams for name in TileParams.field_names()}}
"""Every hardware parameter (the effects' and the tiles') -> the parameters class that declares it."""


class PerturbationConfig:
    """The non-idealities of the target hardware, applied inside each targeted layer (all off: the ideal chip).

    ``PerturbationConfig(noise_sigma=0.3, weight_ber=1e-3, perturb_layers="dense")``: strict, every
    parameter as the effect's dataclass takes it. :meth:`from_text` takes command-line text and lets
    effects infer implicit parameters (e.g. ``clip_mode`` from the clip bounds).
    """

    __slots__ = ("_params", "tiles", "perturb_layers")

    def __init__(self, perturb_layers: str = LayerSet.HIDDEN.value, **levels: Any):
        check_known(levels)
        params = tuple(effect.params(**own_levels(effect, levels)) for effect in EFFECTS)
        self._build(params, TileParams(**own_levels(TileParams, levels)), perturb_layers)

    def _build(self, params: tuple[EffectParams, ...], tiles: TileParams, perturb_layers: Any) -> None:
        layers = str(perturb_layers).strip()
        if not layers or any(not name.strip() for name in layers.split(",")):
            raise ConfigError("perturb_layers", f"must be hidden, dense, all or comma-separated layer names; got {perturb_layers!r}")
        object.__setattr__(self, "_params", params)
        object.__setattr__(self, "tiles", tiles)
        object.__setattr__(self, "perturb_layers", ",".join(name.strip() for name in layers.split(",")))

    @classmethod
    def from_text(cls, **given: Any) -> PerturbationConfig:
        """From text (command line, sweep): empty values mean "not given"; effects infer the rest."""
        optional = {key for key, value in PerturbationConfig().parameters().items() if value is None}
        given = {key: value for key, value in given.items()
                 if value not in EMPTY and not (key in optional and str(value).strip().lower() == "none")}
        layers = given.pop("perturb_layers", LayerSet.HIDDEN.value)
        check_known(given)
        config = object.__new__(cls)
        config._build(tuple(effect.params.from_given(own_levels(effect, given)) for effect in EFFECTS),
                      TileParams.from_given(own_levels(TileParams, given)), layers)
        return config

    @classmethod
    def from_mapping(cls, spec: dict, parameter: str, origin: str) -> PerturbationConfig:
        """From a YAML mapping, read as :meth:`from_text` reads the command line; an unknown key is a
        ConfigError naming ``parameter`` and listing the known ones."""
        check_known({key: value for key, value in spec.items() if key != "perturb_layers"}, parameter, origin)
        return cls.from_text(**spec)

    # ------------------------------------------------------------------ reading
    def params(self, effect: Effect) -> EffectParams:
        return self._params[EFFECTS.index(effect)]

    def params_of(self, name: str) -> EffectParams:
        """The parameters object that declares the hardware parameter ``name`` (an effect's, or the tiles')."""
        return self.params(PARAMETERS[name]) if name in PARAMETERS else self.tiles

    def __iter__(self) -> Iterator[tuple[Effect, EffectParams]]:
        return iter(zip(EFFECTS, self._params))

    def __getattr__(self, name: str) -> Any:
        if name in PARAMETERS:
            return getattr(self.params(PARAMETERS[name]), name)
        if name in HARDWARE_PARAMETERS:
            return getattr(self.tiles, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: use replace()")

    def replace(self, **changes: Any) -> PerturbationConfig:
        return PerturbationConfig(**{**self.parameters(), "perturb_layers": self.perturb_layers, **changes})

    @property
    def is_ideal(self) -> bool:
        """True when no effect is active: the layer computes exactly what the plain layer does."""
        return not any(params.active for params in self._params)

    def targets(self, model) -> tuple[str, ...]:
        """The names of the targeted layers of ``model`` (a ModelConfig), or a ConfigError for unknown names
        or an effect a layer cannot have (e.g. popcount counters on k-bit layers)."""
        from pipeline.effects.base import Accumulator

        names = select_layers(self.perturb_layers, model.dense_layer_names, model.conv_layer_names, model.label)
        binary = Accumulator(unit=None if model.is_float else 1.0, popcount=model.bits == 1, rows=None)  # every layer alike
        for name in names:
            try:
                self.check_layer(name, binary)
            except ConfigError as error:
                raise ConfigError(error.parameter, error.message.replace(f"layer {name}", f"layer {name} of {model.label}")) from None
        return names

    @property
    def label(self) -> str:
        """Short run-name part, e.g. ``d20-s0.30-c[-128,127]``, ``ber0.01-c0.50-adc4``, ``s0.30-acc8p-t256`` or ``ideal``."""
        effects = "-".join(params.label() for params in self._params if params.active) or "ideal"
        return f"{effects}-{self.tiles.label()}" if self.tiles.active else effects

    def parameters(self) -> dict[str, Any]:
        """Every hardware parameter (the effects' and the tiles', not ``perturb_layers``) as plain JSON-able data."""
        return {name: (value.value if isinstance(value, enum.Enum) else value)
                for params in (*self._params, self.tiles) for name in params.field_names() for value in [getattr(params, name)]}

    @property
    def bit_serial(self) -> bool:
        """Whether a targeted layer reading 8-bit pixels is read one bit plane at a time (popcount counters)."""
        return any(params.active and effect.reads_bit_serially(params) for effect, params in self)

    def check_layer(self, layer: str, accumulator) -> None:
        """A ConfigError naming the parameter when an active effect cannot apply to ``layer``, whose
        partial sums are ``accumulator`` (a :class:`pipeline.effects.base.Accumulator`)."""
        for effect, params in self:
            if params.active:
                effect.check_layer(params, layer, accumulator)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PerturbationConfig) and (self._params, self.tiles, self.perturb_layers) == (
            other._params, other.tiles, other.perturb_layers)

    def __hash__(self) -> int:
        return hash((self._params, self.tiles, self.perturb_layers))

    def __repr__(self) -> str:
        defaults = PerturbationConfig().parameters()
        active = ", ".join(f"{key}={value!r}" for key, value in self.parameters().items() if value != defaults[key])
        return f"PerturbationConfig({active + ', ' if active else ''}perturb_layers={self.perturb_layers!r})"

    def __reduce__(self):
        return (rebuild, (self.parameters(), self.perturb_layers))


def rebuild(levels: dict, perturb_layers: str) -> PerturbationConfig:
    return PerturbationConfig(perturb_layers=perturb_layers, **levels)


def check_known(levels: dict, parameter: str | None = None, origin: str = "") -> None:
    """Every key must be an effect parameter: else a ConfigError naming ``parameter`` (default: the
    unknown key itself) and listing the known ones."""
    if unknown := sorted(set(levels) - set(HARDWARE_PARAMETERS)):
        known = ", ".join([*HARDWARE_PARAMETERS, "perturb_layers"])
        where = f"{origin}: " if origin else ""
        raise ConfigError(parameter or unknown[0], f"{where}unknown key(s) {', '.join(unknown)}; known: {known}")


def curve_point(effect: Effect, level: float, tile_rows: int | None = None) -> PerturbationConfig:
    """The hardware of one point of ``effect``'s robustness curve: that level, every other effect off,
    on tiles of ``tile_rows`` rows (the target's: the chip's arrays do not change along a curve)."""
    return PerturbationConfig(**{**effect.curve.fixed, effect.curve.parameter: level, "tile_rows": tile_rows})


def typical_hardware(perturb_layers: str = LayerSet.HIDDEN.value) -> PerturbationConfig:
    """Every effect on, each at the middle level of its default curve (benchmarks and tests of
    "every effect at once" follow the registry)."""
    levels = {}
    for effect in EFFECTS:
        levels.update({**effect.curve.fixed, effect.curve.parameter: effect.curve.grid[len(effect.curve.grid) // 2]})
    return PerturbationConfig(perturb_layers=perturb_layers, **levels)


def own_levels(owner: Effect | type[EffectParams], levels: dict) -> dict:
    """The levels an effect (or a parameters class) declares."""
    params = owner if isinstance(owner, type) else owner.params
    return {name: value for name, value in levels.items() if HARDWARE_PARAMETERS.get(name) is params}


def select_layers(perturb_layers: str, dense: Sequence[str], conv: Sequence[str], model_name: str) -> tuple[str, ...]:
    """The layers ``perturb_layers`` names among a model's dense layers (the last is the output
    layer) and convolution layers; a ConfigError for unknown names."""
    choice = perturb_layers.lower()
    if choice == LayerSet.HIDDEN.value:
        return tuple(dense[:-1])
    if choice == LayerSet.DENSE.value:
        return tuple(dense)
    if choice == LayerSet.ALL.value:
        return (*conv, *dense)
    names = tuple(perturb_layers.split(","))
    known = (*conv, *dense)
    if unknown := [name for name in names if name not in known]:
        raise ConfigError(
            "perturb_layers",
            f"unknown layer(s) {', '.join(unknown)} in {model_name}; use hidden, dense, all or names from {', '.join(known)}",
        )
    return names


TARGET_HARDWARE_FILE = "sweeps/target_hardware.yaml"
ACCURACY_SPEC = "accuracy_spec"  #: the one key of a target file that is not a hardware parameter


def read_yaml_mapping(path: str | Path, parameter: str, what: str) -> dict:
    """A YAML file holding a mapping, or a ConfigError naming ``parameter``."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(parameter, f"no such {what} file: {path}")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(parameter, f"{path} is not valid YAML: {error}") from None
    if not isinstance(spec, dict):
        raise ConfigError(parameter, f"{path} must hold a mapping ({what})")
    return spec


def load_target(path: str | Path, parameter: str = "target") -> tuple[PerturbationConfig, float | None]:
    """The target hardware (a YAML mapping of effect parameters and ``perturb_layers``) and the
    specification a chip must meet on it (its ``accuracy_spec``, or None)."""
    spec = read_yaml_mapping(path, parameter, "target-hardware")
    return target_from_mapping(spec.get("target", spec), parameter, str(path))


def target_from_mapping(mapping: dict, parameter: str, origin: str) -> tuple[PerturbationConfig, float | None]:
    mapping = dict(mapping)
    accuracy_spec = optional_float(f"{parameter}: {ACCURACY_SPEC}", mapping.pop(ACCURACY_SPEC, None), 0.0, 1.0)
    return PerturbationConfig.from_mapping(mapping, parameter, origin), accuracy_spec
