"""The deployable model: converted with the bit-plane export, run in LCE's / TFLite's interpreter,
compared with the Keras model; sizes within their goals; failures said, never silent."""

from __future__ import annotations

import os

import larq as lq
import mlflow
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema

from pipeline import flow
from pipeline.app import stages
from pipeline.deploy import export
from pipeline.config import ModelConfig, TrainConfig
from pipeline.deploy.interpreter import AGREEMENT_WARNING, Deployment, deploy
from pipeline.learning.models import build_model
from pipeline.learning.training import seed_everything, train

MLP_GOAL_BYTES = 500_000  #: the default 1-bit MLP's flatbuffer
CNN_GOAL_BYTES = 165_840  #: the 1-bit CNN's flatbuffer before the dense layers were packed


def trained(arch: str, bits: int, data, epochs: int = 2) -> tf.keras.Model:
    """A default-size model trained briefly: its BatchNorm statistics and kernels are the real kind."""
    seed_everything(3)
    model = build_model(ModelConfig(arch=arch, bits=bits))
    train(model, data, TrainConfig(epochs=epochs, batch_size=32, seed=3))
    return model


@pytest.mark.parametrize("arch,bits,goal", [("mlp", 1, MLP_GOAL_BYTES), ("cnn", 1, CNN_GOAL_BYTES), ("mlp", 2, None),
                                            ("cnn", 2, None), ("mlp", 32, None), ("cnn", 32, None)])
def test_the_deployed_model_predicts_what_keras_predicts(arch, bits, goal, tiny_data):
    model = trained(arch, bits, tiny_data)
    images, labels = tiny_data.images("test"), tiny_data.labels("test")
    measured, flatbuffer = deploy(model, images, labels)
    keras = model.predict(images, verbose=0).argmax(axis=1)
    assert measured.agreement >= AGREEMENT_WARNING and measured.warning is None
    assert measured.accuracy == pytest.approx(np.mean(keras == labels), abs=1 - measured.agreement + 1e-9)
    assert measured.converter == (export.TFLITE if bits == 32 else export.LCE) == flatbuffer.converter
    assert measured.file_bytes == len(flatbuffer.content) and flatbuffer.batch_size == 1
    assert measured.latency_ms > 0 and measured.images_per_s > 0 and measured.threads == os.cpu_count()
    if goal:
        assert measured.file_bytes <= goal
    if bits == 32:  # float32 weights: at least 4 bytes per parameter
        assert measured.file_bytes >= 4 * model.count_params() * 0.95


def operators(content: bytes) -> list[tuple[str, list[np.ndarray | None]]]:
    """Each operator of a flatbuffer: its name (builtin or custom) and its constant inputs."""
    model = schema.Model.GetRootAsModel(content, 0)
    graph = model.Subgraphs(0)
    found = []
    for index in range(graph.OperatorsLength()):
        operator = graph.Operators(index)
        code = model.OperatorCodes(operator.OpcodeIndex())
        name = code.CustomCode().decode() if code.CustomCode() else str(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
        constants = []
        for position in range(operator.InputsLength()):
            tensor_index = operator.Inputs(position)
            tensor = graph.Tensors(tensor_index) if tensor_index >= 0 else None
            data = model.Buffers(tensor.Buffer()).DataAsNumpy() if tensor is not None else 0
            constants.append((tensor.Type(), tensor.ShapeAsNumpy()) if tensor is not None and not isinstance(data, int) else None)
        found.append((name, constants))
    return found


def test_every_layer_of_the_one_bit_mlp_is_a_bitpacked_binary_convolution():
    model = build_model(ModelConfig(bits=1))
    content = export.convert(model).content
    convolutions = [constants for name, constants in operators(content) if name == "LceBconv2d"]
    # dense_1 (784 -> 512, bit-serial pixels), dense_2 (512 -> 512), dense_out (512 -> 10): 32 weights per int32 word
    filters = sorted(tuple(constants[1][1]) for constants in convolutions)
    assert filters == sorted([(512, 1, 1, 25), (512, 1, 1, 16), (10, 1, 1, 16)])
    assert all(constants[1][0] == schema.TensorType.INT32 for constants in convolutions)
    assert not [name for name, _ in operators(content) if name in (str(schema.BuiltinOperator.FULLY_CONNECTED),
                                                                    str(schema.BuiltinOperator.CONV_2D))]


def test_bit_planes_rebuild_every_pixel_and_every_k_bit_level_exactly():
    codes = np.arange(256)
    pixels = codes.astype(np.float32) / 127.5 - 1.0  # as pipeline.learning.data scales them
    planes = tf.function(export.BitPlanes(8, 127.5, 127.5, axis=0))(tf.constant(pixels[None])).numpy()  # in a graph, as converted
    assert set(np.unique(planes)) == {-1.0, 1.0}
    np.testing.assert_array_equal(sum(2**b * (planes[b] + 1) / 2 for b in range(8)), codes)
    levels = 3  # 2-bit DoReFa activations: round(clip(x, 0, 1) * 3) / 3, halves to even (1/6 -> 0, 5/6 -> 2)
    x = np.concatenate([np.linspace(-0.5, 1.5, 401), [1 / 6, 0.5, 5 / 6]]).astype(np.float32)
    planes = tf.function(export.BitPlanes(2, levels, 0.0, axis=0))(tf.constant(x[None])).numpy()
    rebuilt = 0.5 + (planes[0] + 2.0 * planes[1]) / (2.0 * levels)
    np.testing.assert_allclose(rebuilt, lq.quantizers.DoReFa(k_bit=2, mode="activations")(x).numpy(), atol=1e-7)
    assert rebuilt[-3] == 0.0 and rebuilt[-1] == pytest.approx(2 / 3)  # the ties, as tf.round takes them


def test_a_model_that_cannot_be_converted_says_why_and_claims_no_size(tiny_data, tracking_store):
    model = tf.keras.Sequential([tf.keras.Input((28, 28, 1)), tf.keras.layers.Flatten(),
                                 lq.layers.QuantDense(10, kernel_quantizer="ste_tern", name="dense_out")])
    with pytest.raises(export.ExportError, match="SteTern"):
        export.convert(model)
    deployment = flow.deploy_model(model, tiny_data, "ternary")
    manifest, why = flow.describe(model, tiny_data, None, None, "ternary")
    assert deployment.metrics() == {} and deployment.converter.startswith("failed: ") and "SteTern" in deployment.converter
    assert manifest is None and why.startswith("failed: ")
    with mlflow.start_run() as run:
        stages.log_deployment(run.info.run_id, deployment)
    logged = mlflow.MlflowClient().get_run(run.info.run_id).data
    assert logged.tags["tflite_converter"] == deployment.converter and "model_size_tflite_bytes" not in logged.metrics
    assert not mlflow.MlflowClient().list_artifacts(run.info.run_id, "deploy")


def test_a_disagreeing_deployment_is_a_warning():
    common = dict(converter=export.LCE, file_bytes=1, accuracy=0.9, latency_ms=1.0, images_per_s=1.0, threads=2)
    assert Deployment(agreement=0.9990, **common).warning is None
    assert "0.20%" in Deployment(agreement=0.998, **common).warning
