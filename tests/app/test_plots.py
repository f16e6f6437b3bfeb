"""Every figure and table that shows an interval, at the edges: yields of exactly 0 and 1, zero-width
intervals (exact conditions), NaN intervals (one chip), and bounds an older run logged unclamped."""

import math

import numpy as np
import pandas as pd
import pytest

from pipeline.app import compare, plots
from pipeline.app.compare import ModelRow
from pipeline.effects import EFFECTS
from pipeline.evaluation.statistics import estimate_text, wilson_interval

EDGES = {  # (value, low, high) of robust_yield_target
    "zero yield": (0.0, *wilson_interval(0, 1000)),
    "full yield": (1.0, *wilson_interval(1000, 1000)),
    "zero yield, older run": (0.0, 1.3e-18, 0.0038),  # a Wilson bound just above its estimate, as runs logged it
    "full yield, older run": (1.0, 0.9962, 1.0 - 2.2e-16),
    "exact": (0.4, 0.4, 0.4),
    "one chip": (1.0, math.nan, math.nan),
}


def row(stage: str, value: float, low: float, high: float) -> ModelRow:
    metrics = {"test_accuracy": 0.9, "model_size_packed_bytes": 1000.0, "model_size_tflite_bytes": 1500.0,
               "model_size_float32_bytes": 32000.0, "compression_ratio": 32.0, "deployed_accuracy": 0.9,
               "deployed_latency_ms": 1.0, "deployed_images_per_s": 900.0, "deployed_threads": 2.0,
               "robust_acc_target": 0.8, "robust_acc_target_low": 0.8, "robust_acc_target_high": 0.8,
               "robust_yield_target": value, "robust_yield_target_low": low, "robust_yield_target_high": high,
               "accuracy_spec": 0.85}
    return ModelRow(stage, "mlp-1bit", "0" * 32, "models:/m-0", metrics, "larq-compute-engine")


@pytest.mark.parametrize("passed, total", [(0, 1), (1, 1), (0, 5), (5, 5), (0, 200), (200, 200), (0, 1000), (1000, 1000),
                                           (0, 10_000), (10_000, 10_000)])
def test_wilson_bounds_at_zero_and_full_yield_hold_their_estimate(passed, total):
    low, high = wilson_interval(passed, total)
    assert 0.0 <= low <= passed / total <= high <= 1.0
    assert (low == 0.0) if passed == 0 else (high == 1.0)


def test_comparison_figure_and_table_at_every_edge():
    rows = [row(edge, *values) for edge, values in EDGES.items()]
    means, errors = plots.interval_bars(rows, "robust_yield_target")
    known = ~np.isnan(errors)
    assert (errors[known] >= 0).all() and np.isnan(errors[:, -1]).all()  # one chip: no interval known
    assert errors[0, 0] == 0.0 and errors[1, 1] == 0.0  # a yield of 0 has no room below, of 1 none above
    figure = plots.comparison_figure(rows)  # 'yerr' must not contain negative values: once a crash here
    assert len(figure.axes) == 4
    markdown = compare.to_markdown(compare.comparison_table(rows))
    assert "| 0.00% [0.00, 0.38] |" in markdown and "| 100.00% [99.62, 100.00] |" in markdown
    assert "| 40.00% [40.00, 40.00] |" in markdown and "| 100.00% |" in markdown  # exact; one chip: no interval


@pytest.mark.parametrize("edge", EDGES)
def test_estimate_text_at_every_edge(edge):
    value, low, high = EDGES[edge]
    text = estimate_text({"y": value, "y_low": low, "y_high": high}, "y", 1)
    assert text.startswith(f"{100 * value:.1f}%") and (("[" in text) != math.isnan(low))


def test_robustness_and_target_figures_at_the_edges():
    curves = pd.DataFrame([{"effect": effect.name, "level": level, "acc_mean": 0.5, "acc_low": low, "acc_high": high}
                           for effect in EFFECTS for level, (low, high) in zip(effect.curve.grid[:3],
                                                                               [(0.5, 0.5), (math.nan, math.nan), (0.4, 0.6)])]
                          + [{"effect": "target", "level": 0.0, "acc_mean": 0.5, "acc_low": 0.5, "acc_high": 0.5}])
    assert len(plots.robustness_figure({"one chip": curves}, "edges").axes) == len(EFFECTS)
    for accuracies, (value, low, high) in (([0.5] * 10, EDGES["zero yield"]), ([0.9] * 10, EDGES["full yield"]),
                                           ([0.9], EDGES["one chip"])):
        summaries = {"robust_acc_target": float(np.mean(accuracies)), "robust_acc_target_low": math.nan,
                     "robust_acc_target_high": math.nan, "accuracy_spec": 0.85, "robust_yield_target": value,
                     "robust_yield_target_low": low, "robust_yield_target_high": high}
        assert plots.target_distribution_figure(np.array(accuracies), summaries, "edge").axes
