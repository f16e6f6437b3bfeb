"""Helpers of the hardware-model tests: small models and probes of one layer's output."""

import pipeline  # noqa: F401  (before TensorFlow)
import numpy as np
import tensorflow as tf

from pipeline.config import ModelConfig
from pipeline.perturbation import PerturbationConfig, typical_hardware
from pipeline.hwmodel.chips import attach_hardware, hardware_evaluation
from pipeline.hwmodel.layers import HardwareAwareQuantDense
from pipeline.learning.models import build_model

RNG = np.random.default_rng(1234)
IMAGES = RNG.uniform(-1, 1, size=(512, 28, 28, 1)).astype(np.float32)
ONE_HOT = np.eye(784, dtype=np.float32).reshape(784, 28, 28, 1)


def every_effect(**changes) -> PerturbationConfig:
    """Every effect of the registry on, each at the middle level of its default curve."""
    return typical_hardware().replace(**changes)


def hardware_model(bits=32, hidden=(64,), config=PerturbationConfig(), targets=("dense_1",), seed=0):
    tf.keras.utils.set_random_seed(seed)
    return attach_hardware(build_model(ModelConfig(bits=bits, hidden_units=hidden)), config, targets, train_seed=seed)


def layer_output(model, name, images, training=False):
    probe = tf.keras.Model(model.inputs, model.get_layer(name).output)
    return probe(images, training=training).numpy()


def chip_kernel(model, config, chip):
    """The effective kernel W_chip of dense_1 (float, no input quantizer): its response to one-hot images."""
    with hardware_evaluation(model, config, chip=chip):
        return layer_output(model, "dense_1", ONE_HOT)


def dense_layer(bits, config, units=64, fan_in=96, seed=0):
    """A standalone hardware-aware dense layer (1-bit: ste_sign kernel and inputs, like a hidden layer)."""
    tf.keras.utils.set_random_seed(seed)
    quantizer = "ste_sign" if bits == 1 else None
    layer = HardwareAwareQuantDense(units, use_bias=False, input_quantizer=quantizer, kernel_quantizer=quantizer,
                                    kernel_constraint="weight_clip" if bits == 1 else None, hardware=config)
    layer.build((None, fan_in))
    return layer
