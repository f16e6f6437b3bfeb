"""What the study and its report share about trials: which states count as finished, and which of a
trial's results are kept on it (Optuna user attributes) for the report."""

from __future__ import annotations

from optuna.trial import TrialState

from pipeline.app.compare import INTERVAL_BOUNDS, INTERVALS

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
TRIAL_RESULTS = ("test_accuracy", *INTERVALS, *INTERVAL_BOUNDS)  #: a trial's results kept on its Optuna trial
