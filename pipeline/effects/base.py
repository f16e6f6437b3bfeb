"""What every effect declares: one module of this package per non-ideality.

An effect (a :class:`KernelEffect` or :class:`OutputEffect` subclass) declares its parameters
(``params``: a frozen :class:`EffectParams`, each field's unit and default in its docstring,
validated on construction, with ``active`` and ``label()``), where it acts (the base class and
``order``), when it is sampled (``sampling``), what it does (``draw`` + ``apply_kernel``, or
``apply_output``), its robustness ``curve`` and its sweep ``search``.
Its run-time ``levels`` (numbers, and modes as booleans) are Python values in training (static: an effect that is off costs nothing)
and ``tf.Variable`` s at evaluation (a new level neither rebuilds nor retraces). ``tf`` is imported
on first use, so validating a configuration stays instant.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import importlib
import math
from typing import Any, ClassVar
from collections.abc import Callable, Mapping

from pipeline.validation import ConfigError


class LazyTensorFlow:
    def __getattr__(self, name: str):
        import pipeline  # noqa: F401  (sets the Keras switch first)
        return getattr(importlib.import_module("tensorflow"), name)


tf = LazyTensorFlow()


class Sampling(str, enum.Enum):
    PER_CHIP = "per chip"  #: drawn once when a chip is programmed, seeded by chip, layer and effect
    PER_PASS = "per pass"  #: fresh on every forward pass, seeded by chip, layer, effect and pass
    DETERMINISTIC = "deterministic"


class Site(str, enum.Enum):
    KERNEL = "kernel"  #: on the stored weights, before the accumulation ``y = x . W``
    OUTPUT = "output"  #: on the accumulator output ``y``


@dataclasses.dataclass(frozen=True)
class Curve:
    """A one-factor robustness curve: ``parameter`` over ``grid``, every other effect off."""

    parameter: str
    grid: tuple[float, ...]
    label: str  #: axis label, with units
    log: bool = False  #: a log axis (symmetric-log when the grid holds 0)
    stronger_when_smaller: bool = False  #: e.g. a clip fraction: the axis is reversed in plots
    integer: bool = False  #: the levels are whole numbers (e.g. bits): integer ticks
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)  #: other parameters of every point


@dataclasses.dataclass(frozen=True)
class SearchRange:
    low: float
    high: float
    log: bool = False


@dataclasses.dataclass(frozen=True)
class EffectParams:
    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check and normalize the fields (with :meth:`_set`); a ConfigError names the field."""

    def _set(self, name: str, value: Any) -> Any:
        object.__setattr__(self, name, value)
        return value

    @classmethod
    def from_given(cls, given: dict[str, Any]) -> EffectParams:
        """From the parameters a user gave (an effect may infer implicit ones here)."""
        return cls(**given)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


@dataclasses.dataclass(frozen=True)
class Accumulator:
    """What a layer's partial sums are in hardware terms (``pipeline.hwmodel.tiles``): one partial per
    tile (and bit-serial pass), each an output effect sees as an example of its own."""

    unit: float | None  #: u: ``u * y`` is the integer the accumulator holds (None: real-valued, no integer form)
    popcount: bool  #: every partial is an XNOR-popcount of +-1 inputs and +-1 weights (``c = (y + N_t) / 2``)
    rows: Any  #: N_t, the rows of each partial's tile, broadcastable to the outputs


@dataclasses.dataclass
class OutputContext:
    clean_range: Callable[[], tuple[Any, Any]]  #: per partial: calibrated [min, max] at evaluation, the batch's in training
    normal: Callable[[Effect], Any]  #: N(0, 1) of the output's shape, seeded for this effect and pass
    accumulator: Accumulator | None = None
    full_scale: Callable[[], tuple[Any, Any]] | None = None  #: what a converter reads: the active limits, else the clean range
    saturated: bool = False  #: the values already lie in ``full_scale`` (a saturation on for sure before the converter)


class Effect(abc.ABC):
    """An effect subclasses :class:`KernelEffect` or :class:`OutputEffect` (which set ``site``, where it acts)."""

    name: ClassVar[str]  #: ``--<name>_grid``, ``robust_auc_<name>``
    params: ClassVar[type[EffectParams]]
    site: ClassVar[Site]
    order: ClassVar[int]  #: position within the site
    sampling: ClassVar[Sampling]
    stream: ClassVar[int]  #: offsets the seeds, so effects draw independently (-1: draws nothing)
    formula: ClassVar[str]  #: one line of the documentation table
    curve: ClassVar[Curve]
    search: ClassVar[Mapping[str, Any]]  #: the sweep's defaults: SearchRange s or fixed values

    @abc.abstractmethod
    def run_levels(self, params: EffectParams) -> dict[str, float | bool]:
        """The values a layer keeps in variables: numbers (the first is the strength, 0: off) and modes
        as booleans (``tf.bool`` variables at evaluation), never numbers standing for modes."""

    def is_on(self, levels):
        return next(iter(levels.values())) > 0  # a Python bool, or a boolean tensor for variables

    def uses_clean_range(self, params: EffectParams) -> bool:
        return False  # True: apply_output reads context.clean_range (an evaluation calibrates it)

    def reads_bit_serially(self, params: EffectParams) -> bool:
        """True: a layer reading 8-bit pixels is read one bit plane at a time (e.g. popcount counters)."""
        return False

    def check_layer(self, params: EffectParams, layer: str, accumulator: Accumulator) -> None:
        """A ConfigError naming a parameter when ``params`` cannot apply to ``layer`` (its accumulator)."""
        return None

    def manifest_entry(self, params: EffectParams, full_scale: tuple[float, float]) -> dict[str, Any]:
        """What the hardware manifest records about this effect on one tile, besides its parameters,
        given what that tile's converter reads (``full_scale``, the tile's integer hardware units)."""
        return {}


class KernelEffect(Effect):
    """Acts on the stored weights, before the accumulation."""

    site = Site.KERNEL
    keeps_signs: ClassVar[bool] = False  #: a kernel of +-1 values stays +-1

    @abc.abstractmethod
    def draw(self, shape, seed):
        """The random numbers of one chip (or training step) for a kernel of ``shape``."""

    def training_draw(self, shape, seed, levels):
        return self.draw(shape, seed)  # or cheaper draws with the same effect on the kernel

    @abc.abstractmethod
    def apply_kernel(self, kernel, draws, levels, precision):
        """The weights as read: ``kernel`` (after the layer's quantizer) changed by ``draws``; ``precision``
        is what a stored weight holds (a :class:`pipeline.hwmodel.quantizers.Precision`, handed in by the layer)."""

    def compensated(self, levels) -> bool:
        """Whether the periphery undoes this effect's mean scale (from Python levels): the layer's output
        is multiplied by ``sum |W without it| / sum |W with it|`` per chip (e.g. global drift compensation)."""
        return False

    def output_variance(self, inputs, kernel, levels, inputs_are_signs: bool, kernel_is_signs: bool, accumulate: Callable):
        """Training, dense layers: the variance of the effect's zero-mean Gaussian output term if
        drawing it at the outputs is exact (local reparameterization), else None. ``accumulate(x, W)``
        is the layer's own sum (per tile: its partial sums)."""
        return None


class OutputEffect(Effect):
    """Acts on the accumulator output."""

    site = Site.OUTPUT

    @abc.abstractmethod
    def apply_output(self, outputs, levels, context: OutputContext):
        """The output as read: ``outputs`` changed by the effect."""

    def limits(self, levels, context: OutputContext):
        """The [lo, hi] this effect holds the output to when on (a converter after it reads that
        range), or None."""
        return None

    def gaussian_variance(self, outputs, variance, levels):
        """Training: the variance of the zero-mean Gaussian this effect adds to ``outputs`` (with
        ``variance`` pending on them), drawn with the pending ones as one; None: apply_output."""
        return None


def when(condition, apply: Callable, value):
    """``apply(value)`` if ``condition``: decided now for a Python bool, at run time for a tensor."""
    if isinstance(condition, bool):
        return apply(value) if condition else value
    return tf.cond(condition, lambda: apply(value), lambda: value)


def select(condition, if_true, if_false):
    return (if_true if condition else if_false) if isinstance(condition, bool) else tf.where(condition, if_true, if_false)


def standard_normal(shape, seed):
    """N(0, 1), a stateless function of ``seed``: Box-Muller on Philox uniforms, both numbers of a pair
    used (1.4x faster than ``tf.random.stateless_normal`` on CPU). A list of P seeds gives P draws of
    ``shape``, each exactly its own seed's, concatenated on the first axis."""
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed]
    shape = tf.convert_to_tensor(shape, tf.int32)
    size = tf.reduce_prod(shape)
    uniform = tf.stack([tf.random.stateless_uniform(tf.stack([2, (size + 1) // 2]), seed=one) for one in seeds])
    radius = tf.sqrt(-2.0 * tf.math.log(1.0 - uniform[:, 0]))  # 1 - u in (0, 1]: finite
    angle = (2.0 * math.pi) * uniform[:, 1]
    pairs = tf.concat([radius * tf.cos(angle), radius * tf.sin(angle)], axis=1)[:, :size]
    return tf.reshape(pairs, shape if len(seeds) == 1 else tf.concat([[len(seeds) * shape[0]], shape[1:]], axis=0))


__all__ = ["Accumulator", "ConfigError", "Curve", "Effect", "EffectParams", "KernelEffect", "OutputContext", "OutputEffect", "Sampling",
           "SearchRange", "Site", "select", "standard_normal", "tf", "when"]
