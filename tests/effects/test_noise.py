"""Output noise (pipeline/effects/noise.py) against its formula, statistically."""

import numpy as np
import pytest

from pipeline.perturbation import PerturbationConfig
from pipeline.validation import ConfigError
from pipeline.hwmodel.chips import hardware_evaluation

from layer_probes import IMAGES, hardware_model, layer_output

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


def test_training_draws_fresh_noise_every_step():
    model = hardware_model(hidden=(256,), config=PerturbationConfig(noise_sigma=0.2))
    clean = layer_output(model, "dense_1", IMAGES)
    first = layer_output(model, "dense_1", IMAGES, training=True)
    second = layer_output(model, "dense_1", IMAGES, training=True)
    assert np.mean(first != second) > 0.99
    rms = np.sqrt(np.mean(clean**2, axis=1, keepdims=True))
    z = (first - clean) / (0.2 * rms)
    assert abs(z.std() - 1) < 4 / np.sqrt(2 * z.size)


def test_noise_parameters_are_validated():
    for kwargs, parameter in (({"noise_sigma": -0.1}, "noise_sigma"), ({"noise_mode": "loud"}, "noise_mode"),
                              ({"noise_sigma": "x"}, "noise_sigma")):
        with pytest.raises(ConfigError) as raised:
            PerturbationConfig(**kwargs)
        assert raised.value.parameter == parameter
