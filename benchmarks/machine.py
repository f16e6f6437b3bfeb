"""The machine a benchmark ran on, as its results record it: absolute times are given with it."""

from __future__ import annotations

import os
import platform
from importlib.metadata import version
from pathlib import Path


def machine() -> dict:
    """The processor, cores and versions of this machine, for a run's results."""
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
            "tensorflow": version("tensorflow"), "platform": platform.platform(), **cpu_description()}


VECTOR_UNITS = ("avx512f", "avx2", "avx", "sve", "asimd", "neon")  #: the widest first


def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """The processor's model and its widest vector unit, from ``/proc/cpuinfo`` (nothing where it is not
    readable): absolute times depend on both (an AVX-512 core multiplies twice as fast as an AVX2 one)."""
    try:
        fields = [line.partition(":") for line in Path(cpuinfo).read_text(errors="replace").splitlines()]
    except OSError:
        return {}
    values = {key.strip(): value.strip() for key, _, value in reversed(fields)}  # the first processor's
    flags = set((values.get("flags") or values.get("Features") or "").split())
    described = {"cpu_model": values.get("model name"),
                 "vector_unit": next((unit for unit in VECTOR_UNITS if unit in flags), None)}
    return {key: value for key, value in described.items() if value}
