"""Per-layer sensitivity: which layer of a trained model to protect first.

The robustness evaluation (:func:`pipeline.evaluation.robustness.evaluate_robustness`) is run once per layer
with **only that layer perturbed**: every effect's one-factor curve and the target condition, on
the same chips (chip ``c`` is the same draw in every run). For layer ``L`` and effect ``e``:

* ``sensitivity/<L>/<e>`` = the mean accuracy over ``e``'s curve (its ``robust_auc``) with only
  ``L`` perturbed, and ``sensitivity/<L>/<e>_drop`` = clean accuracy minus it (in [0, 1]);
* ``sensitivity/<L>/target`` (with ``_low`` / ``_high``, its 95 % interval over chips) and
  ``sensitivity/<L>/target_drop``; with a spec, ``sensitivity/<L>/target_yield``.

The layer whose target drop is largest is the one to protect first (more ADC bits, a larger
clip range, a more reliable memory -- or keep it digital); the effect with the largest drop on a
layer says what to protect it from.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from collections.abc import Callable, Sequence

import pandas as pd

from pipeline.config import RobustnessConfig
from pipeline.learning.data import PreparedData
from pipeline.effects import EFFECT_NAMES
from pipeline.evaluation.robustness import evaluate_robustness
from pipeline.hwmodel.chips import model_targets

TARGET = "target"


@dataclass(frozen=True)
class SensitivityResult:
    table: pd.DataFrame  #: one row per (layer, effect or "target"): accuracy, drop, interval, yield
    ranking: pd.DataFrame  #: one row per layer, most sensitive first
    clean_accuracy: float
    seconds: float
    layer_seconds: dict[str, float]  #: each layer's evaluation (its copy, curves and target chips)

    def metrics(self) -> dict[str, float]:
        """``sensitivity/<layer>/<effect>`` and ``..._drop``, and the target's interval and yield."""
        metrics = {}
        for row in self.table.to_dict(orient="records"):
            prefix = f"sensitivity/{row['layer']}/{row['effect']}"
            metrics[prefix] = row["accuracy"]
            metrics[f"{prefix}_drop"] = row["drop"]
            for key in ("low", "high", "yield"):
                if row["effect"] == TARGET and pd.notna(row.get(key)):
                    metrics[f"{prefix}_{key}"] = row[key]
        return metrics


def layer_sensitivity(model, data: PreparedData, config: RobustnessConfig, layers: Sequence[str] | None = None,
                      progress: Callable[[str], None] | None = print) -> SensitivityResult:
    """Every effect's curve and the target condition with one of ``layers`` perturbed at a time
    (default: the layers the target hardware perturbs)."""
    started = time.perf_counter()
    layers = tuple(layers or model_targets(model, config.target.perturb_layers))
    rows, clean, layer_seconds = [], None, {}
    for index, layer in enumerate(layers, start=1):
        alone = dataclasses.replace(config, target=config.target.replace(perturb_layers=layer))
        result = evaluate_robustness(model, data, alone, progress=None, over_time=False)
        clean, layer_seconds[layer] = result.clean_accuracy, result.seconds
        for effect in EFFECT_NAMES:
            accuracy = result.summaries[f"robust_auc_{effect}"]
            rows.append({"layer": layer, "effect": effect, "accuracy": accuracy, "drop": clean - accuracy})
        summaries = result.summaries
        rows.append({"layer": layer, "effect": TARGET, "accuracy": summaries["robust_acc_target"],
                     "drop": clean - summaries["robust_acc_target"], "low": summaries["robust_acc_target_low"],
                     "high": summaries["robust_acc_target_high"], "yield": summaries.get("robust_yield_target")})
        if progress:
            progress(f"[sensitivity] {index}/{len(layers)} {layer}: target accuracy {100 * summaries['robust_acc_target']:.2f}% "
                     f"(drop {100 * (clean - summaries['robust_acc_target']):.2f} points), {result.seconds:.1f} s")
    table = pd.DataFrame(rows)
    return SensitivityResult(table, ranking(table), clean, time.perf_counter() - started, layer_seconds)


def ranking(table: pd.DataFrame) -> pd.DataFrame:
    """Layers by their target accuracy drop, largest first, with the effect that hurts each most."""
    target = table[table.effect == TARGET].set_index("layer")["drop"]
    effects = table[table.effect != TARGET]
    worst = effects.loc[effects.groupby("layer")["drop"].idxmax()].set_index("layer")
    rows = [{"rank": rank, "layer": layer, "target_drop": drop, "most_sensitive_to": worst.loc[layer, "effect"],
             "its_drop": worst.loc[layer, "drop"]}
            for rank, (layer, drop) in enumerate(target.sort_values(ascending=False, kind="stable").items(), start=1)]
    return pd.DataFrame(rows)


def ranking_markdown(ranking_table: pd.DataFrame) -> str:
    lines = ["| protect | layer | target accuracy drop (points) | most sensitive to | its curve's mean drop (points) |",
             "|---|---|---|---|---|"]
    for row in ranking_table.to_dict(orient="records"):
        first = "**first**" if row["rank"] == 1 else str(row["rank"])
        lines.append(f"| {first} | {row['layer']} | {100 * row['target_drop']:.2f} | {row['most_sensitive_to']} | "
                     f"{100 * row['its_drop']:.2f} |")
    return "\n".join(lines) + "\n"
