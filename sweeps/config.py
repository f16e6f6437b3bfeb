"""The sweep's own configuration (data, model, training and robustness use pipeline.config)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pipeline.config import ConfigError, parse_enum, require_float, require_int

DEFAULT_N_TRIALS = 40


class Objective(str, enum.Enum):
    TARGET = "target"  #: maximize mean accuracy over chips at the target hardware (TPE, pruning of the bottom quarter)
    YIELD = "yield"  #: maximize the target yield at accuracy_spec, ties broken by the target accuracy (TPE, pruning)
    PARETO = "pareto"  #: maximize (clean accuracy, target accuracy) together (NSGA-II, Pareto front)
    PARETO_YIELD = "pareto_yield"  #: maximize (clean accuracy, target yield) together (NSGA-II, Pareto front)

    @property
    def is_pareto(self) -> bool:
        return self in (Objective.PARETO, Objective.PARETO_YIELD)

    @property
    def needs_spec(self) -> bool:
        return self in (Objective.YIELD, Objective.PARETO_YIELD)

    @property
    def value_names(self) -> list[str]:
        """The names of a trial's objective values (columns of the trials table)."""
        robust = "target_yield" if self.needs_spec else "target_accuracy"
        return ["clean_accuracy", robust] if self.is_pareto else [robust]


@dataclass(frozen=True)
class SweepConfig:
    n_trials: int = DEFAULT_N_TRIALS
    """Finished (complete or pruned) trials the study should hold; a re-run adds only the missing ones."""
    timeout: float = 0.0
    """Stop starting new trials after this many seconds (0 = no limit)."""
    study_name: str = ""
    """Optuna study name; empty = derived from dataset, model and objective."""
    storage: str = ""
    """Optuna storage URL; empty = a SQLite file next to the MLflow store (PostgreSQL for many workers)."""
    space: str = "sweeps/space.yaml"
    """The search-space YAML (its `target` names the target hardware)."""
    objective: Objective = Objective.TARGET
    """``target`` (mean accuracy on the target hardware), ``yield`` (fraction of chips meeting
    accuracy_spec), ``pareto`` (clean vs target accuracy) or ``pareto_yield`` (clean accuracy vs yield)."""
    compare: bool = True
    """Compare the best trial with plain baseline and QAT (reused when finished runs exist, else trained)."""

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("n_trials", require_int("n_trials", self.n_trials, minimum=1))
        set_("timeout", require_float("timeout", self.timeout, 0.0, None))
        set_("objective", parse_enum(Objective, "objective", self.objective))
        set_("study_name", str(self.study_name or "").strip())
        set_("storage", str(self.storage or "").strip())
        if self.storage and "://" not in self.storage:
            raise ConfigError("storage", f"must be a database URL such as sqlite:///optuna.db or postgresql://...; got {self.storage!r}")
        if isinstance(self.compare, str):
            if self.compare.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigError("compare", f"must be true or false; got {self.compare!r}")
            set_("compare", self.compare.strip().lower() in ("true", "1", "yes"))
