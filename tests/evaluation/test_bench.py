"""The evaluation bench: a repeated evaluation reuses the copy, with the numbers of a new one."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from pipeline.config import ModelConfig, RobustnessConfig
from pipeline.effects import EFFECTS
from pipeline.evaluation import bench, robustness
from pipeline.evaluation.robustness import evaluate_robustness
from pipeline.hwmodel.chips import chips_per_pass
from pipeline.learning.models import build_model
from pipeline.learning.training import seed_everything
from pipeline.perturbation import PerturbationConfig

#: each curve at two levels (off and its strongest), and a target of every kind of draw
CONFIG = RobustnessConfig(grids={effect.name: (effect.curve.grid[0], effect.curve.grid[-1]) for effect in EFFECTS}, chips=3,
                          target_chips=7, accuracy_spec=0.3,
                          target=PerturbationConfig(noise_sigma=0.3, weight_dev_pct=20, weight_ber=0.01, clip_mode="relative",
                                                    clip_fraction=0.5, out_bits=4))


def model_of(seed: int):
    seed_everything(seed)
    return build_model(ModelConfig(bits=1, hidden_units=(64,)))


def test_a_reused_bench_gives_the_numbers_of_a_new_copy(tiny_data):
    first, second = model_of(1), model_of(2)  # the same architecture and layer names, other weights
    assert not np.array_equal(first.get_weights()[0], second.get_weights()[0])
    bench.BENCHES.clear()
    evaluate_robustness(first, tiny_data, CONFIG, progress=None)
    built = dict(bench.BENCHES)
    assert len(built) == 2  # the curves' pass size (3 chips side by side) and the target's (7)
    reused = evaluate_robustness(second, tiny_data, CONFIG, progress=None)
    assert dict(bench.BENCHES) == built and all(bench.BENCHES[key] is value for key, value in built.items())
    assert reused.traces == 1  # nothing traced again
    bench.BENCHES.clear()
    new = evaluate_robustness(second, tiny_data, CONFIG, progress=None)
    assert not any(value is new_value for value in built.values() for new_value in bench.BENCHES.values())
    pd.testing.assert_frame_equal(reused.per_chip, new.per_chip)  # bit for bit
    assert reused.clean_accuracy == new.clean_accuracy and reused.summaries == new.summaries
    # and the second model's chips are not the first one's (the weights were copied in)
    assert not reused.per_chip.accuracy.equals(evaluate_robustness(first, tiny_data, CONFIG, progress=None).per_chip.accuracy)


def test_benches_are_kept_per_target_and_layers_the_oldest_dropped(tiny_data, monkeypatch):
    monkeypatch.setattr(bench, "MAX_BENCHES", 2)
    bench.BENCHES.clear()
    model, images = model_of(0), tiny_data.images("val")
    one = bench.chip_bench(model, PerturbationConfig(), ("dense_1",), 1, 256, images)
    other_layers = bench.chip_bench(model, PerturbationConfig(), ("dense_1", "dense_out"), 1, 256, images)
    assert bench.chip_bench(model, PerturbationConfig(), ("dense_1",), 1, 256, images) is one  # the most recent now
    tiles = bench.chip_bench(model, PerturbationConfig(tile_rows=128), ("dense_1",), 1, 256, images)  # other arrays: a new copy
    assert tiles.model.get_layer("dense_1").tiling.count == 7 and one.model.get_layer("dense_1").tiling.count == 1
    assert list(bench.BENCHES.values()) == [one, tiles]  # the least recently used is gone
    assert other_layers not in bench.BENCHES.values()


def test_another_architecture_gets_its_own_bench(tiny_data):
    bench.BENCHES.clear()
    images = tiny_data.images("val")
    small = bench.chip_bench(model_of(0), PerturbationConfig(), ("dense_1",), 1, 256, images)
    seed_everything(0)
    wide = bench.chip_bench(build_model(ModelConfig(bits=1, hidden_units=(32,))), PerturbationConfig(), ("dense_1",), 1, 256, images)
    assert wide is not small and wide.model.get_layer("dense_1").kernel.shape == (784, 32)
    with pytest.raises(ValueError, match="no layer"):
        bench.chip_bench(model_of(0), PerturbationConfig(), ("conv_1",), 1, 256, images)


def test_the_chips_start_after_the_plain_layers_with_the_numbers_of_the_whole_copy(tiny_data):
    """The CNN with its dense layers perturbed: the convolutions run once per image (the prefix), the chips
    side by side from dense_1 on -- and every chip's accuracy is the one the whole copy gives it, one chip a pass."""
    from pipeline.evaluation.robustness import condition_accuracies
    from pipeline.hwmodel.chips import attach_hardware, calibrate, hardware_evaluation

    seed_everything(3)
    model = build_model(ModelConfig(arch="cnn", bits=1))
    target = PerturbationConfig(noise_sigma=0.3, weight_dev_pct=30, out_bits=3, perturb_layers="hidden")
    config = RobustnessConfig(grids={effect.name: (effect.curve.grid[0],) for effect in EFFECTS}, target=target, target_chips=6)
    bench.BENCHES.clear()
    result = evaluate_robustness(model, tiny_data, config, progress=None, over_time=False)
    (used,) = bench.BENCHES.values()  # the curves' copy (5 chips a pass) reads the target's 6 chips too
    assert used.prefix is not None and [layer.name for layer in used.model.layers][0] == "dense_1"
    assert chips_per_pass(used.model) == 5  # side by side: only dense layers read chips
    images, labels = tiny_data.images("test"), tiny_data.labels("test")
    flat = tf.keras.Model(model.inputs, model.get_layer("flatten").output)(images, training=False).numpy()
    np.testing.assert_allclose(used.features(images), flat, rtol=1e-6, atol=1e-5)  # the plain layers' output (another graph: last bits)
    whole = attach_hardware(model, target, ("dense_1",), chips_per_pass=1)  # no split, one chip a pass
    calibrate(whole, tiny_data.images("val"))
    accuracy = bench.CompiledAccuracy(whole, config.batch_size)
    with hardware_evaluation(whole, PerturbationConfig(), chip=0):
        expected = [value for _, value in condition_accuracies(whole, accuracy, target, 6, 0, images, labels)]
    assert result.per_chip.loc[result.per_chip.effect == "target", "accuracy"].tolist() == expected


def test_a_model_whose_first_layer_is_perturbed_is_not_split(tiny_data):
    bench.BENCHES.clear()
    mlp = bench.chip_bench(model_of(0), PerturbationConfig(), ("dense_1", "dense_out"), 1, 256, tiny_data.images("val"))
    assert mlp.prefix is None and mlp.model is mlp.copy  # only a reshape before dense_1: the default main's copy as it was
    images = tiny_data.images("test")
    assert mlp.features(images) is images


def test_a_bench_left_evaluating_by_an_interruption_is_plain_again(tiny_data):
    bench.BENCHES.clear()
    model = model_of(1)
    first = evaluate_robustness(model, tiny_data, CONFIG, progress=None)
    for value in bench.BENCHES.values():  # as if an evaluation had been interrupted half-way
        for layer in value.model.layers:
            if hasattr(layer, "hardware_state"):
                layer.hardware_state.evaluating.assign(True)
                layer.hardware_state.assign(CONFIG.target)
    again = evaluate_robustness(model, tiny_data, CONFIG, progress=None)
    pd.testing.assert_frame_equal(first.per_chip, again.per_chip)
    assert again.clean_accuracy == first.clean_accuracy



def test_the_target_reads_the_curves_copy_when_their_passes_hold_5_chips(tiny_data):
    """Curves of 5 chips (one pass of 5), a target of 12 (automatic: 2 passes of 6): one copy, the
    target read in passes of 5 -- the numbers of its own copy, bit for bit."""
    model = model_of(3)
    shared = RobustnessConfig(grids=CONFIG.grids, chips=5, target_chips=12, target=CONFIG.target)
    own = RobustnessConfig(grids=CONFIG.grids, chips=5, target_chips=12, target=CONFIG.target, chips_per_pass=6)
    bench.BENCHES.clear()
    result = evaluate_robustness(model, tiny_data, shared, progress=None)
    assert [chips_per_pass(one.model) for one in bench.BENCHES.values()] == [5]
    bench.BENCHES.clear()
    apart = evaluate_robustness(model, tiny_data, own, progress=None)
    assert sorted(chips_per_pass(one.model) for one in bench.BENCHES.values()) == [5, 6]
    target = lambda table: table[table.effect == "target"].reset_index(drop=True)  # noqa: E731
    assert len(target(result.per_chip)) == 12 and target(result.per_chip).equals(target(apart.per_chip))
    bench.BENCHES.clear()
    evaluate_robustness(model, tiny_data, RobustnessConfig(grids=CONFIG.grids, chips=4, target_chips=12, target=CONFIG.target),
                        progress=None)
    assert sorted(chips_per_pass(one.model) for one in bench.BENCHES.values()) == [4, 6]  # fewer than 5: a copy of its own


def test_a_target_read_over_a_lifetime_of_many_chips_keeps_a_copy_of_its_own(tiny_data):
    """Chips read at 7 times x 2 compensations: 400 chips are 6,000 reads, more than a second copy saves."""
    drifting = CONFIG.target.replace(drift_time_s=3600.0)
    config = RobustnessConfig(grids=CONFIG.grids, chips=5, target_chips=400, target=drifting)
    wanted = 10  # automatic: 40 passes of 10
    assert not robustness.reads_curves_copy(config, 5, wanted, over_time=True)
    assert robustness.reads_curves_copy(config, 5, wanted, over_time=False)  # 400 reads
    assert robustness.reads_curves_copy(dataclasses.replace(config, target_chips=300), 5, wanted, over_time=True)  # 4,500 reads
