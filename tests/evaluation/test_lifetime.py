"""Yield over time (pipeline/evaluation/lifetime.py): the same chips at every time, and the lifetime."""

import numpy as np
import pandas as pd
import pytest

from pipeline.config import RobustnessConfig
from pipeline.effects import EFFECTS
from pipeline.evaluation.lifetime import lifetime, readable_time
from pipeline.evaluation.robustness import evaluate_robustness
from pipeline.evaluation.statistics import wilson_interval
from pipeline.perturbation import PerturbationConfig

from test_robustness import trained  # noqa: F401  (the module-scoped small 1-bit MLP, trained once per module)

ONE_LEVEL = {effect.name: (effect.curve.grid[0],) for effect in EFFECTS}  #: every curve at its weakest level: fast
TIMES = (1.0, 3600.0, 2_592_000.0, 315_360_000.0)


def drifting(**changes) -> RobustnessConfig:
    target = PerturbationConfig(weight_dev_pct=10, drift_time_s=2_592_000.0, drift_compensation="global")
    return RobustnessConfig(**{"grids": ONE_LEVEL, "chips": 1, "target_chips": 6, "accuracy_spec": 0.5, "target": target,
                               "drift_times": TIMES, **changes})


def test_the_same_chips_are_read_at_every_time(trained, tiny_data):  # noqa: F811
    result = evaluate_robustness(trained, tiny_data, drifting(), progress=None)
    over = result.lifetime.per_chip
    assert len(over) == 2 * len(TIMES) * 6 and set(over.compensation) == {"none", "global"}
    # the target condition is the grid's point at the target's time and compensation, chip by chip
    target = result.per_chip[result.per_chip.effect == "target"].set_index("chip").accuracy
    at_target = over[(over.time_s == 2_592_000.0) & (over.compensation == "global")].set_index("chip").accuracy
    pd.testing.assert_series_equal(target, at_target, check_names=False)
    # uncompensated, every chip loses accuracy as its weights shrink; compensated, it keeps most of it
    trajectories = over.pivot_table(index=["compensation", "chip"], columns="time_s", values="accuracy")
    assert (trajectories.loc["none"][TIMES[-1]] < trajectories.loc["none"][TIMES[0]]).all()
    assert trajectories.loc["global"][TIMES[-1]].mean() > trajectories.loc["none"][TIMES[-1]].mean() + 0.02


def test_curves_over_time_carry_their_intervals_and_the_lifetimes(trained, tiny_data):  # noqa: F811
    config = drifting()
    result = evaluate_robustness(trained, tiny_data, config, progress=None)
    curves = result.lifetime.curves
    assert list(curves.time_s[curves.compensation == "none"]) == list(TIMES)
    for row in curves.itertuples():
        values = result.lifetime.per_chip.query("compensation == @row.compensation and time_s == @row.time_s").accuracy
        passed = int((values >= config.accuracy_spec - 1e-12).sum())
        assert row.acc_mean == pytest.approx(values.mean())
        assert (row.yield_low, row.yield_high) == pytest.approx(wilson_interval(passed, 6))
    for mode in ("none", "global"):
        assert result.summaries[f"robust_lifetime_s_{mode}"] == lifetime(curves[curves.compensation == mode], 0.9)
    assert result.summaries["robust_lifetime_s"] == result.summaries["robust_lifetime_s_global"]  # the target's compensation


def test_lifetime_is_the_last_time_before_the_first_failure():
    curve = pd.DataFrame({"time_s": [1.0, 60.0, 3600.0, 86400.0], "yield_low": [0.95, 0.91, 0.89, 0.95]})
    assert lifetime(curve, 0.9) == 60.0  # a later recovery does not count: every time up to it must pass
    assert lifetime(curve, 0.5) == 86400.0  # every time passes: the grid's last time ("at least")
    assert lifetime(curve, 0.96) == 0.0  # not even at the first time
    assert lifetime(curve.iloc[:1], 0.95) == 1.0  # one time
    assert lifetime(curve.assign(yield_low=0.0), 1e-9) == 0.0  # zero yield everywhere
    assert lifetime(curve.assign(yield_low=1.0), 1.0) == 86400.0  # full yield with lifetime_yield = 1


def test_no_drift_no_spec_or_no_time_grid(trained, tiny_data):  # noqa: F811
    plain = evaluate_robustness(trained, tiny_data, drifting(target=PerturbationConfig(weight_dev_pct=10)), progress=None)
    assert plain.lifetime is None and not any("lifetime" in key for key in plain.summaries)
    skipped = evaluate_robustness(trained, tiny_data, drifting(), progress=None, over_time=False)
    assert skipped.lifetime is None
    no_spec = evaluate_robustness(trained, tiny_data, drifting(accuracy_spec=None, target_chips=1, drift_times=(0.0,)), progress=None)
    assert no_spec.lifetime.lifetimes == {} and "yield" not in no_spec.lifetime.curves  # one chip, one time: no yield, no lifetime
    assert not np.isnan(no_spec.lifetime.curves.acc_mean).any()


def test_readable_times():
    assert [readable_time(t) for t in (0.0, 20.0, 3600.0, 86400.0, 2_592_000.0, 31_536_000.0, 315_360_000.0)] == [
        "0 s", "20 s", "1 h", "1 day", "30 days", "1 year", "10 years"]
