"""Process variation (pipeline/effects/weight_dev.py) against its formula, statistically."""

import numpy as np
import pytest
import tensorflow as tf

from pipeline.effects.weight_dev import squares_matmul
from pipeline.perturbation import PerturbationConfig
from pipeline.hwmodel.chips import hardware_evaluation, set_condition

from layer_probes import IMAGES, ONE_HOT, RNG, chip_kernel, dense_layer, hardware_model, layer_output


@pytest.mark.parametrize("pct", [5.0, 20.0, 60.0])
def test_weight_deviation_follows_its_distribution(pct):
    model = hardware_model()
    kernel = model.get_layer("dense_1").kernel.numpy()
    eps = chip_kernel(model, PerturbationConfig(weight_dev_pct=pct), chip=1) / kernel - 1
    n, sigma = eps.size, pct / 100
    assert abs(eps.mean()) < 4 * sigma / np.sqrt(n)  # mean 0, within 4 standard errors
    assert abs(eps.std() / sigma - 1) < 4 / np.sqrt(2 * n)  # std = pct/100, within 4 standard errors
    # i.i.d. per weight: neighbouring deviations are uncorrelated
    assert abs(np.corrcoef(eps[:, :-1].ravel(), eps[:, 1:].ravel())[0, 1]) < 4 / np.sqrt(n)


def test_a_chip_is_one_fixed_draw():
    model = hardware_model()
    config = PerturbationConfig(weight_dev_pct=30)
    first, again, other = chip_kernel(model, config, 1), chip_kernel(model, config, 1), chip_kernel(model, config, 2)
    np.testing.assert_array_equal(first, again)
    assert np.mean(first != other) > 0.99
    with hardware_evaluation(model, config, chip=5):  # fixed for every input of the chip
        a = layer_output(model, "dense_1", IMAGES[:8])
        layer_output(model, "dense_1", IMAGES)
        b = layer_output(model, "dense_1", IMAGES[:8])
        np.testing.assert_array_equal(a, b)
        # programmed once: many small batches read the same chip as one large batch (up to the float
        # matmul's rounding, which depends on the batch size on some CPUs; another chip differs by O(1))
        np.testing.assert_allclose(np.concatenate([layer_output(model, "dense_1", IMAGES[i : i + 8]) for i in range(0, 64, 8)]),
                                   layer_output(model, "dense_1", IMAGES[:64]), rtol=0, atol=1e-5)
        set_condition(model, chip=6)
        assert not np.array_equal(layer_output(model, "dense_1", IMAGES[:8]), a)


def test_training_draws_fresh_deviation_every_step_and_never_touches_the_kernel():
    model = hardware_model(config=PerturbationConfig(weight_dev_pct=20))
    layer = model.get_layer("dense_1")
    kernel_before = layer.kernel.numpy().copy()
    first = layer_output(model, "dense_1", ONE_HOT, training=True)
    second = layer_output(model, "dense_1", ONE_HOT, training=True)
    assert np.mean(first != second) > 0.99
    eps = first / kernel_before - 1
    assert abs(eps.std() / 0.2 - 1) < 0.05
    np.testing.assert_array_equal(layer.kernel.numpy(), kernel_before)


@pytest.mark.parametrize("bits", [32, 1])
def test_training_variation_has_the_per_example_distribution_of_a_kernel_draw(bits):
    """Training draws the deviation at the outputs (local reparameterization): for every example
    and unit, y ~ N(x_q . W_q, dev^2 * (x_q^2 . W_q^2)) -- the exact distribution a fresh kernel
    draw gives -- independent across units and examples."""
    dev, passes = 0.3, 400
    layer = dense_layer(bits, PerturbationConfig(weight_dev_pct=100 * dev))
    x = RNG.normal(size=(16, 96)).astype(np.float32)
    x_q = np.sign(np.sign(x) + 0.1) if bits == 1 else x
    w_q = np.sign(np.sign(layer.kernel.numpy()) + 0.1) if bits == 1 else layer.kernel.numpy()
    mean, std = x_q @ w_q, dev * np.sqrt(np.square(x_q) @ np.square(w_q))
    outputs = np.stack([layer(x, training=True).numpy() for _ in range(passes)])
    z = (outputs - mean) / std  # standardized: N(0, 1) element-wise if the formula holds
    assert abs(z.mean()) < 4 / np.sqrt(z.size)
    assert abs(z.std() - 1) < 4 / np.sqrt(2 * z.size)
    per_element_std = z.std(axis=0)  # every example and unit has its own formula variance
    assert np.all(np.abs(per_element_std - 1) < 6 / np.sqrt(2 * passes))
    flat = z.reshape(passes, -1)  # independence: neighbouring units and examples uncorrelated
    assert abs(np.corrcoef(z[:, :, :-1].ravel(), z[:, :, 1:].ravel())[0, 1]) < 4 / np.sqrt(flat.size)
    assert abs(np.corrcoef(z[:, :-1].ravel(), z[:, 1:].ravel())[0, 1]) < 4 / np.sqrt(flat.size)
    # ... and it matches the spread of outputs over chips (kernel draws) at evaluation
    model = tf.keras.Sequential([tf.keras.Input((96,)), layer])
    chips = []
    for chip in range(passes):
        with hardware_evaluation(model, PerturbationConfig(weight_dev_pct=100 * dev), chip=chip):
            chips.append(model(x, training=False).numpy())
    chip_std = (np.stack(chips) - mean).std(axis=0) / std
    assert abs(chip_std.mean() - 1) < 4 / np.sqrt(2 * z.size) + 0.01


def test_training_variation_gradient_is_that_of_a_kernel_draw():
    """The expected gradient equals the one of y = x . (W * (1 + eps)): for the loss sum(y^2),
    E[dL/dW] = 2 x^T (x W) + 2 dev^2 (x^2)^T 1 * W -- the second term only exists because the
    output spread depends on W, so dropping it (a stop-gradient) would fail here."""
    dev, passes = 1.0, 600
    layer = dense_layer(32, PerturbationConfig(weight_dev_pct=100 * dev), units=8, fan_in=12)
    x = tf.constant(RNG.normal(size=(4, 12)).astype(np.float32))
    w = layer.kernel.numpy()
    grads = []
    for _ in range(passes):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(layer(x, training=True)))
        grads.append(tape.gradient(loss, layer.kernel).numpy())
    grads = np.stack(grads)
    xn = x.numpy()
    expected = 2 * xn.T @ (xn @ w) + 2 * dev**2 * (np.square(xn).T @ np.ones((4, 8))) * w
    standard_error = grads.std(axis=0) / np.sqrt(passes)

    def mean_squared_z(answer):  # about 1 when ``answer`` is the expectation, far above when not
        return float(np.mean(np.square((grads.mean(axis=0) - answer) / standard_error)))

    assert mean_squared_z(expected) < 3.0  # correlated elements: looser than chi-square 1 +- 0.15
    assert mean_squared_z(2 * xn.T @ (xn @ w)) > 20.0  # the stop-gradient answer is measurably wrong


@pytest.mark.parametrize("x_signs, w_signs", [(False, False), (True, False), (False, True), (True, True)])
def test_squares_matmul_equals_the_matmul_of_squares(x_signs, w_signs):
    """Values equal ``x^2 @ w^2``; gradients too, except that none flows to a factor of signs (its square is 1)."""
    x = tf.constant(np.sign(RNG.normal(size=(5, 7))) if x_signs else RNG.uniform(-2, 2, (5, 7)), tf.float32)
    w = tf.constant(np.sign(RNG.normal(size=(7, 3))) if w_signs else RNG.uniform(-2, 2, (7, 3)), tf.float32)
    upstream = tf.constant(RNG.normal(size=(5, 3)), tf.float32)
    results = []
    for fast in (True, False):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            value = squares_matmul(x, w, x_signs and fast, w_signs and fast)
            loss = tf.reduce_sum(value * upstream)
        grads = tape.gradient(loss, [x, w], unconnected_gradients="zero")
        results.append([value.numpy(), *[g.numpy() for g in grads]])
    (value, d_x, d_w), (reference, ref_x, ref_w) = results
    np.testing.assert_allclose(np.broadcast_to(value, reference.shape), reference, rtol=1e-5)  # broadcastable to the outputs
    np.testing.assert_allclose(d_x, 0 if x_signs else ref_x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d_w, 0 if w_signs else ref_w, rtol=1e-5, atol=1e-6)


def test_variation_applies_to_the_quantized_kernel():
    model = hardware_model(bits=1, hidden=(16,), targets=("dense_1",))
    with hardware_evaluation(model, PerturbationConfig(weight_dev_pct=10), chip=0):
        varied = layer_output(model, "dense_1", ONE_HOT)
    # sign(W) * (1 + eps): magnitudes scatter around 1, signs are those of the binarized kernel
    np.testing.assert_array_equal(np.sign(varied), np.sign(np.sign(model.get_layer("dense_1").kernel.numpy()) + 0.5))
    assert abs(np.abs(varied).mean() - 1) < 0.01 and abs(np.abs(varied).std() - 0.1) < 0.01
