"""What crossbar tiles cost (``tile_rows``): the training step and the target's chips, with and without.

Training: the 1-bit MLP's compiled step with every effect of the registry on its hidden layers, on
256-row tiles, against the plain step and against the same effects without tiles (interleaved
rounds, medians). Evaluation: the 1,000 chips of a target with its tiles against the same target
without them -- the default target with 256-row tiles added, and the circuit-units target
(``sweeps/target_hardware_tiles.yaml``: 8-bit popcount counters, the first layer bit-serial).
"""

from __future__ import annotations

from pathlib import Path

import pipeline  # noqa: F401
import tensorflow as tf

from pipeline.config import ModelConfig
from pipeline.learning.models import build_model
from pipeline.learning.training import seed_everything
from pipeline.perturbation import TARGET_HARDWARE_FILE, load_target, typical_hardware

from benchmarks.timing import (BATCH, TargetChips, ratio_text, chip_draw_seconds, draw_seconds, hardware_aware_model, interleaved_seconds,
                               train_step_runner, training_draws)

TILE_ROWS = 256
TILES_TARGET_FILE = "sweeps/target_hardware_tiles.yaml"
ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"tiles_training": 1.5, "tiles_target": 1.5}  #: every effect on tiles / plain step; target with / without tiles


def tiles_costs(data, quick: bool) -> dict:
    return {"tile_rows": TILE_ROWS, "training": tiles_training(data, quick), "targets": tiles_targets(data, quick)}


def tiles_training(data, quick: bool) -> dict:
    """Per-step seconds: plain, every effect, every effect on tiles (1-bit MLP, hidden layers), and the
    RNG floors: the plain step plus the random numbers each configuration draws per step."""
    images, labels = tf.constant(data.images("train")[:BATCH]), tf.constant(data.labels("train")[:BATCH])
    rounds, steps = (3, 3) if quick else (40, 10)
    every = typical_hardware()
    config, runners, floors = ModelConfig(bits=1), {}, {}
    for name, levels in (("plain", None), ("every_effect", every), ("every_effect_tiles", every.replace(tile_rows=TILE_ROWS))):
        model = hardware_aware_model(config, levels)
        runners[name] = train_step_runner(model, images, labels, steps)
        floors[name] = draw_seconds(training_draws(model), rounds) if levels is not None else 0.0
    seconds = interleaved_seconds(runners, rounds, steps)
    return {"levels": every.replace(tile_rows=TILE_ROWS).label, **{f"{name}_ms": 1000 * value for name, value in seconds.items()},
            "ratio": seconds["every_effect_tiles"] / seconds["plain"],
            "tiles_over_untiled": seconds["every_effect_tiles"] / seconds["every_effect"],
            **{f"{name}_draw_ms": 1000 * value for name, value in floors.items() if value},
            "rng_floor_ratio": (seconds["plain"] + floors["every_effect_tiles"]) / seconds["plain"]}


def tiles_targets(data, quick: bool) -> list[dict]:
    """The target's chips with and without tiles (once each: a full run's 1,000 chips take minutes), and
    the time their random numbers take alone."""
    seed_everything(0)
    model = build_model(ModelConfig(bits=1))
    default, spec = load_target(ROOT / TARGET_HARDWARE_FILE)
    circuit, circuit_spec = load_target(ROOT / TILES_TARGET_FILE)
    chips = 20 if quick else 1000
    rows = []
    for name, tiled, accuracy_spec in (("target_hardware.yaml + 256-row tiles", default.replace(tile_rows=TILE_ROWS), spec),
                                       ("target_hardware_tiles.yaml", circuit, circuit_spec)):
        timed = {key: TargetChips(model, levels, accuracy_spec, chips, data)
                 for key, levels in (("tiles", tiled), ("without", tiled.replace(tile_rows=None)))}
        tiles_s, without_s = (timed[key].seconds()[0] for key in ("tiles", "without"))
        draws_s = {key: chips * chip_draw_seconds(chips_of.model, chips_of.target, len(chips_of.labels), quick)
                   for key, chips_of in timed.items()}  # the chips' random numbers alone
        rows.append({"target": name, "levels": tiled.label, "chips": chips, "chips_per_pass": timed["tiles"].chips_per_pass,
                     "tiles_s": tiles_s, "without_s": without_s, "ratio": tiles_s / without_s,
                     "tiles_draws_s": draws_s["tiles"], "without_draws_s": draws_s["without"],
                     "beyond_draws_ratio": (tiles_s - draws_s["tiles"]) / (without_s - draws_s["without"]),
                     "lowest_ratio": lowest_ratio(tiles_s, without_s, draws_s["tiles"], draws_s["without"])})
    return rows


def lowest_ratio(tiles_s: float, without_s: float, tiles_draws_s: float, without_draws_s: float) -> float:
    """A lower bound on the with / without ratio, under two assumptions: the random numbers add to the
    rest of the time (timed alone, one chip per call), and everything else tiles compute -- the same
    products, split by rows, and more partial sums for the output effects -- costs at least what it
    costs without them. It is the chips without tiles as measured plus only the random numbers tiles
    add (each tile's own output noise: physics, not overhead)."""
    return (without_s + max(tiles_draws_s - without_draws_s, 0.0)) / without_s


def markdown(result: dict) -> list[str]:
    t = result["training"]
    lines = ["", f"Crossbar tiles of {result['tile_rows']} rows (`tile_rows`; every effect's output effects on every tile's "
                 "partial sum, then the digital sum):", "",
             "| training step (1-bit MLP, hidden layers, batch 64) | plain ms | every effect ms | every effect on tiles ms "
             f"| ratio to plain (target <= {TARGETS['tiles_training']}) | tiles over no tiles | random draws on tiles ms "
             "| RNG floor ratio |", "|---|---|---|---|---|---|---|---|",
             f"| `{t['levels']}` | {t['plain_ms']:.2f} | {t['every_effect_ms']:.2f} | {t['every_effect_tiles_ms']:.2f} | "
             f"{t['ratio']:.2f}x | {t['tiles_over_untiled']:.2f}x | {t['every_effect_tiles_draw_ms']:.2f} | {t['rng_floor_ratio']:.2f}x |", "",
             f"| target chips (1-bit MLP, programming included) | levels | chips | chips per pass | with tiles s | without s "
             f"| ratio (target <= {TARGETS['tiles_target']}) | random numbers alone, with / without s | ratio beyond them "
             "| lowest possible ratio |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["targets"]:
        lines.append(f"| {row['target']} | `{row['levels']}` | {row['chips']:,} | {row['chips_per_pass']} | {row['tiles_s']:.1f} | "
                     f"{row['without_s']:.1f} | {row['ratio']:.2f}x | {row['tiles_draws_s']:.1f} / {row['without_draws_s']:.1f} | "
                     f"{row['beyond_draws_ratio']:.2f}x | {ratio_text(row.get('lowest_ratio'))} |")
    lines += ["", "The RNG floor ratio of the step is the plain step plus the random draws the tiles' effects make "
              "per step (as this implementation draws them), over the plain step. The lowest possible ratio of a "
              "target is the chips without tiles as measured plus only the random numbers tiles add (every tile's "
              "own output noise, per image and chip), over the chips without tiles: a lower bound if the random "
              "numbers add to the rest (they are timed alone) and nothing else gets cheaper with tiles. Both come "
              "from one run."]
    return lines
