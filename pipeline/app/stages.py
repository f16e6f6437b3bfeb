"""The stages of the pipeline, each one MLflow run: prepare, training stages (baseline, qat), main.

The work of a training stage is :func:`pipeline.flow.run_stage` (MLflow-free); this module opens
each stage's run, calls the work and logs its outcome through ``tracking``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from collections.abc import Callable, Sequence

import pipeline  # noqa: F401
import tensorflow as tf

from pipeline import flow
from pipeline.app import compare, plots, tracking
from pipeline.app.compare import ModelRow
from pipeline.config import DataConfig, ModelConfig, RobustnessConfig, TrainConfig, flatten
from pipeline.deploy.interpreter import SKIPPED
from pipeline.evaluation.clean import evaluate
from pipeline.evaluation.robustness import RobustnessResult
from pipeline.evaluation.sensitivity import SensitivityResult, layer_sensitivity, ranking_markdown
from pipeline.hwmodel.chips import model_targets, strip_hardware
from pipeline.learning import data as data_module
from pipeline.learning.data import PreparedData
from pipeline.learning.training import graph_memory_released
from pipeline.perturbation import PerturbationConfig

DEPLOYED_HEADLINE = ("deployed_accuracy", "deployed_agreement", "model_size_tflite_bytes", "deployed_latency_ms",
                     "deployed_images_per_s")  #: per-stage metrics of the deployed models on the main run
MODEL_SAMPLE_IMAGES = 8  #: test images used to infer the logged model's signature
MANIFEST_ARTIFACT = "deploy/hardware_manifest.json"


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
    stage: str,
    model_config: ModelConfig,
    train_config: TrainConfig,
    get_data: Callable[[], DataHandle],
    robustness: RobustnessConfig | None = None,
    perturbation: PerturbationConfig | None = None,
    run_name: str | None = None,
    monitors: Sequence[tf.keras.callbacks.Callback] = (),
    callbacks: Sequence[tf.keras.callbacks.Callback] = (),
    tags: dict[str, str] | None = None,
    on_start: Callable[[str], None] | None = None,
    convert_tflite: bool = True,
) -> ModelRow:
    """One model's :func:`pipeline.flow.run_stage` as the run of ``stage``, logged; returns its comparison row.

    With ``perturbation`` the targeted layers are hardware-aware during training (perturbation-aware
    training); with ``robustness`` the trained model's robustness is evaluated and logged.
    ``get_data`` is called inside the stage's run, so a prepare run it starts is nested under it.
    ``monitors`` add to each epoch's logs before they are logged; ``callbacks`` run after (pruning).
    ``on_start`` receives the run id as soon as the run exists (a sweep stores it on its trial).
    ``convert_tflite=False`` skips the deployable flatbuffer (see :func:`deploy_logged_run`).
    """
    run_name = run_name or f"{stage}-{model_config.label}" + (f"-{perturbation.label}" if perturbation is not None else "")
    what = stage_description(model_config, perturbation)
    run_tags = {"model": model_config.label, **(tags or {})}
    with graph_memory_released(), tracking.stage_run(stage, run_name, f"{what} of the `{model_config.arch.value}`.", run_tags) as run_id:
        if on_start:
            on_start(run_id)
        handle = get_data()
        log_stage_inputs(handle, model_config, train_config, perturbation, what)
        outcome = flow.run_stage(model_config, train_config, handle.data, run_name, perturbation, robustness,
                                 callbacks=[*monitors, tracking.EpochMetricsLogger(), *callbacks], convert_tflite=convert_tflite)
        with tracking.rescue_on_failure(outcome.model, run_id, run_name):
            row = log_outcome(stage, run_name, run_id, model_config.label, outcome, handle.data, robustness)
    print(f"[{stage}] {run_name}: test accuracy {100 * row['test_accuracy']:.2f}%, packed size "
          f"{row['model_size_packed_bytes']:,.0f} B, {row['training_seconds']:.1f} s training (run {run_id})")
    return row


def stage_description(model_config: ModelConfig, perturbation: PerturbationConfig | None) -> str:
    if perturbation is not None:
        return f"Perturbation-aware training ({perturbation.label} on {perturbation.perturb_layers} layers)"
    if model_config.is_float:
        return "Float baseline"
    return f"Larq quantization-aware training ({model_config.bits}-bit)"


def log_stage_inputs(handle: DataHandle, model_config: ModelConfig, train_config: TrainConfig,
                     perturbation: PerturbationConfig | None, what: str) -> None:
    """The data, configuration and description of a training stage, before it trains."""
    targets = perturbation.targets(model_config) if perturbation is not None else ()
    tracking.log_tags({
        **handle.tags,
        "mlflow.note.content": f"{what} of the `{model_config.arch.value}` on {handle.data.dataset.value} "
        f"({handle.data.source.value} data), {train_config.epochs} epochs.",
        **({"perturbation": perturbation.label, "perturbed_layers": ",".join(targets)} if perturbation else {}),
    })
    params = {**flatten("model", model_config), **flatten("train", train_config)}
    if perturbation is not None:
        params.update(flatten("perturb", perturbation))
    tracking.log_params(params)
    tracking.log_data_input(handle.data, "train", context="training")


def log_outcome(stage: str, run_name: str, run_id: str, label: str, outcome: flow.StageOutcome, data: PreparedData,
                robustness: RobustnessConfig | None) -> ModelRow:
    """Everything a stage produced, on its run: metrics, deployment, figures, summary, manifest, model,
    robustness, timings."""
    started = time.perf_counter()
    tracking.log_metrics(outcome.trained_metrics())
    log_deployment(run_id, outcome.deployment)
    tracking.log_figure(plots.confusion_figure(outcome.evaluation.confusion, f"{label}: test confusion"),
                        "plots/confusion_matrix.png")
    tracking.log_figure(plots.history_figure(outcome.training.history, f"{run_name}: training"), "plots/training_curves.png")
    tracking.log_text(outcome.summary(), "larq_summary.txt")
    if outcome.manifest is not None:
        tracking.log_dict(outcome.manifest, MANIFEST_ARTIFACT)
    else:
        tracking.log_tags({"hardware_manifest": outcome.manifest_error})
    model_uri = tracking.log_model(outcome.model, data.images("test")[:MODEL_SAMPLE_IMAGES])
    tracking.log_tags({"model_uri": model_uri})
    if outcome.robustness is not None:
        log_robustness(outcome.robustness, robustness, run_name)
    timings = outcome.timings.as_metrics(logging=time.perf_counter() - started)
    tracking.log_metrics(timings)
    curves = outcome.robustness.curves if outcome.robustness is not None else None
    return ModelRow(stage, label, run_id, model_uri, {**outcome.metrics(), **timings}, outcome.deployment.converter, curves)


def log_deployment(run_id: str, deployment: flow.DeployOutcome) -> None:
    """The deployed model's measurements and flatbuffer on ``run_id`` (tag ``tflite_converter`` always)."""
    tags = {"tflite_converter": deployment.converter}
    if deployment.measured is not None and deployment.measured.warning:
        tags["deployed_warning"] = deployment.measured.warning
    tracking.log_to_run(run_id, deployment.metrics(), tags)
    if deployment.flatbuffer is not None:
        tracking.log_bytes(run_id, deployment.flatbuffer.content, "deploy/model.tflite")


def deploy_logged_run(run_id: str, data: PreparedData) -> None:
    """Convert, run and time the model of a run that skipped it (a sweep trial), on that run."""
    tags = tracking.MlflowClient().get_run(run_id).data.tags
    if tags.get("tflite_converter") != SKIPPED:
        return
    deployable = strip_hardware(tracking.load_model(tags["model_uri"]))
    log_deployment(run_id, flow.deploy_model(deployable, data, tracking.run_name(run_id)))


def log_robustness(result: RobustnessResult, config: RobustnessConfig, title: str) -> None:
    """A robustness result and the configuration it was evaluated with, in the active run."""
    tracking.log_robustness(result, title)
    tracking.log_params(flatten_robustness(config))


def flatten_robustness(config: RobustnessConfig) -> dict[str, str]:
    params = {key: value for key, value in flatten("robustness", config).items() if key != "robustness.target"}
    return {**params, **flatten("target", config.target)}


def evaluate_stage(model_uri: str, model_run_id: str, data_uri: str, config: RobustnessConfig) -> ModelRow:
    """Robustness of any logged model, as its own ``evaluate`` run linked to the model's run."""
    model = tracking.load_model(model_uri)
    handle = load_data_uri(data_uri)
    model_run_name = tracking.run_name(model_run_id) if model_run_id else model.name
    tags = {**handle.tags, "model_run_id": model_run_id, "model_uri": model_uri, "model": model.name}
    description = (f"Robustness evaluation of `{model_run_name}` ({model_uri}) over {config.chips} chips per level of the "
                   f"curves and {config.target_chips} chips of the target hardware.")
    with tracking.stage_run("evaluate", f"evaluate-{model_run_name}", description, tags) as run_id:
        evaluation = evaluate(model, handle.data)
        tracking.log_metrics(evaluation.as_metrics())
        result = flow.stress(model, handle.data, config, model_run_name)
        log_robustness(result, config, model_run_name)
    metrics = {**evaluation.as_metrics(), **result.summaries, "robust_eval_seconds": result.seconds}
    return ModelRow("evaluate", model.name, run_id, model_uri, metrics, curves=result.curves)


def sensitivity_stage(model_uri: str, model_run_id: str, data_uri: str, config: RobustnessConfig,
                      layers: str = "") -> SensitivityResult:
    """Per-layer sensitivity of any logged model, as its own ``sensitivity`` run linked to the model's run."""

    model = tracking.load_model(model_uri)
    handle = load_data_uri(data_uri)
    chosen = model_targets(model, layers or config.target.perturb_layers)  # unknown names fail here, before any run
    model_run_name = tracking.run_name(model_run_id) if model_run_id else model.name
    tags = {**handle.tags, "model_run_id": model_run_id, "model_uri": model_uri, "model": model.name}
    description = (f"Per-layer sensitivity of `{model_run_name}` ({model_uri}): every effect's curve and the target "
                   f"condition with one of {', '.join(chosen)} perturbed at a time.")
    with tracking.stage_run("sensitivity", f"sensitivity-{model_run_name}", description, tags) as run_id:
        tracking.log_params({**flatten_robustness(config), "sensitivity.layers": ",".join(chosen)})
        result = layer_sensitivity(model, handle.data, config, chosen)
        tracking.log_metrics({**result.metrics(), "robust_acc_clean": result.clean_accuracy, "sensitivity_seconds": result.seconds})
        tracking.log_table(result.table, "sensitivity/table")
        markdown = ranking_markdown(result.ranking)
        tracking.log_text(markdown, "sensitivity/ranking.md")
        tracking.log_table(result.ranking, "sensitivity/ranking")
        tracking.log_figure(plots.sensitivity_figure(result.table, f"{model_run_name}: one layer perturbed at a time"),
                            "sensitivity/heatmap.png")
        first = result.ranking.iloc[0]
        tracking.log_tags({"most_sensitive_layer": first["layer"], "most_sensitive_to": first["most_sensitive_to"]})
    print(f"\nWhich layer to protect first ({model_run_name}, clean accuracy {100 * result.clean_accuracy:.2f}%)\n{markdown}"
          f"[sensitivity] {result.seconds:.1f} s (run {run_id})")
    return result


def main_stage(
    data_config: DataConfig,
    model_config: ModelConfig,
    train_config: TrainConfig,
    robustness: RobustnessConfig,
    perturbation: PerturbationConfig,
    compared: ModelConfig | None = None,
) -> list[ModelRow]:
    """prepare -> float baseline -> Larq QAT (-> a second, k-bit QAT: ``compared``) -> perturbation-aware
    QAT -> comparison, as one parent run with a child per stage; every trained model's robustness is evaluated."""
    quantized = model_config if not model_config.is_float else dataclasses.replace(model_config, bits=1)
    baseline_config = dataclasses.replace(quantized, bits=32)
    data = data_module.prepare(data_config)  # before the parent run: bad data fails before anything is logged
    precisions = f"{quantized.bits}-bit" + (f" and {compared.bits}-bit" if compared else "")
    description = (
        f"Float baseline vs {precisions} Larq QAT vs perturbation-aware QAT ({perturbation.label}) of the "
        f"`{quantized.arch.value}` on {data.dataset.value}: accuracy, size, speed of the deployed model, training time "
        "and robustness compared."
    )
    tags = {"dataset": data.dataset.value, "data_source": data.source.value, "model": quantized.label}
    with tracking.stage_run("main", f"main-{quantized.label}", description, tags):
        tracking.log_params({**flatten("model", quantized), **flatten("train", train_config), **flatten("data", data_config),
                             "main.compare_bits": compared.bits if compared else 0})
        handle = prepare_stage(data_config, data=data)
        tracking.log_tags({"data_run_id": handle.run_id, "data_uri": handle.uri, "data_reused": handle.reused})
        rows = [
            training_stage("baseline", baseline_config, train_config, lambda: handle, robustness),
            training_stage("qat", quantized, train_config, lambda: handle, robustness),
            *([training_stage("compared", compared, train_config, lambda: handle, robustness)] if compared else []),
            training_stage("perturb", quantized, train_config, lambda: handle, robustness, perturbation),
        ]
        log_comparison(rows)
    return rows


def log_comparison(rows: Sequence[ModelRow]) -> None:
    table = compare.comparison_table(rows)
    markdown = compare.to_markdown(table)
    print("\nComparison\n" + markdown)
    tracking.log_table(table, "comparison/comparison", markdown=markdown)
    tracking.log_figure(plots.comparison_figure(rows), "comparison/comparison.png")
    curves = {f"{row.stage} ({row.model})": row.curves for row in rows if row.curves is not None}
    if curves:
        tracking.log_figure(plots.robustness_figure(curves, "robustness of the compared models"),
                            "comparison/robustness_overlay.png")
    by_stage = {row.stage: row for row in rows}
    baseline, quantized = by_stage["baseline"], by_stage["qat"]
    headline = {key: quantized[key] for key in ("test_accuracy", "model_size_packed_bytes", "compression_ratio",
                                                 "model_size_float32_bytes")}  # the flatbuffer's: per stage, where measured
    headline["baseline_test_accuracy"] = baseline["test_accuracy"]
    headline["accuracy_drop"] = baseline["test_accuracy"] - quantized["test_accuracy"]
    headline["size_reduction"] = baseline["model_size_packed_bytes"] / quantized["model_size_packed_bytes"]
    for row in rows:
        for key in ("test_accuracy", *DEPLOYED_HEADLINE, *compare.ROBUSTNESS_COLUMNS, *compare.INTERVAL_BOUNDS):
            if key in row:
                headline[f"{row.stage}_{key}"] = row[key]
    tracking.log_metrics(headline)
