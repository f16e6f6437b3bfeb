"""What the per-layer sensitivity of the 1-bit CNN costs: every weighted layer perturbed alone.

``layer_sensitivity`` at ``sweeps/target_hardware.yaml`` with ``perturb_layers=all``: for each of the
five layers, every effect's default curve (5 chips) and the target condition on 1,000 chips, the
test split. The chips of a layer start at it: the plain layers before it run once per image
(:mod:`pipeline.evaluation.bench`), so a later layer costs less. The weights are the untrained
model's (seed 0): what a chip costs does not depend on them. The random numbers are the floor of
a layer's evaluation: one Gaussian per output element, image and chip for the output noise.
"""

from __future__ import annotations

from pathlib import Path

import pipeline  # noqa: F401

from pipeline.config import ModelConfig, RobustnessConfig
from pipeline.evaluation.sensitivity import layer_sensitivity
from pipeline.learning.models import build_model
from pipeline.learning.training import seed_everything
from pipeline.perturbation import TARGET_HARDWARE_FILE, load_target

from benchmarks.timing import QUICK_GRIDS

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"cnn_sensitivity_s": 200.0}  #: the whole run, seconds, on this machine


def sensitivity_costs(data, quick: bool) -> dict:
    seed_everything(0)
    model = build_model(ModelConfig(arch="cnn", bits=1))
    target, accuracy_spec = load_target(ROOT / TARGET_HARDWARE_FILE)
    config = RobustnessConfig(QUICK_GRIDS if quick else {}, chips=2 if quick else 5, target_chips=20 if quick else 1000,
                              target=target.replace(perturb_layers="all"), accuracy_spec=accuracy_spec)
    result = layer_sensitivity(model, data, config, progress=None)
    return {"model": "cnn-1bit", "target": config.target.label, "chips": config.chips, "target_chips": config.target_chips,
            "test_images": len(data.labels("test")), "seconds": result.seconds, "layer_seconds": result.layer_seconds}


def markdown(result: dict) -> list[str]:
    layers = result["layer_seconds"]
    return ["", f"Per-layer sensitivity ({result['model']}, `{result['target']}` on one layer at a time, default curves on "
                f"{result['chips']} chips, the target on {result['target_chips']:,} chips x {result['test_images']:,} test images):", "",
            f"| whole run s (target <= {TARGETS['cnn_sensitivity_s']:.0f}) | " + " | ".join(f"{name} s" for name in layers) + " |",
            "|---" * (len(layers) + 1) + "|",
            f"| **{result['seconds']:.0f}** | " + " | ".join(f"{seconds:.1f}" for seconds in layers.values()) + " |"]
