import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ModelConfig
from pipeline.hwmodel.quantizers import quantized_layers
from pipeline.learning.models import build_model
from pipeline.deploy.size import model_size


def quantizer_name(quantizer) -> str | None:
    if quantizer is None:
        return None
    return getattr(quantizer, "__name__", None) or type(quantizer).__name__


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("bits", [32, 1, 2, 4, 8])
def test_topology_and_quantizers(arch, bits):
    model = build_model(ModelConfig(arch=arch, bits=bits, hidden_units=(32, 16)))
    layers = quantized_layers(model)
    assert model.output_shape == (None, 10)
    expected_names = ["dense_1", "dense_2", "dense_out"] if arch == "mlp" else ["conv_1", "conv_2", "conv_3", "dense_1", "dense_out"]
    assert [layer.name for layer in layers] == expected_names
    # Every quantized layer is followed by BatchNorm without scale.
    for layer in layers:
        following = model.layers[model.layers.index(layer) + 1]
        if isinstance(following, tf.keras.layers.MaxPooling2D):
            following = model.layers[model.layers.index(layer) + 2]
        assert isinstance(following, tf.keras.layers.BatchNormalization) and not following.scale
    first, rest = layers[0], layers[1:]
    assert first.input_quantizer is None  # the first layer always sees real-valued pixels
    if bits == 32:
        assert all(l.kernel_quantizer is None and l.input_quantizer is None for l in layers)
        assert sum(isinstance(l, tf.keras.layers.Activation) and l.get_config()["activation"] == "relu"
                   for l in model.layers) == len(layers) - 1
    elif bits == 1:
        assert all(quantizer_name(l.kernel_quantizer) == "SteSign" for l in layers)
        assert all(quantizer_name(l.input_quantizer) == "SteSign" for l in rest)
        assert all(isinstance(l.kernel_constraint, lq.constraints.WeightClip) for l in layers)
    else:
        assert all(isinstance(l.kernel_quantizer, lq.quantizers.DoReFa) and l.kernel_quantizer.precision == bits
                   for l in layers)
        assert all(isinstance(l.input_quantizer, lq.quantizers.DoReFa) and l.input_quantizer.mode == "activations"
                   for l in rest)


def test_float_and_quantized_share_the_same_weights_layout():
    shapes = {bits: [w.shape.as_list() for w in build_model(ModelConfig(bits=bits)).weights] for bits in (32, 1, 4)}
    assert shapes[32] == shapes[1] == shapes[4]


@pytest.mark.parametrize(
    "bits, expected_bits",
    [
        # dense_1: 784x8 kernel; bn_dense_1: 8 moving means + 8 moving variances (beta folded) at 32 bits;
        # dense_out: 8x10 kernel; bn_dense_out: 10 + 10 at 32 bits.
        (1, 784 * 8 * 1 + 16 * 32 + 80 * 1 + 20 * 32),
        (4, 784 * 8 * 4 + 16 * 32 + 80 * 4 + 20 * 32),
        (32, 784 * 8 * 32 + 16 * 32 + 80 * 32 + 20 * 32),
    ],
)
def test_size_accounting_to_the_bit(bits, expected_bits):
    size = model_size(build_model(ModelConfig(bits=bits, hidden_units=(8,))))
    float_bits = (784 * 8 + 16 + 80 + 20) * 32
    assert size.parameters == 784 * 8 + 16 + 80 + 20
    assert size.packed_bytes == -(-expected_bits // 8)
    assert size.float32_bytes == float_bits // 8
    assert size.compression_ratio == pytest.approx(float_bits / 8 / size.packed_bytes)


def test_save_and_load_round_trip(tmp_path, tiny_data):
    model = build_model(ModelConfig(bits=2, hidden_units=(32,)))
    images = tiny_data.images("test")[:16]
    before = model.predict(images, verbose=0)
    model.save(tmp_path / "m.keras")
    reloaded = tf.keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), before, rtol=1e-6, atol=1e-6)
    assert reloaded.get_layer("dense_1").kernel_quantizer.precision == 2
