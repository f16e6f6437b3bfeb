"""The most chips side by side can gain at the target: one chip per pass against 5 in one pass.

Each case reads the target condition (``sweeps/target_hardware.yaml``, with the case's perturbed
layers) on the same chips of the test split both ways, as the evaluation reads them (on a bench: the
plain layers before the first perturbed one once per image), in interleaved rounds (medians), and
checks that the accuracies per chip are the same. Beside them, a bound on what side by side could reach.
A pass of 5 chips still draws each chip's random numbers and computes each chip's products, so a
chip side by side costs at least

    floor = (one chip's random numbers, drawn alone) + (the plain layers' forward on 5 chips'
            copies of the test images in one call) / 5,

and the highest speed-up side by side can reach is (seconds per chip, one per pass) / floor. It is
a bound if the draws and the products add (they are timed apart) and nothing in a hardware layer
costs less than in the plain layer. The weights are the untrained model's (seed 0): what a chip
costs does not depend on them.
"""

from __future__ import annotations

from pathlib import Path

import pipeline  # noqa: F401

from pipeline.config import ModelConfig
from pipeline.evaluation.robustness import model_targets
from pipeline.learning.models import build_model
from pipeline.learning.training import seed_everything
from pipeline.perturbation import TARGET_HARDWARE_FILE, load_target

from benchmarks.timing import TargetChips, chip_draw_seconds, interleaved_seconds, plain_chip_seconds

ROOT = Path(__file__).resolve().parents[1]
CASES = (("mlp", "hidden", 200), ("cnn", "hidden", 200), ("cnn", "all", 20))  #: (architecture, perturbed layers, chips)
CHIPS_PER_PASS = 5
TARGETS = {"cnn_side_by_side_speedup": 1.5}  #: convolutions perturbed: side by side over one chip per pass


def limit_costs(data, quick: bool) -> list[dict]:
    return [case_costs(data, arch, layers, 4 if quick else chips, quick) for arch, layers, chips in CASES]


def case_costs(data, arch: str, layers: str, chips: int, quick: bool) -> dict:
    """One case: seconds per chip both ways, the floor per chip and the highest speed-up."""
    seed_everything(0)
    model = build_model(ModelConfig(arch=arch, bits=1))
    target, accuracy_spec = load_target(ROOT / TARGET_HARDWARE_FILE)
    target = target.replace(perturb_layers=layers)
    per_pass = 2 if quick else CHIPS_PER_PASS
    timed = {mode: TargetChips(model, target, accuracy_spec, chips, data, chips_per_pass=size)
             for mode, size in (("one_chip", 1), ("side_by_side", per_pass))}
    accuracies = {}

    def runner(mode):
        def run():
            accuracies[mode] = timed[mode].seconds()[1]
        return run

    seconds = interleaved_seconds({mode: runner(mode) for mode in timed}, 1 if quick else 3, steps_per_round=chips)
    images = data.images("test")
    plain_s = plain_chip_seconds(model, model_targets(model, layers), images, per_pass, 3 if quick else 10)["together"] / per_pass
    draws_s = chip_draw_seconds(timed["one_chip"].model, target, len(images), quick)
    floor_s = plain_s + draws_s
    return {"model": f"{arch}-1bit", "perturbed_layers": layers, "target": target.label, "chips": chips, "test_images": len(images),
            "chips_per_pass": per_pass, "one_chip_ms": 1000 * seconds["one_chip"], "side_by_side_ms": 1000 * seconds["side_by_side"],
            "speedup": seconds["one_chip"] / seconds["side_by_side"], "plain_ms": 1000 * plain_s, "draws_ms": 1000 * draws_s,
            "floor_ms": 1000 * floor_s, "highest_speedup": seconds["one_chip"] / floor_s,
            "same_numbers": bool((accuracies["one_chip"] == accuracies["side_by_side"]).all())}


def markdown(rows: list[dict]) -> list[str]:
    target, per_pass = rows[0]["target"], rows[0]["chips_per_pass"]
    lines = ["", f"Chips side by side at the target (`{target}`, the test split, {per_pass} chips per pass "
                 "against one), and the highest speed-up side by side can reach (ms per chip):", "",
             f"| model | perturbed layers | chips | one chip per pass | side by side | speed-up | plain layers, {per_pass} chips in one "
             "call, per chip | random numbers of one chip | floor | highest possible speed-up | same numbers |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['perturbed_layers']} | {row['chips']} | {row['one_chip_ms']:.1f} | "
                     f"{row['side_by_side_ms']:.1f} | **{row['speedup']:.2f}x** | {row['plain_ms']:.1f} | {row['draws_ms']:.1f} | "
                     f"{row['floor_ms']:.1f} | **{row['highest_speedup']:.2f}x** | {'yes' if row['same_numbers'] else 'NO'} |")
    lines += ["", "The floor is what a chip side by side costs at least: its random numbers (drawn alone, in one compiled "
              "function) and its share of the plain layers' forward when the pass's chips read their images in one call. "
              "The highest possible speed-up is the time per chip one per pass over that floor: a bound if the two add and "
              "nothing in a hardware layer costs less than in the plain layer. With the convolutions perturbed, the output "
              "noise of a convolution is one Gaussian per position, channel, image and chip, and side by side does not "
              "change their number. With the hidden layers perturbed, the CNN's convolutions are plain: they run once per "
              "image, before the chips, and a chip costs its dense layers alone."]
    return lines
