"""Crossbar tiles, accumulators in circuit units and per-tile ADCs (pipeline/hwmodel/tiles.py) against their formulas.

Every number is checked against numpy written from docs/hardware-model.md: the partial sums of
each tile, the XNOR-popcount of a k-bit counter (bit-serial on the first layer's pixels), the
relative noise of each tile, the levels of each tile's converter."""

import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ModelConfig
from pipeline.perturbation import PerturbationConfig
from pipeline.hwmodel.chips import attach_hardware, calibrate, hardware_evaluation
from pipeline.hwmodel.tiles import Tiling
from pipeline.effects.weight_dev import squares_matmul
from pipeline.learning.models import build_model
from pipeline.validation import ConfigError

from layer_probes import IMAGES, dense_layer, every_effect, layer_output

RNG = np.random.default_rng(77)
PIXELS = RNG.integers(0, 256, size=(64, 28, 28, 1))
PIXEL_IMAGES = (PIXELS / 127.5 - 1.0).astype(np.float32)  #: 8-bit pixels, as the data gives them


def one_bit_mlp(config, hidden=(96, 64), targets=("dense_1", "dense_2"), seed=0, chips_per_pass=1):
    tf.keras.utils.set_random_seed(seed)
    plain = build_model(ModelConfig(bits=1, hidden_units=hidden))
    return attach_hardware(plain, config, targets, train_seed=seed, chips_per_pass=chips_per_pass)


def signs(values):
    return np.where(values >= 0, 1.0, -1.0)


# --------------------------------------------------------------------------- one tile is today's layer


@pytest.mark.parametrize("rows", [784, 5000])
def test_tiles_of_at_least_the_fan_in_are_the_whole_sum_bit_for_bit(rows):
    """tile_rows >= N: evaluation on chips and a training step give exactly what no tiles give."""
    config = every_effect(out_bits=4, perturb_layers="dense")
    whole = one_bit_mlp(config, targets=("dense_1", "dense_2"))
    tiled = one_bit_mlp(config.replace(tile_rows=rows), targets=("dense_1", "dense_2"))
    for model in (whole, tiled):
        calibrate(model, IMAGES[:256])
    np.testing.assert_array_equal(tiled(IMAGES[:64], training=True).numpy(), whole(IMAGES[:64], training=True).numpy())
    for model, levels in ((whole, config), (tiled, config.replace(tile_rows=rows))):
        with hardware_evaluation(model, levels, chip=3):
            model.outputs_seen = model(IMAGES[:64], training=False).numpy()
    np.testing.assert_array_equal(tiled.outputs_seen, whole.outputs_seen)


def test_tiling_rows_partials_and_weights():
    tiling = Tiling.of(784, 256, bit_serial=True)
    assert (tiling.tiles, tiling.rows, tiling.count) == (4, [256, 256, 256, 16], 32)
    np.testing.assert_array_equal(tiling.partial_rows[:9], [256] * 8 + [256])
    np.testing.assert_allclose(tiling.weights[:8] * 255, 2.0 ** np.arange(8))
    assert Tiling.of(784, None, bit_serial=False).count == 1 and Tiling.of(784, 1000, False).tile_rows == 784


# --------------------------------------------------------------------------- saturation per tile


def test_a_tile_saturates_while_the_layer_total_stays_in_range():
    """Two tiles of 4 rows summing +4 and -2: the total 2 is inside [-3, 3], the first tile is not."""
    layer = dense_layer(32, PerturbationConfig(clip_mode="absolute", clip_min=-3, clip_max=3, tile_rows=4), units=1, fan_in=8)
    layer.kernel.assign(np.array([[1, 1, 1, 1, 1, 1, -1, -1]], np.float32).T)
    inputs = tf.constant([[1, 1, 1, 1, 0, 0, 1, 1]], tf.float32)  # tile 1: 4, tile 2: -2
    assert float(layer(inputs, training=True)) == 3.0 - 2.0  # per tile; the whole sum would give 2
    whole = dense_layer(32, PerturbationConfig(clip_mode="absolute", clip_min=-3, clip_max=3), units=1, fan_in=8)
    whole.kernel.assign(layer.kernel)
    assert float(whole(inputs, training=True)) == 2.0


def popcount_layer(y_planes, kernel, rows, bits):
    """numpy: per tile of ``rows`` rows the count of matching XNORs c = (y_t + N_t) / 2 in a k-bit counter."""
    total = np.zeros((y_planes.shape[0], kernel.shape[1]))
    for start in range(0, kernel.shape[0], rows):
        tile = slice(start, start + rows)
        n = kernel[tile].shape[0]
        matches = (y_planes[:, tile, None] == kernel[None, tile, :]).sum(axis=1)
        total += 2 * np.minimum(matches, 2**bits - 1) - n
    return total


def test_popcount_counters_saturate_at_2_to_the_k_minus_1_per_tile():
    """A hidden 1-bit layer (+-1 x +-1) on tiles of 40 rows (40, 40, 16) with 4-bit counters (at most
    15 of a tile's 40 matches counted), against a numpy XNOR-popcount."""
    config = PerturbationConfig(clip_mode="accumulator", acc_bits=4, acc_format="popcount", tile_rows=40, perturb_layers="dense_2")
    model = one_bit_mlp(config, targets=("dense_2",))
    layer = model.get_layer("dense_2")
    probe = tf.keras.Model(model.inputs, [layer.input, layer.output])
    with hardware_evaluation(model, config, chip=0):
        inputs, saturated = (value.numpy() for value in probe(IMAGES[:64], training=False))
    kernel = signs(layer.kernel.numpy())
    expected = popcount_layer(signs(inputs), kernel, 40, bits=4)
    np.testing.assert_array_equal(saturated, expected)
    assert (expected != signs(inputs) @ kernel).any()  # the counters did saturate


def test_popcount_on_the_first_layer_counts_every_pixel_bit_plane_on_its_own():
    """The first layer (8-bit pixels x +-1 weights) read bit-serially: per tile of 256 rows and bit
    plane b, a 7-bit counter of the XNORs of the plane 2 bit_b(p) - 1; y = sum 2^b y_tb / 255."""
    config = PerturbationConfig(clip_mode="accumulator", acc_bits=7, acc_format="popcount", tile_rows=256)
    model = one_bit_mlp(config, targets=("dense_1",))
    with hardware_evaluation(model, config, chip=0):
        saturated = layer_output(model, "dense_1", PIXEL_IMAGES)
    kernel = signs(model.get_layer("dense_1").kernel.numpy())
    codes = PIXELS.reshape(len(PIXELS), -1)
    expected = sum(2.0**b * popcount_layer(2.0 * ((codes >> b) & 1) - 1.0, kernel, 256, bits=7) for b in range(8)) / 255
    np.testing.assert_allclose(saturated, expected, rtol=0, atol=2e-4)
    plain = layer_output(model, "dense_1", PIXEL_IMAGES)
    np.testing.assert_allclose(plain, PIXEL_IMAGES.reshape(len(PIXELS), -1) @ kernel, atol=2e-4)  # without: the layer
    assert np.abs(saturated - plain).max() > 1.0  # ... and the counters saturated


def im2col(inputs, size):
    """numpy: ``[B, H, W, C]`` -> ``[B, H', W', size * size * C]`` valid patches in the kernel's (kh, kw, C_in) order."""
    rows, cols = inputs.shape[1] - size + 1, inputs.shape[2] - size + 1
    patches = [inputs[:, i : i + rows, j : j + cols, :] for i in range(size) for j in range(size)]
    return np.concatenate(patches, axis=-1)


def test_a_convolution_is_tiled_along_its_im2col_rows_each_tile_saturating_on_its_own():
    """A 3x3 convolution of 4 channels (N = 36 im2col rows) on tiles of 16 rows (16, 16, 4), each
    tile's partial sum clipped to [-3, 3], against numpy's im2col: rows in (kh, kw, C_in) order."""
    from pipeline.hwmodel.layers import HardwareAwareQuantConv2D

    tf.keras.utils.set_random_seed(3)
    config = PerturbationConfig(clip_mode="absolute", clip_min=-3, clip_max=3, tile_rows=16)
    layer = HardwareAwareQuantConv2D(5, 3, use_bias=False, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                                     hardware=config)
    inputs = RNG.standard_normal((6, 7, 7, 4)).astype(np.float32)
    layer.build(inputs.shape)
    assert layer.tiling.rows == [16, 16, 4]
    patches, kernel = im2col(signs(inputs), 3), signs(layer.kernel.numpy()).reshape(36, 5)
    expected = sum(np.clip(patches[..., rows] @ kernel[rows], -3, 3) for rows in (slice(0, 16), slice(16, 32), slice(32, 36)))
    np.testing.assert_array_equal(layer(inputs, training=True).numpy(), expected)
    assert (expected != np.clip(patches @ kernel, -3, 3)).any()  # not the whole sum clipped


# --------------------------------------------------------------------------- noise and the ADC per tile


def test_relative_noise_per_tile_has_the_stated_standard_deviation():
    """sigma x the RMS of each tile's own clean partial sum (over the layer's units), per example: two
    tiles of 32 rows whose partials cancel (the second holds minus the first's weights on the same
    inputs) sum to 0 -- whole-layer relative noise would add nothing -- and read N(0, sigma^2 (RMS_1^2
    + RMS_2^2)): the z-score's std is 1 within 4 standard errors."""
    sigma = 0.3
    config = PerturbationConfig(noise_sigma=sigma, tile_rows=32)
    layer = dense_layer(1, config, units=64, fan_in=64)
    half = signs(RNG.standard_normal((32, 64)))
    layer.kernel.assign(np.concatenate([half, -half]).astype(np.float32))
    x = signs(RNG.standard_normal((256, 32)))
    inputs = np.concatenate([x, x], axis=1).astype(np.float32)
    model = tf.keras.Sequential([tf.keras.Input((64,)), layer])
    assert np.abs(model(inputs, training=False).numpy()).max() == 0  # clean: the tiles cancel
    partial = x @ half
    scale = sigma * np.sqrt(2 * np.mean(partial**2, axis=1, keepdims=True))
    with hardware_evaluation(model, config, chip=0):
        z = np.concatenate([model(inputs, training=False).numpy() / scale for _ in range(10)]).ravel()
    assert abs(np.std(z) - 1.0) < 4 / np.sqrt(2 * z.size) and abs(np.mean(z)) < 4 / np.sqrt(z.size)


def test_the_adc_gives_at_most_2_to_the_bits_values_per_tile():
    """Absolute bounds [-8, 7] with a 4-bit ADC: step 1, each tile on -8..7, so the layer's sum of
    T = 3 tiles is an integer in [-24, 21]; one tile alone (the others' weights zero) takes <= 16 values."""
    config = PerturbationConfig(clip_mode="absolute", clip_min=-8, clip_max=7, out_bits=4, tile_rows=40, perturb_layers="dense_2")
    model = one_bit_mlp(config, targets=("dense_2",))
    with hardware_evaluation(model, config, chip=0):
        converted = layer_output(model, "dense_2", IMAGES[:128])
    np.testing.assert_array_equal(converted, np.round(converted))
    assert converted.min() >= -24 and converted.max() <= 21 and len(np.unique(converted)) > 16
    calibrated = one_bit_mlp(PerturbationConfig(out_bits=3, tile_rows=40, perturb_layers="dense_2"), targets=("dense_2",))
    ranges = calibrate(calibrated, IMAGES[:256])["dense_2"]
    assert len(ranges) == 3 and all(lo < hi for lo, hi in ranges)  # one calibrated range per tile


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, parameter",
    [
        ({"tile_rows": 0}, "tile_rows"),
        ({"tile_rows": 2.5}, "tile_rows"),
        ({"acc_bits": 0}, "acc_bits"),
        ({"acc_bits": 33}, "acc_bits"),
        ({"acc_bits": 8, "acc_format": "gray"}, "acc_format"),
        ({"acc_bits": 8, "clip_min": 0, "clip_max": 255}, "acc_bits"),
        ({"acc_format": "popcount"}, "acc_format"),
    ],
)
def test_bad_tiles_and_accumulators_name_their_parameter(kwargs, parameter):
    with pytest.raises(ConfigError) as raised:
        PerturbationConfig.from_text(**{key: str(value) for key, value in kwargs.items()})
    assert raised.value.parameter == parameter


@pytest.mark.parametrize("bits", [2, 32])
def test_popcount_on_a_layer_without_plus_minus_1_products_is_an_error_naming_the_layer(bits):
    config = PerturbationConfig(clip_mode="accumulator", acc_bits=8, acc_format="popcount", perturb_layers="dense_2")
    model = ModelConfig(bits=bits, hidden_units=(32, 32))
    with pytest.raises(ConfigError, match="dense_2") as raised:
        attach_hardware(build_model(model), config, ("dense_2",))
    assert raised.value.parameter == "acc_format"
    with pytest.raises(ConfigError, match=f"dense_2 of {model.label}") as raised:  # from the configuration, before any training
        config.targets(model)
    assert raised.value.parameter == "acc_format"
    assert PerturbationConfig(clip_mode="accumulator", acc_bits=8, acc_format="popcount").targets(ModelConfig(bits=1)) == ("dense_1", "dense_2")


def test_a_float_layer_holds_a_signed_register_in_accumulator_units():
    """No integer form (float weights): u = 1, the k-bit register's range on y itself, as absolute bounds."""
    config = PerturbationConfig(clip_mode="accumulator", acc_bits=2, acc_format="signed")
    model = attach_hardware(build_model(ModelConfig(bits=32, hidden_units=(32,))), config, ("dense_1",))
    with hardware_evaluation(model, config, chip=0):
        saturated = layer_output(model, "dense_1", IMAGES[:64])
    clean = layer_output(model, "dense_1", IMAGES[:64])
    np.testing.assert_array_equal(saturated, np.clip(clean, -2, 1))
    assert clean.min() < -2 and clean.max() > 1


def test_training_with_tiles_and_variation_sends_no_gradient_through_plus_minus_1_squares():
    """+-1 inputs and weights square to 1: the variance per tile is its row count, with no gradient
    into the layer's inputs (a straight-through estimator would otherwise invent one)."""
    layer = dense_layer(1, PerturbationConfig(weight_dev_pct=20, tile_rows=40), units=8, fan_in=96)
    inputs = tf.Variable(RNG.standard_normal((16, 96)).astype(np.float32))
    with tf.GradientTape() as tape:
        squares = squares_matmul(tf.sign(inputs), layer.quantized_kernel(), True, True, layer.tiling.dense)
    np.testing.assert_array_equal(np.broadcast_to(squares.numpy(), (48, 8)).reshape(16, 3, 8)[0, :, 0], [40, 40, 16])
    assert tape.gradient(squares, inputs) is None


def test_the_same_tiles_under_another_tile_rows_evaluate_without_a_copy():
    """tile_rows 1000 on fan-ins <= 784 is one tile: the same arrays as none."""
    model = one_bit_mlp(PerturbationConfig(noise_sigma=0.2), targets=("dense_1",))
    with hardware_evaluation(model, PerturbationConfig(noise_sigma=0.2, tile_rows=1000), chip=0):
        model(IMAGES[:8], training=False)
    with pytest.raises(ConfigError, match="tile_rows"):
        with hardware_evaluation(model, PerturbationConfig(noise_sigma=0.2, tile_rows=256), chip=0):
            pass
