"""The stages of the pipeline, each one MLflow run: prepare, training stages (baseline, qat), main.

The work itself is done by the pure functions of ``data``, ``models``, ``training``,
``evaluation`` and ``size``; this module composes them and hands their results to ``tracking``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import pipeline  # noqa: F401
import tensorflow as tf

from pipeline import compare, data as data_module, plots, tracking
from pipeline.config import DataConfig, ModelConfig, RobustnessConfig, TrainConfig, flatten
from pipeline.hardware import PerturbationConfig
from pipeline.data import PreparedData
from pipeline.evaluation import evaluate
from pipeline.models import build_model
from pipeline.chips import attach_hardware, strip_hardware
from pipeline.robustness import evaluate_robustness
from pipeline.deployment import SKIPPED, deploy
from pipeline.export import ExportError
from pipeline.manifest import hardware_manifest
from pipeline.size import larq_summary, model_size, saved_file_bytes
from pipeline.training import graph_memory_released, seed_everything, train

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
) -> dict:
    """Build, train, evaluate, size and log one model as the run of ``stage``; returns its comparison row.

    With ``perturbation`` the targeted layers are hardware-aware during training (perturbation-aware
    training); with ``robustness`` the trained model's robustness is evaluated and logged.
    ``get_data`` is called inside the stage's run, so a prepare run it starts is nested under it.
    ``monitors`` add to each epoch's logs before they are logged; ``callbacks`` run after (pruning).
    ``on_start`` receives the run id as soon as the run exists (a sweep stores it on its trial).
    ``convert_tflite=False`` skips the deployable flatbuffer (see :func:`deploy_logged_run`).
    """
    label = model_config.label
    run_name = run_name or f"{stage}-{label}" + (f"-{perturbation.label}" if perturbation is not None else "")
    if perturbation is not None:
        what = f"Perturbation-aware training ({perturbation.label} on {perturbation.perturb_layers} layers)"
    elif model_config.is_float:
        what = "Float baseline"
    else:
        what = f"Larq quantization-aware training ({model_config.bits}-bit)"
    targets = perturbation.targets(model_config) if perturbation is not None else ()
    description = f"{what} of the `{model_config.arch.value}`."
    with graph_memory_released(), tracking.stage_run(stage, run_name, description, {"model": label, **(tags or {})}) as run_id:
        if on_start:
            on_start(run_id)
        handle = get_data()
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
        started = time.perf_counter()
        tf.keras.backend.clear_session()
        seed_everything(train_config.seed)
        model = build_model(model_config)
        if perturbation is not None:
            model = attach_hardware(model, perturbation, targets, train_seed=train_config.seed)
        build_seconds = time.perf_counter() - started
        print(f"[{stage}] training {run_name}: {model.count_params():,} weights, {train_config.epochs} epochs")
        result = train(model, handle.data, train_config, callbacks=[*monitors, tracking.EpochMetricsLogger(), *callbacks])
        try:
            row = finish_training_stage(stage, run_name, label, model, model_config, result, handle, robustness, convert_tflite,
                                        perturbation)
            timings = {"time_build_s": build_seconds, "time_fit_s": result.seconds, **row.pop("timings")}
            timings["time_total_s"] = time.perf_counter() - started
            timings["time_logging_s"] = timings["time_total_s"] - sum(
                timings[key] for key in ("time_build_s", "time_fit_s", "time_evaluate_s", "time_size_s", "time_deploy_s",
                                         "time_robustness_s"))
            tracking.log_metrics(timings)
            row.update(timings)
        except Exception as error:
            if not tracking.is_tracking_error(error):
                raise
            path = tracking.rescue_model(model, run_id)
            raise tracking.TrackingLost(f"the tracking store failed while logging {run_name} ({str(error).splitlines()[0][:300]}); "
                                        f"the trained model is saved at {path}") from error
    print(
        f"[{stage}] {run_name}: test accuracy {100 * row['test_accuracy']:.2f}%, packed size "
        f"{row['model_size_packed_bytes']:,} B, {row['training_seconds']:.1f} s training (run {run_id})"
    )
    return row


def finish_training_stage(
    stage: str, run_name: str, label: str, model: tf.keras.Model, model_config: ModelConfig, result,
    handle: DataHandle, robustness: RobustnessConfig | None, convert_tflite: bool = True,
    perturbation: PerturbationConfig | None = None,
) -> dict:
    """Evaluate, size, deploy and log a trained model in the active run (with its hardware manifest:
    ``perturbation`` is what it was trained with); returns its comparison row."""
    run_id = tracking.mlflow.active_run().info.run_id
    started = time.perf_counter()
    evaluation = evaluate(model, handle.data)
    evaluate_seconds = time.perf_counter() - started
    deployable = strip_hardware(model)
    metrics = {
        **evaluation.as_metrics(),
        **model_size(deployable).as_metrics(),
        "model_size_file_bytes": saved_file_bytes(deployable),
        "training_seconds": result.seconds,
        "epochs": result.epochs_run,
    }
    tracking.log_metrics(metrics)
    size_seconds = time.perf_counter() - started - evaluate_seconds
    deployed, size_tags = ({}, {"tflite_converter": SKIPPED})
    if convert_tflite:
        deployed, size_tags = deployment_step(run_id, run_name, deployable, handle.data)  # logs them itself
    else:
        tracking.log_tags(size_tags)
    metrics.update(deployed)
    deploy_seconds = time.perf_counter() - started - evaluate_seconds - size_seconds
    tracking.log_figure(plots.confusion_figure(evaluation.confusion, f"{label}: test confusion"), "plots/confusion_matrix.png")
    tracking.log_figure(plots.history_figure(result.history, f"{run_name}: training"), "plots/training_curves.png")
    tracking.log_text(larq_summary(deployable), "larq_summary.txt")
    manifest_step(deployable, handle.data, perturbation, robustness.target if robustness else None, run_name)
    model_uri = tracking.log_model(model, handle.data.images("test")[:MODEL_SAMPLE_IMAGES])
    tracking.log_tags({"model_uri": model_uri})
    row = {"model": label, "stage": stage, "run_id": run_id, "model_uri": model_uri, **metrics, **size_tags}
    robustness_seconds = 0.0
    if robustness is not None:
        row["curves"], robust_metrics = robustness_step(model, handle.data, robustness, run_name)
        row.update(robust_metrics)
        robustness_seconds = robust_metrics["robust_eval_seconds"]
    row["timings"] = {"time_evaluate_s": evaluate_seconds, "time_size_s": size_seconds, "time_deploy_s": deploy_seconds,
                      "time_robustness_s": robustness_seconds}
    return row


def deployment_step(run_id: str, title: str, deployable: tf.keras.Model, data: PreparedData) -> tuple[dict, dict]:
    """Convert the deployable model, run and time it on the test split, log the flatbuffer and the
    measurements on ``run_id``; returns (metrics, tags). A model that cannot be converted is said
    in the tag ``tflite_converter`` (``failed: <reason>``) and claims no size."""
    try:
        measured, flatbuffer = deploy(deployable, data.images("test"), data.labels("test"))
    except ExportError as error:
        print(f"WARNING: {title}: the model was not converted ({error})", file=sys.stderr, flush=True)
        tags = {"tflite_converter": f"failed: {error}"[:5000]}
        tracking.log_to_run(run_id, {}, tags)
        return {}, tags
    tags = {"tflite_converter": measured.converter}
    if measured.warning:
        print(f"WARNING: {title}: {measured.warning}", file=sys.stderr, flush=True)
        tags["deployed_warning"] = measured.warning
    tracking.log_to_run(run_id, measured.metrics(), tags)
    tracking.log_bytes(run_id, flatbuffer.content, "deploy/model.tflite")
    print(f"[deploy] {title}: {measured.converter} flatbuffer {measured.file_bytes:,} B, deployed accuracy "
          f"{100 * measured.accuracy:.2f}% (agrees with Keras on {100 * measured.agreement:.2f}%), "
          f"{measured.latency_ms:.3f} ms/image, {measured.images_per_s:,.0f} images/s at batch 64 ({measured.threads} threads)")
    return measured.metrics(), tags


def manifest_step(deployable: tf.keras.Model, data: PreparedData, trained_with: PerturbationConfig | None,
                  target: PerturbationConfig | None, title: str) -> None:
    """Log the hardware manifest; a model it cannot describe gets the tag ``hardware_manifest`` =
    ``failed: <reason>`` and a warning, and its run goes on."""
    try:
        manifest = hardware_manifest(deployable, data.images("val"), trained_with=trained_with, target=target)
    except ValueError as error:
        print(f"WARNING: {title}: no hardware manifest ({error})", file=sys.stderr, flush=True)
        tracking.log_tags({"hardware_manifest": f"failed: {error}"[:5000]})
        return
    tracking.log_dict(manifest, MANIFEST_ARTIFACT)


def deploy_logged_run(run_id: str, data: PreparedData) -> None:
    """Convert, run and time the model of a run that skipped it (a sweep trial), on that run."""
    tags = tracking.MlflowClient().get_run(run_id).data.tags
    if tags.get("tflite_converter") != SKIPPED:
        return
    deployment_step(run_id, tracking.run_name(run_id), strip_hardware(tracking.load_model(tags["model_uri"])), data)


def robustness_step(model: tf.keras.Model, data: PreparedData, config: RobustnessConfig, title: str):
    """Evaluate and log robustness inside the active run; returns (curves, summary metrics)."""
    result = evaluate_robustness(model, data, config)
    tracking.log_robustness(result, title)
    tracking.log_params(flatten_robustness(config))
    print(f"[robustness] {title}: {describe_target(result.summaries)}, {result.seconds:.1f} s, {result.traces} trace(s)")
    return result.curves, {**result.summaries, "robust_eval_seconds": result.seconds}


def describe_target(summaries: dict) -> str:
    """``target accuracy 86.30% [85.91, 86.69] over 1000 chips, yield at spec 88.00%: 12.3% [10.4, 14.5]``."""
    text = f"target accuracy {compare.estimate_text(summaries, 'robust_acc_target')} over {summaries['robust_target_chips']:.0f} chips"
    if "robust_yield_target" in summaries:
        text += f", yield at spec {100 * summaries['accuracy_spec']:.2f}%: {compare.estimate_text(summaries, 'robust_yield_target', 1)}"
    return text


def flatten_robustness(config: RobustnessConfig) -> dict[str, str]:
    params = {key: value for key, value in flatten("robustness", config).items() if key != "robustness.target"}
    return {**params, **flatten("target", config.target)}


def evaluate_stage(model_uri: str, model_run_id: str, data_uri: str, config: RobustnessConfig) -> dict:
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
        curves, summaries = robustness_step(model, handle.data, config, model_run_name)
    return {"run_id": run_id, "curves": curves, **summaries, **evaluation.as_metrics()}


def sensitivity_stage(model_uri: str, model_run_id: str, data_uri: str, config: RobustnessConfig, layers: str = "") -> dict:
    """Per-layer sensitivity of any logged model, as its own ``sensitivity`` run linked to the model's run."""
    from pipeline.robustness import model_targets
    from pipeline.sensitivity import layer_sensitivity, ranking_markdown

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
    return {"run_id": run_id, "table": result.table, "ranking": result.ranking}


def main_stage(
    data_config: DataConfig,
    model_config: ModelConfig,
    train_config: TrainConfig,
    robustness: RobustnessConfig,
    perturbation: PerturbationConfig,
    compared: ModelConfig | None = None,
) -> list[dict]:
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


def log_comparison(rows: list[dict]) -> None:
    table = compare.comparison_table(rows)
    markdown = compare.to_markdown(table)
    print("\nComparison\n" + markdown)
    tracking.log_table(table, "comparison/comparison", markdown=markdown)
    tracking.log_figure(plots.comparison_figure(rows), "comparison/comparison.png")
    curves = {f"{row['stage']} ({row['model']})": row["curves"] for row in rows if "curves" in row}
    if curves:
        tracking.log_figure(plots.robustness_figure(curves, "robustness of the compared models"),
                            "comparison/robustness_overlay.png")
    by_stage = {row["stage"]: row for row in rows}
    baseline, quantized = by_stage["baseline"], by_stage["qat"]
    headline = {key: quantized[key] for key in ("test_accuracy", "model_size_packed_bytes", "compression_ratio",
                                                 "model_size_float32_bytes")}  # the flatbuffer's: per stage, where measured
    headline["baseline_test_accuracy"] = baseline["test_accuracy"]
    headline["accuracy_drop"] = baseline["test_accuracy"] - quantized["test_accuracy"]
    headline["size_reduction"] = baseline["model_size_packed_bytes"] / quantized["model_size_packed_bytes"]
    for row in rows:
        for key in ("test_accuracy", *DEPLOYED_HEADLINE, *compare.ROBUSTNESS_COLUMNS, *compare.INTERVAL_BOUNDS):
            if key in row:
                headline[f"{row['stage']}_{key}"] = row[key]
    tracking.log_metrics(headline)
