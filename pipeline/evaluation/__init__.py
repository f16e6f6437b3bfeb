"""Evaluation of a trained model: clean accuracy (``clean``), robustness over Monte-Carlo chips
(``robustness``), per-layer sensitivity (``sensitivity``) and the estimates with their intervals
(``statistics``). Imports ``hwmodel`` and ``learning``; MLflow-free."""
