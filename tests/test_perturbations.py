"""The hardware model against its formulas (statistically where it is random)."""

import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ConfigError, ModelConfig, PerturbationConfig, load_target_hardware
from pipeline.models import build_model
from pipeline.perturbations import (
    HardwareAwareQuantDense,
    attach_hardware,
    calibrate,
    hardware_evaluation,
    hardware_layers,
    saturate,
    set_chip,
    set_condition,
    squares_matmul,
    standard_normal,
    strip_hardware,
)

RNG = np.random.default_rng(1234)
IMAGES = RNG.uniform(-1, 1, size=(512, 28, 28, 1)).astype(np.float32)


def hardware_model(bits=32, hidden=(64,), config=PerturbationConfig(), targets=("dense_1",), seed=0):
    tf.keras.utils.set_random_seed(seed)
    return attach_hardware(build_model(ModelConfig(bits=bits, hidden_units=hidden)), config, targets, train_seed=seed)


def layer_output(model, name, images, training=False):
    probe = tf.keras.Model(model.inputs, model.get_layer(name).output)
    return probe(images, training=training).numpy()


def chip_kernel(model, config, chip):
    """The effective kernel W_chip of dense_1 (float, no input quantizer): its response to one-hot images."""
    one_hot = np.eye(784, dtype=np.float32).reshape(784, 28, 28, 1)
    with hardware_evaluation(model, config, chip=chip):
        return layer_output(model, "dense_1", one_hot)


# --------------------------------------------------------------------------- ideal chip


@pytest.mark.parametrize("bits, arch", [(32, "mlp"), (1, "mlp"), (4, "mlp"), (1, "cnn")])
def test_zero_perturbation_is_the_plain_model_bit_for_bit(bits, arch):
    tf.keras.utils.set_random_seed(3)
    config = ModelConfig(arch=arch, bits=bits, hidden_units=(32, 32))
    plain = build_model(config)
    hardware = attach_hardware(plain, PerturbationConfig(), config.quantized_layer_names)
    assert len(hardware_layers(hardware)) == len(config.quantized_layer_names)
    expected = plain(IMAGES[:64], training=False).numpy()
    np.testing.assert_array_equal(hardware(IMAGES[:64], training=False).numpy(), expected)
    with hardware_evaluation(hardware, PerturbationConfig(), chip=7):
        np.testing.assert_array_equal(hardware(IMAGES[:64], training=False).numpy(), expected)
    # Outside an evaluation setting, even non-zero training levels stay off at inference.
    noisy = attach_hardware(plain, PerturbationConfig(noise_sigma=1, weight_dev_pct=50), config.quantized_layer_names)
    np.testing.assert_array_equal(noisy(IMAGES[:64], training=False).numpy(), expected)
    np.testing.assert_array_equal(strip_hardware(noisy)(IMAGES[:64], training=False).numpy(), expected)


# --------------------------------------------------------------------------- process variation


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
        # programmed once: many small batches read the same chip as one large batch
        np.testing.assert_array_equal(np.concatenate([layer_output(model, "dense_1", IMAGES[i : i + 8]) for i in range(0, 64, 8)]),
                                      layer_output(model, "dense_1", IMAGES[:64]))
        set_chip(model, 6)
        assert not np.array_equal(layer_output(model, "dense_1", IMAGES[:8]), a)


def test_training_draws_fresh_deviation_every_step_and_never_touches_the_kernel():
    model = hardware_model(config=PerturbationConfig(weight_dev_pct=20))
    layer = model.get_layer("dense_1")
    kernel_before = layer.kernel.numpy().copy()
    one_hot = np.eye(784, dtype=np.float32).reshape(784, 28, 28, 1)
    first = layer_output(model, "dense_1", one_hot, training=True)
    second = layer_output(model, "dense_1", one_hot, training=True)
    assert np.mean(first != second) > 0.99
    eps = first / kernel_before - 1
    assert abs(eps.std() / 0.2 - 1) < 0.05
    np.testing.assert_array_equal(layer.kernel.numpy(), kernel_before)


def dense_layer(bits, config, units=64, fan_in=96, seed=0):
    """A standalone hardware-aware dense layer (1-bit: ste_sign kernel and inputs, like a hidden layer)."""
    tf.keras.utils.set_random_seed(seed)
    quantizer = "ste_sign" if bits == 1 else None
    layer = HardwareAwareQuantDense(units, use_bias=False, input_quantizer=quantizer, kernel_quantizer=quantizer,
                                    kernel_constraint="weight_clip" if bits == 1 else None, hardware=config)
    layer.build((None, fan_in))
    return layer


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


@pytest.mark.parametrize("x_is_ones, w_is_ones", [(False, False), (True, False), (False, True), (True, True)])
def test_squares_matmul_equals_matmul_values_and_gradients(x_is_ones, w_is_ones):
    x = tf.constant(np.ones((5, 7)) if x_is_ones else RNG.uniform(0, 2, (5, 7)), tf.float32)
    w = tf.constant(np.ones((7, 3)) if w_is_ones else RNG.uniform(0, 2, (7, 3)), tf.float32)
    upstream = tf.constant(RNG.normal(size=(5, 3)), tf.float32)
    results = []
    for fast in (True, False):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            value = squares_matmul(x, w, x_is_ones and fast, w_is_ones and fast)
            loss = tf.reduce_sum(value * upstream)
        results.append([value.numpy(), *[g.numpy() for g in tape.gradient(loss, [x, w])]])
    for fast, reference in zip(*results):
        np.testing.assert_allclose(fast, reference, rtol=1e-5)


def test_standard_normal_is_a_reproducible_standard_gaussian():
    seed = tf.constant([3, 4], tf.int64)
    sample = standard_normal([301, 333], seed).numpy()  # odd size: the last Box-Muller pair is cut
    assert sample.shape == (301, 333) and np.all(np.isfinite(sample))
    np.testing.assert_array_equal(sample, standard_normal([301, 333], seed).numpy())
    assert not np.array_equal(sample, standard_normal([301, 333], seed + 1).numpy())
    n = sample.size
    assert abs(sample.mean()) < 4 / np.sqrt(n) and abs(sample.std() - 1) < 4 / np.sqrt(2 * n)
    from scipy import stats

    assert stats.kstest(sample.ravel(), "norm").pvalue > 1e-3
    assert abs(stats.kurtosis(sample.ravel())) < 4 * np.sqrt(24 / n)
    # the two halves (cosine and sine of the same pairs) are independent
    flat = sample.ravel()
    half = (n + 1) // 2
    assert abs(np.corrcoef(flat[: n - half], flat[half:])[0, 1]) < 4 / np.sqrt(half)


def test_variation_applies_to_the_quantized_kernel():
    model = hardware_model(bits=1, hidden=(16,), targets=("dense_1",))
    one_hot = np.eye(784, dtype=np.float32).reshape(784, 28, 28, 1)
    with hardware_evaluation(model, PerturbationConfig(weight_dev_pct=10), chip=0):
        varied = layer_output(model, "dense_1", one_hot)
    # sign(W) * (1 + eps): magnitudes scatter around 1, signs are those of the binarized kernel
    np.testing.assert_array_equal(np.sign(varied), np.sign(np.sign(model.get_layer("dense_1").kernel.numpy()) + 0.5))
    assert abs(np.abs(varied).mean() - 1) < 0.01 and abs(np.abs(varied).std() - 0.1) < 0.01


# --------------------------------------------------------------------------- output noise


@pytest.mark.parametrize("sigma", [0.1, 0.5])
def test_relative_noise_is_sigma_times_the_clean_rms(sigma):
    model = hardware_model(hidden=(256,))
    clean = layer_output(model, "dense_1", IMAGES)
    with hardware_evaluation(model, PerturbationConfig(noise_sigma=sigma), chip=0):
        noisy = layer_output(model, "dense_1", IMAGES)
        fresh = layer_output(model, "dense_1", IMAGES)
    rms = np.sqrt(np.mean(clean**2, axis=1, keepdims=True))
    z = (noisy - clean) / (sigma * rms)  # should be N(0, 1)
    n = z.size
    assert abs(z.mean()) < 4 / np.sqrt(n)
    assert abs(z.std() - 1) < 4 / np.sqrt(2 * n)
    assert np.mean(noisy != fresh) > 0.99  # fresh on every forward pass


def test_absolute_noise_is_in_output_units():
    model = hardware_model(hidden=(256,))
    clean = layer_output(model, "dense_1", IMAGES)
    with hardware_evaluation(model, PerturbationConfig(noise_sigma=2.0, noise_mode="absolute"), chip=0):
        noise = layer_output(model, "dense_1", IMAGES) - clean
    assert abs(noise.std() - 2.0) < 4 * 2.0 / np.sqrt(2 * noise.size)


def test_noise_is_reproducible_per_chip():
    model = hardware_model()
    config = PerturbationConfig(noise_sigma=0.3, weight_dev_pct=10)
    with hardware_evaluation(model, config, chip=4):
        first = [layer_output(model, "dense_1", IMAGES[:32]) for _ in range(2)]
    with hardware_evaluation(model, config, chip=4):
        second = [layer_output(model, "dense_1", IMAGES[:32]) for _ in range(2)]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- saturation and ADC


def test_absolute_saturation_bounds_and_adc_levels():
    model = hardware_model(bits=1, hidden=(128,))
    with hardware_evaluation(model, PerturbationConfig(clip_mode="absolute", clip_min=-10, clip_max=12), chip=0):
        clipped = layer_output(model, "dense_1", IMAGES)
    clean = layer_output(model, "dense_1", IMAGES)
    assert clipped.min() == -10 and clipped.max() == 12
    inside = (clean > -10) & (clean < 12)
    np.testing.assert_array_equal(clipped[inside], clean[inside])
    for bits in (1, 3, 5):
        config = PerturbationConfig(clip_mode="absolute", clip_min=-10, clip_max=12, out_bits=bits)
        with hardware_evaluation(model, config, chip=0):
            converted = layer_output(model, "dense_1", IMAGES)
        levels = np.unique(converted)
        assert len(levels) <= 2**bits and converted.min() >= -10 and converted.max() <= 12
        step = 22 / (2**bits - 1)
        np.testing.assert_allclose((levels + 10) / step, np.round((levels + 10) / step), atol=1e-4)


def test_relative_saturation_uses_the_calibrated_range():
    model = hardware_model(hidden=(64,))
    ranges = calibrate(model, IMAGES)
    lo, hi = ranges["dense_1"]
    clean = layer_output(model, "dense_1", IMAGES)
    assert (lo, hi) == pytest.approx((clean.min(), clean.max()))
    with hardware_evaluation(model, PerturbationConfig(clip_mode="relative", clip_fraction=0.4), chip=0):
        clipped = layer_output(model, "dense_1", IMAGES)
    assert clipped.min() == pytest.approx(0.4 * lo) and clipped.max() == pytest.approx(0.4 * hi)


def test_saturation_gradient_is_one_inside_zero_outside():
    values = tf.constant(np.linspace(-3, 3, 61, dtype=np.float32))
    for levels in (0.0, 16.0):  # plain clipping, and clipping followed by the ADC (straight-through)
        with tf.GradientTape() as tape:
            tape.watch(values)
            out = saturate(values, tf.constant(-1.0), tf.constant(2.0), tf.constant(levels))
        grad = tape.gradient(out, values).numpy()
        v = values.numpy()
        np.testing.assert_array_equal(grad[(v > -1) & (v < 2)], 1.0)
        np.testing.assert_array_equal(grad[(v < -1) | (v > 2)], 0.0)


# --------------------------------------------------------------------------- chips side by side


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_chips_side_by_side_are_the_chips_one_at_a_time_bit_for_bit(arch):
    """P chips in one pass (part k of the batch on chip k) give exactly what each chip gives alone:
    the same deviation draws, the same noise per pass, the same saturation and ADC; dense layers
    take the quantize-once path, convolutions the Larq call per chip."""
    tf.keras.utils.set_random_seed(5)
    config = ModelConfig(arch=arch, bits=1, hidden_units=(48, 32))
    plain = build_model(config)
    first = PerturbationConfig(noise_sigma=0.4, weight_dev_pct=30, clip_mode="relative", clip_fraction=0.6, out_bits=4,
                               perturb_layers="all")
    second = PerturbationConfig(noise_sigma=0.2, weight_dev_pct=80, perturb_layers="all")  # a new level: draws rescaled
    targets = first.targets(config)
    alone = attach_hardware(plain, PerturbationConfig(), targets)
    side_by_side = attach_hardware(plain, PerturbationConfig(), targets, chips_per_pass=3)
    assert calibrate(side_by_side, IMAGES[:128]) == calibrate(alone, IMAGES[:128])
    chips, batches = [11, 4, 7], [IMAGES[:40], IMAGES[40:64]]  # two passes per level: fresh noise per pass

    def outputs(model, chip, copies):
        results = []
        with hardware_evaluation(model, first, chip=chip):
            for level in (first, second):
                set_condition(model, level)
                results += [model(np.concatenate([batch] * copies), training=False).numpy() for batch in batches]
        return results

    together = outputs(side_by_side, chips, 3)
    for index, chip in enumerate(chips):
        for batch, joint, own in zip(batches * 2, together, outputs(alone, chip, 1)):
            np.testing.assert_array_equal(joint[index * len(batch) : (index + 1) * len(batch)], own)
    assert not np.array_equal(together[0][:40], together[0][40:80])  # the parts are different chips


def test_chips_of_a_pass_are_named_and_checked():
    plain = build_model(ModelConfig(bits=1, hidden_units=(16,)))
    model = attach_hardware(plain, PerturbationConfig(), ("dense_1",), chips_per_pass=2)
    with hardware_evaluation(model, PerturbationConfig(weight_dev_pct=10), chip=5):
        assert model.get_layer("dense_1").hardware_state.chips.numpy().tolist() == [5, 6]  # the first and the next
        with pytest.raises(ValueError, match=r"^chip: .* evaluates 2 chip\(s\) per pass"):
            set_condition(model, chip=[1, 2, 3])
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="chips_per_pass"):
            attach_hardware(plain, PerturbationConfig(), ("dense_1",), chips_per_pass=bad)


# --------------------------------------------------------------------------- serialization


def test_hardware_layers_round_trip_config_and_files(tmp_path):
    config = PerturbationConfig(noise_sigma=0.2, weight_dev_pct=15, clip_mode="absolute", clip_min=-64, clip_max=63, out_bits=6)
    model = hardware_model(bits=1, config=config)
    layer = model.get_layer("dense_1")
    copy = HardwareAwareQuantDense.from_config(layer.get_config())
    assert copy.hardware == layer.hardware == PerturbationConfig(**config.levels())
    model.save(tmp_path / "m.keras")
    reloaded = tf.keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(reloaded.get_layer("dense_1"), HardwareAwareQuantDense)
    assert reloaded.get_layer("dense_1").hardware == layer.hardware
    np.testing.assert_array_equal(reloaded(IMAGES[:16]).numpy(), model(IMAGES[:16]).numpy())
    with hardware_evaluation(model, config, chip=3), hardware_evaluation(reloaded, config, chip=3):
        np.testing.assert_array_equal(reloaded(IMAGES[:16]).numpy(), model(IMAGES[:16]).numpy())


def test_run_time_levels_are_not_weights():
    plain = build_model(ModelConfig(bits=1, hidden_units=(32,)))
    hardware = attach_hardware(plain, PerturbationConfig(noise_sigma=0.5), ("dense_1",))
    assert [w.shape for w in hardware.weights] == [w.shape for w in plain.weights]


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "kwargs, parameter",
    [
        ({"noise_sigma": -0.1}, "noise_sigma"),
        ({"noise_mode": "loud"}, "noise_mode"),
        ({"weight_dev_pct": -5}, "weight_dev_pct"),
        ({"clip_mode": "absolute", "clip_min": 5, "clip_max": 5}, "clip_max"),
        ({"clip_mode": "absolute", "clip_min": 0}, "clip_min"),
        ({"clip_min": -1, "clip_max": 1}, "clip_min"),
        ({"clip_mode": "relative", "clip_fraction": 0}, "clip_fraction"),
        ({"clip_mode": "relative", "clip_fraction": 1.5}, "clip_fraction"),
        ({"clip_mode": "absolute", "clip_min": 0, "clip_max": 255, "out_bits": 0}, "out_bits"),
        ({"out_bits": 4}, "out_bits"),
        ({"perturb_layers": ""}, "perturb_layers"),
    ],
)
def test_bad_perturbation_levels_name_their_parameter(kwargs, parameter):
    with pytest.raises(ConfigError) as raised:
        PerturbationConfig(**kwargs)
    assert raised.value.parameter == parameter


def test_layer_selection():
    mlp, cnn = ModelConfig(hidden_units=(8, 8, 8)), ModelConfig(arch="cnn")
    assert PerturbationConfig().targets(mlp) == ("dense_1", "dense_2", "dense_3")
    assert PerturbationConfig(perturb_layers="dense").targets(mlp)[-1] == "dense_out"
    assert PerturbationConfig().targets(cnn) == ("dense_1",)
    assert PerturbationConfig(perturb_layers="all").targets(cnn) == ("conv_1", "conv_2", "conv_3", "dense_1", "dense_out")
    assert PerturbationConfig(perturb_layers="conv_2, dense_out").targets(cnn) == ("conv_2", "dense_out")
    with pytest.raises(ConfigError, match="perturb_layers: unknown layer.*conv_9"):
        PerturbationConfig(perturb_layers="conv_9").targets(cnn)


def test_labels_and_inferred_clip_mode():
    assert PerturbationConfig.from_text(noise_sigma="0.3", weight_dev_pct="20", clip_min="-128", clip_max="127").label == \
        "s0.30-d20-c[-128,127]"
    assert PerturbationConfig.from_text(clip_fraction="0.5", out_bits="4").label == "c0.50-adc4"
    assert PerturbationConfig.from_text(noise_sigma="0").label == "ideal"


def test_target_hardware_file(tmp_path):
    target = load_target_hardware("sweeps/target_hardware.yaml")
    assert target.noise_sigma > 0 and target.weight_dev_pct > 0 and target.clip_mode.value == "relative"
    (tmp_path / "bad.yaml").write_text("noise_sigma: 0.1\nvoltage: 3\n")
    with pytest.raises(ConfigError, match="target: .*unknown key.*voltage"):
        load_target_hardware(tmp_path / "bad.yaml")
    (tmp_path / "neg.yaml").write_text("weight_dev_pct: -3\n")
    with pytest.raises(ConfigError, match="weight_dev_pct"):
        load_target_hardware(tmp_path / "neg.yaml")
