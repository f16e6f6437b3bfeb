"""The hardware-aware layers and the effect registry: one forward path, every effect at once.

Each effect's formula is tested in its own file (``test_effect_<module>.py``); here the mechanism
they share: the ideal chip, chips side by side, save / load, the configuration, the registry."""

import numpy as np
import pytest
import tensorflow as tf

from pipeline.cli.arguments import field_help
from pipeline.config import ModelConfig
from pipeline.effects import EFFECTS, PARAMETERS, Sampling, Site, markdown_table
from pipeline.effects.base import KernelEffect, OutputEffect, standard_normal
from pipeline.perturbation import HARDWARE_PARAMETERS, PerturbationConfig, load_target
from pipeline.hwmodel.chips import (
    attach_hardware,
    calibrate,
    hardware_evaluation,
    hardware_layers,
    set_condition,
    strip_hardware,
)
from pipeline.hwmodel.layers import HardwareAwareQuantDense
from pipeline.learning.models import build_model
from pipeline.validation import ConfigError

from conftest import PROJECT_ROOT
from layer_probes import IMAGES, every_effect, hardware_model


# --------------------------------------------------------------------------- ideal chip


@pytest.mark.parametrize("bits, arch", [(32, "mlp"), (1, "mlp"), (4, "mlp"), (1, "cnn")])
def test_zero_perturbation_is_the_plain_model_bit_for_bit(bits, arch):
    tf.keras.utils.set_random_seed(3)
    config = ModelConfig(arch=arch, bits=bits, hidden_units=(32, 32))
    plain = build_model(config)
    chip_model = attach_hardware(plain, PerturbationConfig(), config.quantized_layer_names)
    assert len(hardware_layers(chip_model)) == len(config.quantized_layer_names)
    expected = plain(IMAGES[:64], training=False).numpy()
    np.testing.assert_array_equal(chip_model(IMAGES[:64], training=False).numpy(), expected)
    with hardware_evaluation(chip_model, PerturbationConfig(), chip=7):
        np.testing.assert_array_equal(chip_model(IMAGES[:64], training=False).numpy(), expected)
    # Outside an evaluation setting, even non-zero training levels stay off at inference.
    noisy = attach_hardware(plain, every_effect(), config.quantized_layer_names)
    np.testing.assert_array_equal(noisy(IMAGES[:64], training=False).numpy(), expected)
    np.testing.assert_array_equal(strip_hardware(noisy)(IMAGES[:64], training=False).numpy(), expected)


# --------------------------------------------------------------------------- chips side by side


@pytest.mark.parametrize("arch, bits, tiles", [("mlp", 1, None), ("mlp", 32, None), ("mlp", 2, None), ("cnn", 1, None),
                                              ("mlp", 1, 20), ("cnn", 1, 20)])
def test_chips_side_by_side_are_the_chips_one_at_a_time_bit_for_bit(arch, bits, tiles):
    """P chips in one pass (part k of the batch on chip k; dense layers: one batched matmul) give
    exactly what each chip gives alone, with every effect of the registry on: the same per-chip
    draws, the same noise per pass, the same saturation and ADC -- also with float and k-bit sums,
    and on tiles of 20 rows (every layer but the CNN's first convolution, 9 rows, has several)."""
    tf.keras.utils.set_random_seed(5)
    config = ModelConfig(arch=arch, bits=bits, hidden_units=(48, 32))
    plain = build_model(config)
    first = every_effect(out_bits=4, perturb_layers="all", tile_rows=tiles)
    second = first.replace(**{effect.curve.parameter: effect.curve.grid[-2] for effect in EFFECTS})  # new levels, same draws
    targets = first.targets(config)
    alone = attach_hardware(plain, PerturbationConfig(tile_rows=tiles), targets)
    side_by_side = attach_hardware(plain, PerturbationConfig(tile_rows=tiles), targets, chips_per_pass=3)
    ranges = calibrate(side_by_side, IMAGES[:128])
    assert ranges == calibrate(alone, IMAGES[:128])
    assert (max(len(partials) for partials in ranges.values()) > 1) == (tiles is not None)  # per tile
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


def test_a_chip_programmed_later_has_exactly_the_draws_of_a_first_programming():
    """A layer draws its first chips eagerly, later chips inside the compiled function that programs
    them, and keeps those draws for a new level: every way gives the same kernels for the same chip
    and level, with every kernel effect on (bit errors, drift, process variation) -- also for an
    effect that was off when the chips changed (drift, turned on later)."""
    config = ModelConfig(bits=1, hidden_units=(24, 16))
    plain = build_model(config)
    first, second = every_effect(perturb_layers="all"), every_effect(perturb_layers="all", weight_dev_pct=50.0, weight_ber=0.05)
    targets = first.targets(config)

    def kernels(model):
        return [layer.hardware_state.chip_kernels.numpy() for layer in hardware_layers(model)]

    def programmed_first(level, chip):
        model = attach_hardware(plain, PerturbationConfig(), targets, chips_per_pass=2)
        with hardware_evaluation(model, level, chip=chip):
            return kernels(model)

    model = attach_hardware(plain, PerturbationConfig(), targets, chips_per_pass=2)
    with hardware_evaluation(model, first, chip=0):
        at_zero = kernels(model)
        set_condition(model, first.replace(drift_time_s=0.0), chip=6)  # drawn in the programmer, drift off
        states = [layer.hardware_state for layer in hardware_layers(model)]
        assert all(state.draws_of == {"weight_ber": (6, 7), "weight_dev": (6, 7), "drift": (0, 1)} for state in states)
        set_condition(model, first)  # drift on: drawn now, for chips 6 and 7
        later = kernels(model)
        set_condition(model, second)  # the same chips' draws, another level
        rescaled = kernels(model)
    for mine, fresh in zip(later + rescaled, programmed_first(first, 6) + programmed_first(second, 6)):
        np.testing.assert_array_equal(mine, fresh)
    assert not any(np.array_equal(a, b) for a, b in zip(at_zero, later))  # other chips, other kernels


class Interrupting(dict):
    """Programmers that run, then raise: a programming interrupted after its draws were made."""

    def __getitem__(self, key):
        def interrupted(*args):
            dict.__getitem__(self, key)(*args)
            raise KeyboardInterrupt
        return interrupted


def test_an_interrupted_programming_leaves_no_chips_and_is_drawn_again():
    """A programming stopped after the compiled function of the first layer drew chips 0 and 1 over the
    draws of chips 6 and 7: that layer has no chips (batches read the plain kernel), and programming
    chip 6 again gives chip 6's kernels in every layer, not the stored draws of chip 0."""
    config = ModelConfig(bits=1, hidden_units=(24, 16))
    plain, level = build_model(config), every_effect(perturb_layers="all")
    model = attach_hardware(plain, PerturbationConfig(), level.targets(config), chips_per_pass=2)
    states = [layer.hardware_state for layer in hardware_layers(model)]
    with hardware_evaluation(model, level, chip=6):
        chip_six = [state.chip_kernels.numpy() for state in states]
        for state in states:
            state.programmers = Interrupting(state.programmers)
        with pytest.raises(KeyboardInterrupt):
            set_condition(model, chip=0)
        assert not (states[0].programmed.numpy() or states[0].compensating.numpy())  # the layer it stopped in
        for state in states:
            state.programmers = dict(state.programmers)
        set_condition(model, chip=6)
        assert all(state.programmed.numpy() for state in states)
        for state, kernels in zip(states, chip_six):
            np.testing.assert_array_equal(state.chip_kernels.numpy(), kernels)


def test_chips_of_a_pass_are_named_and_checked():
    plain = build_model(ModelConfig(bits=1, hidden_units=(16,)))
    model = attach_hardware(plain, PerturbationConfig(), ("dense_1",), chips_per_pass=2)
    with hardware_evaluation(model, PerturbationConfig(weight_dev_pct=10), chip=5):
        assert model.get_layer("dense_1").hardware_state.chip_ids.numpy().tolist() == [5, 6]  # the first and the next
        with pytest.raises(ValueError, match=r"^chip: .* evaluates 2 chip\(s\) per pass"):
            set_condition(model, chip=[1, 2, 3])
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="chips_per_pass"):
            attach_hardware(plain, PerturbationConfig(), ("dense_1",), chips_per_pass=bad)


# --------------------------------------------------------------------------- serialization


def test_hardware_layers_round_trip_config_and_files(tmp_path):
    config = every_effect(clip_mode="absolute", clip_min=-64, clip_max=63, clip_fraction=1.0, out_bits=6)
    model = hardware_model(bits=1, config=config)
    layer = model.get_layer("dense_1")
    copy = HardwareAwareQuantDense.from_config(layer.get_config())
    assert copy.perturbation == layer.perturbation == PerturbationConfig(**config.parameters())
    assert copy.get_config()["hardware"] == config.parameters()  # every effect's parameters, by name
    model.save(tmp_path / "m.keras")
    reloaded = tf.keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(reloaded.get_layer("dense_1"), HardwareAwareQuantDense)
    assert reloaded.get_layer("dense_1").perturbation == layer.perturbation
    np.testing.assert_array_equal(reloaded(IMAGES[:16]).numpy(), model(IMAGES[:16]).numpy())
    with hardware_evaluation(model, config, chip=3), hardware_evaluation(reloaded, config, chip=3):
        np.testing.assert_array_equal(reloaded(IMAGES[:16]).numpy(), model(IMAGES[:16]).numpy())


def test_a_bit_serial_tiled_layer_round_trips_its_pixels_and_tiles(tmp_path):
    """The first layer read bit-serially on tiles: the saved model knows it reads pixels (its passes)
    and its tiles, and a reloaded chip computes exactly the same numbers."""
    config = PerturbationConfig(clip_mode="accumulator", acc_bits=6, acc_format="popcount", tile_rows=300, noise_sigma=0.1)
    model = hardware_model(bits=1, config=config)
    layer = model.get_layer("dense_1")
    assert layer.pixel_inputs and (layer.tiling.tiles, layer.tiling.passes) == (3, 8)
    copy = HardwareAwareQuantDense.from_config(layer.get_config())
    assert copy.pixel_inputs and copy.perturbation == layer.perturbation
    model.save(tmp_path / "m.keras")
    reloaded = tf.keras.models.load_model(tmp_path / "m.keras")
    assert reloaded.get_layer("dense_1").pixel_inputs and reloaded.get_layer("dense_1").tiling == layer.tiling
    calibrate(model, IMAGES[:64]), calibrate(reloaded, IMAGES[:64])
    with hardware_evaluation(model, config, chip=2), hardware_evaluation(reloaded, config, chip=2):
        np.testing.assert_array_equal(reloaded(IMAGES[:16]).numpy(), model(IMAGES[:16]).numpy())


def test_run_time_levels_are_not_weights():
    plain = build_model(ModelConfig(bits=1, hidden_units=(32,)))
    chip_model = attach_hardware(plain, every_effect(), ("dense_1",))
    assert [w.shape for w in chip_model.weights] == [w.shape for w in plain.weights]


# --------------------------------------------------------------------------- configuration


def test_unknown_hardware_parameters_are_named_with_the_known_ones():
    with pytest.raises(ConfigError, match=r"^voltage: unknown key\(s\) voltage; known: .*noise_sigma.*perturb_layers") as raised:
        PerturbationConfig(voltage=3)
    assert raised.value.parameter == "voltage"
    with pytest.raises(ConfigError) as raised:
        PerturbationConfig(perturb_layers="")
    assert raised.value.parameter == "perturb_layers"


def test_every_parameter_is_an_attribute_and_round_trips():
    config = every_effect(perturb_layers="dense")
    assert set(config.parameters()) == set(HARDWARE_PARAMETERS) and set(PARAMETERS) < set(HARDWARE_PARAMETERS)
    for name, value in config.parameters().items():
        assert getattr(config, name) == value or getattr(config, name).value == value
    assert PerturbationConfig(**config.parameters(), perturb_layers="dense") == config
    assert hash(config.replace()) == hash(config) and config.replace(perturb_layers="all") != config
    import pickle

    assert pickle.loads(pickle.dumps(config)) == config
    with pytest.raises(AttributeError, match="frozen"):
        config.noise_sigma = 1.0


def test_layer_selection():
    mlp, cnn = ModelConfig(hidden_units=(8, 8, 8)), ModelConfig(arch="cnn")
    assert PerturbationConfig().targets(mlp) == ("dense_1", "dense_2", "dense_3")
    assert PerturbationConfig(perturb_layers="dense").targets(mlp)[-1] == "dense_out"
    assert PerturbationConfig().targets(cnn) == ("dense_1",)
    assert PerturbationConfig(perturb_layers="all").targets(cnn) == ("conv_1", "conv_2", "conv_3", "dense_1", "dense_out")
    assert PerturbationConfig(perturb_layers="conv_2, dense_out").targets(cnn) == ("conv_2", "dense_out")
    with pytest.raises(ConfigError, match="perturb_layers: unknown layer.*conv_9"):
        PerturbationConfig(perturb_layers="conv_9").targets(cnn)


def test_labels():
    assert PerturbationConfig.from_text(noise_sigma="0.3", weight_dev_pct="20", clip_min="-128", clip_max="127").label == \
        "d20-s0.30-c[-128,127]"
    assert PerturbationConfig.from_text(noise_sigma="0").label == "ideal"
    assert every_effect().label.count("-") == len(EFFECTS) - 1  # one part per active effect


def test_target_hardware_file(tmp_path):
    target, accuracy_spec = load_target("sweeps/target_hardware.yaml")
    assert target.noise_sigma > 0 and target.weight_dev_pct > 0 and target.clip_mode.value == "relative"
    assert 0 < accuracy_spec < 1
    circuit, circuit_spec = load_target("sweeps/target_hardware_tiles.yaml")  # the same chip in the circuit's units
    assert (circuit.clip_mode.value, circuit.acc_bits, circuit.acc_format.value, circuit.tile_rows) == ("accumulator", 8, "popcount", 256)
    assert circuit.bit_serial and circuit.out_bits == 4 and circuit_spec == accuracy_spec
    assert (circuit.noise_sigma, circuit.weight_dev_pct) == (target.noise_sigma, target.weight_dev_pct)
    (tmp_path / "bad.yaml").write_text("noise_sigma: 0.1\nvoltage: 3\n")
    with pytest.raises(ConfigError, match="target: .*bad.yaml: unknown key.*voltage; known: .*noise_sigma"):
        load_target(tmp_path / "bad.yaml")
    (tmp_path / "neg.yaml").write_text("weight_dev_pct: -3\n")
    with pytest.raises(ConfigError, match="weight_dev_pct"):
        load_target(tmp_path / "neg.yaml")
    (tmp_path / "spec.yaml").write_text("weight_dev_pct: 3\naccuracy_spec: 1.5\n")
    with pytest.raises(ConfigError, match="target: accuracy_spec: must be in"):
        load_target(tmp_path / "spec.yaml")


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


# --------------------------------------------------------------------------- registry


def test_effects_are_ordered_kernel_then_output_and_declare_everything():
    sites = [effect.site for effect in EFFECTS]
    assert sites == sorted(sites, key=[Site.KERNEL, Site.OUTPUT].index)
    for effect in EFFECTS:
        assert effect.curve.parameter in effect.params.field_names()
        assert effect.curve.label and effect.formula
        helps = field_help(effect.params)  # every parameter documented: the command line's help text
        assert set(helps) == set(effect.params.field_names()) and all(len(text) > 20 for text in helps.values())
        assert isinstance(effect.sampling, Sampling)
        ideal = PerturbationConfig().params(effect)
        assert not ideal.active  # every effect is off by default: the ideal chip


def test_an_effect_without_its_stage_methods_cannot_be_registered():
    class HalfKernel(KernelEffect):  # draws, but never says what the draws do to the kernel
        def run_levels(self, params):
            return {"strength": 0.0}

        def draw(self, shape, seed):
            return tf.zeros(shape)

    class Silent(OutputEffect):
        def run_levels(self, params):
            return {"strength": 0.0}

    for incomplete, missing in ((HalfKernel, "apply_kernel"), (Silent, "apply_output")):
        with pytest.raises(TypeError, match=missing):
            incomplete()


def test_documented_hardware_table_is_the_registry():
    """docs/hardware-model.md's table is generated from the registry (``python -m pipeline.effects``): they cannot drift."""
    page = (PROJECT_ROOT / "docs" / "hardware-model.md").read_text()
    assert markdown_table() in page


def test_an_evaluation_between_training_steps_leaves_the_training_noise_stream_as_it_was():
    """The sweep's pruning signal evaluates the model being trained: afterwards its training steps keep
    drawing fresh noise (the pass counter restored), not the draws of steps already taken."""
    noisy = PerturbationConfig(noise_sigma=0.5, weight_dev_pct=20, noise_mode="relative")
    images = tf.constant(IMAGES[:64])
    plain_run, evaluated_run = hardware_model(config=noisy, seed=4), hardware_model(config=noisy, seed=4)
    expected = [plain_run(images, training=True).numpy() for _ in range(2)]
    first = evaluated_run(images, training=True).numpy()
    with hardware_evaluation(evaluated_run, noisy, chip=3):
        for _ in range(3):
            evaluated_run(images, training=False)
    second = evaluated_run(images, training=True).numpy()
    np.testing.assert_array_equal(first, expected[0])
    np.testing.assert_array_equal(second, expected[1])  # the step after the evaluation: as if none had happened
    assert not np.array_equal(first, second)
