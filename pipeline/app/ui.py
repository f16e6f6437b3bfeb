"""Where the MLflow UI shows this project's runs.

MLflow 3 opens on its GenAI overview (traces, latency); our runs live in the *model training*
view of the experiment, which the URL selects with ``workflowType=machine_learning``.
"""

from __future__ import annotations

import sys

from pipeline.app import tracking


def runs_page(server_url: str, experiment_name: str) -> str:
    """The UI page of the experiment's runs in the model-training view (the experiments list if it
    does not exist yet), on the tracking store of ``MLFLOW_TRACKING_URI``."""
    experiment_id = tracking.experiment_id_of(experiment_name)
    if experiment_id is None:
        return f"{server_url.rstrip('/')}/#/experiments"
    return f"{server_url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


if __name__ == "__main__":  # python -m pipeline.app.ui <server URL> <experiment>: what `make ui` prints
    print(f"Runs of this project (model-training view): {runs_page(*sys.argv[1:3])}")
    print("Columns to add in the runs table (Columns button): Metrics > test_accuracy, deployed_accuracy, "
          "model_size_tflite_bytes, robust_acc_target, robust_yield_target")
