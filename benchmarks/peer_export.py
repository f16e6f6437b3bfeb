"""The default 1-bit MLP as numbers another tool can load: its +-1 kernels and BatchNorm statistics (torch-free)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

import pipeline  # noqa: F401
import tensorflow as tf


@dataclass(frozen=True)
class DenseBlock:
    """One dense layer of a 1-bit MLP and its BatchNorm, as numbers another tool can load."""

    name: str
    kernel: np.ndarray  #: fan-in x units, after the layer's kernel quantizer (+-1 for the 1-bit MLP)
    signs_in: bool  #: the layer reads the signs of its input (larq's ste_sign: +1 at 0)
    mean: np.ndarray  #: BatchNorm's moving mean, per unit
    variance: np.ndarray  #: BatchNorm's moving variance, per unit
    beta: np.ndarray  #: BatchNorm's offset (the models' BatchNorm has no scale)
    epsilon: float


def exported_mlp(model: tf.keras.Model) -> list[DenseBlock]:
    """The dense layers of a plain MLP of :func:`pipeline.learning.models.build_model`, each with its BatchNorm."""
    import larq as lq

    blocks = []
    for layer in model.layers:
        if not isinstance(layer, lq.layers.QuantDense):
            continue
        norm = model.get_layer(f"bn_{layer.name}")
        if norm.scale:
            raise ValueError(f"{norm.name}: the export expects BatchNorm without scale")
        latent = tf.convert_to_tensor(layer.kernel)
        kernel = (layer.kernel_quantizer(latent) if layer.kernel_quantizer else latent).numpy()
        blocks.append(DenseBlock(layer.name, kernel, layer.input_quantizer is not None, norm.moving_mean.numpy(),
                                 norm.moving_variance.numpy(), norm.beta.numpy(), float(norm.epsilon)))
    return blocks


def signs(values: np.ndarray) -> np.ndarray:
    return np.where(values >= 0, 1.0, -1.0).astype(np.float32)


def exported_logits(blocks: Sequence[DenseBlock], images: np.ndarray) -> np.ndarray:
    """The exported MLP's output before softmax, in numpy: what the torch model computes when clean."""
    values = images.reshape(len(images), -1).astype(np.float32)
    for block in blocks:
        values = (signs(values) if block.signs_in else values) @ block.kernel
        values = (values - block.mean) / np.sqrt(block.variance + block.epsilon) + block.beta
    return values
