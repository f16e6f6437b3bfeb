"""Estimates from random chips, each with its uncertainty (95 % intervals).

* **Yield** -- the fraction of chips that meet the specification, ``k`` of ``n`` -- with the
  Wilson score interval (Wilson, 1927): for ``p = k / n`` and ``z = 1.96``,
  ``(p + z^2 / 2n  +-  z sqrt(p (1 - p) / n + z^2 / 4n^2)) / (1 + z^2 / n)``. Unlike the normal
  ("Wald") interval it stays inside [0, 1] and is not empty at 0 / n or n / n (coverage close to
  95 % down to a handful of chips; Brown, Cai & DasGupta, 2001).
* **Mean accuracy over chips** -- Student's t interval ``mean +- t(0.975, n - 1) s / sqrt(n)``
  (``s`` the sample standard deviation): the uncertainty of the *mean over all chips of this
  hardware* from ``n`` sampled chips, not the spread between chips (that is ``acc_std``).

A condition without randomness (every effect off, or only deterministic ones) is the same on every
chip: it is evaluated once and its estimates are exact (an interval of zero width).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

CONFIDENCE = 0.95
Z = 1.959963984540054  #: the standard normal's 97.5 % quantile


def wilson_interval(passed: int, total: int, z: float = Z) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion ``passed / total``."""
    if total < 1 or not 0 <= passed <= total:
        raise ValueError(f"need 0 <= passed <= total and total >= 1; got {passed} of {total}")
    p = passed / total
    scale = 1.0 + z * z / total
    center = (p + z * z / (2 * total)) / scale
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / scale
    return around(p, max(0.0, center - half), min(1.0, center + half))


def around(estimate: float, low: float, high: float) -> tuple[float, float]:
    """``(low, high)`` clamped so that neither bound lies on the wrong side of ``estimate``: rounding
    puts the Wilson bound of 0 of n chips at ~1e-18, above the yield 0 (NaN bounds stay NaN: unknown)."""
    return (low if math.isnan(low) else min(low, estimate)), (high if math.isnan(high) else max(high, estimate))


def mean_interval(values: Sequence[float], exact: bool = False) -> tuple[float, float]:
    """Student's t interval of the mean of ``values`` (one value: no spread known, NaN bounds) --
    or, when ``exact`` (every chip is the same), the mean itself as both bounds."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if exact:
        return mean, mean
    if len(values) < 2:
        return math.nan, math.nan
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return around(mean, mean - half, mean + half)


def yield_estimate(accuracies: Sequence[float], spec: float, exact: bool = False) -> tuple[float, float, float]:
    """(yield, low, high): the fraction of ``accuracies`` at or above ``spec``, with its Wilson
    interval -- or, when ``exact`` (every chip is the same), the fraction itself as both bounds."""
    passed = np.asarray(accuracies, dtype=float) >= spec - 1e-12
    value = float(passed.mean())
    if exact:
        return value, value, value
    return (value, *wilson_interval(int(passed.sum()), len(passed)))


def estimate_text(record: Mapping[str, object], key: str, digits: int = 2) -> str:
    """``86.30% [85.91, 86.69]``: the fraction ``record[key]`` in percent and, when known, its 95 %
    interval ``<key>_low`` .. ``<key>_high`` (in points); ``-`` when the value is missing."""
    value, low, high = (record.get(name) for name in (key, f"{key}_low", f"{key}_high"))
    if missing(value):
        return "-"
    text = f"{100 * float(value):.{digits}f}%"
    if any(missing(bound) for bound in (low, high)):
        return text
    return f"{text} [{100 * float(low):.{digits}f}, {100 * float(high):.{digits}f}]"


def missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


CONDITION = ("effect", "level_index", "level")  #: what identifies a condition of the robustness curves


def summarize(per_chip, accuracy_spec: float | None, by: Sequence[str] = CONDITION):
    """Per condition (the columns ``by`` of ``per_chip``, one row per chip with its ``accuracy`` and
    whether the condition is ``random``): accuracy statistics over chips, the mean's 95 % interval,
    and (with a spec) the yield with its 95 % Wilson interval (exact where nothing is random)."""
    import pandas as pd

    records = []
    for keys, group in per_chip.groupby(list(by), sort=False):
        values = group["accuracy"].to_numpy()
        exact = "random" in group and not bool(group["random"].iloc[0])
        low, high = mean_interval(values, exact)
        record = {**dict(zip(by, keys)), "acc_mean": float(values.mean()), "acc_low": low, "acc_high": high,
                  "acc_std": float(np.std(values)), "acc_min": float(values.min()), "acc_max": float(values.max()),
                  "acc_p5": float(np.percentile(values, 5)), "chips": len(values)}
        if accuracy_spec is not None:
            record["yield"], record["yield_low"], record["yield_high"] = yield_estimate(values, accuracy_spec, exact)
        records.append(record)
    return pd.DataFrame(records)
