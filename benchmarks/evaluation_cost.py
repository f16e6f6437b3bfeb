"""What one robustness evaluation costs besides its chips: the fixed part and the per-chip part, separately.

The default 1-bit MLP, every curve at its level that is off (each one clean pass), the target at
process variation (``weight_dev_pct`` of the target hardware file, every layer) on 10 and on 200 chips
of the test split, through :func:`pipeline.evaluation.robustness.evaluate_robustness` as a user of the
Python API calls it, after one evaluation has warmed TensorFlow up. An evaluation on a new copy
builds, calibrates and traces it; a repeated one reuses it (:mod:`pipeline.evaluation.bench`).
Rounds interleave a new copy and the two chip counts; from the medians,
per chip = (t_200 - t_10) / 190 and fixed = t_10 - 10 x per chip: what every sweep trial, every
layer of a sensitivity run and every evaluation again pays besides its chips.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pipeline  # noqa: F401

from pipeline.config import ModelConfig, RobustnessConfig
from pipeline.effects import EFFECTS
from pipeline.evaluation import bench
from pipeline.evaluation.robustness import evaluate_robustness
from pipeline.learning.models import build_model
from pipeline.learning.training import seed_everything
from pipeline.perturbation import TARGET_HARDWARE_FILE, PerturbationConfig, load_target

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"evaluation_fixed_s": 0.5}  #: the fixed part of a repeated evaluation, seconds
CHIPS = (10, 200)
OFF = {effect.name: str(effect.curve.grid[0]) for effect in EFFECTS}  #: every curve at its first level: off, one clean pass


def evaluation_costs(data, quick: bool) -> dict:
    seed_everything(0)
    model = build_model(ModelConfig(bits=1))
    target, _ = load_target(ROOT / TARGET_HARDWARE_FILE)
    variation = PerturbationConfig(weight_dev_pct=target.weight_dev_pct, perturb_layers="all")
    configs = {chips: RobustnessConfig(grids=OFF, target=variation, target_chips=chips) for chips in CHIPS}
    seconds(model, data, configs[CHIPS[0]])  # the process's first evaluation: TensorFlow's own warm-up
    rounds = 2 if quick else 7
    times = {"new": [], **{chips: [] for chips in CHIPS}}
    for _ in range(rounds):
        bench.BENCHES.clear()
        times["new"].append(seconds(model, data, configs[CHIPS[0]]))  # a new copy: built, calibrated, traced
        for chips, config in configs.items():
            times[chips].append(seconds(model, data, config))
    new, few, many = (statistics.median(times[key]) for key in ("new", *CHIPS))
    per_chip = (many - few) / (CHIPS[1] - CHIPS[0])
    return {"model": "mlp-1bit", "target": variation.label, "test_images": len(data.labels("test")), "rounds": rounds,
            "new_copy_s": new, **{f"chips_{chips}_s": statistics.median(times[chips]) for chips in CHIPS},
            "per_chip_ms": 1000 * per_chip, "fixed_s": few - CHIPS[0] * per_chip, "new_copy_fixed_s": new - CHIPS[0] * per_chip}


def seconds(model, data, config: RobustnessConfig) -> float:
    started = time.perf_counter()
    evaluate_robustness(model, data, config, progress=None, over_time=False)
    return time.perf_counter() - started


def markdown(result: dict) -> list[str]:
    return ["", f"The cost of one robustness evaluation ({result['model']}, `{result['target']}` on {CHIPS[0]} and {CHIPS[1]} chips "
                f"x {result['test_images']:,} test images, every curve at its level that is off; medians of {result['rounds']} "
                "interleaved rounds):", "",
            f"| {CHIPS[0]} chips on a new copy s | its fixed part s | {CHIPS[0]} chips s | {CHIPS[1]} chips s | "
            f"per chip ms | fixed part of a repeated evaluation s (target <= {TARGETS['evaluation_fixed_s']}) |", "|---|---|---|---|---|---|",
            f"| {result['new_copy_s']:.2f} | {result['new_copy_fixed_s']:.2f} | {result[f'chips_{CHIPS[0]}_s']:.2f} | "
            f"{result[f'chips_{CHIPS[1]}_s']:.2f} | {result['per_chip_ms']:.1f} | {result['fixed_s']:.2f} |",
            "", "A new copy is what an evaluation costs when nothing of its model's architecture was evaluated before in the "
                "process (the copy built, calibrated and traced); a repeated evaluation reuses it and copies the weights in."]
