"""Benchmarks: what the hardware model costs, measured against the plain Larq model in one process.

    python -m benchmarks.run            # full run (about 30 minutes on 2 cores; the peer section: --only peers, about 5 minutes)
    python -m benchmarks.run --quick    # tiny sizes: a smoke run (the test suite runs it)

Writes ``benchmarks/results/results.json`` and ``results.md`` (or ``--output DIR``), and the
documentation page ``docs/performance.md`` (``--page``; a full run into the default directory
writes it; ``--render`` writes the pages again from the existing results.json). Ratios are
measured in one process after warm-up, medians over repeats; absolute times are context only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import pipeline  # noqa: F401
import tensorflow as tf

from pipeline.config import SWEEP_TARGET_CHIPS, DataConfig, ModelConfig, RobustnessConfig, TrainConfig
from pipeline.learning.data import prepare
from pipeline.deploy.interpreter import median_seconds
from pipeline.effects import EFFECTS
from pipeline.perturbation import TARGET_HARDWARE_FILE, PerturbationConfig, curve_point, load_target, typical_hardware
from pipeline.hwmodel.chips import attach_hardware, calibrate, hardware_evaluation, set_condition
from pipeline.learning.models import build_model
from pipeline.evaluation.bench import CompiledAccuracy
from pipeline.evaluation.robustness import (
    TargetValidation,
    chips_side_by_side,
    evaluate_robustness,
    model_targets,
)
from pipeline.learning.training import compile_model, seed_everything

from benchmarks import evaluation_cost, lifetime, peers, sensitivity, side_by_side, tiles
from benchmarks.machine import machine
from benchmarks.timing import (BATCH, QUICK_GRIDS, TargetChips, batching_gain, chip_draw_seconds, draw_seconds, gaussians_at_outputs,
                               hardware_aware_model, interleaved_seconds, ratio_text, train_step_runner, training_draws)

TARGETS = {"training_overhead": 1.15, "robust_eval_throughput": 0.8, "outside_fit_eval_s": 1.5, "memory_growth": 0.10,
           "target_yield_s": 10.0, "pruning_signal": 0.10, **tiles.TARGETS, **lifetime.TARGETS, **sensitivity.TARGETS,
           **evaluation_cost.TARGETS, **side_by_side.TARGETS}
ALL_EFFECTS = typical_hardware()  #: every effect of the registry at once, each at the middle of its curve
ONE_EFFECT = {effect.name: curve_point(effect, ALL_EFFECTS.parameters()[effect.curve.parameter]) for effect in EFFECTS}


def training_overhead(data, quick: bool) -> list[dict]:
    """Per-step time of the 1-bit models with every effect at once (and each alone) vs the plain model."""
    rows = []
    images, labels = tf.constant(data.images("train")[:BATCH]), tf.constant(data.labels("train")[:BATCH])
    rounds, steps = (3, 3) if quick else (40, 10)
    cases = (("mlp", "hidden"), ("cnn", "all")) if quick else (("mlp", "hidden"), ("cnn", "hidden"), ("cnn", "all"))
    for arch, layers in cases:
        config = ModelConfig(arch=arch, bits=1)
        variants = {"plain": None, "all": ALL_EFFECTS, **ONE_EFFECT}
        runners, models = {}, {}
        for name, levels in variants.items():
            models[name] = hardware_aware_model(config, levels and levels.replace(perturb_layers=layers))
            runners[name] = train_step_runner(models[name], images, labels, steps)
        seconds = interleaved_seconds(runners, rounds, steps)
        plain = seconds["plain"]
        draws = training_draws(models["all"])
        floor = draw_seconds(draws, rounds)
        rows.append({"model": f"{arch}-1bit", "perturbed_layers": layers, "levels": ALL_EFFECTS.label,
                     "plain_step_ms": 1000 * plain, "hardware_step_ms": 1000 * seconds["all"], "ratio": seconds["all"] / plain,
                     "only_ratio": {effect: seconds[effect] / plain for effect in ONE_EFFECT},
                     "gaussians_at_outputs": gaussians_at_outputs(models["all"]), "draw_ms": 1000 * floor,
                     "rng_floor_ratio": (plain + floor) / plain})
    return rows


def robustness_throughput(data, quick: bool) -> dict:
    """Images per second under perturbation (a new level for every pass, programming included) vs
    clean ``model.evaluate``: one chip per pass, and all 5 chips of a level side by side."""
    seed_everything(0)
    model = build_model(ModelConfig(bits=1))
    compile_model(model, TrainConfig())
    images, labels = data.images("test"), data.labels("test")
    repeats = 3 if quick else 10
    model.evaluate(images, labels, batch_size=1024, verbose=0)  # warm-up
    clean_seconds = median_seconds(lambda: model.evaluate(images, labels, batch_size=1024, verbose=0), repeats)
    levels = [ALL_EFFECTS.replace(**{effect.curve.parameter: effect.curve.grid[1 + (index + k) % (len(effect.curve.grid) - 1)]
                                     for k, effect in enumerate(EFFECTS)}) for index in range(repeats * 3)]
    result = {"images": len(labels), "clean_evaluate_images_per_s": len(labels) / clean_seconds}
    for chips in (1, 5):
        chip_model = attach_hardware(model, PerturbationConfig(), model_targets(model, "hidden"), chips_per_pass=chips)
        calibrate(chip_model, data.images("val"))
        accuracy = CompiledAccuracy(chip_model, 1024)
        perturbed, programming = [], []
        with hardware_evaluation(chip_model, ALL_EFFECTS, chip=0):
            accuracy.per_chip(images, labels)  # warm-up (the one trace)
            for index, level in enumerate(levels):
                # one chip per pass: a new chip every pass (as in the evaluation loop); side by side:
                # the level's chips stay programmed, only the level changes
                started = time.perf_counter()
                set_condition(chip_model, level, chip=index if chips == 1 else 0)
                programmed = time.perf_counter()
                accuracy.per_chip(images, labels)
                perturbed.append(time.perf_counter() - started)
                programming.append(programmed - started)
            if chips == 1:  # where a pass's time goes: fixed cost + cost per image (same programmed chip)
                sizes = [len(labels) // 4, len(labels) // 2, len(labels)]
                medians = [median_seconds(lambda: accuracy.per_chip(images[:size], labels[:size]), repeats * 2) for size in sizes]  # noqa: B023 (called at once)
                per_image, fixed = np.polyfit(sizes, medians, 1)
                result.update({"fixed_call_ms": 1000 * max(fixed, 0.0), "ms_per_1k_images": 1e6 * per_image})
        pass_seconds = statistics.median(perturbed)
        key = "one_chip" if chips == 1 else "side_by_side"
        result[key] = {"chips_per_pass": chips, "pass_ms": 1000 * pass_seconds, "programming_ms": 1000 * statistics.median(programming),
                       "images_per_s": chips * len(labels) / pass_seconds, "traces": accuracy.traces,
                       "conditions_evaluated": len(perturbed) + 1}
        result[key]["ratio"] = result[key]["images_per_s"] / result["clean_evaluate_images_per_s"]
    result["side_by_side_speedup"] = result["side_by_side"]["images_per_s"] / result["one_chip"]["images_per_s"]
    return result


def target_yield_evaluation(data, quick: bool) -> dict:
    """The target condition on many chips (yield and mean with intervals): the default 1-bit MLP at
    the target hardware file, 1,000 chips on the test split, programming included -- against this
    machine's floor, measured in the same run: the chips' matmuls at its best matmul rate plus
    their random numbers at its measured drawing rate."""
    seed_everything(0)
    model = build_model(ModelConfig(bits=1))
    target, accuracy_spec = load_target(Path(__file__).resolve().parents[1] / TARGET_HARDWARE_FILE)
    chips = 100 if quick else 1000
    timed = TargetChips(model, target, accuracy_spec, chips, data)
    seconds, found = timed.seconds()
    dense = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Dense)]
    flops_per_chip = sum(2 * len(timed.labels) * int(np.prod(layer.kernel.shape)) for layer in dense)
    peak = matmul_flops_per_second(max(dense, key=lambda layer: int(np.prod(layer.kernel.shape))).kernel.shape, quick)
    draws_ms = chip_draw_seconds(timed.model, target, len(timed.labels), quick) * 1000
    floor_ms = 1000 * flops_per_chip / peak + draws_ms
    return {"model": "mlp-1bit", "target": target.label, "chips": chips, "test_images": len(timed.labels),
            "chips_per_pass": timed.chips_per_pass, "seconds": seconds, "ms_per_chip": 1000 * seconds / chips,
            "gflops_per_chip": flops_per_chip / 1e9, "gflop_per_s": flops_per_chip * chips / seconds / 1e9,
            "machine_matmul_gflop_per_s": peak / 1e9, "draw_ms_per_chip": draws_ms, "floor_ms_per_chip": floor_ms,
            "ratio_to_floor": 1000 * seconds / chips / floor_ms, "seconds_at_floor": floor_ms * chips / 1000,
            "traces": timed.accuracy.traces, "chips_evaluated": len(found)}


def matmul_flops_per_second(kernel_shape, quick: bool) -> float:
    """This machine's float32 matmul rate (FLOP/s) on a large product with the given kernel (2 cores, TensorFlow's own)."""
    rows = 2048 if quick else 16384
    inputs, kernel = tf.random.normal([rows, kernel_shape[0]]), tf.random.normal(list(kernel_shape))
    product = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
    float(product(inputs, kernel))
    seconds = median_seconds(lambda: float(product(inputs, kernel)), 3 if quick else 10)
    return 2 * rows * kernel_shape[0] * kernel_shape[1] / seconds


def pruning_signal_cost(data, quick: bool) -> dict:
    """The sweep's per-epoch pruning signal (``val_target_accuracy`` on one chip of the target)
    against the epoch it follows: a 1-bit MLP trained at the target's levels, as a sweep trial is."""
    from pipeline.learning.training import train

    target, _ = load_target(Path(__file__).resolve().parents[1] / TARGET_HARDWARE_FILE)
    config = ModelConfig(bits=1, hidden_units=(128,) if quick else (512, 512))
    seed_everything(0)
    model = attach_hardware(build_model(config), target, target.targets(config), train_seed=0)
    timer, signal = EpochTimer(), TimedCallback(TargetValidation(data, target))
    train(model, data, TrainConfig(epochs=2 if quick else 6), callbacks=[timer, signal], verbose=0)
    epoch, cost = statistics.median(timer.seconds[1:]), statistics.median(signal.seconds[1:])
    return {"model": config.label, "hidden_units": list(config.hidden_units), "train_images": len(data.y_train),
            "epoch_s": epoch, "signal_s": cost, "first_signal_s": signal.seconds[0], "ratio": cost / epoch}


class EpochTimer(tf.keras.callbacks.Callback):
    """Seconds of each epoch (training steps and Keras' validation), before later callbacks' epoch ends."""

    def __init__(self):
        super().__init__()
        self.seconds, self.started = [], 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.started)


class TimedCallback(tf.keras.callbacks.Callback):
    """Runs ``callback`` and keeps the seconds of each of its epoch ends."""

    def __init__(self, callback: tf.keras.callbacks.Callback):
        super().__init__()
        self.callback, self.seconds = callback, []

    def set_model(self, model):
        super().set_model(model)
        self.callback.set_model(model)

    def on_train_begin(self, logs=None):
        self.callback.on_train_begin(logs)

    def on_epoch_end(self, epoch, logs=None):
        started = time.perf_counter()
        self.callback.on_epoch_end(epoch, logs)
        self.seconds.append(time.perf_counter() - started)


def side_by_side_evaluations(data, fashion, quick: bool) -> list[dict]:
    """A whole robustness evaluation (default grids, 5 chips) one chip per pass vs side by side:
    medians over interleaved repeats, and whether the two give the same table."""
    cases = [("mlp", "hidden", "mnist-bundled", data)]
    if fashion is not None:
        cases.append(("mlp", "hidden", "fashion-mnist", fashion))
    cases.append(("cnn", "hidden", "mnist-bundled", data))  # the convolutions plain: run once, the dense layers' chips side by side
    cases.append(("cnn", "all", "mnist-bundled", data))  # convolutions perturbed: why "automatic" keeps one chip per pass
    rows = []
    for arch, layers, name, dataset in cases:
        seed_everything(0)
        model = build_model(ModelConfig(arch=arch, bits=1))
        target = ALL_EFFECTS.replace(perturb_layers=layers)
        chips = 2 if quick else 5
        grids = QUICK_GRIDS if quick else {}
        configs = {"one_chip": RobustnessConfig(grids, chips=chips, target_chips=chips, target=target, chips_per_pass=1),
                   "side_by_side": RobustnessConfig(grids, chips=chips, target_chips=chips, target=target, chips_per_pass=chips)}
        seconds, tables = {key: [] for key in configs}, {}
        for _ in range(1 if quick else 3):
            for key, config in configs.items():
                result = evaluate_robustness(model, dataset, config, progress=None)
                seconds[key].append(result.seconds)
                tables[key] = result.per_chip
        one, side = statistics.median(seconds["one_chip"]), statistics.median(seconds["side_by_side"])
        chosen = chips_side_by_side(model, model_targets(model, layers), RobustnessConfig(target=target), chips)
        memory = dict.fromkeys(configs)
        if name == "mnist-bundled":
            memory = dict(zip(configs, evaluation_peaks_mb(arch, layers, chips, [c.chips_per_pass for c in configs.values()], quick)))
        batched = batching_gain(model, model_targets(model, layers), dataset.images("test"), chips, 3 if quick else 15)
        rows.append({"model": f"{arch}-1bit", "perturbed_layers": layers, "data": name, "test_images": len(dataset.y_test),
                     "chips": chips, "one_chip_s": one, "side_by_side_s": side, "speedup": one / side, "plain_batching_gain": batched,
                     "one_chip_peak_mb_added": memory["one_chip"], "side_by_side_peak_mb_added": memory["side_by_side"],
                     "automatic_chips_per_pass": chosen, "same_table": bool(tables["one_chip"].equals(tables["side_by_side"]))})
    return rows


def evaluation_peaks_mb(arch: str, layers: str, chips: int, chips_per_pass: list[int], quick: bool) -> list[float]:
    """Peak resident memory a robustness evaluation adds (MB) for each ``chips_per_pass``, measured in a
    fresh process each (a quick run: one process for all, the peak reset between them)."""
    import subprocess
    import sys

    groups = [chips_per_pass] if quick else [[value] for value in chips_per_pass]
    peaks = []
    for group in groups:
        command = [sys.executable, "-m", "benchmarks.run", "--evaluation-peak", arch, layers, str(chips), ",".join(map(str, group))]
        command += ["--quick"] if quick else []
        result = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=True)
        peaks += json.loads(result.stdout.strip().splitlines()[-1])["peak_mb_added"]
    return peaks


def measure_evaluation_peaks(arch: str, layers: str, chips: int, chips_per_pass: list[int], quick: bool) -> dict:
    """In this process: the resident-memory peak each evaluation adds, the peak (VmHWM) reset before each."""
    from sweeps.study import resident_memory_mb

    data = prepare(DataConfig(source="bundled", limit=300 if quick else 0))
    seed_everything(0)
    model = build_model(ModelConfig(arch=arch, bits=1))
    target = ALL_EFFECTS.replace(perturb_layers=layers)
    peaks = []
    for per_pass in chips_per_pass:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := the current resident size
        before = resident_memory_mb("VmHWM")
        config = RobustnessConfig(QUICK_GRIDS if quick else {}, chips=chips, target_chips=chips, target=target, chips_per_pass=per_pass)
        evaluate_robustness(model, data, config, progress=None)
        peaks.append(resident_memory_mb("VmHWM") - before)
    return {"peak_mb_added": peaks}


def robustness_scaling(data, fashion, quick: bool) -> list[dict]:
    seed_everything(0)
    model = build_model(ModelConfig(bits=1))
    grids = QUICK_GRIDS if quick else {}
    rows = []
    sets = [("mnist-bundled", data)] + ([] if fashion is None else [("fashion-mnist", fashion)])
    for name, dataset in sets:
        for chips in ((1, 2) if quick else (1, 5, 20)):
            config = RobustnessConfig(grids, chips=chips, target_chips=chips, target=ALL_EFFECTS)
            evaluate_robustness(model, dataset, config, progress=None)  # warm-up: builds this pass size's copy
            result = evaluate_robustness(model, dataset, config, progress=None)
            evaluations = len(result.per_chip) + 1  # (level, chip) pairs evaluated, and the clean accuracy
            rows.append({"data": name, "test_images": len(dataset.y_test), "chips": chips, "chip_evaluations": evaluations,
                         "seconds": result.seconds,
                         "ms_per_1k_images_per_chip_evaluation": 1000 * result.seconds / evaluations / (len(dataset.y_test) / 1000)})
    return rows


def sweep_costs(quick: bool, output: Path) -> dict:
    """A real in-process sweep: per-trial time split, and resident memory after trial 1 vs the last."""
    from pipeline.app import tracking
    from sweeps.config import SweepConfig
    from sweeps.space import load_space
    from sweeps.study import run_sweep

    n_trials = 2 if quick else 20
    store = Path(tempfile.mkdtemp(prefix="hwl-bench-"))
    tracking.use_store(f"sqlite:///{store / 'mlflow.db'}", "benchmark")
    data_config = DataConfig(source="bundled", limit=300 if quick else 0)
    model_config = ModelConfig(bits=1, hidden_units=(128,) if quick else (512, 512))
    train_config = TrainConfig(epochs=2 if quick else 5)
    space = load_space(Path(__file__).resolve().parents[1] / "sweeps" / "space.yaml")
    robustness = RobustnessConfig(chips=2 if quick else 5, target_chips=20 if quick else SWEEP_TARGET_CHIPS, target=space.target,
                                  accuracy_spec=space.accuracy_spec)
    sweep = SweepConfig(n_trials=n_trials, storage=f"sqlite:///{store / 'optuna.db'}", compare=False)
    started = time.perf_counter()
    study = run_sweep(data_config, model_config, train_config, robustness, space, sweep, prepare(data_config))
    wall = time.perf_counter() - started
    parts = {key: [] for key in ("time_build_s", "time_fit_s", "time_evaluate_s", "time_size_s", "time_robustness_s",
                                 "time_logging_s", "time_total_s")}
    rss = []
    for trial in sorted(study.trials, key=lambda t: t.number):
        metrics = tracking.run_metrics(trial.user_attrs["mlflow_run_id"])
        if "time_total_s" in metrics:
            for key in parts:
                parts[key].append(metrics[key])
        if "worker_rss_mb" in trial.user_attrs:
            rss.append(trial.user_attrs["worker_rss_mb"])
    medians = {key: statistics.median(values) for key, values in parts.items() if values}
    outside = medians["time_build_s"] + medians["time_size_s"] + medians["time_logging_s"]
    return {"trials": n_trials, "complete_trials": len(parts["time_total_s"]), "wall_s": wall, "median_s": medians,
            "outside_fit_eval_s": outside, "rss_mb_first": rss[0] if rss else None, "rss_mb_last": rss[-1] if rss else None,
            "memory_growth": (rss[-1] / rss[0] - 1) if len(rss) > 1 else None, "rss_mb_by_trial": rss}


def side_by_side_markdown(evaluations: list[dict], scaling: list[dict]) -> list[str]:
    """The whole evaluations one chip per pass and side by side, and how an evaluation scales with chips."""
    lines = ["", "| whole robustness evaluation (default grids) | perturbed layers | data | chips | one chip per pass s | side by side s "
              "| speedup | plain layers, chips' images in one call | peak memory added, one chip / side by side | same table "
              "| automatic chips per pass |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in evaluations:
        memory = ("-" if row["one_chip_peak_mb_added"] is None
                  else f"{row['one_chip_peak_mb_added']:,.0f} MB / {row['side_by_side_peak_mb_added']:,.0f} MB")
        lines.append(f"| {row['model']} | {row['perturbed_layers']} | {row['data']} ({row['test_images']:,} test images) | {row['chips']} | "
                     f"{row['one_chip_s']:.2f} | {row['side_by_side_s']:.2f} | {row['speedup']:.2f}x | "
                     f"{ratio_text(row.get('plain_batching_gain'))} | {memory} | "
                     f"{'yes' if row['same_table'] else 'NO'} | {row['automatic_chips_per_pass']} |")
    lines += ["", "The plain model column is context, not a bound: the plain layers the chips compute (from the first "
              "perturbed one on, one shared kernel) reading the chips' copies of the test images in one call against "
              "one call per chip -- what a larger batch alone gains those products. Side by side also programs a "
              "pass's chips together and shares each call's fixed cost; the number of random numbers stays the "
              "same (one per output element, image and chip for the output noise). With the convolutions "
              "perturbed, each chip's pass is already a batch of 1,000 images through every convolution."]
    lines += ["", "| scaling (MLP, automatic chips per pass): data | test images | chips | chip evaluations | seconds | "
              "ms per 1k images per chip evaluation |", "|---|---|---|---|---|---|"]
    for row in scaling:
        lines.append(f"| {row['data']} | {row['test_images']:,} | {row['chips']} | {row['chip_evaluations']} | {row['seconds']:.2f} | "
                     f"{row['ms_per_1k_images_per_chip_evaluation']:.2f} |")
    return lines


def markdown(results: dict) -> str:
    cpu = ", ".join(results["machine"][key] for key in ("cpu_model", "vector_unit") if key in results["machine"])
    lines = [f"Machine: {results['machine']['cores']} cores{f' ({cpu})' if cpu else ''}, {results['machine']['platform']}, TensorFlow "
             f"{results['machine']['tensorflow']}, {'quick' if results['quick'] else 'full'} run.", ""]
    effects = list(results["training_overhead"][0]["only_ratio"])
    lines += [f"Every effect at once: `{results['training_overhead'][0]['levels']}` (each at the middle of its default curve).", "",
              "| training step (1-bit, batch 64) | perturbed layers | plain ms | every effect ms | ratio (target <= 1.15) | "
              + " | ".join(f"{name} only" for name in effects) + " | Gaussians at the outputs per step | random draws ms | RNG floor ratio |",
              "|" + "---|" * (9 + len(effects))]
    for row in results["training_overhead"]:
        lines.append(f"| {row['model']} | {row['perturbed_layers']} | {row['plain_step_ms']:.2f} | {row['hardware_step_ms']:.2f} | "
                     f"{row['ratio']:.2f}x | " + " | ".join(f"{row['only_ratio'][name]:.2f}x" for name in effects)
                     + f" | {row['gaussians_at_outputs']:,} | {row['draw_ms']:.2f} | {row['rng_floor_ratio']:.2f}x |")
    r = results["robustness_throughput"]
    one, side = r["one_chip"], r["side_by_side"]
    lines += ["", "| robustness evaluation (1-bit MLP, hidden layers, every effect, a new level every pass, programming included) "
              "| images/s | ratio (target >= 0.8) | traces |", "|---|---|---|---|",
              f"| clean `model.evaluate` | {r['clean_evaluate_images_per_s']:,.0f} | 1.00 | - |",
              f"| one chip per pass | {one['images_per_s']:,.0f} | {one['ratio']:.2f} | {one['traces']} for {one['conditions_evaluated']} conditions |",
              f"| {side['chips_per_pass']} chips side by side per pass | {side['images_per_s']:,.0f} | {side['ratio']:.2f} | "
              f"{side['traces']} for {side['conditions_evaluated']} conditions |",
              "", f"One pass of {r['images']:,} images, one chip: {one['pass_ms']:.1f} ms = programming the chip {one['programming_ms']:.1f} ms "
              f"+ fixed call cost {r['fixed_call_ms']:.1f} ms + {r['ms_per_1k_images']:.1f} ms per 1,000 images. Side by side, "
              f"{side['chips_per_pass']} chips: {side['pass_ms']:.1f} ms per pass, programming {side['programming_ms']:.1f} ms (the chips' "
              f"deviation draws are kept across levels; a new level rescales them): {r['side_by_side_speedup']:.2f}x the images per second."]
    if "target_yield" in results:
        t = results["target_yield"]
        lines += ["", f"Target condition on many chips (the yield): {t['model']} at `{t['target']}`, {t['chips']:,} chips x "
                      f"{t['test_images']:,} test images, {t['chips_per_pass']} chips per pass, programming included: "
                      f"**{t['seconds']:.1f} s** (goal <= {results['targets']['target_yield_s']:.0f} s), {t['ms_per_chip']:.1f} ms per chip, "
                      f"{t['gflop_per_s']:.0f} GFLOP/s reached. This machine's floor, measured in the same run: "
                      f"{t['gflops_per_chip']:.2f} GFLOP per chip at its best matmul rate ({t['machine_matmul_gflop_per_s']:.0f} GFLOP/s) "
                      f"plus {t['draw_ms_per_chip']:.1f} ms of random numbers per chip = {t['floor_ms_per_chip']:.1f} ms per chip, "
                      f"{t['seconds_at_floor']:.1f} s for the chips: the evaluation runs at {t['ratio_to_floor']:.2f}x the floor."]
    if "pruning_signal" in results:
        p = results["pruning_signal"]
        lines += ["", f"Sweep pruning signal (`val_target_accuracy`, one chip of the target on the validation split, every epoch): "
                      f"{1000 * p['signal_s']:.0f} ms against a {1000 * p['epoch_s']:.0f} ms epoch of the {p['model']} "
                      f"({p['train_images']:,} training images) = **{100 * p['ratio']:.1f} %** of an epoch "
                      f"(goal <= {100 * results['targets']['pruning_signal']:.0f} %; the first epoch's, tracing included: "
                      f"{1000 * p['first_signal_s']:.0f} ms)."]
    lines += side_by_side_markdown(results["chips_side_by_side"], results["robustness_scaling"])
    if "side_by_side_limit" in results:
        lines += side_by_side.markdown(results["side_by_side_limit"])
    if "tiles" in results:
        lines += tiles.markdown(results["tiles"])
    if "lifetime" in results:
        lines += lifetime.markdown(results["lifetime"])
    if "cnn_sensitivity" in results:
        lines += sensitivity.markdown(results["cnn_sensitivity"])
    if "evaluation_cost" in results:
        lines += evaluation_cost.markdown(results["evaluation_cost"])
    s = results["sweep"]
    m = s["median_s"]
    lines += ["", f"Sweep: {s['trials']} trials ({s['complete_trials']} complete), {s['wall_s']:.0f} s wall. Median seconds per complete trial:", "",
              "| build | fit | clean evaluation | size (TFLite: best trial only) | robustness | logging | total | outside fit + evaluation (target < 1.5 s) |",
              "|---|---|---|---|---|---|---|---|",
              f"| {m['time_build_s']:.2f} | {m['time_fit_s']:.2f} | {m['time_evaluate_s']:.2f} | {m['time_size_s']:.2f} | "
              f"{m['time_robustness_s']:.2f} | {m['time_logging_s']:.2f} | {m['time_total_s']:.2f} | {s['outside_fit_eval_s']:.2f} |", ""]
    if s["memory_growth"] is not None:
        lines.append(f"Resident memory after trial 1: {s['rss_mb_first']:.0f} MB, after the last: {s['rss_mb_last']:.0f} MB "
                     f"(growth {100 * s['memory_growth']:.1f} %, target <= 10 %).")
    if "peers" in results:
        lines += peers.markdown(results["peers"])
    return "\n".join(lines) + "\n"


OPTIONAL_SECTIONS = ("peers",)  #: measured only when named in --only: their packages are an optional extra
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results"
PERFORMANCE_PAGE = Path(__file__).resolve().parents[1] / "docs" / "performance.md"
PAGE_INTRO = """# Performance

<!-- Written by `python -m benchmarks.run` from benchmarks/results/results.json; edit PAGE_INTRO in benchmarks/run.py. -->

`python -m benchmarks.run` (about 30 minutes on 2 cores; `--quick` for a smoke run, which the test
suite runs; `--only target_yield,pruning_signal` measures the sections named again and keeps the
others) measures, in one process after warm-up, medians over repeats, what the hardware model costs
against the plain Larq model. Every effect of the registry is measured at once and each alone, at
the middle level of its default curve.

* **Training overhead**: the compiled Keras train function on one batch, 40 interleaved rounds of
  10 steps per variant, so drift hits all variants alike. The **RNG floor** is the plain step plus
  the time to make, in one compiled function, the random draws the configuration needs per step:
  what no implementation of the effects can go below. Process variation of dense layers is drawn
  at their outputs (local reparameterization) and together with the output noise as one Gaussian;
  bit errors are drawn sparsely; effects that are off cost nothing.
* **Robustness evaluation**: images per second of the hardware-aware model against the clean
  `model.evaluate`, programming the chips included; one trace for every condition.
* **Target yield**: the 1,000 target chips of the yield, against this machine's floor (the chips'
  matmuls at its best rate, plus their random numbers), measured in the same run.
* **Sweep**: the cost of a trial outside training and clean evaluation, the pruning signal's cost
  per epoch, and resident memory across trials.
* **Tiles**: the training step with every effect on 256-row crossbar tiles against the plain step,
  and the target's 1,000 chips with tiles against the same target without them; the lowest ratio
  tiles could reach is the chips without tiles plus only the random numbers tiles add.
* **Chips side by side**: a whole evaluation with the chips of a level in one pass against one
  chip per pass, and whether the two give the same table (they must: bit for bit); beside it, what
  the plain model itself gains from reading the chips' images in one call.
* **Side by side, its limit**: the target's chips (MLP and CNN, the hidden layers or every layer
  perturbed), read as an evaluation reads them (the plain layers before the first perturbed one once
  per image), one per pass against 5 per pass, and the highest speed-up side by side can reach: one
  chip per pass over a floor of one chip's random numbers plus its share of the plain layers' forward.
* **Per-layer sensitivity** of the 1-bit CNN: every weighted layer perturbed alone at the target
  hardware, default curves and the target's 1,000 chips, the whole run and each layer.
* **The cost of one evaluation**: `evaluate_robustness` on 10 and on 200 chips, its fixed part and
  its per-chip part separately; a repeated evaluation reuses the copy a new one builds
  (`pipeline/evaluation/bench.py`).
* **Side by side with IBM aihwkit** (`--only peers`, after `make benchmark-peers` installed the
  optional extra: torch and aihwkit are gigabytes, never part of `make test`): the same trained
  model's chips in both tools -- agreement of the physics -- and each tool's speed; definitions and
  the aihwkit source file of each in `benchmarks/peers.py`.

"""


def performance_page(results: dict) -> str:
    """The documentation page: what is measured and how (:data:`PAGE_INTRO`), then the results' tables."""
    return PAGE_INTRO + "## Results\n\n" + markdown(results)


def write_reports(results: dict, output: Path, page: Path | None) -> None:
    (output / "results.md").write_text(markdown(results))
    if page is not None:
        page.write_text(performance_page(results))


SECTIONS = ("training_overhead", "robustness_throughput", "target_yield", "pruning_signal", "sweep", "chips_side_by_side",
            "robustness_scaling", "side_by_side_limit", "tiles", "lifetime", "cnn_sensitivity", "evaluation_cost")


def kept_results(parser: argparse.ArgumentParser, output: Path, only: list[str], quick: bool) -> dict:
    """What this run keeps of the existing results.json: with ``--only``, every section it does not name
    (the names and the peers' packages checked first); a full run, the optional sections measured before."""
    if unknown := [name for name in only if name not in (*SECTIONS, *OPTIONAL_SECTIONS)]:
        parser.error(f"--only: unknown section(s) {', '.join(unknown)}; known: {', '.join((*SECTIONS, *OPTIONAL_SECTIONS))}")
    if "peers" in only:
        try:
            peers.require()
        except peers.PeersMissing as missing:
            parser.error(f"--only peers: {missing}")
    path = output / "results.json"
    if not only:
        earlier = json.loads(path.read_text()) if path.is_file() else {}
        return {name: earlier[name] for name in OPTIONAL_SECTIONS if name in earlier and earlier.get("quick") == quick}
    if not path.is_file():
        parser.error(f"--only updates {path}, which does not exist: run every section first")
    earlier = json.loads(path.read_text())
    if earlier.get("quick") != quick:
        parser.error(f"--only: {path} is a {'quick' if earlier.get('quick') else 'full'} run; measure the same kind (with or without --quick)")
    return earlier


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT))
    parser.add_argument("--page", default="", help="the documentation page to write (default: docs/performance.md "
                                                   "for a full run into the default output directory)")
    parser.add_argument("--render", action="store_true", help="write results.md and the page again from results.json")
    parser.add_argument("--only", default="", help="comma-separated sections to measure again; the others are kept "
                                                   "from the existing results.json")
    parser.add_argument("--evaluation-peak", nargs=4, metavar=("ARCH", "LAYERS", "CHIPS", "CHIPS_PER_PASS"),
                        help=argparse.SUPPRESS)  # one measurement in this fresh process (used by the benchmark)
    args = parser.parse_args(argv)
    if args.evaluation_peak:
        arch, layers, chips, per_pass = args.evaluation_peak
        print(json.dumps(measure_evaluation_peaks(arch, layers, int(chips), [int(value) for value in per_pass.split(",")], args.quick)))
        return 0
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    page = Path(args.page) if args.page else (PERFORMANCE_PAGE if output == DEFAULT_OUTPUT and not args.quick else None)
    if args.render:
        write_reports(json.loads((output / "results.json").read_text()), output, page)
        return 0
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    kept = kept_results(parser, output, only, args.quick)  # bad --only: an error before anything is measured
    data = prepare(DataConfig(source="bundled", limit=300 if args.quick else 0))
    fashion = None
    if not args.quick and Path("/usr/share/datasets/fashion-mnist").is_dir():
        fashion = prepare(DataConfig(dataset="fashion_mnist", source="path", data_path="/usr/share/datasets/fashion-mnist"))
    results = {**kept, "quick": args.quick, "machine": machine(), "targets": TARGETS}
    for name, step in (("training_overhead", lambda: training_overhead(data, args.quick)),
                       ("robustness_throughput", lambda: robustness_throughput(data, args.quick)),
                       ("target_yield", lambda: target_yield_evaluation(data, args.quick)),
                       ("pruning_signal", lambda: pruning_signal_cost(data, args.quick)),
                       ("sweep", lambda: sweep_costs(args.quick, output)),  # before the CNN side by side's memory peak
                       ("chips_side_by_side", lambda: side_by_side_evaluations(data, fashion, args.quick)),
                       ("robustness_scaling", lambda: robustness_scaling(data, fashion, args.quick)),
                       ("side_by_side_limit", lambda: side_by_side.limit_costs(data, args.quick)),
                       ("tiles", lambda: tiles.tiles_costs(data, args.quick)),
                       ("lifetime", lambda: lifetime.lifetime_costs(data, args.quick)),
                       ("cnn_sensitivity", lambda: sensitivity.sensitivity_costs(data, args.quick)),
                       ("evaluation_cost", lambda: evaluation_cost.evaluation_costs(data, args.quick)),
                       ("peers", lambda: peers.peer_costs(data, args.quick))):
        if (only and name not in only) or (not only and name in OPTIONAL_SECTIONS):
            continue
        print(f"[benchmark] {name} ...", flush=True)
        started = time.perf_counter()
        results[name] = step()
        print(f"[benchmark] {name}: {time.perf_counter() - started:.0f} s", flush=True)
    (output / "results.json").write_text(json.dumps(results, indent=2))
    write_reports(results, output, page)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
