"""Figures, built with matplotlib's object API (no pyplot state, no display needed)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from collections.abc import Mapping, Sequence

import matplotlib.ticker
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
    """Each compared model: clean, deployed and target accuracy (95 % interval over chips), packed
    and flatbuffer size, the deployed model's speed, and the target yield at the spec (95 % Wilson
    interval); a panel whose numbers no model has is left out."""
    deployed = [row for row in rows if row.get("deployed_latency_ms") is not None]
    with_yield = [row for row in rows if row.get("robust_yield_target") is not None]
    panels = 2 + bool(deployed) + bool(with_yield)
    figure = Figure(figsize=(4.4 * panels, 3.8))
    axes = list(figure.subplots(1, panels))
    names = [f"{row['stage']}\n{row['model']}" for row in rows]
    accuracy_panel(axes[0], rows, names)
    size_panel(axes[1], rows, names)
    if deployed:
        speed_panel(axes[2], rows, names)
    if with_yield:
        means, errors = interval_bars(rows, "robust_yield_target")
        axes[-1].bar(names, means, color=[f"C{i}" for i in range(len(rows))], yerr=errors, capsize=4)
        spec = with_yield[0].get("accuracy_spec")
        axes[-1].set(ylabel="chips meeting the spec (%)", ylim=(0, 105),
                     title="target yield" + (f" at spec {100 * float(spec):.1f}%" if spec is not None else "") + " (95% CI)")
    for panel in axes:
        panel.tick_params(axis="x", labelrotation=15)
    figure.tight_layout()
    return figure


def accuracy_panel(axes, rows: Sequence[Mapping], names: list[str]) -> None:
    accuracies = [100 * float(row["test_accuracy"]) for row in rows]
    axes.bar(names, accuracies, color=[f"C{i}" for i in range(len(rows))], label="clean test accuracy (Keras)")
    lowest = min(accuracies)
    deployed = [100 * float(row["deployed_accuracy"]) if row.get("deployed_accuracy") is not None else np.nan for row in rows]
    if not np.all(np.isnan(deployed)):
        axes.plot(range(len(rows)), deployed, "x", color="white", markersize=9, mew=2, label="deployed flatbuffer")
    if all(row.get("robust_acc_target") is not None for row in rows):
        means, errors = interval_bars(rows, "robust_acc_target")
        axes.errorbar(range(len(rows)), means, yerr=errors, fmt="D", color="black", capsize=4,
                      label="target hardware (95% CI over chips)")
        lowest = min(lowest, *means)
    axes.legend(fontsize=7, loc="lower right")
    axes.set(ylabel="test accuracy (%)", ylim=(max(0.0, lowest - 10), 100), title="accuracy")
    for index, value in enumerate(accuracies):
        axes.annotate(f"{value:.2f}%", (index, value), ha="center", va="bottom", fontsize=8)


def size_panel(axes, rows: Sequence[Mapping], names: list[str]) -> None:
    """Packed weights (Larq's count) next to the deployable flatbuffer, where it was measured."""
    positions = np.arange(len(rows))
    packed = [float(row["model_size_packed_bytes"]) / 1024 for row in rows]
    files = [float(row["model_size_tflite_bytes"]) / 1024 if row.get("model_size_tflite_bytes") is not None else np.nan
             for row in rows]
    axes.bar(positions - 0.2, packed, 0.4, color="C0", label="packed weights")
    axes.bar(positions + 0.2, files, 0.4, color="C1", label="deployed flatbuffer")
    for index, (pack, file) in enumerate(zip(packed, files)):
        axes.annotate(f"{pack:.0f}", (index - 0.2, pack), ha="center", va="bottom", fontsize=7)
        if not np.isnan(file):
            axes.annotate(f"{file:.0f}", (index + 0.2, file), ha="center", va="bottom", fontsize=7)
    axes.set_xticks(positions, names)
    axes.legend(fontsize=7)
    axes.set(ylabel="size (KiB, log)", yscale="log", title="model size")
    axes.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axes.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def speed_panel(axes, rows: Sequence[Mapping], names: list[str]) -> None:
    """The deployed model's latency at batch 1, annotated with its throughput at batch 64."""
    latency = [float(row["deployed_latency_ms"]) if row.get("deployed_latency_ms") is not None else np.nan for row in rows]
    axes.bar(names, latency, color=[f"C{i}" for i in range(len(rows))])
    for index, row in enumerate(rows):
        if row.get("deployed_images_per_s") is not None:
            axes.annotate(f"{latency[index]:.2f} ms\n{float(row['deployed_images_per_s']):,.0f} img/s", (index, latency[index]),
                          ha="center", va="bottom", fontsize=7)
    threads = next(int(row["deployed_threads"]) for row in rows if row.get("deployed_threads") is not None)
    axes.set(ylabel="ms per image (batch 1)", ylim=(0, 1.35 * np.nanmax(latency)),
             title=f"deployed model's speed ({threads} threads)")


def interval_bars(rows: Sequence[Mapping], key: str) -> tuple[list[float], np.ndarray]:
    """Values of ``key`` in percent, and their distances to ``<key>_low`` / ``<key>_high`` (error bars, >= 0)."""
    means = [100 * float(row[key]) if row.get(key) is not None else np.nan for row in rows]
    lows = [100 * float(row.get(f"{key}_low", row[key])) if row.get(key) is not None else np.nan for row in rows]
    highs = [100 * float(row.get(f"{key}_high", row[key])) if row.get(key) is not None else np.nan for row in rows]
    # never negative (an interval read from an older run may not be clamped); NaN: no known interval
    return means, np.maximum(np.array([np.subtract(means, lows), np.subtract(highs, means)]), 0.0)


def target_distribution_figure(accuracies: np.ndarray, summaries: Mapping[str, float], title: str) -> Figure:
    """Histogram of the chips' test accuracies at the target condition, with the spec line and the
    yield (``summaries`` of the robustness evaluation: the spec is there when one was given)."""
    from pipeline.evaluation.statistics import estimate_text

    figure = Figure(figsize=(6.5, 4))
    axes = figure.add_subplot()
    values = 100 * np.asarray(accuracies, dtype=float)
    axes.hist(values, bins=min(40, max(5, len(values) // 10)), color="C0", alpha=0.8)
    axes.axvline(100 * summaries["robust_acc_target"], color="black", linestyle="--", linewidth=1,
                 label=f"mean {estimate_text(summaries, 'robust_acc_target')}")
    if "robust_yield_target" in summaries:
        spec = summaries["accuracy_spec"]
        axes.axvline(100 * spec, color="C3", linewidth=2,
                     label=f"spec {100 * spec:.1f}%: yield {estimate_text(summaries, 'robust_yield_target', 1)}")
    axes.set(xlabel="test accuracy of the chip (%)", ylabel="chips", title=f"{title} ({len(values)} chips)")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def robustness_figure(curves_by_model: Mapping[str, pd.DataFrame], title: str) -> Figure:
    """Accuracy vs perturbation strength, one panel per effect: the mean over chips with its 95 %
    interval as a band, and each model's target-condition mean as a dotted line."""
    from pipeline.effects import EFFECTS

    figure = Figure(figsize=(4.4 * len(EFFECTS), 4.2))
    panels = figure.subplots(1, len(EFFECTS), sharey=True)
    for color, (label, curves) in zip((f"C{i}" for i in range(10)), curves_by_model.items()):
        target = curves.loc[curves.effect == "target", "acc_mean"]
        for axes, effect in zip(panels, EFFECTS):
            curve = curves.loc[curves.effect == effect.name].sort_values("level")
            levels = curve["level"].to_numpy()
            axes.plot(levels, 100 * curve["acc_mean"], "-o", color=color, markersize=3, label=label)
            low, high = ("acc_low", "acc_high") if "acc_low" in curve else ("acc_min", "acc_max")  # runs of older versions
            axes.fill_between(levels, 100 * curve[low], 100 * curve[high], color=color, alpha=0.25)
            if len(target):
                axes.axhline(100 * float(target.iloc[0]), color=color, linestyle=":", linewidth=1)
    for axes, effect in zip(panels, EFFECTS):
        axes.set(xlabel=effect.curve.label)
        axes.grid(alpha=0.3)
        if effect.curve.log:  # symmetric-log: the grid may hold 0
            positive = [level for level in effect.curve.grid if level > 0]
            axes.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
            axes.set_xlim(left=0)  # no negative decades left of the 0 level
        if effect.curve.integer:  # whole numbers (bits): integer ticks only
            axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        if effect.curve.stronger_when_smaller:
            axes.invert_xaxis()  # the stronger effect to the right
    panels[0].set_ylabel("test accuracy (%)  [band: 95% CI of the mean over chips]")
    panels[0].legend(title="dotted: target condition", fontsize=8, title_fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def lifetime_figure(curves: pd.DataFrame, lifetimes: Mapping[str, float], accuracy_spec: float | None, lifetime_yield: float,
                    title: str) -> Figure:
    """The target's chips over time (:mod:`pipeline.evaluation.lifetime`): mean accuracy (left) and yield
    at the spec (right) against the time since programming, log axis, 95 % bands, one line per
    compensation; the spec, the lifetime's yield and each lifetime marked."""
    from pipeline.evaluation.lifetime import readable_time

    with_yield = "yield" in curves and accuracy_spec is not None
    figure = Figure(figsize=(11 if with_yield else 6, 4.2))
    panels = figure.subplots(1, 2 if with_yield else 1, squeeze=False)[0]
    for color, (mode, curve) in zip(("C3", "C0"), curves.groupby("compensation", sort=False)):
        curve = curve.sort_values("time_s")
        times = curve["time_s"].to_numpy()
        for axes, key in zip(panels, ("acc", "yield")):
            mean = curve["acc_mean" if key == "acc" else "yield"]
            axes.plot(times, 100 * mean, "-o", color=color, markersize=3, label=f"compensation: {mode}")
            axes.fill_between(times, 100 * curve[f"{key}_low"], 100 * curve[f"{key}_high"], color=color, alpha=0.2)
            if key == "yield" and mode in lifetimes:
                axes.axvline(max(lifetimes[mode], times[0]), color=color, linestyle="--", linewidth=1,
                             label=f"lifetime ({mode}): {readable_time(lifetimes[mode])}")
    panels[0].set(ylabel="mean test accuracy over chips (%)")
    if accuracy_spec is not None:
        panels[0].axhline(100 * accuracy_spec, color="black", linewidth=1, label=f"spec {100 * accuracy_spec:.1f}%")
    if with_yield:
        panels[1].axhline(100 * lifetime_yield, color="black", linewidth=1, label=f"lifetime yield {100 * lifetime_yield:g}%")
        panels[1].set(ylabel="yield at the spec (%)  [band: 95% Wilson]", ylim=(-2, 102))
    for axes in panels:
        axes.set_xscale("log")
        axes.set(xlabel="time since programming (s)")
        axes.grid(alpha=0.3, which="both")
        axes.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def sensitivity_figure(table: pd.DataFrame, title: str) -> Figure:
    """Heatmap: accuracy drop (points) with one layer perturbed at a time, layers x (effects, target)."""
    layers = list(dict.fromkeys(table["layer"]))
    effects = list(dict.fromkeys(table["effect"]))
    drops = 100 * table.pivot(index="layer", columns="effect", values="drop").loc[layers, effects].to_numpy()
    figure = Figure(figsize=(1.6 * len(effects) + 2.5, 0.6 * len(layers) + 2))
    axes = figure.add_subplot()
    image = axes.imshow(drops, cmap="Reds", vmin=0, vmax=max(float(np.nanmax(drops)), 1e-9), aspect="auto")
    for (row, col), value in np.ndenumerate(drops):
        axes.text(col, row, f"{value:.1f}", ha="center", va="center", fontsize=8,
                  color="white" if value > 0.6 * np.nanmax(drops) else "black")
    axes.set(xticks=range(len(effects)), xticklabels=[f"{name}\n(curve mean)" if name != "target" else "target"
                                                      for name in effects],
             yticks=range(len(layers)), yticklabels=layers, title=title)
    figure.colorbar(image, ax=axes, fraction=0.046, label="accuracy drop (points), only this layer perturbed")
    figure.tight_layout()
    return figure
