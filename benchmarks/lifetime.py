"""What the yield over time costs (``drift_times``): the target's chips read at every time, against one read.

The default 1-bit MLP at ``sweeps/target_hardware_drift.yaml`` (drift with the chip of
``target_hardware.yaml``): the target condition once (1,000 chips, programming included) against the
time grid (every time of ``drift_times``, without and with compensation: 2 x 7 reads of the same
chips), which draws each pass's chips once and only rescales their kernels at a new time. The
bound is (number of reads) x the one read; what programming once saves is the part of it that is
random numbers.
"""

from __future__ import annotations

import time
from pathlib import Path

import pipeline  # noqa: F401

from pipeline.config import ModelConfig, RobustnessConfig
from pipeline.evaluation.lifetime import COMPENSATIONS, lifetime_reads, over_time
from pipeline.hwmodel.chips import hardware_evaluation
from pipeline.learning.models import build_model
from pipeline.learning.training import seed_everything
from pipeline.perturbation import load_target

from benchmarks.timing import TargetChips, chip_draw_seconds

DRIFT_TARGET_FILE = "sweeps/target_hardware_drift.yaml"
ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"lifetime_reads": 1.0}  #: the time grid over (reads x one read): at most 1


def lifetime_costs(data, quick: bool) -> dict:
    seed_everything(0)
    model = build_model(ModelConfig(bits=1))
    target, accuracy_spec = load_target(ROOT / DRIFT_TARGET_FILE)
    chips = 100 if quick else 1000
    times = RobustnessConfig().drift_times
    timed = TargetChips(model, target, accuracy_spec, chips, data, over_time=True)  # the pass size of an evaluation with its lifetime
    one_read_s, _ = timed.seconds()
    with hardware_evaluation(timed.model, target, chip=0):
        started = time.perf_counter()
        result = over_time(timed.model, timed.accuracy, target, times, chips, 0, timed.images, timed.labels, accuracy_spec, 0.9,
                           progress=None)
        grid_s = time.perf_counter() - started
    reads = lifetime_reads(times)
    draws_s = chip_draw_seconds(timed.model, target, len(timed.labels), quick) * chips
    return {"target": target.label, "chips": chips, "times": len(times), "reads": reads, "one_read_s": one_read_s,
            "grid_s": grid_s, "bound_s": reads * one_read_s, "ratio_to_bound": grid_s / (reads * one_read_s),
            "draws_per_read_s": draws_s, "traces": timed.accuracy.traces, "lifetimes": result.lifetimes}


def markdown(result: dict) -> list[str]:
    return ["", f"Yield over time (`{DRIFT_TARGET_FILE}`, 1-bit MLP, {result['chips']:,} chips, {result['times']} times x "
                f"{len(COMPENSATIONS)} compensations = {result['reads']} reads of the same chips):", "",
            "| one read of the target s | the time grid s | bound: reads x one read s | ratio to the bound "
            f"(target <= {TARGETS['lifetime_reads']}) | random numbers of one read s | traces |", "|---|---|---|---|---|---|",
            f"| {result['one_read_s']:.1f} | {result['grid_s']:.1f} | {result['bound_s']:.1f} | {result['ratio_to_bound']:.2f}x | "
            f"{result['draws_per_read_s']:.1f} | {result['traces']} |"]
