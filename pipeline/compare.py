"""The comparison of trained models: one row per model, as a table and as markdown."""

from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd

from pipeline.effects import EFFECTS

ROBUSTNESS_COLUMNS = (*(f"robust_auc_{effect.name}" for effect in EFFECTS), "robust_acc_target", "robust_yield_target")
COLUMNS = {
    "model": "model",
    "stage": "stage",
    "test_accuracy": "test accuracy",
    "model_size_packed_bytes": "packed size (B)",
    "model_size_float32_bytes": "float32 size (B)",
    "compression_ratio": "compression",
    "model_size_tflite_bytes": "TFLite size (B)",
    "tflite_converter": "TFLite converter",
    "training_seconds": "training time (s)",
    "model_parameters": "parameters",
    "epochs": "epochs",
    **{f"robust_auc_{effect.name}": f"AUC {effect.name}" for effect in EFFECTS},
    "robust_acc_target": "target accuracy",
    "robust_yield_target": "target yield",
    "run_id": "run id",
}


def comparison_table(rows: Sequence[Mapping[str, object]]) -> pd.DataFrame:
    return pd.DataFrame([{key: row.get(key) for key in COLUMNS} for row in rows], columns=list(COLUMNS))


def format_value(key: str, value: object) -> str:
    if value is None:
        return "-"
    if key in ("test_accuracy", *ROBUSTNESS_COLUMNS):
        return f"{100 * float(value):.2f}%"
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
    headers = [COLUMNS.get(key, key) for key in table.columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for record in table.to_dict(orient="records"):
        lines.append("| " + " | ".join(format_value(key, record[key]) for key in table.columns) + " |")
    return "\n".join(lines) + "\n"
