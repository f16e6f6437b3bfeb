"""Figures, built with matplotlib's object API (no pyplot state, no display needed)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

if TYPE_CHECKING:
    import pandas as pd


def confusion_figure(confusion: np.ndarray, title: str) -> Figure:
    figure = Figure(figsize=(5.5, 5))
    axes = figure.add_subplot()
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    image = axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (row, col), count in np.ndenumerate(confusion):
        if count:
            axes.text(col, row, str(count), ha="center", va="center", fontsize=7,
                      color="white" if rates[row, col] > 0.5 else "black")
    axes.set(xlabel="predicted class", ylabel="true class", title=title,
             xticks=range(confusion.shape[1]), yticks=range(confusion.shape[0]))
    figure.colorbar(image, ax=axes, fraction=0.046, label="fraction of true class")
    figure.tight_layout()
    return figure


def history_figure(history: Mapping[str, Sequence[float]], title: str) -> Figure:
    figure = Figure(figsize=(9, 3.5))
    loss_axes, acc_axes = figure.subplots(1, 2)
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for key, axes in (("loss", loss_axes), ("accuracy", acc_axes)):
        for prefix, style in (("", "-"), ("val_", "--")):
            if f"{prefix}{key}" in history:
                axes.plot(epochs, history[f"{prefix}{key}"], style, marker="o", label=f"{prefix or 'train_'}{key}")
        axes.set(xlabel="epoch", ylabel=key)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def comparison_figure(rows: Sequence[Mapping[str, float | str]]) -> Figure:
    """Test accuracy and packed model size of each compared model, side by side."""
    figure = Figure(figsize=(9, 3.8))
    acc_axes, size_axes = figure.subplots(1, 2)
    names = [f"{row['stage']}\n{row['model']}" for row in rows]
    colors = [f"C{i}" for i in range(len(rows))]
    accuracies = [100 * float(row["test_accuracy"]) for row in rows]
    sizes = [float(row["model_size_packed_bytes"]) / 1024 for row in rows]
    acc_axes.bar(names, accuracies, color=colors)
    acc_axes.set(ylabel="test accuracy (%)", ylim=(max(0.0, min(accuracies) - 10), 100), title="accuracy")
    size_axes.bar(names, sizes, color=colors)
    size_axes.set(ylabel="packed size (KiB)", yscale="log", title="model size (weights at their bit width)")
    for axes, values, fmt in ((acc_axes, accuracies, "{:.2f}%"), (size_axes, sizes, "{:.1f} KiB")):
        for index, value in enumerate(values):
            axes.annotate(fmt.format(value), (index, value), ha="center", va="bottom", fontsize=8)
        axes.tick_params(axis="x", labelrotation=15)
    figure.tight_layout()
    return figure


def robustness_figure(curves_by_model: Mapping[str, "pd.DataFrame"], title: str) -> Figure:
    """Accuracy vs perturbation strength, one panel per effect: the mean over chips with a band
    from the worst to the best chip, and each model's target-condition mean as a dotted line."""
    from pipeline.effects import EFFECTS

    figure = Figure(figsize=(4.4 * len(EFFECTS), 4.2))
    panels = figure.subplots(1, len(EFFECTS), sharey=True)
    for color, (label, curves) in zip((f"C{i}" for i in range(10)), curves_by_model.items()):
        target = curves.loc[curves.effect == "target", "acc_mean"]
        for axes, effect in zip(panels, EFFECTS):
            curve = curves.loc[curves.effect == effect.name].sort_values("level")
            levels = curve["level"].to_numpy()
            axes.plot(levels, 100 * curve["acc_mean"], "-o", color=color, markersize=3, label=label)
            axes.fill_between(levels, 100 * curve["acc_min"], 100 * curve["acc_max"], color=color, alpha=0.2)
            if len(target):
                axes.axhline(100 * float(target.iloc[0]), color=color, linestyle=":", linewidth=1)
    for axes, effect in zip(panels, EFFECTS):
        axes.set(xlabel=effect.curve.label)
        axes.grid(alpha=0.3)
        if effect.curve.log:  # symmetric-log: the grid may hold 0
            positive = [level for level in effect.curve.grid if level > 0]
            axes.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
        if effect.curve.stronger_when_smaller:
            axes.invert_xaxis()  # the stronger effect to the right
    panels[0].set_ylabel("test accuracy (%)  [band: min..max over chips]")
    panels[0].legend(title="dotted: target condition", fontsize=8, title_fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return figure
