"""Side by side with the field's reference simulator: the same physics in IBM aihwkit, agreement and speed in one run.

    pip install -e ".[peers]" && pip install --no-deps aihwkit-lightning==2.1.0   # or: make benchmark-peers
    python -m benchmarks.run --only peers

**Agreement.** The default 1-bit MLP is trained here; its exact weights (the kernels after Larq's
quantizer: +-1) and BatchNorm statistics are moved into a PyTorch model (:func:`exported_mlp`; the
sign activations are plain torch ops) whose hidden layers -- the target's -- are aihwkit analog
layers (``TorchInferenceRPUConfig``, one tile per layer, no input or output quantization, no bound,
no noise or bound management: ``simulator/parameters/io.py``, ``simulator/tiles/analog_mvm.py``).
Both tools evaluate the same 1,000 test images on 200 independently programmed chips each
(aihwkit: ``program_analog_weights()`` per chip, ``simulator/tiles/inference.py``), for process
variation alone, output noise alone and both:

* process variation, ours ``W_chip = W_q (1 + d z)`` per weight, once per chip
  (``pipeline/effects/weight_dev.py``); aihwkit: a noise model of this benchmark
  (:class:`benchmarks.peer_models.ProcessVariation`, its ``apply_programming_noise_to_conductance``:
  ``g (1 + d z)`` on each conductance of the pair of ``SinglePairConductanceConverter``, so
  ``w (1 + d z)``), because aihwkit's own programming noise (``inference/noise/pcm.py``) is additive in
  conductance with a polynomial std of its own;
* output noise, ours ``y + sigma n`` per output and pass in accumulator units (``noise_mode=absolute``,
  ``pipeline/effects/noise.py``); aihwkit ``forward.out_noise`` = sigma: ``out + out_noise *
  randn_like(out)`` (``simulator/tiles/analog_mvm.py``), in the same units here because the inputs are
  within ``inp_bound`` = 1 (pixels in [-1, 1], signs) and the weights +-1 are not rescaled
  (``mapping.weight_scaling_omega`` = 0).

Two means agree when Welch's t-test does not tell them apart at the 5 % level.

**Speed** (2 threads in each tool, interleaved rounds, medians): (a) each tool's hardware-aware
training step (process variation and output noise on the same layers) over its own plain step, MLP
and CNN, each tool's pair in rounds of its own (the models in torch have float weights: aihwkit's
analog layers hold no binarizer; the MVMs are the same sizes) -- aihwkit's ``modifier`` ``MULT_NORMAL`` (``w + w d z``, one draw per step:
``simulator/tiles/torch_tile.py``) and ``out_noise``; aihwkit-lightning's nearest, ``ADD_NORMAL``
(``d max|w| z``) and ``out_noise`` (``nn/modules/torch_utils/torch_linear.py``); (b) Monte-Carlo
evaluation throughput, chips x images per second, building and programming included, 200 and 1,000
chips of the MLP on the 1,000 test images.

This module needs neither torch nor aihwkit (its parts are tested without them);
:mod:`benchmarks.peer_models` holds what does.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

import pipeline  # noqa: F401
import tensorflow as tf

from pipeline.evaluation.statistics import mean_interval

from benchmarks.peer_export import exported_logits, exported_mlp

PACKAGES = ("torch", "aihwkit", "aihwkit_lightning")  #: what the peer benchmark imports
INSTALL = "pip install -e \".[peers]\" && pip install --no-deps aihwkit-lightning==2.1.0  (or: make benchmark-peers)"


class PeersMissing(RuntimeError):
    """The peer benchmark's packages are not installed (the message says how to install them)."""


def require(packages: Sequence[str] | None = None) -> None:
    """A :class:`PeersMissing` naming every package of ``packages`` (default :data:`PACKAGES`) that is not
    installed or does not import (aihwkit beside another torch than its own: an undefined symbol), and
    the install command."""
    missing, broken = [], []
    for name in packages or PACKAGES:
        if importlib.util.find_spec(name) is None:
            missing.append(name)
            continue
        try:
            importlib.import_module(name)
        except Exception as error:  # any failure to import (ImportError, OSError, an undefined symbol) is the same message
            broken.append(f"{name} ({type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]})")
    problems = ([f"{', '.join(missing)} (not installed)"] if missing else []) + ([f"{'; '.join(broken)} (does not import)"] if broken else [])
    if problems:
        raise PeersMissing(f"the peer benchmark needs {'; '.join(problems)}; install them with: {INSTALL}")


@dataclass(frozen=True)
class Agreement:
    """Two tools' mean accuracies over chips of one condition, with 95 % intervals, and whether they agree."""

    condition: str
    ours: tuple[float, float, float]  #: mean, low, high
    theirs: tuple[float, float, float]
    p_value: float  #: Welch's t-test of equal means

    @property
    def agree(self) -> bool:
        return self.p_value >= 0.05


def agreement(condition: str, ours: Sequence[float], theirs: Sequence[float]) -> Agreement:
    """The two tools' chips of ``condition`` compared: Welch's t-test (identical constant samples agree)."""
    from scipy import stats

    ours, theirs = np.asarray(ours, float), np.asarray(theirs, float)
    if len(ours) < 2 or len(theirs) < 2:
        raise ValueError(f"agreement of {condition}: at least 2 chips per tool; got {len(ours)} and {len(theirs)}")
    if ours.std() == 0 and theirs.std() == 0:
        p_value = 1.0 if ours[0] == theirs[0] else 0.0
    else:
        p_value = float(stats.ttest_ind(ours, theirs, equal_var=False).pvalue)
    interval = lambda values: (float(values.mean()), *mean_interval(values))  # noqa: E731
    return Agreement(condition, interval(ours), interval(theirs), p_value)


def ahead(their_cost: float, our_cost: float) -> str:
    """``2.31x``: how many times ours is ahead -- their cost over ours (seconds, or an overhead ratio)."""
    return f"{their_cost / our_cost:.2f}x" if our_cost > 0 and math.isfinite(their_cost / our_cost) else "-"


# --- the section of ``python -m benchmarks.run`` ------------------------------------------------------

DEVIATION, SIGMA = 0.2, 6.0  #: the target's process variation (20 %); output noise in accumulator units (about 0.3 x the RMS of a hidden layer's clean output)
CONDITIONS = {"process variation": (DEVIATION, 0.0), "output noise": (0.0, SIGMA), "both": (DEVIATION, SIGMA)}
ANALOG = "hidden"  #: the target's layers: the MLP's hidden dense layers


def peer_costs(data, quick: bool) -> dict:
    """Agreement and speed against aihwkit and aihwkit-lightning (the module docstring)."""
    require()
    import torch

    from pipeline.config import ModelConfig, TrainConfig
    from pipeline.learning.models import build_model
    from pipeline.learning.training import seed_everything, train

    seed_everything(0)
    model = build_model(ModelConfig(bits=1))
    train(model, data, TrainConfig(epochs=1 if quick else TrainConfig().epochs), verbose=0)
    chips = 20 if quick else 200
    return {"versions": versions(), "threads": torch.get_num_threads(), "deviation": DEVIATION, "sigma": SIGMA,
            "clean_accuracy": float(np.mean(exported_logits(exported_mlp(model), data.images("test")).argmax(1) == data.labels("test"))),
            "agreement": [vars(row) | {"agree": row.agree} for row in agreements(model, data, chips)],
            "throughput": throughputs(model, data, (chips, 50 if quick else 1000), rounds=1 if quick else 3),
            "training": training_ratios(data, quick)}


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("tensorflow", "larq", "torch", "aihwkit", "aihwkit-lightning")}


def our_target(deviation: float, sigma: float):
    from pipeline.perturbation import PerturbationConfig

    return PerturbationConfig(weight_dev_pct=100 * deviation, noise_sigma=sigma, noise_mode="absolute", perturb_layers=ANALOG)


def our_chips(model, data, deviation: float, sigma: float, chips: int) -> list[float]:
    """Our accuracies of ``chips`` chips at the condition, through the public API (every curve off)."""
    from pipeline.config import RobustnessConfig
    from pipeline.evaluation.robustness import evaluate_robustness

    from benchmarks.evaluation_cost import OFF

    result = evaluate_robustness(model, data, RobustnessConfig(grids=OFF, target=our_target(deviation, sigma), target_chips=chips),
                                 progress=None, over_time=False)
    return result.per_chip.loc[result.per_chip.effect == "target", "accuracy"].tolist()


def their_chips(model, data, deviation: float, sigma: float, chips: int) -> list[float]:
    from pipeline.hwmodel.chips import model_targets

    from benchmarks import peer_models

    return peer_models.chip_accuracies(exported_mlp(model), model_targets(model, ANALOG), deviation, sigma, data.images("test"),
                                       data.labels("test"), chips)


def agreements(model, data, chips: int) -> list[Agreement]:
    return [agreement(name, our_chips(model, data, *levels, chips), their_chips(model, data, *levels, chips))
            for name, levels in CONDITIONS.items()]


def throughputs(model, data, counts: tuple[int, int], rounds: int) -> list[dict]:
    """Chips x images per second at ``counts`` chips of both conditions' hardest (both effects), in
    interleaved rounds: ours on a new copy (its first evaluation of this architecture in the process)
    and on a reused one, aihwkit's (its model built each time); building and programming included."""
    import time

    from pipeline.evaluation import bench

    images = len(data.labels("test"))

    def seconds(evaluate, chips: int, fresh: bool = False) -> float:
        if fresh:
            bench.BENCHES.clear()
        started = time.perf_counter()
        evaluate(model, data, DEVIATION, SIGMA, chips)
        return time.perf_counter() - started

    rows = []
    for chips in counts:
        times = {"ours_new_copy": [], "ours": [], "aihwkit": []}
        for _ in range(rounds):
            times["ours_new_copy"].append(seconds(our_chips, chips, fresh=True))
            times["ours"].append(seconds(our_chips, chips))
            times["aihwkit"].append(seconds(their_chips, chips))
        median = {name: float(np.median(values)) for name, values in times.items()}
        rows.append({"chips": chips, "images": images, **{f"{name}_s": value for name, value in median.items()},
                     **{f"{name}_chip_images_per_s": chips * images / value for name, value in median.items()}})
    return rows


def training_ratios(data, quick: bool) -> list[dict]:
    """Each tool's hardware-aware training step over its own plain step, MLP (hidden layers) and CNN
    (every layer), batch 64: each tool's two steps in interleaved rounds of their own (a TensorFlow
    step right after a torch one runs slower while torch's OpenMP threads still spin: measured)."""
    from pipeline.config import ModelConfig

    from benchmarks import peer_models
    from benchmarks.timing import BATCH, hardware_aware_model, interleaved_seconds, train_step_runner

    images, labels = data.images("train")[:BATCH], data.labels("train")[:BATCH]
    rounds, steps = (2, 2) if quick else (20, 10)
    rows = []
    for arch, layers in (("mlp", "hidden"), ("cnn", "all")):
        ours = our_target(DEVIATION, SIGMA).replace(perturb_layers=layers)
        runners = {f"ours_{name}": train_step_runner(hardware_aware_model(ModelConfig(arch=arch, bits=1), levels), tf.constant(images),
                                                     tf.constant(labels), steps)
                   for name, levels in (("plain", None), ("hardware", ours))}
        seconds = interleaved_seconds(runners, rounds, steps)
        for tool in ("aihwkit", "lightning"):
            runners = {f"{tool}_{name}": peer_models.step_runner(peer_models.torch_model(arch, kind, DEVIATION, SIGMA), images, labels, steps)
                       for name, kind in (("plain", "plain"), ("hardware", tool))}
            seconds.update(interleaved_seconds(runners, rounds, steps))
        row = {"model": f"{arch}-1bit", "perturbed_layers": layers, **{f"{name}_ms": 1000 * value for name, value in seconds.items()}}
        for tool in ("ours", "aihwkit", "lightning"):
            row[f"{tool}_ratio"] = seconds[f"{tool}_hardware"] / seconds[f"{tool}_plain"]
        rows.append(row)
    return rows


def markdown(result: dict) -> list[str]:
    v = result["versions"]
    return ["", "## Side by side with IBM aihwkit", "",
            f"Versions: TensorFlow {v['tensorflow']}, Larq {v['larq']}; torch {v['torch']}, aihwkit {v['aihwkit']}, "
            f"aihwkit-lightning {v['aihwkit-lightning']}; {result['threads']} threads in each tool. The default 1-bit MLP trained "
            f"here (clean test accuracy {100 * result['clean_accuracy']:.2f} %), its hidden layers analog in both tools; process "
            f"variation {100 * result['deviation']:.0f} %, output noise sigma {result['sigma']:g} accumulator units "
            "(definitions: `benchmarks/peers.py`).", *agreement_lines(result), *throughput_lines(result), *training_lines(result),
            "", UNMATCHED]


def agreement_lines(result: dict) -> list[str]:
    lines = ["", "| condition | chips per tool | ours: mean accuracy [95 %] | aihwkit: mean accuracy [95 %] | Welch p | agree |",
             "|---|---|---|---|---|---|"]
    chips = result["throughput"][0]["chips"]
    for row in result["agreement"]:
        ours, theirs = row["ours"], row["theirs"]
        lines.append(f"| {row['condition']} | {chips} | {100 * ours[0]:.2f} [{100 * ours[1]:.2f}, {100 * ours[2]:.2f}] | "
                     f"{100 * theirs[0]:.2f} [{100 * theirs[1]:.2f}, {100 * theirs[2]:.2f}] | {row['p_value']:.2f} | "
                     f"{'yes' if row['agree'] else 'NO'} |")
    return lines


def throughput_lines(result: dict) -> list[str]:
    images = result["throughput"][0]["images"]
    lines = ["", f"| Monte-Carlo evaluation (both effects), chips x {images:,} test images | ours, new copy s | ours s | aihwkit s | "
                 "ours / aihwkit chips x images per s (new copy; reused) |", "|---|---|---|---|---|"]
    for row in result["throughput"]:
        lines.append(f"| {row['chips']:,} chips | {row['ours_new_copy_s']:.2f} | {row['ours_s']:.2f} | {row['aihwkit_s']:.2f} | "
                     f"{ahead(row['aihwkit_s'], row['ours_new_copy_s'])}; {ahead(row['aihwkit_s'], row['ours_s'])} |")
    return lines + ["", NEW_COPY]


def training_lines(result: dict) -> list[str]:
    lines = ["", "| training step, batch 64 | hardware-aware layers | ours: plain ms, hardware-aware ms, ratio | aihwkit: plain ms, "
                 "analog ms, ratio | aihwkit-lightning: plain ms, analog ms, ratio | ours ahead of aihwkit; of lightning |",
             "|---|---|---|---|---|---|"]
    for row in result["training"]:
        cells = [f"{row[f'{tool}_plain_ms']:.2f}, {row[f'{tool}_hardware_ms']:.2f}, {row[f'{tool}_ratio']:.2f}x"
                 for tool in ("ours", "aihwkit", "lightning")]
        lines.append(f"| {row['model']} | {row['perturbed_layers']} | " + " | ".join(cells) + f" | "
                     f"{ahead(row['aihwkit_ratio'], row['ours_ratio'])}; {ahead(row['lightning_ratio'], row['ours_ratio'])} |")
    return lines


NEW_COPY = ("Ours on a new copy is the process's first evaluation of this architecture: it builds one copy (the curves' "
            "pass of 5 chips, in whose passes the target's chips are read too), calibrates it and traces its compiled "
            "accuracy (the fixed part, see the cost of one evaluation above); aihwkit runs eagerly and traces nothing. Every "
            "later evaluation of the architecture (a sweep's next trial, a model evaluated again) reuses the copy: the "
            "second figure.")
UNMATCHED = ("Not matched, and why: relative output noise (ours scales with the RMS of each example's clean output; aihwkit "
             "has no such mode, so the comparison uses our absolute mode); aihwkit's own PCM programming noise (additive in "
             "conductance with a polynomial std: `inference/noise/pcm.py`) is not our definition, hence the benchmark's noise "
             "model; aihwkit-lightning has no multiplicative weight noise (its `ADD_NORMAL` is relative to max |w|) and scales "
             "its output noise by max |w| and the input range; the torch models train float weights (aihwkit's analog layers "
             "hold no binarizer) -- the matrix products have the sizes of ours.")
