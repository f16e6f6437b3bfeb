"""The hardware manifest (pipeline/deploy/manifest.py): its thresholds reproduce the float32 model exactly."""

import json

import pipeline  # noqa: F401  (before TensorFlow)
import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from pipeline.hwmodel.chips import attach_hardware
from pipeline.config import ModelConfig
from pipeline.perturbation import PerturbationConfig
from pipeline.deploy.manifest import hardware_manifest
from pipeline.hwmodel.quantizers import quantized_layers
from pipeline.learning.models import build_model


@pytest.fixture(scope="module")
def images(tiny_data):
    return tiny_data.images("val")


def with_random_statistics(model, images, seed=0):
    """Random kernels (the initializer's, seeded) and BatchNorm statistics placed inside each layer's
    output distribution; for integer accumulators half the units get an integer mean and beta = 0,
    so BN(y) = 0 falls exactly on an integer (sign(0) = +1 must come out right)."""
    rng = np.random.default_rng(seed)
    for bn in [layer for layer in model.layers if isinstance(layer, tf.keras.layers.BatchNormalization)]:
        y = outputs(model, images)[model.layers[model.layers.index(bn) - 1].name]
        y = y.reshape(-1, y.shape[-1])
        units = y.shape[1]
        mean = np.array([np.quantile(y[:, u], rng.uniform(0.2, 0.8)) for u in range(units)])
        variance = (y.std(axis=0) * rng.uniform(1.0, 3.0, units)) ** 2 + 0.1
        beta = rng.normal(0.3, 0.3, units)
        if np.array_equal(y, np.rint(y)):
            exact = rng.random(units) < 0.5
            mean, beta = np.where(exact, np.rint(mean), mean), np.where(exact, 0.0, beta)
        for variable, value in ((bn.beta, beta), (bn.moving_mean, mean), (bn.moving_variance, variance)):
            variable.assign(value)
    return model


def outputs(model, images) -> dict[str, np.ndarray]:
    """Every layer's output, computed by the model's own layers in float32."""
    probe = tf.keras.Model(model.inputs, [layer.output for layer in model.layers])
    return {layer.name: value.numpy() for layer, value in zip(model.layers, probe(images, training=False))}


def model_with(config: ModelConfig, images, seed=0):
    tf.keras.utils.set_random_seed(seed)
    return with_random_statistics(build_model(config), images, seed)


def received(model, layer, values) -> np.ndarray:
    """What the quantized layer after ``layer`` receives (its input quantizer on the BatchNorm output)."""
    quantized = quantized_layers(model)
    following = quantized[quantized.index(layer) + 1]
    bn = next(other for other in model.layers[model.layers.index(layer) + 1:] if isinstance(other, tf.keras.layers.BatchNormalization))
    return following.input_quantizer(values[bn.name]).numpy()


def apply_activation(activation: dict, y: np.ndarray) -> np.ndarray:
    """The manifest's rule on accumulator values ``y`` (..., units)."""
    if activation["kind"] == "sign":
        return np.where(y >= np.asarray(activation["threshold"], np.float32), 1.0, -1.0)
    thresholds = np.asarray(activation["thresholds"], np.float32)  # units x levels-1
    passed = (y[..., None] >= thresholds).sum(axis=-1)
    return np.asarray(activation["levels"], np.float32)[passed]


def pool(values: np.ndarray) -> np.ndarray:
    return tf.keras.layers.MaxPooling2D((2, 2))(values).numpy()


@pytest.mark.parametrize("config", [ModelConfig(bits=1, hidden_units=(64, 32)), ModelConfig(bits=2, hidden_units=(48, 24)),
                                    ModelConfig(bits=4, hidden_units=(32,))], ids=lambda c: c.label)
def test_mlp_thresholds_reproduce_the_next_inputs_exactly(config, images):
    model = model_with(config, images)
    manifest = hardware_manifest(model, images)
    values = outputs(model, images)
    for entry, layer in zip(manifest["layers"][:-1], quantized_layers(model)):
        y = values[layer.name]
        expected = received(model, layer, values)
        assert len(np.unique(expected)) == (2 if config.bits == 1 else 2**config.bits)  # the thresholds are exercised
        np.testing.assert_array_equal(apply_activation(entry["activation"], y), expected, err_msg=layer.name)


def test_integer_thresholds_sit_on_the_integers_where_bn_is_zero(images):
    model = model_with(ModelConfig(bits=1, hidden_units=(64, 32)), images)
    manifest = hardware_manifest(model, images)
    entry = manifest["layers"][1]
    threshold = np.asarray(entry["activation"]["threshold"])
    assert entry["accumulator"]["integer"] and threshold.dtype.kind == "i"
    bn = model.get_layer("bn_dense_2")
    # the float32 BatchNorm itself: BN(t) >= 0 and BN(t - 1) < 0, every unit
    at = bn(tf.constant(threshold[None].astype(np.float32)), training=False).numpy()[0]
    below = bn(tf.constant(threshold[None].astype(np.float32) - 1), training=False).numpy()[0]
    assert (at >= 0).all() and (below < 0).all()
    scale, offset = np.asarray(entry["batchnorm"]["scale"]), np.asarray(entry["batchnorm"]["offset"])
    np.testing.assert_array_equal(threshold, np.ceil(-offset / scale - 1e-6).astype(int))
    assert entry["batchnorm"]["scale"] == pytest.approx(list(1 / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)), rel=1e-6)


@pytest.mark.parametrize("bits", [1, 2])
def test_float_thresholds_are_the_first_float32_where_the_input_switches(bits, images):
    """Real-valued accumulators: at t the float32 BatchNorm + quantizer give the new level, one
    float32 below t the old one (-offset/scale rounded is not always that value)."""
    model = model_with(ModelConfig(bits=bits, hidden_units=(32, 16)), images)
    manifest = hardware_manifest(model, images)
    for entry, layer in zip(manifest["layers"][: 2 if bits > 1 else 1], quantized_layers(model)):
        activation = entry["activation"]
        thresholds = np.asarray(activation.get("thresholds", [[t] for t in activation.get("threshold", [])]), np.float32).T
        bn, quantizer = model.get_layer(f"bn_{layer.name}"), model.get_layer(
            quantized_layers(model)[quantized_layers(model).index(layer) + 1].name).input_quantizer
        levels = np.asarray(activation["levels"], np.float32)
        for level, row in enumerate(thresholds, start=1):
            at = quantizer(bn(tf.constant(row[None]), training=False)).numpy()[0]
            below = quantizer(bn(tf.constant(np.nextafter(row, np.float32(-np.inf))[None]), training=False)).numpy()[0]
            assert (at >= levels[level]).all() and (below < levels[level]).all(), (layer.name, level)


@pytest.mark.parametrize("bits", [1, 2])
def test_cnn_thresholds_through_the_max_pool(bits, images):
    model = model_with(ModelConfig(arch="cnn", bits=bits), images)
    manifest = hardware_manifest(model, images)
    values = outputs(model, images)
    for entry, layer in zip(manifest["layers"][:-1], quantized_layers(model)):
        y = values[layer.name]
        expected = received(model, layer, values)
        if entry["pool"]:
            assert entry["pool"]["pool_size"] == [2, 2]
            # max commutes with the increasing BN: threshold the pooled y, or pool the thresholded y
            np.testing.assert_array_equal(apply_activation(entry["activation"], pool(y)), expected, err_msg=layer.name)
            np.testing.assert_array_equal(pool(apply_activation(entry["activation"], y)), expected, err_msg=layer.name)
        else:
            np.testing.assert_array_equal(apply_activation(entry["activation"], y).reshape(expected.shape), expected,
                                          err_msg=layer.name)
    assert [entry["pool"] is not None for entry in manifest["layers"]] == [True, True, False, False, False]


@pytest.mark.parametrize("config, fan_in, weight_bits, input_bits", [
    (ModelConfig(bits=1, hidden_units=(64, 32)), [784, 64, 32], [1, 1, 1], [8, 1, 1]),
    (ModelConfig(bits=3, hidden_units=(16,)), [784, 16], [3, 3], [8, 3]),
    (ModelConfig(bits=32, hidden_units=(16,)), [784, 16], [32, 32], [8, 32]),
    (ModelConfig(arch="cnn", bits=1), [9, 288, 576, 576, 64], [1] * 5, [8, 1, 1, 1, 1]),
], ids=["mlp-1bit", "mlp-3bit", "mlp-float", "cnn-1bit"])
def test_geometry_bits_levels_and_clean_ranges(config, fan_in, weight_bits, input_bits, images):
    model = model_with(config, images)
    manifest = hardware_manifest(model, images[:100])
    layers = manifest["layers"]
    assert manifest["model"] == config.label and manifest["bits"] == config.bits
    assert [entry["fan_in"] for entry in layers] == fan_in
    assert [entry["weight_bits"] for entry in layers] == weight_bits
    assert [entry["input_bits"] for entry in layers] == input_bits
    assert layers[0]["input_levels"][:2] == [-1.0, -1.0 + 1 / 127.5] and len(layers[0]["input_levels"]) == 256
    values = outputs(model, images[:100])
    for entry in layers:
        y = values[entry["name"]]
        assert entry["accumulator"]["clean_range"] == pytest.approx([y.min(), y.max()], rel=1e-6)
    kinds = [entry["activation"]["kind"] for entry in layers]
    hidden = {1: "sign", 32: "relu"}.get(config.bits, "dorefa")
    assert kinds == [hidden] * (len(layers) - 1) + ["logits"]
    if config.bits == 3:
        assert layers[1]["weight_levels"] == pytest.approx([-1, -5 / 7, -3 / 7, -1 / 7, 1 / 7, 3 / 7, 5 / 7, 1])
        assert layers[1]["input_levels"] == pytest.approx([j / 7 for j in range(8)])
        assert layers[1]["accumulator"]["integer_scale"] == 49 and layers[0]["accumulator"]["integer_scale"] == 255 * 7
        assert len(layers[0]["activation"]["thresholds"][0]) == 7
    if config.arch.value == "cnn":
        assert layers[1]["kind"] == "conv2d" and layers[1]["kernel_size"] == [3, 3] and layers[1]["padding"] == "valid"
        assert layers[1]["accumulator"]["values"] == "integers in [-288, 288] with the parity of 288 (even)"


def test_effects_only_on_targeted_layers_with_bounds_in_accumulator_units(images):
    model = model_with(ModelConfig(bits=1, hidden_units=(64, 32)), images)
    trained_with = PerturbationConfig(clip_mode="relative", clip_fraction=0.5, out_bits=4, noise_sigma=0.2)  # hidden layers
    target = PerturbationConfig(clip_mode="absolute", clip_min=-10, clip_max=12, out_bits=3, perturb_layers="dense_2")
    manifest = hardware_manifest(model, images, trained_with=trained_with, target=target)
    json.dumps(manifest, allow_nan=False)
    effects = {entry["name"]: entry["effects"] for entry in manifest["layers"]}
    assert effects["dense_out"] == {"trained_with": None, "target": None}
    tile, = effects["dense_2"]["target"]["tiles"]  # one tile of all 64 rows, +-1 x +-1: unit 1
    assert effects["dense_1"]["target"] is None and tile["clip"]["bounds"] == [-10, 12] and tile["rows"] == 64
    assert tile["adc"] == {"levels": 8, "step": pytest.approx(22 / 7)} and tile["unit"] == 1
    assert set(effects["dense_2"]["target"]) == {"clip", "adc", "tiles"}
    assert set(effects["dense_1"]["trained_with"]) == {"noise", "clip", "adc", "tiles"}
    assert effects["dense_1"]["trained_with"]["noise"]["noise_sigma"] == 0.2
    for entry, unit in zip(manifest["layers"][:2], (255, 1)):  # the first layer: 8-bit pixels x +-1, u = 255
        lo, hi = entry["accumulator"]["clean_range"]
        tile, = entry["effects"]["trained_with"]["tiles"]
        assert tile["unit"] == unit and tile["clean_range"] == pytest.approx([unit * lo, unit * hi], rel=1e-6)
        assert tile["clip"]["bounds"] == pytest.approx([0.5 * unit * lo, 0.5 * unit * hi], rel=1e-6)
        assert tile["adc"]["step"] == pytest.approx(0.5 * unit * (hi - lo) / 15, rel=1e-6)
    assert manifest["perturbations"]["target"]["targets"] == ["dense_2"]
    assert manifest["perturbations"]["trained_with"]["targets"] == ["dense_1", "dense_2"]
    hardware_aware = attach_hardware(model, trained_with, ("dense_1", "dense_2"))
    assert hardware_manifest(hardware_aware, images, trained_with=trained_with, target=target) == manifest


def test_decreasing_units_of_a_negative_batchnorm_scale(images):
    """A BatchNorm with gamma < 0 on some units: those units switch to +1 where y <= t."""
    tf.keras.utils.set_random_seed(3)
    model = tf.keras.Sequential([
        tf.keras.Input((28, 28, 1)), tf.keras.layers.Flatten(),
        lq.layers.QuantDense(24, kernel_quantizer="ste_sign", use_bias=False, name="dense_1"),
        tf.keras.layers.BatchNormalization(name="bn_dense_1"),
        lq.layers.QuantDense(16, input_quantizer="ste_sign", kernel_quantizer="ste_sign", use_bias=False, name="dense_2"),
        tf.keras.layers.BatchNormalization(name="bn_dense_2"),
        lq.layers.QuantDense(10, input_quantizer="ste_sign", kernel_quantizer="ste_sign", use_bias=False, name="dense_out"),
        tf.keras.layers.BatchNormalization(name="bn_dense_out"), tf.keras.layers.Activation("softmax")], name="signs")
    for name in ("bn_dense_1", "bn_dense_2"):
        gamma = model.get_layer(name).gamma
        gamma.assign(np.where(np.arange(gamma.shape[0]) % 2, -1.0, 1.0) * np.random.default_rng(5).uniform(0.5, 2.0, gamma.shape[0]))
    with_random_statistics(model, images)
    manifest = hardware_manifest(model, images)
    values = outputs(model, images)
    for entry, layer in zip(manifest["layers"][:-1], quantized_layers(model)):
        activation = entry["activation"]
        decreasing = np.zeros(layer.units, bool)
        decreasing[activation["decreasing_units"]] = True
        y, t = values[layer.name], np.asarray(activation["threshold"], np.float32)
        rule = np.where(decreasing, y <= t, y >= t)
        np.testing.assert_array_equal(np.where(rule, 1.0, -1.0), received(model, layer, values), err_msg=layer.name)
        assert activation["decreasing_units"] == list(range(1, layer.units, 2))


def test_tiles_and_bit_serial_passes_each_get_their_counter_and_adc_in_hardware_units(images):
    """Popcount counters of 8 bits on tiles of 300 rows: the first layer (784 pixels) has tiles of
    300, 300 and 184 rows, each read in 8 bit-plane passes (24 partials); a 300-row count saturates
    at 255, i.e. y = 2 * 255 - 300 = 210; a 184-row one never saturates (its count reaches 184)."""
    model = model_with(ModelConfig(bits=1, hidden_units=(64, 32)), images)
    target = PerturbationConfig(clip_mode="accumulator", acc_bits=8, acc_format="popcount", out_bits=4, tile_rows=300,
                                perturb_layers="hidden")
    manifest = hardware_manifest(model, images, trained_with=None, target=target)
    json.dumps(manifest, allow_nan=False)
    first, second = (entry["effects"]["target"]["tiles"] for entry in manifest["layers"][:2])
    assert [(entry["tile"], entry["rows"], entry["pass"]) for entry in first] == [
        (tile, rows, bit) for tile, rows in enumerate((300, 300, 184)) for bit in range(8)]
    for entry in first:
        hi = min(entry["rows"], 510 - entry["rows"])
        assert entry["unit"] == 1 and entry["clip"]["bounds"] == [-entry["rows"], hi]
        assert entry["clip"]["count_range"] == [0, (hi + entry["rows"]) / 2]
        assert entry["adc"] == {"levels": 16, "step": pytest.approx((hi + entry["rows"]) / 15)}
        lo, top = entry["clean_range"]
        assert -entry["rows"] <= lo <= top <= entry["rows"] and (lo - entry["rows"]) % 2 == 0  # a plane sum has N_t's parity
    assert first[0]["clip"]["count_range"] == [0, 255] and first[-1]["clip"]["count_range"] == [0, 184]
    tile, = second  # 64 rows: one tile, +-1 x +-1, no passes
    assert "pass" not in tile and tile["rows"] == 64 and tile["clip"]["bounds"] == [-64, 64]
