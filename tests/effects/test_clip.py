"""Saturation and the ADC (pipeline/effects/clip.py) against their formulas."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from pipeline.effects import converter_range
from pipeline.effects.adc import Adc
from pipeline.effects.base import Accumulator, OutputContext
from pipeline.effects.clip import Clip
from pipeline.perturbation import PerturbationConfig
from pipeline.hwmodel.chips import calibrate, hardware_evaluation
from pipeline.validation import ConfigError

from layer_probes import IMAGES, hardware_model, layer_output


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
    (lo, hi), = ranges["dense_1"]  # one tile: the whole layer
    clean = layer_output(model, "dense_1", IMAGES)
    assert (lo, hi) == pytest.approx((clean.min(), clean.max()))
    with hardware_evaluation(model, PerturbationConfig(clip_mode="relative", clip_fraction=0.4), chip=0):
        clipped = layer_output(model, "dense_1", IMAGES)
    assert clipped.min() == pytest.approx(0.4 * lo) and clipped.max() == pytest.approx(0.4 * hi)


def test_saturation_gradient_is_one_inside_zero_outside():
    values = tf.constant(np.linspace(-3, 3, 61, dtype=np.float32))
    for adc_levels, as_variables in itertools.product((0.0, 16.0), (False, True)):  # clipping, then the ADC (straight-through)
        levels = {"clip": saturation_levels(-1.0, 2.0, as_variables), "adc": {"levels": adc_levels}, "noise": {"sigma": 0.0}}
        context = OutputContext(lambda: (tf.constant(-3.0), tf.constant(3.0)), normal=None,
                                accumulator=Accumulator(unit=1.0, popcount=True, rows=64.0))
        context.full_scale = lambda: converter_range(levels, context)  # noqa: B023
        with tf.GradientTape() as tape:
            tape.watch(values)
            out = Clip().apply_output(values, levels["clip"], context)
            out = Adc().apply_output(out, levels["adc"], context) if adc_levels else out
        grad = tape.gradient(out, values).numpy()
        v = values.numpy()
        np.testing.assert_array_equal(grad[(v > -1) & (v < 2)], 1.0)
        np.testing.assert_array_equal(grad[(v < -1) | (v > 2)], 0.0)


def saturation_levels(lo, hi, as_variables):
    """Run-time levels of absolute saturation: Python numbers (training) or variables (evaluation)."""
    params = PerturbationConfig(clip_mode="absolute", clip_min=lo, clip_max=hi).params_of("clip_mode")
    levels = {**Clip().run_levels(params),
              "lo": lo, "hi": hi}
    return {key: tf.Variable(value) for key, value in levels.items()} if as_variables else levels


@pytest.mark.parametrize(
    "kwargs, parameter",
    [
        ({"clip_mode": "absolute", "clip_min": 5, "clip_max": 5}, "clip_max"),
        ({"clip_mode": "absolute", "clip_min": 0}, "clip_min"),
        ({"clip_min": -1, "clip_max": 1}, "clip_min"),
        ({"clip_mode": "relative", "clip_fraction": 0}, "clip_fraction"),
        ({"clip_mode": "relative", "clip_fraction": 1.5}, "clip_fraction"),
        ({"clip_mode": "absolute", "clip_min": 0, "clip_max": 255, "out_bits": 0}, "out_bits"),
        ({"out_bits": 17}, "out_bits"),
    ],
)
def test_bad_saturation_levels_name_their_parameter(kwargs, parameter):
    with pytest.raises(ConfigError) as raised:
        PerturbationConfig(**kwargs)
    assert raised.value.parameter == parameter


def test_clip_mode_is_inferred_from_what_is_given():
    assert PerturbationConfig.from_text(clip_min="0", clip_max="255").clip_mode.value == "absolute"
    assert PerturbationConfig.from_text(clip_fraction="0.5", out_bits="4").label == "c0.50-adc4"
    assert PerturbationConfig.from_text(clip_fraction="").clip_mode.value == "none"
