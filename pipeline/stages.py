"""The stages of the pipeline, each one MLflow run: prepare, training stages (baseline, qat), main.

The work itself is done by the pure functions of ``data``, ``models``, ``training``,
``evaluation`` and ``size``; this module composes them and hands their results to ``tracking``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import pipeline  # noqa: F401
import tensorflow as tf

from pipeline import compare, data as data_module, plots, tracking
from pipeline.config import DataConfig, ModelConfig, TrainConfig, flatten
from pipeline.data import PreparedData
from pipeline.evaluation import evaluate
from pipeline.models import build_model
from pipeline.size import larq_summary, size_report
from pipeline.training import seed_everything, train

MODEL_SAMPLE_IMAGES = 8  #: test images used to infer the logged model's signature


@dataclass(frozen=True)
class DataHandle:
    """Prepared data plus where it is recorded."""

    data: PreparedData
    run_id: str  #: the prepare run that logged it
    uri: str  #: artifact URI of the prepared ``.npz``
    reused: bool  #: True when an earlier FINISHED prepare run was reused

    @property
    def tags(self) -> dict[str, str]:
        return {
            "dataset": self.data.dataset.value,
            "data_source": self.data.source.value,
            "data_hash": self.data.content_hash,
            "data_run_id": self.run_id,
            "data_uri": self.uri,
        }


def prepare_stage(config: DataConfig, reuse: bool = True, data: PreparedData | None = None) -> DataHandle:
    """Prepare the data as a ``prepare`` run, or reuse a FINISHED one with the same params and hash."""
    data = data if data is not None else data_module.prepare(config)
    params = flatten("data", config)
    if reuse and (run_id := tracking.find_finished_run("prepare", {"data_hash": data.content_hash}, params)):
        print(f"[prepare] reusing finished prepare run {run_id} (same parameters, data hash {data.content_hash[:12]})")
        return DataHandle(data, run_id, f"runs:/{run_id}/{tracking.PREPARED_ARTIFACT}", reused=True)
    description = (
        f"Prepared {data.dataset.value} from source `{data.source.value}`: "
        f"{len(data.y_train)} train / {len(data.y_val)} val / {len(data.y_test)} test images, stratified, pixels in [-1, 1]."
    )
    tags = {"dataset": data.dataset.value, "data_source": data.source.value, "data_hash": data.content_hash}
    with tracking.stage_run("prepare", f"prepare-{data.dataset.value}-{data.source.value}", description, tags) as run_id:
        tracking.log_params(params)
        uri = tracking.log_prepared_data(data)
        for split in data_module.SPLITS:
            tracking.log_data_input(data, split, context=split)
        tracking.log_metrics({f"{split}_images": len(data.labels(split)) for split in data_module.SPLITS})
        tracking.log_tags({"data_uri": uri})
    print(f"[prepare] {description} Logged as run {run_id}.")
    return DataHandle(data, run_id, uri, reused=False)


def load_data_uri(data_uri: str) -> DataHandle:
    """Prepared data handed over by an earlier run as an artifact URI (``runs:/<id>/data/prepared.npz``)."""
    data = tracking.download_prepared_data(data_uri)
    run_id = data_uri.split("/")[1] if data_uri.startswith("runs:/") else ""
    return DataHandle(data, run_id, data_uri, reused=True)


def training_stage(
    stage: str, model_config: ModelConfig, train_config: TrainConfig, get_data: Callable[[], DataHandle]
) -> dict:
    """Build, train, evaluate, size and log one model as the run of ``stage``; returns its comparison row.

    ``get_data`` is called inside the stage's run, so a prepare run it starts is nested under it.
    """
    label = model_config.label
    what = "Float baseline" if model_config.is_float else f"Larq quantization-aware training ({model_config.bits}-bit)"
    with tracking.stage_run(stage, f"{stage}-{label}", f"{what} of the `{model_config.arch.value}`.", {"model": label}) as run_id:
        handle = get_data()
        tracking.log_tags({
            **handle.tags,
            "mlflow.note.content": f"{what} of the `{model_config.arch.value}` on {handle.data.dataset.value} "
            f"({handle.data.source.value} data), {train_config.epochs} epochs.",
        })
        tracking.log_params({**flatten("model", model_config), **flatten("train", train_config)})
        tracking.log_data_input(handle.data, "train", context="training")
        tf.keras.backend.clear_session()
        seed_everything(train_config.seed)
        model = build_model(model_config)
        print(f"[{stage}] training {label}: {model.count_params():,} weights, {train_config.epochs} epochs")
        result = train(model, handle.data, train_config, callbacks=[tracking.EpochMetricsLogger()])
        evaluation = evaluate(model, handle.data)
        size_metrics, size_tags = size_report(model, model_config.bits)
        metrics = {
            **evaluation.as_metrics(),
            **size_metrics,
            "training_seconds": result.seconds,
            "epochs": result.epochs_run,
        }
        tracking.log_metrics(metrics)
        tracking.log_tags(size_tags)
        tracking.log_figure(plots.confusion_figure(evaluation.confusion, f"{label}: test confusion"), "plots/confusion_matrix.png")
        tracking.log_figure(plots.history_figure(result.history, f"{label}: training"), "plots/training_curves.png")
        tracking.log_text(larq_summary(model), "larq_summary.txt")
        model_uri = tracking.log_model(model, handle.data.images("test")[:MODEL_SAMPLE_IMAGES])
        tracking.log_tags({"model_uri": model_uri})
    print(
        f"[{stage}] {label}: test accuracy {100 * evaluation.test_accuracy:.2f}%, packed size "
        f"{size_metrics['model_size_packed_bytes']:,} B, {result.seconds:.1f} s training (run {run_id})"
    )
    return {"model": label, "stage": stage, "run_id": run_id, "model_uri": model_uri, **metrics, **size_tags}


def main_stage(data_config: DataConfig, model_config: ModelConfig, train_config: TrainConfig) -> list[dict]:
    """prepare -> float baseline -> Larq QAT -> comparison, as one parent run with a child per stage."""
    quantized = model_config if not model_config.is_float else dataclasses.replace(model_config, bits=1)
    baseline_config = dataclasses.replace(quantized, bits=32)
    data = data_module.prepare(data_config)  # before the parent run: bad data fails before anything is logged
    description = (
        f"Float baseline vs {quantized.bits}-bit Larq QAT of the `{quantized.arch.value}` on {data.dataset.value}: "
        "accuracy, model size and training time compared (children: prepare, baseline, qat)."
    )
    tags = {"dataset": data.dataset.value, "data_source": data.source.value, "model": quantized.label}
    with tracking.stage_run("main", f"main-{quantized.label}", description, tags):
        tracking.log_params({**flatten("model", quantized), **flatten("train", train_config), **flatten("data", data_config)})
        handle = prepare_stage(data_config, data=data)
        tracking.log_tags({"data_run_id": handle.run_id, "data_uri": handle.uri, "data_reused": handle.reused})
        rows = [
            training_stage("baseline", baseline_config, train_config, lambda: handle),
            training_stage("qat", quantized, train_config, lambda: handle),
        ]
        log_comparison(rows)
    return rows


def log_comparison(rows: list[dict]) -> None:
    table = compare.comparison_table(rows)
    markdown = compare.to_markdown(table)
    print("\nComparison\n" + markdown)
    tracking.log_table(table, "comparison/comparison", markdown=markdown)
    tracking.log_figure(plots.comparison_figure(rows), "comparison/comparison.png")
    baseline, quantized = rows[0], rows[-1]
    headline = {key: quantized[key] for key in ("test_accuracy", "model_size_packed_bytes", "compression_ratio",
                                                 "model_size_tflite_bytes", "model_size_float32_bytes")}
    headline["baseline_test_accuracy"] = baseline["test_accuracy"]
    headline["accuracy_drop"] = baseline["test_accuracy"] - quantized["test_accuracy"]
    headline["size_reduction"] = baseline["model_size_packed_bytes"] / quantized["model_size_packed_bytes"]
    tracking.log_metrics(headline)
