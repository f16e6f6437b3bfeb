import dataclasses

import pytest

from pipeline.config import Arch, ConfigError, DataConfig, Dataset, ModelConfig, RobustnessConfig, Source, TrainConfig, flatten


@pytest.mark.parametrize(
    "factory, parameter",
    [
        (lambda: DataConfig(dataset="cifar10"), "dataset"),
        (lambda: DataConfig(source="web"), "source"),
        (lambda: DataConfig(source="path"), "data_path"),
        (lambda: DataConfig(source="bundled", data_path="/x"), "data_path"),
        (lambda: DataConfig(dataset="fashion_mnist", source="bundled"), "source"),
        (lambda: DataConfig(val_fraction=0), "val_fraction"),
        (lambda: DataConfig(val_fraction=0.9), "val_fraction"),
        (lambda: DataConfig(val_fraction="abc"), "val_fraction"),
        (lambda: DataConfig(test_fraction=float("nan")), "test_fraction"),
        (lambda: DataConfig(limit=-1), "limit"),
        (lambda: DataConfig(limit=10), "limit"),
        (lambda: DataConfig(limit="2.5"), "limit"),
        (lambda: DataConfig(seed=-3), "seed"),
        (lambda: ModelConfig(arch="resnet"), "arch"),
        (lambda: ModelConfig(bits=0), "bits"),
        (lambda: ModelConfig(bits=9), "bits"),
        (lambda: ModelConfig(bits=16), "bits"),
        (lambda: ModelConfig(bits="one"), "bits"),
        (lambda: ModelConfig(bits=True), "bits"),
        (lambda: ModelConfig(hidden_units="512,,512"), "hidden_units"),
        (lambda: ModelConfig(hidden_units="512,-1"), "hidden_units"),
        (lambda: ModelConfig(hidden_units=""), "hidden_units"),
        (lambda: TrainConfig(epochs=0), "epochs"),
        (lambda: TrainConfig(epochs="-2"), "epochs"),
        (lambda: TrainConfig(batch_size=0), "batch_size"),
        (lambda: TrainConfig(learning_rate=0), "learning_rate"),
        (lambda: TrainConfig(learning_rate="inf"), "learning_rate"),
        (lambda: RobustnessConfig(chips_per_pass=-1), "chips_per_pass"),
        (lambda: RobustnessConfig(chips_per_pass="all"), "chips_per_pass"),
        (lambda: RobustnessConfig(target_chips=0), "target_chips"),
        (lambda: RobustnessConfig(target_chips=20_000), "target_chips"),  # would reach the next seed's chips
        (lambda: RobustnessConfig(accuracy_spec=1.2), "accuracy_spec"),
        (lambda: RobustnessConfig(accuracy_spec=-0.1), "accuracy_spec"),
        (lambda: RobustnessConfig(accuracy_spec="high"), "accuracy_spec"),
    ],
)
def test_bad_values_name_their_parameter(factory, parameter):
    with pytest.raises(ConfigError) as raised:
        factory()
    assert raised.value.parameter == parameter
    assert str(raised.value).startswith(f"{parameter}: ")


def test_enum_errors_list_what_is_allowed():
    with pytest.raises(ConfigError, match="mlp, cnn"):
        ModelConfig(arch="vgg")
    with pytest.raises(ConfigError, match="32 .* 1 to 8"):
        ModelConfig(bits=12)


def test_text_values_are_parsed_like_command_line_input():
    data = DataConfig(dataset=" MNIST ", source="Bundled", limit="100", seed="3", val_fraction="0.2")
    assert (data.dataset, data.source, data.limit, data.seed, data.val_fraction) == (
        Dataset.MNIST, Source.BUNDLED, 100, 3, 0.2)
    model = ModelConfig(arch="CNN", bits="4", hidden_units="256, 128")
    assert (model.arch, model.bits, model.hidden_units) == (Arch.CNN, 4, (256, 128))
    assert TrainConfig(epochs="5.0").epochs == 5


def test_configs_are_frozen_and_replace_revalidates():
    config = ModelConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.bits = 4
    assert dataclasses.replace(config, bits=32).label == "mlp-float"
    with pytest.raises(ConfigError, match="bits"):
        dataclasses.replace(config, bits=10)


def test_labels_and_flat_params():
    assert ModelConfig(arch="cnn", bits=1).label == "cnn-1bit"
    assert ModelConfig(bits=3).label == "mlp-3bit"
    assert flatten("model", ModelConfig(bits=2, hidden_units=(64, 32))) == {
        "model.arch": "mlp", "model.bits": "2", "model.hidden_units": "64,32"}
