"""Yield over time: the target's chips read at every time of a grid after programming, and how long they meet the spec.

When the target hardware has conductance drift (``drift_time_s`` > 0: the time its own accuracy and
yield are reported at), the target condition is evaluated again at every time of
``RobustnessConfig.drift_times``, with drift compensation off and global, on the **same chips**: chip
``c`` keeps its drift exponents, its other per-chip draws and its per-pass noise at every time (common
random numbers: its accuracy over time is its own trajectory). The chips are programmed once per pass
and read at every time (the draws are shared; a time only rescales the kernels).

Per compensation and time: the mean accuracy and the yield at the spec with their 95 % intervals
(:func:`pipeline.evaluation.statistics.summarize`). **Lifetime**: the longest time of the grid up to
which, at every time of the grid, the yield's lower bound is at or above ``lifetime_yield``; 0 when the
first time already fails; the grid's last time means "at least that long".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from pipeline.effects.drift import DriftCompensation
from pipeline.evaluation.statistics import summarize
from pipeline.perturbation import PerturbationConfig

COMPENSATIONS = tuple(mode.value for mode in DriftCompensation)  #: every time is read without and with compensation


@dataclass(frozen=True)
class Lifetime:
    """The target's chips over time: per chip, the summary per (compensation, time), the lifetimes."""

    per_chip: pd.DataFrame  #: compensation, time_index, time_s, chip, accuracy
    curves: pd.DataFrame  #: one row per (compensation, time): acc_mean, acc_low, acc_high ... yield, yield_low, yield_high
    lifetimes: dict[str, float]  #: compensation -> lifetime in seconds (absent without a spec)
    lifetime_yield: float  #: the yield whose lower bound the chips must keep
    seconds: float

    def summaries(self, compensation: str) -> dict[str, float]:
        """``robust_lifetime_s`` (at the target's ``compensation``) and ``robust_lifetime_s_<mode>`` for each mode."""
        if not self.lifetimes:
            return {}
        return {"robust_lifetime_s": self.lifetimes[compensation], "lifetime_yield": self.lifetime_yield,
                **{f"robust_lifetime_s_{mode}": value for mode, value in self.lifetimes.items()}}


def lifetime_reads(times: Sequence[float]) -> int:
    """How many times the grid reads each chip: every time, without and with compensation."""
    return len(times) * len(COMPENSATIONS)


def lifetime(curve: pd.DataFrame, lifetime_yield: float) -> float:
    """The longest ``time_s`` of ``curve`` (sorted by time) up to which every ``yield_low`` is at least ``lifetime_yield``."""
    lasting = 0.0
    for time_s, low in zip(curve["time_s"], curve["yield_low"]):
        if low < lifetime_yield - 1e-12:
            break
        lasting = float(time_s)
    return lasting


def over_time(chip_model, accuracy, target: PerturbationConfig, times: Sequence[float], chips: int, first_chip: int,
              images: np.ndarray, labels: np.ndarray, accuracy_spec: float | None, lifetime_yield: float,
              progress: Callable[[str], None] | None = print) -> Lifetime:
    """The target condition at every time and compensation (inside :func:`hardware_evaluation`): see the module docstring."""
    from pipeline.hwmodel.chips import set_condition  # (TensorFlow: not needed to read a result)

    started = time.perf_counter()
    points = [(mode, index, float(moment), target.replace(drift_time_s=float(moment), drift_compensation=mode))
              for mode in COMPENSATIONS for index, moment in enumerate(times)]
    rows = []
    for start in range(0, chips, accuracy.chips):  # programmed once per pass: the draws serve every time
        for mode, index, moment, levels in points:
            set_condition(chip_model, levels, first_chip + start)
            rows += [{"compensation": mode, "time_index": index, "time_s": moment, "chip": chip, "accuracy": value}
                     for chip, value in enumerate(map(float, accuracy.per_chip(images, labels)[: chips - start]), start=start)]
        if progress and chips >= 100 and (start // accuracy.chips) % max(1, -(-chips // accuracy.chips) // 4) == 0:
            progress(f"[lifetime] {min(start + accuracy.chips, chips)}/{chips} chips at {len(times)} times x "
                     f"{len(COMPENSATIONS)} compensations, {time.perf_counter() - started:.0f} s")
    per_chip = pd.DataFrame(rows)
    curves = summarize(per_chip, accuracy_spec, by=("compensation", "time_index", "time_s"))
    lifetimes = ({mode: lifetime(curves[curves.compensation == mode], lifetime_yield) for mode in COMPENSATIONS}
                 if accuracy_spec is not None else {})
    return Lifetime(per_chip, curves, lifetimes, lifetime_yield, time.perf_counter() - started)


def describe(result: Lifetime, lifetime_yield: float) -> str:
    """``lifetime at yield >= 90%: 1 day (none), 1 year (global)`` for the terminal."""
    if not result.lifetimes:
        return "no lifetime (no accuracy_spec)"
    return f"lifetime at yield >= {100 * lifetime_yield:g}%: " + ", ".join(
        f"{readable_time(value)} ({mode})" for mode, value in result.lifetimes.items())


def readable_time(seconds: float) -> str:
    """``0 s``, ``1 h``, ``30 days``, ``1 year``, ``10 years``."""
    for unit, size in (("years", 365 * 86_400.0), ("days", 86_400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            value = seconds / size
            name = unit[:-1] if unit.endswith("s") and abs(value - 1) < 1e-9 else unit
            return f"{value:.3g} {name}"
    return f"{seconds:.3g} s"
