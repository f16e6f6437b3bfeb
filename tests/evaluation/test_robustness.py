"""Robustness evaluation, and the experiment that perturbation-aware training buys robustness."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipeline.config import DataConfig, ModelConfig, RobustnessConfig, TrainConfig
from pipeline.learning.data import prepare
from pipeline.effects import EFFECTS, Sampling
from pipeline.perturbation import PerturbationConfig, curve_point
from pipeline.hwmodel.chips import attach_hardware, hardware_evaluation
from pipeline.learning.models import build_model
from pipeline.evaluation.robustness import (
    MAX_CHIPS_PER_PASS,
    TargetValidation,
    chips_side_by_side,
    evaluate_robustness,
    model_targets,
    summarize,
)
from pipeline.evaluation.statistics import wilson_interval
from pipeline.learning.training import seed_everything, train

#: every effect of the registry at its weakest and strongest default level, and one in between
GRIDS = {effect.name: (effect.curve.grid[0], effect.curve.grid[len(effect.curve.grid) // 2], effect.curve.grid[-1])
         for effect in EFFECTS}
SMALL = RobustnessConfig(grids=GRIDS, chips=3, target_chips=4, accuracy_spec=0.5,
                         target=PerturbationConfig(noise_sigma=0.3, weight_dev_pct=20, clip_mode="relative", clip_fraction=0.5))


def is_on(name: str, level: float) -> bool:
    effect = next(effect for effect in EFFECTS if effect.name == name)
    return curve_point(effect, level).params(effect).active


@pytest.fixture(scope="module")
def trained(tiny_data):
    seed_everything(0)
    model = build_model(ModelConfig(bits=1, hidden_units=(64,)))
    train(model, tiny_data, TrainConfig(epochs=3, batch_size=32), verbose=0)
    return model


def test_grid_chips_and_summaries(trained, tiny_data):
    result = evaluate_robustness(trained, tiny_data, SMALL, progress=None)
    per_chip = result.per_chip
    # Random levels on every chip, deterministic ones (an effect off, pure saturation) once.
    counts = per_chip.groupby(["effect", "level"], sort=False).size().to_dict()
    expected = {(effect.name, level): 3 if is_on(effect.name, level) and effect.sampling is not Sampling.DETERMINISTIC else 1
                for effect in EFFECTS for level in GRIDS[effect.name]}
    assert counts == {**expected, ("target", 1.0): 4}  # the target on its own number of per_chip
    off = per_chip[[row.effect != "target" and not is_on(row.effect, row.level) for row in per_chip.itertuples()]]
    assert len(off) == sum(not is_on(name, grid[0]) for name, grid in GRIDS.items()) > 0
    assert (off.accuracy == result.clean_accuracy).all()  # an effect off is the clean model
    assert result.traces == 1  # one trace for every level and chip: levels are variables
    # The strongest level of every random effect hurts; the curves are means over per_chip.
    curves = result.curves.set_index(["effect", "level"])
    for effect in EFFECTS:
        if effect.sampling is not Sampling.DETERMINISTIC:
            assert curves.loc[(effect.name, GRIDS[effect.name][-1]), "acc_mean"] < result.clean_accuracy - 0.05, effect.name
    target = per_chip[per_chip.effect == "target"].accuracy.to_numpy()
    assert curves.loc[("target", 1.0), "acc_mean"] == pytest.approx(target.mean())
    assert curves.loc[("target", 1.0), "acc_p5"] == pytest.approx(np.percentile(target, 5))
    assert result.summaries["robust_acc_target"] == pytest.approx(target.mean())
    passed = int(np.sum(target >= SMALL.accuracy_spec))
    assert result.summaries["robust_yield_target"] == pytest.approx(passed / 4)
    assert (result.summaries["robust_yield_target_low"], result.summaries["robust_yield_target_high"]) == pytest.approx(
        wilson_interval(passed, 4))
    low, high = stats.t.interval(0.95, 3, loc=target.mean(), scale=stats.sem(target))
    assert result.summaries["robust_acc_target_low"] == pytest.approx(low)
    assert result.summaries["robust_acc_target_high"] == pytest.approx(high)
    # Levels without randomness are exact: one evaluation, an interval of zero width.
    exact = result.curves[result.curves.chips == 1]
    assert len(exact) and (exact.acc_low == exact.acc_mean).all() and (exact.yield_low == exact["yield"]).all()
    noise_mean = per_chip[per_chip.effect == "noise"].groupby("level").accuracy.mean().mean()
    assert result.summaries["robust_auc_noise"] == pytest.approx(noise_mean)
    assert all(0 <= value <= 1 for key, value in result.summaries.items() if key != "robust_target_chips")


def test_same_seed_same_table(trained, tiny_data):
    first = evaluate_robustness(trained, tiny_data, SMALL, progress=None).per_chip
    second = evaluate_robustness(trained, tiny_data, SMALL, progress=None).per_chip
    pd.testing.assert_frame_equal(first, second)
    import dataclasses
    other = evaluate_robustness(trained, tiny_data, dataclasses.replace(SMALL, seed=1), progress=None).per_chip
    assert not first.accuracy.equals(other.accuracy)


def test_chips_side_by_side_give_the_same_table(trained, tiny_data):
    import dataclasses
    one = evaluate_robustness(trained, tiny_data, dataclasses.replace(SMALL, chips_per_pass=1), progress=None)
    two = evaluate_robustness(trained, tiny_data, dataclasses.replace(SMALL, chips_per_pass=2), progress=None)  # 2 + 1 padded
    pd.testing.assert_frame_equal(one.per_chip, two.per_chip)
    assert one.clean_accuracy == two.clean_accuracy and one.traces == two.traces == 1


@pytest.mark.parametrize("arch, layers, automatic", [("mlp", "hidden", 5), ("mlp", "all", 5), ("mlp", "dense_out", 5),
                                                     ("cnn", "hidden", 5), ("cnn", "conv_3", 1), ("cnn", "all", 1)])
def test_automatic_chips_per_pass(arch, layers, automatic):
    """Side by side when the layers from the first perturbed one on are dense (the plain ones before it
    run once for all chips); else one at a time."""
    model = build_model(ModelConfig(arch=arch, bits=1, hidden_units=(16,)))
    targets = model_targets(model, layers)
    assert chips_side_by_side(model, targets, RobustnessConfig(), 5) == automatic
    assert chips_side_by_side(model, targets, RobustnessConfig(chips_per_pass=2), 5) == 2  # as asked
    assert chips_side_by_side(model, targets, RobustnessConfig(chips_per_pass=8), 3) == 3  # never more than the chips
    # Many chips: passes of equal size, at most MAX_CHIPS_PER_PASS each (1,000 = 100 x 10; 25 = 3 x 9, the last one 7).
    assert chips_side_by_side(model, targets, RobustnessConfig(), 1000) == (MAX_CHIPS_PER_PASS if automatic > 1 else 1)
    assert chips_side_by_side(model, targets, RobustnessConfig(), 25) == (9 if automatic > 1 else 1)


def test_yield_counts_chips_at_or_above_the_spec():
    chips = pd.DataFrame({"effect": ["target"] * 4, "level_index": 0, "level": 1.0, "chip": range(4), "random": True,
                          "accuracy": [0.90, 0.895, 0.889, 0.80]})
    curves = summarize(chips, accuracy_spec=0.895)
    assert curves.loc[0, "yield"] == 0.5 and curves.loc[0, "acc_min"] == 0.80 and curves.loc[0, "chips"] == 4
    assert (curves.loc[0, "yield_low"], curves.loc[0, "yield_high"]) == pytest.approx(wilson_interval(2, 4))
    assert "yield" not in summarize(chips, accuracy_spec=None)  # no spec, no yield


@pytest.mark.parametrize("target, calibrates", [(PerturbationConfig(noise_sigma=0.3, weight_dev_pct=20), False),
                                                (PerturbationConfig(clip_mode="relative", clip_fraction=0.5), True),
                                                (PerturbationConfig(clip_mode="absolute", clip_min=-8, clip_max=8), False)])
def test_pruning_signal_calibrates_only_for_a_relative_clip_range(tiny_data, target, calibrates):
    """The sweep's per-epoch val_target_accuracy measures the clean range only when an effect reads it."""
    model = attach_hardware(build_model(ModelConfig(bits=1, hidden_units=(16,))), target, ("dense_1",))
    monitor = TargetValidation(tiny_data, target)
    monitor.set_model(model)
    monitor.on_train_begin()
    assert (monitor.calibration is not None) == calibrates
    logs = {}
    monitor.on_epoch_end(0, logs)
    state = model.layers[1].hardware_state
    assert np.isfinite(state.calibrated_hi.numpy()) == calibrates and 0 <= logs["val_target_accuracy"] <= 1


def test_pruning_signal_on_the_targets_tiles_reads_a_copy_that_follows_the_training_weights(tiny_data):
    """A model trained without tiles, a target on tiles of 100 rows: the signal is the target's
    chip on a copy with the target's arrays, holding the weights of the epoch just ended."""
    target = PerturbationConfig(clip_mode="absolute", clip_min=-20, clip_max=20, tile_rows=100)
    model = attach_hardware(build_model(ModelConfig(bits=1, hidden_units=(16,))), PerturbationConfig(noise_sigma=0.2), ("dense_1",))
    monitor = TargetValidation(tiny_data, target)
    monitor.set_model(model)
    monitor.on_train_begin()
    assert monitor.chip_model is not model and monitor.chip_model.get_layer("dense_1").tiling.tiles == 8
    kernel = model.get_layer("dense_1").kernel
    kernel.assign(-kernel)  # what an epoch of training would change
    logs = {}
    monitor.on_epoch_end(0, logs)
    expected = attach_hardware(model, target, ("dense_1",))
    with hardware_evaluation(expected, target, chip=0):
        predictions = expected.predict(tiny_data.images("val"), verbose=0).argmax(axis=1)
    assert logs["val_target_accuracy"] == pytest.approx(np.mean(predictions == tiny_data.labels("val")), abs=1e-6)
    same = TargetValidation(tiny_data, target.replace(tile_rows=None))
    same.set_model(model)
    same.on_train_begin()
    assert same.chip_model is model  # the same arrays: no copy


@pytest.fixture(scope="module")
def experiment_data():
    return prepare(DataConfig(source="bundled", limit=1000, seed=11))


def robustness_of_one(name: str, level: str) -> RobustnessConfig:
    """One level of effect ``name`` on 5 chips, every other curve a single level with its effect off."""
    off = {effect.name: effect.curve.grid[0] for effect in EFFECTS}
    return RobustnessConfig(grids={**off, name: level}, chips=5, target_chips=1, target=PerturbationConfig())


def train_with(data, perturbation):
    seed_everything(11)
    config = ModelConfig(bits=1, hidden_units=(256,))
    model = build_model(config)
    if perturbation is not None:
        model = attach_hardware(model, perturbation, perturbation.targets(config), train_seed=11)
    train(model, data, TrainConfig(epochs=8, batch_size=64, seed=11), verbose=0)
    return model


@pytest.mark.parametrize(
    "training_levels, grid",
    [
        (PerturbationConfig(noise_sigma=0.6), ("noise", "0.9")),
        (PerturbationConfig(weight_dev_pct=60), ("weight_dev", "90")),
    ],
)
def test_perturbation_aware_training_buys_robustness(experiment_data, training_levels, grid):
    """A real experiment: at a high level of a perturbation, the model trained with that
    perturbation beats the plainly trained one (same data, seed, epochs; 5 chips each)."""
    effect, level = grid
    config = robustness_of_one(effect, level)
    scores = {}
    for name, levels in (("plain", None), ("aware", training_levels)):
        result = evaluate_robustness(train_with(experiment_data, levels), experiment_data, config, progress=None)
        scores[name] = result.curves.set_index("effect").loc[effect, "acc_mean"]
    assert scores["aware"] > scores["plain"] + 0.03, scores
