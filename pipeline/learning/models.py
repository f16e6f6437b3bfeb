"""One ``build_model`` for every precision and topology.

Every dense and convolutional layer is a Larq quantized layer, also in the float baseline
(with its quantizers set to ``None`` a ``QuantDense`` computes exactly what ``Dense`` does), so
float, 1-bit and k-bit models share one topology and a comparison isolates precision:

* ``bits=32``: no quantizers; the hidden non-linearity is ReLU after BatchNorm.
* ``bits=1``: Larq's binarized recipe -- ``ste_sign`` kernel and input quantizers,
  ``weight_clip`` constraint, the first layer sees real-valued pixels, BatchNorm with
  ``scale=False``. The sign applied by the next layer's input quantizer is the non-linearity.
* ``bits=2..8``: DoReFa k-bit quantizers (``mode="weights"`` for kernels, ``"activations"``
  for inputs, which clips to [0, 1]); the first layer again sees real-valued pixels.

Layer names are stable (``dense_1``, ``dense_2``, ``dense_out``, ``conv_1`` ...) so that later
stages can address layers by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pipeline  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import larq as lq
import tensorflow as tf

from pipeline.config import Arch, ModelConfig
from pipeline.learning.data import IMAGE_SHAPE, NUM_CLASSES

INPUT_SHAPE = (*IMAGE_SHAPE, 1)
CNN_FILTERS = (32, 64, 64)
CNN_DENSE_UNITS = 64


@dataclass(frozen=True)
class Quantization:
    """The keyword arguments a Larq layer takes for one precision."""

    input_quantizer: Any
    kernel_quantizer: Any
    kernel_constraint: Any
    hidden_activation: str | None  #: explicit activation after hidden BatchNorm (float models only)

    def layer_kwargs(self, first_layer: bool) -> dict[str, Any]:
        return {
            "input_quantizer": None if first_layer else self.input_quantizer,
            "kernel_quantizer": self.kernel_quantizer,
            "kernel_constraint": self.kernel_constraint,
        }


def quantization(bits: int) -> Quantization:
    if bits == 32:
        return Quantization(None, None, None, hidden_activation="relu")
    if bits == 1:
        return Quantization("ste_sign", "ste_sign", "weight_clip", hidden_activation=None)
    return Quantization(
        lq.quantizers.DoReFa(k_bit=bits, mode="activations"),
        lq.quantizers.DoReFa(k_bit=bits, mode="weights"),
        None,
        hidden_activation=None,
    )


def build_model(config: ModelConfig) -> tf.keras.Model:
    """An uncompiled Keras model for ``config`` (seed TensorFlow first for reproducible weights)."""
    quant = quantization(config.bits)
    body = mlp_layers(config, quant) if config.arch is Arch.MLP else cnn_layers(quant)
    return tf.keras.Sequential(
        [tf.keras.Input(shape=INPUT_SHAPE, name="image"), *body, tf.keras.layers.Activation("softmax", name="softmax")],
        name=config.label,
    )


def normalization_block(name: str, quant: Quantization, hidden: bool) -> list[tf.keras.layers.Layer]:
    layers = [tf.keras.layers.BatchNormalization(scale=False, momentum=0.9, name=f"bn_{name}")]
    if hidden and quant.hidden_activation:
        layers.append(tf.keras.layers.Activation(quant.hidden_activation, name=f"act_{name}"))
    return layers


def mlp_layers(config: ModelConfig, quant: Quantization) -> list[tf.keras.layers.Layer]:
    layers: list[tf.keras.layers.Layer] = [tf.keras.layers.Flatten(name="flatten")]
    for index, units in enumerate(config.hidden_units, start=1):
        name = f"dense_{index}"
        layers.append(lq.layers.QuantDense(units, use_bias=False, name=name, **quant.layer_kwargs(index == 1)))
        layers += normalization_block(name, quant, hidden=True)
    first = not config.hidden_units
    layers.append(lq.layers.QuantDense(NUM_CLASSES, use_bias=False, name="dense_out", **quant.layer_kwargs(first)))
    layers += normalization_block("dense_out", quant, hidden=False)
    return layers


def cnn_layers(quant: Quantization) -> list[tf.keras.layers.Layer]:
    """The Larq MNIST tutorial topology (three conv blocks, dense 64, dense 10, BatchNorm after each)."""
    layers: list[tf.keras.layers.Layer] = []
    for index, filters in enumerate(CNN_FILTERS, start=1):
        name = f"conv_{index}"
        layers.append(
            lq.layers.QuantConv2D(filters, (3, 3), use_bias=False, name=name, **quant.layer_kwargs(index == 1))
        )
        if index < len(CNN_FILTERS):
            layers.append(tf.keras.layers.MaxPooling2D((2, 2), name=f"pool_{index}"))
        layers += normalization_block(name, quant, hidden=True)
    layers.append(tf.keras.layers.Flatten(name="flatten"))
    layers.append(lq.layers.QuantDense(CNN_DENSE_UNITS, use_bias=False, name="dense_1", **quant.layer_kwargs(False)))
    layers += normalization_block("dense_1", quant, hidden=True)
    layers.append(lq.layers.QuantDense(NUM_CLASSES, use_bias=False, name="dense_out", **quant.layer_kwargs(False)))
    layers += normalization_block("dense_out", quant, hidden=False)
    return layers
