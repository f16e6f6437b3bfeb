"""One training stage's work, MLflow-free: build, train, evaluate, size, deploy, describe, stress.

:func:`run_stage` returns a frozen :class:`StageOutcome`; :mod:`pipeline.app.stages` opens the run,
calls it and logs the outcome, so the whole sequence runs and tests without a tracking store. It
prints its progress (the terminal, not MLflow); every number it reports is in the outcome.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, fields
from typing import Any
from collections.abc import Sequence

import pipeline  # noqa: F401
import tensorflow as tf

from pipeline.config import ModelConfig, RobustnessConfig, TrainConfig
from pipeline.deploy.export import ExportError, Flatbuffer
from pipeline.deploy.interpreter import SKIPPED, Deployment, deploy
from pipeline.deploy.manifest import hardware_manifest
from pipeline.deploy.size import ModelSize, larq_summary, model_size, saved_file_bytes
from pipeline.evaluation.clean import Evaluation, evaluate
from pipeline.evaluation.robustness import RobustnessResult, evaluate_robustness
from pipeline.hwmodel.chips import attach_hardware, strip_hardware
from pipeline.learning.data import PreparedData
from pipeline.learning.models import build_model
from pipeline.learning.training import TrainResult, seed_everything, train
from pipeline.perturbation import PerturbationConfig


@dataclass(frozen=True)
class Timings:
    """Wall time of each part of a stage's work, in seconds (metric ``time_<part>_s``)."""

    build: float
    fit: float
    evaluate: float
    size: float
    deploy: float
    robustness: float

    @property
    def work(self) -> float:
        return sum(getattr(self, item.name) for item in fields(self))

    def as_metrics(self, logging: float) -> dict[str, float]:
        """The parts, ``time_logging_s`` (what the edge spent recording them) and ``time_total_s``."""
        parts = {f"time_{item.name}_s": getattr(self, item.name) for item in fields(self)}
        return {**parts, "time_logging_s": logging, "time_total_s": self.work + logging}


@dataclass(frozen=True)
class DeployOutcome:
    """The deployable model as a flatbuffer, run in the interpreter -- or why there is none."""

    converter: str  #: the converter used, ``skipped``, or ``failed: <reason>`` (tag ``tflite_converter``)
    measured: Deployment | None = None
    flatbuffer: Flatbuffer | None = None

    def metrics(self) -> dict[str, float]:
        return self.measured.metrics() if self.measured else {}


@dataclass(frozen=True)
class StageOutcome:
    """Everything one training stage produced."""

    model: tf.keras.Model  #: as trained (hardware-aware layers where it was trained with the hardware model)
    deployable: tf.keras.Model  #: the plain model that is deployed, sized and described
    training: TrainResult
    evaluation: Evaluation
    size: ModelSize
    file_bytes: int  #: the saved Keras file
    deployment: DeployOutcome
    manifest: dict[str, Any] | None  #: the hardware manifest, None when the model cannot be described
    manifest_error: str | None
    robustness: RobustnessResult | None
    timings: Timings

    def trained_metrics(self) -> dict[str, float]:
        """Clean accuracy, sizes and training time."""
        return {**self.evaluation.as_metrics(), **self.size.as_metrics(), "model_size_file_bytes": self.file_bytes,
                "training_seconds": self.training.seconds, "epochs": self.training.epochs_run}

    def metrics(self) -> dict[str, float]:
        """Every number of the stage under its metric name (timings apart: see :meth:`Timings.as_metrics`)."""
        robust = {**self.robustness.summaries, "robust_eval_seconds": self.robustness.seconds} if self.robustness else {}
        return {**self.trained_metrics(), **self.deployment.metrics(), **robust}

    def summary(self) -> str:
        return larq_summary(self.deployable)


def run_stage(model_config: ModelConfig, train_config: TrainConfig, data: PreparedData, title: str,
              perturbation: PerturbationConfig | None = None, robustness: RobustnessConfig | None = None,
              callbacks: Sequence[tf.keras.callbacks.Callback] = (), convert_tflite: bool = True) -> StageOutcome:
    """Build and train ``model_config`` (hardware-aware on ``perturbation``'s layers when given), then
    evaluate, size, deploy (unless ``convert_tflite`` is False), describe it and -- with ``robustness``
    -- evaluate it over Monte-Carlo chips. ``title`` names it in the terminal."""
    started = time.perf_counter()
    tf.keras.backend.clear_session()
    seed_everything(train_config.seed)
    model = build_model(model_config)
    if perturbation is not None:
        model = attach_hardware(model, perturbation, perturbation.targets(model_config), train_seed=train_config.seed)
    build_seconds = time.perf_counter() - started
    print(f"[training] {title}: {model.count_params():,} weights, {train_config.epochs} epochs")
    training = train(model, data, train_config, callbacks=callbacks)
    return finish_stage(model, training, data, title, perturbation, robustness, convert_tflite, build_seconds)


def finish_stage(model: tf.keras.Model, training: TrainResult, data: PreparedData, title: str,
                 perturbation: PerturbationConfig | None, robustness: RobustnessConfig | None, convert_tflite: bool,
                 build_seconds: float) -> StageOutcome:
    """Everything after training (see :func:`run_stage`)."""
    clock = Clock()
    evaluation = evaluate(model, data)
    evaluate_seconds = clock.lap()
    deployable = strip_hardware(model)
    size, file_bytes = model_size(deployable), saved_file_bytes(deployable)
    size_seconds = clock.lap()
    deployment = deploy_model(deployable, data, title) if convert_tflite else DeployOutcome(SKIPPED)
    manifest, manifest_error = describe(deployable, data, perturbation, robustness.target if robustness else None, title)
    deploy_seconds = clock.lap()
    result = stress(model, data, robustness, title) if robustness is not None else None
    timings = Timings(build_seconds, training.seconds, evaluate_seconds, size_seconds, deploy_seconds, clock.lap())
    return StageOutcome(model, deployable, training, evaluation, size, file_bytes, deployment, manifest, manifest_error,
                        result, timings)


def stress(model: tf.keras.Model, data: PreparedData, config: RobustnessConfig, title: str) -> RobustnessResult:
    """The model's robustness over Monte-Carlo chips, with its summary line in the terminal."""
    result = evaluate_robustness(model, data, config)
    print(f"[robustness] {title}: {result.describe_target()}, {result.seconds:.1f} s, {result.traces} trace(s)")
    return result


class Clock:
    """Seconds between laps."""

    def __init__(self):
        self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        return seconds


def deploy_model(deployable: tf.keras.Model, data: PreparedData, title: str) -> DeployOutcome:
    """Convert the deployable model, run and time it on the test split. A model that cannot be
    converted says why in ``converter`` (``failed: <reason>``) and claims no size."""
    try:
        measured, flatbuffer = deploy(deployable, data.images("test"), data.labels("test"))
    except ExportError as error:
        print(f"WARNING: {title}: the model was not converted ({error})", file=sys.stderr, flush=True)
        return DeployOutcome(f"failed: {error}"[:5000])
    if measured.warning:
        print(f"WARNING: {title}: {measured.warning}", file=sys.stderr, flush=True)
    print(f"[deploy] {title}: {measured.converter} flatbuffer {measured.file_bytes:,} B, deployed accuracy "
          f"{100 * measured.accuracy:.2f}% (agrees with Keras on {100 * measured.agreement:.2f}%), "
          f"{measured.latency_ms:.3f} ms/image, {measured.images_per_s:,.0f} images/s at batch 64 ({measured.threads} threads)")
    return DeployOutcome(measured.converter, measured, flatbuffer)


def describe(deployable: tf.keras.Model, data: PreparedData, trained_with: PerturbationConfig | None,
             target: PerturbationConfig | None, title: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the hardware manifest, None), or (None, why) for a model it cannot describe (with a warning)."""
    try:
        return hardware_manifest(deployable, data.images("val"), trained_with=trained_with, target=target), None
    except ValueError as error:
        print(f"WARNING: {title}: no hardware manifest ({error})", file=sys.stderr, flush=True)
        return None, f"failed: {error}"[:5000]
