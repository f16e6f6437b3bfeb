"""Weight bit errors (pipeline/effects/weight_ber.py) against their definition, statistically,
through the public API: a faulty stored weight reads as another of its values."""

import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import DataConfig, ModelConfig, RobustnessConfig, TrainConfig
from pipeline.learning.data import prepare
from pipeline.effects import EFFECTS
from pipeline.perturbation import PerturbationConfig
from pipeline.hwmodel.chips import attach_hardware, hardware_evaluation
from pipeline.learning.models import build_model
from pipeline.evaluation.robustness import evaluate_robustness
from pipeline.learning.training import seed_everything, train
from pipeline.validation import ConfigError

from conftest import all_runs, run_cli
from layer_probes import IMAGES, ONE_HOT, chip_kernel, hardware_model, layer_output


def stored_kernel(model):
    """W_q of dense_1 as the plain layer reads it (no input quantizer: the response to one-hot images)."""
    return layer_output(model, "dense_1", ONE_HOT)


@pytest.mark.parametrize("ber", [1e-3, 0.02, 0.3])
def test_flipped_fraction_is_the_bit_error_rate(ber):
    model = hardware_model(bits=1)
    stored = stored_kernel(model)
    read = chip_kernel(model, PerturbationConfig(weight_ber=ber), chip=3)
    assert set(np.unique(read)) <= {-1.0, 1.0}  # a binarized weight stays binary
    flipped = read != stored
    np.testing.assert_array_equal(read[flipped], -stored[flipped])  # the sign flips
    n = flipped.size
    assert abs(flipped.mean() - ber) < 4 * np.sqrt(ber * (1 - ber) / n)
    # independent per weight: flips of neighbouring weights are uncorrelated
    assert abs(np.corrcoef(flipped[:, :-1].ravel(), flipped[:, 1:].ravel())[0, 1]) < 4 / np.sqrt(n)


def test_a_chip_keeps_its_faulty_cells_and_chips_differ():
    model = hardware_model(bits=1)
    stored = stored_kernel(model)
    flips = lambda ber, chip: chip_kernel(model, PerturbationConfig(weight_ber=ber), chip) != stored  # noqa: E731
    first, again, other = flips(0.05, 1), flips(0.05, 1), flips(0.05, 2)
    np.testing.assert_array_equal(first, again)
    assert (first & other).sum() < 0.1 * first.sum()  # another chip: other cells (overlap ~ ber)
    assert np.all(flips(0.2, 1)[first])  # at a higher rate the same chip keeps its faulty cells, and gains more


def test_training_draws_fresh_errors_every_step_and_never_touches_the_kernel():
    model = hardware_model(bits=1, config=PerturbationConfig(weight_ber=0.1))
    layer = model.get_layer("dense_1")
    latent = layer.kernel.latent_variable.numpy().copy()
    stored = stored_kernel(model)
    first = layer_output(model, "dense_1", ONE_HOT, training=True) != stored
    second = layer_output(model, "dense_1", ONE_HOT, training=True) != stored
    n = first.size
    for flips in (first, second):
        assert abs(flips.mean() - 0.1) < 4 * np.sqrt(0.1 * 0.9 / n)
    assert abs((first & second).mean() - 0.01) < 4 * np.sqrt(0.01 * 0.99 / n)  # independent draws: overlap ber^2
    with hardware_evaluation(model, PerturbationConfig(weight_ber=0.3), chip=0):
        layer_output(model, "dense_1", ONE_HOT)
    np.testing.assert_array_equal(layer.kernel.latent_variable.numpy(), latent)


@pytest.mark.parametrize("bits", [1, 4, 32])
def test_zero_rate_is_the_plain_model_bit_for_bit(bits):
    plain = hardware_model(bits=bits, targets=())
    model = attach_hardware(plain, PerturbationConfig(weight_ber=0.0), ("dense_1",))
    expected = plain(IMAGES[:64], training=False).numpy()
    with hardware_evaluation(model, PerturbationConfig(weight_ber=0.0), chip=4):
        np.testing.assert_array_equal(model(IMAGES[:64], training=False).numpy(), expected)
    np.testing.assert_array_equal(model(IMAGES[:64], training=True).numpy(), plain(IMAGES[:64], training=True).numpy())


@pytest.mark.parametrize("read_by", ["a chip", "a training step"])
def test_a_k_bit_weight_reads_as_another_of_its_levels_uniformly(read_by):
    bits, ber = 3, 0.25 if read_by == "a chip" else 0.1  # 0.1: a training step draws sparsely (784 x 64 weights)
    model = hardware_model(bits=bits, hidden=(64,), config=PerturbationConfig(weight_ber=ber))
    levels = -1 + 2 * np.arange(2**bits) / (2**bits - 1)
    stored = stored_kernel(model)
    if read_by == "a chip":
        read = chip_kernel(model, PerturbationConfig(weight_ber=ber), chip=9)
    else:
        read = layer_output(model, "dense_1", ONE_HOT, training=True)
    index = lambda values: np.abs(values[..., None] - levels).argmin(axis=-1)  # noqa: E731
    assert np.abs(read - levels[index(read)]).max() < 1e-6  # never outside the levels
    faulty = index(read) != index(stored)
    n = faulty.size
    assert abs(faulty.mean() - ber) < 4 * np.sqrt(ber * (1 - ber) / n)
    # the wrong level is uniform among the 2^k - 1 others: chi-square over the offsets 1 .. 7
    offsets = (index(read)[faulty] - index(stored)[faulty]) % 2**bits
    counts = np.bincount(offsets, minlength=2**bits)[1:]
    expected = faulty.sum() / (2**bits - 1)
    chi_square = float(np.sum((counts - expected) ** 2 / expected))
    assert counts.min() > 0 and chi_square < 24.3  # 6 degrees of freedom: p > 0.0005


def test_a_float_weight_flips_its_sign():
    model = hardware_model(bits=32)
    stored = stored_kernel(model)
    read = chip_kernel(model, PerturbationConfig(weight_ber=0.1), chip=2)
    faulty = read != stored
    np.testing.assert_array_equal(read[faulty], -stored[faulty])
    assert abs(faulty.mean() - 0.1) < 4 * np.sqrt(0.09 / faulty.size)


@pytest.mark.parametrize("value", [-0.01, 0.6, "x", float("nan")])
def test_bad_rates_name_the_parameter(value):
    with pytest.raises(ConfigError) as raised:
        PerturbationConfig(weight_ber=value)
    assert raised.value.parameter == "weight_ber"
    with pytest.raises(ConfigError) as raised:
        RobustnessConfig(grids={"weight_ber": f"0,{value}"})
    assert raised.value.parameter == "weight_ber_grid"


@pytest.mark.parametrize("args, parameter", [(["perturb", "--weight_ber", "0.7"], "weight_ber"),
                                             (["perturb", "--weight_ber", "often"], "weight_ber"),
                                             (["qat", "--weight_ber_grid", "0,1e-3,0.6"], "weight_ber_grid")])
def test_bad_rates_at_the_command_line_fail_before_training(tracking_store, args, parameter):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {parameter}: ")
    assert all_runs(tracking_store) == []


def test_the_curve_has_the_default_log_grid():
    (effect,) = [effect for effect in EFFECTS if effect.name == "weight_ber"]
    assert effect.curve.grid == (0, 1e-4, 1e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1) and effect.curve.log
    assert RobustnessConfig().grids["weight_ber"] == effect.curve.grid


def test_error_aware_training_buys_tolerance():
    """A real experiment (Hirtzlin et al.'s): trained with bit errors, a binarized MLP loses less
    accuracy at a high bit-error rate than the same MLP trained plainly (same data, seed, 5 chips)."""
    data = prepare(DataConfig(source="bundled", limit=1000, seed=11))
    config = ModelConfig(bits=1, hidden_units=(256,))
    robustness = RobustnessConfig(grids={**{effect.name: effect.curve.grid[:1] for effect in EFFECTS}, "weight_ber": "0.1"},
                                  chips=5, target_chips=1, target=PerturbationConfig())
    scores = {}
    for name, levels in (("plain", None), ("aware", PerturbationConfig(weight_ber=0.05))):
        seed_everything(11)
        model = build_model(config)
        if levels is not None:
            model = attach_hardware(model, levels, levels.targets(config), train_seed=11)
        train(model, data, TrainConfig(epochs=8, seed=11), verbose=0)
        result = evaluate_robustness(model, data, robustness, progress=None)
        scores[name] = result.curves.set_index("effect").loc["weight_ber", "acc_mean"]
    assert scores["aware"] > scores["plain"] + 0.03, scores
    tf.keras.backend.clear_session()
