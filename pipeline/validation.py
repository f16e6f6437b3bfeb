"""Validation helpers shared by every config: each failure is a :class:`ConfigError` naming the parameter.

Imports neither TensorFlow nor MLflow, so validating is instant.
"""

from __future__ import annotations

import enum
import math
from typing import Any


class ConfigError(ValueError):
    """Bad input: names the parameter and says what is allowed."""

    def __init__(self, parameter: str, message: str):
        self.parameter, self.message = parameter, message
        super().__init__(f"{parameter}: {message}")


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


def require_bool(parameter: str, value: Any) -> bool:
    """``1/0``, ``true/false``, ``yes/no`` (any case) as a bool."""
    text = str(value).strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no", ""):
        return False
    raise ConfigError(parameter, f"must be 1 or 0 (true or false); got {value!r}")


def optional_float(parameter: str, value: Any, low: float | None = None, high: float | None = None) -> float | None:
    """None for "not given" (None, empty text or ``none``), else :func:`require_float`."""
    if value is None or str(value).strip().lower() in ("", "none"):
        return None
    return require_float(parameter, value, low, high)


def parse_int_list(parameter: str, value: Any) -> tuple[int, ...]:
    """``"512,512"`` or ``[512, 512]`` as a tuple of positive ints."""
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [item.strip() if isinstance(item, str) else item for item in items]
    if not items or any(item == "" for item in items):
        raise ConfigError(parameter, f"must be a comma-separated list of positive integers; got {value!r}")
    return tuple(require_int(parameter, item, minimum=1) for item in items)
