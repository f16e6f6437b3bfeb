"""The comparison of trained models: one row per model, as a table and as markdown."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from collections.abc import Mapping, Sequence

import pandas as pd

from pipeline.effects import EFFECTS
from pipeline.evaluation.lifetime import COMPENSATIONS, readable_time
from pipeline.evaluation.statistics import estimate_text, missing

ROBUSTNESS_COLUMNS = (*(f"robust_auc_{effect.name}" for effect in EFFECTS), "robust_acc_target", "robust_yield_target")
INTERVALS = ("robust_acc_target", "robust_yield_target")  #: shown with their 95 % interval ``<key>_low`` .. ``<key>_high``
INTERVAL_BOUNDS = tuple(f"{key}_{bound}" for key in INTERVALS for bound in ("low", "high"))
COLUMNS = {
    "model": "model",
    "stage": "stage",
    "test_accuracy": "test accuracy",
    "deployed_accuracy": "deployed accuracy",
    "deployed_agreement": "agrees with Keras",
    "model_size_packed_bytes": "packed size (B)",
    "model_size_tflite_bytes": "flatbuffer (B)",
    "model_size_float32_bytes": "float32 size (B)",
    "compression_ratio": "compression",
    "deployed_latency_ms": "ms/image (batch 1)",
    "deployed_images_per_s": "images/s (batch 64)",
    "tflite_converter": "converter",
    "training_seconds": "training time (s)",
    "model_parameters": "parameters",
    "epochs": "epochs",
    **{f"robust_auc_{effect.name}": f"AUC {effect.name}" for effect in EFFECTS},
    "robust_acc_target": "target accuracy [95% CI]",
    "robust_yield_target": "target yield [95% CI]",
    "accuracy_spec": "spec",
    **{f"robust_lifetime_s_{mode}": f"lifetime ({mode} compensation)" for mode in COMPENSATIONS},
    "run_id": "run id",
}
OPTIONAL = tuple(f"robust_lifetime_s_{mode}" for mode in COMPENSATIONS)  #: shown only when a model has them (a target that drifts)


@dataclass(frozen=True)
class ModelRow:
    """One compared model: who it is, its numbers under their metric names, and its robustness curves --
    from a stage just run (:func:`pipeline.app.stages.training_stage`) or read back from MLflow
    (:func:`pipeline.app.tracking.run_row`)."""

    stage: str
    model: str  #: the model's label, e.g. ``mlp-1bit``
    run_id: str
    model_uri: str
    metrics: Mapping[str, float] = field(default_factory=dict)
    tflite_converter: str = ""
    curves: pd.DataFrame | None = field(default=None, compare=False)

    def get(self, key: str, default: object = None) -> object:
        """A field (identity, ``curves``) or a metric by name; ``default`` when the run has no such metric."""
        return getattr(self, key) if key in FIELDS else self.metrics.get(key, default)

    def __getitem__(self, key: str) -> object:
        if (value := self.get(key)) is None:
            raise KeyError(f"{self.stage} ({self.model}) has no {key!r}")
        return value

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None


FIELDS = frozenset(item.name for item in fields(ModelRow)) - {"metrics"}  #: what ModelRow.get reads from a field


def comparison_table(rows: Sequence[ModelRow]) -> pd.DataFrame:
    """One row per model: the :data:`COLUMNS`, and the bounds of the :data:`INTERVALS`."""
    keys = [*COLUMNS, *INTERVAL_BOUNDS]
    return pd.DataFrame([{key: row.get(key) for key in keys} for row in rows], columns=keys)


def format_value(key: str, value: object) -> str:
    if missing(value):  # (NaN in a float column)
        return "-"
    if key in ("test_accuracy", "deployed_accuracy", "deployed_agreement", "accuracy_spec", *ROBUSTNESS_COLUMNS):
        return f"{100 * float(value):.2f}%"
    if key == "deployed_latency_ms":
        return f"{float(value):.3f}"
    if key == "deployed_images_per_s":
        return f"{float(value):,.0f}"
    if key in OPTIONAL:
        return readable_time(float(value))
    if key == "compression_ratio":
        return f"{float(value):.1f}x"
    if key == "training_seconds":
        return f"{float(value):.1f}"
    if isinstance(value, float) and value.is_integer():
        return f"{int(value):,}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def to_markdown(table: pd.DataFrame) -> str:
    columns = [key for key in table.columns if key in COLUMNS and not (key in OPTIONAL and table[key].map(missing).all())]
    headers = [COLUMNS[key] for key in columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for record in table.to_dict(orient="records"):
        lines.append("| " + " | ".join(estimate_text(record, key) if key in INTERVALS else format_value(key, record[key])
                                       for key in columns) + " |")
    return "\n".join(lines) + "\n"
