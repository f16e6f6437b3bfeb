"""What every effect declares, and the few helpers effects share.

An effect is one non-ideality of the hardware. Its module declares, and nothing else does:

* ``params``: a frozen dataclass of its parameters (:class:`EffectParams`), each field with its unit
  and default in its docstring, validated on construction (a :class:`ConfigError` naming the field);
* ``stage``: where it acts -- on the stored weights (:attr:`Stage.KERNEL`, before the accumulation)
  or on the accumulator output (:attr:`Stage.OUTPUT`, after it) -- and ``order`` within the stage;
* ``sampling``: when its randomness is drawn (:class:`Sampling`);
* what it does: ``draw`` + ``apply_kernel`` (kernel effects) or ``apply_output`` (output effects),
  on run-time ``levels`` that are Python numbers in training (static: an effect that is off costs
  nothing) and ``tf.Variable`` s at evaluation (a new level neither rebuilds nor retraces);
* ``curve``: its one-factor robustness curve (grid, axis label with units, linear or log axis);
* ``search``: its default search range in a sweep.

TensorFlow is imported on first use (``tf`` below), so validating a configuration stays instant.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

from pipeline.validation import ConfigError


class LazyTensorFlow:
    """``tensorflow``, imported when an attribute is first read (after ``pipeline`` set the Keras switch)."""

    def __getattr__(self, name: str):
        import pipeline  # noqa: F401

        return getattr(importlib.import_module("tensorflow"), name)


tf = LazyTensorFlow()


class Sampling(str, enum.Enum):
    PER_CHIP = "per chip"  #: static: drawn once when a chip is programmed (seeded by chip, layer, effect)
    PER_PASS = "per pass"  #: fresh on every forward pass (seeded by chip, layer, effect and pass)
    DETERMINISTIC = "deterministic"  #: no randomness


class Stage(str, enum.Enum):
    KERNEL = "kernel"  #: acts on the stored weights, before the accumulation ``y = x . W``
    OUTPUT = "output"  #: acts on the accumulator output ``y``, after it


@dataclass(frozen=True)
class Curve:
    """A one-factor robustness curve: ``parameter`` swept over ``grid``, every other effect off."""

    parameter: str  #: the swept parameter (a field of the effect's params)
    grid: tuple[float, ...]  #: default levels
    label: str  #: axis label, with units
    log: bool = False  #: log axis (a symmetric-log axis when the grid holds 0)
    stronger_when_smaller: bool = False  #: e.g. a clip fraction: the axis is reversed in plots
    fixed: Mapping[str, Any] = field(default_factory=dict)  #: other parameters of every point


@dataclass(frozen=True)
class SearchRange:
    """A default range of a sweep (Optuna ``suggest_float`` / ``suggest_int``)."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class EffectParams:
    """Base of every effect's parameters: frozen, validated in :meth:`validate` on construction."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check and normalize the fields (with :meth:`_set`); raise ConfigError naming the field."""

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    @property
    def active(self) -> bool:
        """Whether the effect changes anything at these parameters."""
        raise NotImplementedError

    def label(self) -> str:
        """A short run-name part (only called when active), e.g. ``s0.30``."""
        raise NotImplementedError

    @classmethod
    def from_given(cls, given: dict[str, Any]) -> "EffectParams":
        """From the parameters a user gave (others default); an effect may infer implicit ones here."""
        return cls(**given)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


Levels = Mapping[str, Any]  #: run-time levels: Python floats (training) or scalar tf.Variables (evaluation)


@dataclass
class OutputContext:
    """What an output effect may read besides the output: the same in training and evaluation,
    except where the values come from (see :class:`pipeline.layers.HardwareAwareMixin`)."""

    clean_range: Callable[[], tuple[Any, Any]]  #: calibrated [min, max] at evaluation, the batch's in training
    normal: Callable[["Effect"], Any]  #: N(0, 1) numbers of the output's shape, seeded for this effect and pass


class Effect:
    """One non-ideality (see the module docstring). Subclasses set the class attributes."""

    name: ClassVar[str]  #: curve and summary name: ``robust_auc_<name>``, ``--<name>_grid``
    params: ClassVar[type[EffectParams]]
    stage: ClassVar[Stage]
    order: ClassVar[int]  #: position within the stage (kernel effects: 0 first)
    sampling: ClassVar[Sampling]
    stream: ClassVar[int]  #: random stream: seeds are offset by it, so effects draw independently
    formula: ClassVar[str]  #: one line for the documentation table
    curve: ClassVar[Curve]
    search: ClassVar[Mapping[str, SearchRange | Any]]  #: default sweep: ranges, or fixed values
    keeps_signs: ClassVar[bool] = False  #: kernel effects: a kernel of +-1 values stays +-1

    def run_levels(self, params: EffectParams) -> dict[str, float]:
        """The numbers the layer keeps in variables for ``params`` (all-"off" for the ideal chip)."""
        raise NotImplementedError

    def is_on(self, levels: Levels):
        """Python bool for static levels, a boolean tensor for variables."""
        raise NotImplementedError

    # kernel effects -------------------------------------------------------------------------
    def draw(self, shape, seed):
        """The random numbers of one chip (or one training step) for a kernel of ``shape``."""
        raise NotImplementedError

    def training_draw(self, shape, seed, levels: Levels):
        """The draws of one training step at these (static) levels: by default :meth:`draw`. An effect
        may draw them another way with the same effect on the kernel (e.g. sparse, when most are idle)."""
        return self.draw(shape, seed)

    def apply_kernel(self, kernel, draws, levels: Levels, kernel_quantizer):
        """The weights as read: ``kernel`` (after the layer's quantizer) changed by ``draws``."""
        raise NotImplementedError

    def output_variance(self, quantized_inputs, kernel, levels: Levels, inputs_are_signs: bool, kernel_is_signs: bool):
        """Training only, dense layers: the variance of this effect's zero-mean Gaussian output term
        when drawing it at the outputs is exact (local reparameterization), else None (then it acts
        on the kernel). ``*_are_signs``: the values are known to be +-1 (their squares are 1)."""
        return None

    # output effects -------------------------------------------------------------------------
    def apply_output(self, outputs, levels: Levels, context: OutputContext):
        raise NotImplementedError

    def uses_clean_range(self, params: EffectParams) -> bool:
        """Whether :meth:`apply_output` reads ``context.clean_range`` at these parameters (then an
        evaluation calibrates it first)."""
        return False

    def gaussian_variance(self, outputs, variance, levels: Levels):
        """Training only: when this effect adds a zero-mean Gaussian to ``outputs`` (their mean, with
        ``variance`` already pending on them), its variance -- the layer then draws every pending
        Gaussian as one; else None (the effect is applied by :meth:`apply_output`)."""
        return None


def when(condition, apply: Callable, value):
    """``apply(value)`` if ``condition`` else ``value``: decided now for a Python bool, at run time for a tensor."""
    if isinstance(condition, bool):
        return apply(value) if condition else value
    return tf.cond(condition, lambda: apply(value), lambda: value)


def select(condition, if_true, if_false):
    """``if_true`` or ``if_false``: now for a Python bool, element-wise at run time for a tensor."""
    if isinstance(condition, bool):
        return if_true if condition else if_false
    return tf.where(condition, if_true, if_false)


def standard_normal(shape, seed):
    """N(0, 1) numbers, a stateless function of ``seed`` (Box-Muller on counter-based Philox uniforms).

    Same distribution as ``tf.random.stateless_normal`` (tails to 5.8 sigma, from 24-bit uniforms),
    about 1.4x faster on CPU for large tensors: both numbers of each Box-Muller pair are used.
    ``seed`` may be a list of P seeds: then P draws of ``shape``, each exactly the draw of its own
    seed, are concatenated along the first axis (one Box-Muller transform for all of them).
    """
    import numpy as np

    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed]
    shape = tf.convert_to_tensor(shape, tf.int32)
    size = tf.reduce_prod(shape)
    half = (size + 1) // 2
    uniform = tf.stack([tf.random.stateless_uniform(tf.stack([2, half]), seed=one) for one in seeds])  # (P, 2, half)
    radius = tf.sqrt(-2.0 * tf.math.log(1.0 - uniform[:, 0]))  # 1 - u in (0, 1]: finite
    angle = (2.0 * np.pi) * uniform[:, 1]
    pairs = tf.concat([radius * tf.cos(angle), radius * tf.sin(angle)], axis=1)[:, :size]
    if len(seeds) == 1:
        return tf.reshape(pairs, shape)
    return tf.reshape(pairs, tf.concat([[len(seeds) * shape[0]], shape[1:]], axis=0))


__all__ = ["ConfigError", "Curve", "Effect", "EffectParams", "OutputContext", "Sampling", "SearchRange", "Stage",
           "select", "standard_normal", "tf", "when"]
