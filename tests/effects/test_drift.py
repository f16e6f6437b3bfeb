"""Conductance drift (pipeline/effects/drift.py) against its formula, statistically, and its compensation."""

import numpy as np
import pytest
from scipy import stats

from pipeline.config import RobustnessConfig
from pipeline.perturbation import PerturbationConfig
from pipeline.validation import ConfigError
from pipeline.hwmodel.chips import hardware_evaluation, set_condition

from layer_probes import IMAGES, ONE_HOT, chip_kernel, hardware_model, layer_output

YEAR, T0 = 31_536_000.0, 20.0


def exponents(model, seconds, chip=1, **levels):
    """nu per weight of dense_1 read back from the chip: -log(W(t) / W_prog) / log((t + t0) / t0)."""
    kernel = model.get_layer("dense_1").kernel.numpy()
    read = chip_kernel(model, PerturbationConfig(drift_time_s=seconds, **levels), chip)
    return -np.log(read / kernel) / np.log1p(seconds / levels.get("drift_t0_s", T0))


@pytest.mark.parametrize("mean, std", [(0.049, 0.008), (0.1, 0.045)])
def test_drift_exponents_follow_their_distribution(mean, std):
    model = hardware_model()
    nu = exponents(model, YEAR, drift_nu_mean=mean, drift_nu_std=std)
    n, a = nu.size, mean / std
    # nu = max(0, N(mean, std^2)): the censored normal's moments (at aihwkit's defaults, 6 std from 0: the normal's own)
    first = mean * stats.norm.cdf(a) + std * stats.norm.pdf(a)
    second = (mean**2 + std**2) * stats.norm.cdf(a) + mean * std * stats.norm.pdf(a)
    spread = np.sqrt(second - first**2)
    assert abs(nu.mean() - first) < 4 * spread / np.sqrt(n)  # within 4 standard errors
    assert abs(nu.std() / spread - 1) < 4 / np.sqrt(2 * n)
    assert nu.min() >= 0 and (mean > 6 * std or np.mean(nu == 0) > 0)  # clamped at 0: no device gains conductance
    assert abs(np.corrcoef(nu[:, :-1].ravel(), nu[:, 1:].ravel())[0, 1]) < 4 / np.sqrt(n)  # one exponent per weight


def test_the_same_chip_at_two_times_differs_only_by_the_drift_law():
    model = hardware_model()
    hour, year = exponents(model, 3600.0), exponents(model, YEAR)
    np.testing.assert_allclose(hour, year, rtol=0, atol=2e-5)  # the same nu: W(t) = W_prog ((t + t0)/t0)^-nu
    assert np.mean(exponents(model, YEAR, chip=2) != year) > 0.99  # another chip, other exponents


def test_the_first_read_after_programming_is_t0():
    """``t`` counts from the end of programming: the factor is ((t + t0) / t0)^-nu, 1 at t = 0."""
    model = hardware_model()
    nu = exponents(model, T0)  # t = t0: the factor is 2^-nu
    read = chip_kernel(model, PerturbationConfig(drift_time_s=T0), 1)
    np.testing.assert_allclose(read, model.get_layer("dense_1").kernel.numpy() * 2.0 ** -nu, rtol=1e-5)


def test_no_drift_is_the_plain_model_bit_for_bit():
    model = hardware_model(bits=1)
    plain = layer_output(model, "dense_1", IMAGES)
    with hardware_evaluation(model, PerturbationConfig(drift_time_s=0, drift_compensation="global", drift_nu_mean=0.3), chip=3):
        np.testing.assert_array_equal(layer_output(model, "dense_1", IMAGES), plain)
    varied = PerturbationConfig(weight_dev_pct=20)
    with hardware_evaluation(model, varied, chip=3):
        without = layer_output(model, "dense_1", IMAGES)
    with hardware_evaluation(model, varied.replace(drift_time_s=0.0, drift_compensation="global"), chip=3):
        np.testing.assert_array_equal(layer_output(model, "dense_1", IMAGES), without)


def test_a_binary_weight_keeps_its_sign_and_its_magnitude_decays_per_device():
    model = hardware_model(bits=1, hidden=(16,))
    with hardware_evaluation(model, PerturbationConfig(drift_time_s=YEAR), chip=0):
        read = layer_output(model, "dense_1", ONE_HOT)  # the first layer reads pixels: one-hot images read the rows of W(t)
    signs = np.sign(np.sign(model.get_layer("dense_1").kernel.numpy()) + 0.5)
    magnitude = read / signs
    assert (magnitude > 0).all() and (magnitude < 1).all()  # the sign kept, the magnitude decayed
    log_time = np.log1p(YEAR / T0)
    expected = np.exp(-0.049 * log_time + (0.008 * log_time) ** 2 / 2)  # E[exp(-nu L)], nu ~ N(0.049, 0.008^2)
    assert abs(magnitude.mean() / expected - 1) < 4 * magnitude.std() / np.sqrt(magnitude.size) / expected
    assert abs(np.log(magnitude).std() / (0.008 * log_time) - 1) < 4 / np.sqrt(2 * magnitude.size)  # device by device


def test_global_compensation_restores_the_mean_output_scale():
    """On the layer's real inputs (not the reference the scale is measured with), the compensated
    layer's mean |output| is its value at programming within 1 %, uncompensated it is about halved."""
    model = hardware_model(bits=1)
    programmed = np.abs(layer_output(model, "dense_1", IMAGES)).mean()
    means = {}
    for mode in ("none", "global"):
        with hardware_evaluation(model, PerturbationConfig(drift_time_s=YEAR, drift_compensation=mode), chip=4):
            means[mode] = np.abs(layer_output(model, "dense_1", IMAGES)).mean()
    assert abs(means["global"] / programmed - 1) < 0.01
    assert abs(means["none"] / programmed - np.exp(-0.049 * np.log1p(YEAR / T0))) < 0.02


def test_compensation_is_one_scale_per_chip_measured_on_every_stored_weight():
    """alpha = sum |W_prog| / sum |W(t)| (the one-hot reference reads every weight), with the chip's
    other kernel effects in both; chips side by side get their own scales."""
    model = hardware_model()
    kernel = model.get_layer("dense_1").kernel.numpy()
    config = PerturbationConfig(weight_dev_pct=30, drift_time_s=YEAR)
    for chip in (5, 6):
        programmed = chip_kernel(model, config.replace(drift_time_s=0.0), chip)
        drifted = chip_kernel(model, config, chip)
        compensated = chip_kernel(model, config.replace(drift_compensation="global"), chip)
        alpha = np.abs(programmed).sum() / np.abs(drifted).sum()
        np.testing.assert_allclose(compensated, drifted * alpha, rtol=2e-5, atol=1e-7)
        assert abs(alpha - 1 / np.exp(-0.049 * np.log1p(YEAR / T0))) < 0.05
    assert kernel.shape == compensated.shape


def test_training_draws_fresh_exponents_and_compensates_each_step():
    model = hardware_model(bits=32, config=PerturbationConfig(drift_time_s=YEAR))
    kernel = model.get_layer("dense_1").kernel.numpy().copy()
    first = layer_output(model, "dense_1", ONE_HOT, training=True)
    second = layer_output(model, "dense_1", ONE_HOT, training=True)
    assert np.mean(first != second) > 0.99  # a fresh chip every step
    nu = -np.log(first / kernel) / np.log1p(YEAR / T0)
    assert abs(nu.mean() - 0.049) < 4 * 0.008 / np.sqrt(nu.size) and abs(nu.std() / 0.008 - 1) < 0.05
    np.testing.assert_array_equal(model.get_layer("dense_1").kernel.numpy(), kernel)  # never modified
    compensated = hardware_model(bits=32, config=PerturbationConfig(drift_time_s=YEAR, drift_compensation="global"))
    read = layer_output(compensated, "dense_1", ONE_HOT, training=True)
    assert abs(np.abs(read).sum() / np.abs(kernel).sum() - 1) < 1e-5  # the step's own scale


def test_a_uniform_compensated_drift_leaves_a_training_step_as_it_was():
    # nu without spread shrinks every weight alike: the compensation undoes it exactly, so a step of the
    # target hardware (deviation drawn at the outputs, relative noise and saturation) has the same layer
    # sums (before BatchNorm) and gradients as without drift, up to rounding; uncompensated, the sums
    # shrink by the law. What drift-aware training adds is the spread of nu.
    import tensorflow as tf

    target = PerturbationConfig(weight_dev_pct=20, noise_sigma=0.3, clip_mode="relative", clip_fraction=0.5)
    uniform = target.replace(drift_time_s=YEAR, drift_nu_std=0.0, drift_compensation="global")
    steps = {}
    for name, config in {"plain": target, "global": uniform, "none": uniform.replace(drift_compensation="none")}.items():
        model = hardware_model(bits=1, hidden=(256, 256), config=config, targets=("dense_1", "dense_2"))
        probe = tf.keras.Model(model.inputs, [model.get_layer(layer).output for layer in ("dense_1", "dense_2")] + [model.output])
        with tf.GradientTape() as tape:
            *sums, outputs = probe(IMAGES, training=True)
            loss = tf.reduce_mean(tf.square(outputs))
        steps[name] = [s.numpy() for s in sums], [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]
    (plain_sums, plain_grads), (drift_sums, drift_grads) = steps["plain"], steps["global"]
    for plain, drifted in zip(plain_sums, drift_sums):
        np.testing.assert_allclose(drifted, plain, rtol=1e-3, atol=1e-3)
    for plain, drifted in zip(plain_grads, drift_grads):
        assert np.linalg.norm(drifted - plain) <= 1e-2 * np.linalg.norm(plain) + 1e-9
    shrink = np.exp(-0.049 * np.log1p(YEAR / T0))
    for plain, shrunk in zip(plain_sums, steps["none"][0]):
        assert abs(np.sqrt(np.mean(shrunk ** 2) / np.mean(plain ** 2)) - shrink) < 0.01 * shrink


def test_chips_side_by_side_have_the_numbers_of_one_chip_at_a_time():
    from pipeline.hwmodel.chips import attach_hardware

    one = hardware_model(bits=1)
    config = PerturbationConfig(drift_time_s=YEAR, drift_compensation="global", weight_dev_pct=10)
    three = attach_hardware(one, config, ("dense_1",), chips_per_pass=3)
    with hardware_evaluation(three, config, chip=7):
        together = three(np.concatenate([IMAGES[:32]] * 3), training=False).numpy()
    for index in range(3):
        with hardware_evaluation(one, config, chip=7 + index):
            np.testing.assert_allclose(together[32 * index : 32 * (index + 1)], one(IMAGES[:32], training=False).numpy(), atol=1e-5)
        set_condition(one, chip=0)


@pytest.mark.parametrize("levels, parameter", [
    ({"drift_time_s": -1}, "drift_time_s"), ({"drift_nu_std": -0.01}, "drift_nu_std"), ({"drift_t0_s": 0}, "drift_t0_s"),
    ({"drift_nu_mean": 2}, "drift_nu_mean"), ({"drift_compensation": "per_column"}, "drift_compensation")])
def test_bad_drift_levels_name_the_parameter(levels, parameter):
    with pytest.raises(ConfigError) as error:
        PerturbationConfig(**levels)
    assert error.value.parameter == parameter


@pytest.mark.parametrize("values, parameter", [
    ({"drift_times": ()}, "drift_times"), ({"drift_times": (60.0, 1.0)}, "drift_times"), ({"drift_times": (1.0, 1.0)}, "drift_times"),
    ({"drift_times": (-1.0, 1.0)}, "drift_times"), ({"lifetime_yield": 0.0}, "lifetime_yield"), ({"lifetime_yield": 1.01}, "lifetime_yield")])
def test_bad_time_grids_name_the_parameter(values, parameter):
    with pytest.raises(ConfigError) as error:
        RobustnessConfig(**values)
    assert error.value.parameter == parameter
