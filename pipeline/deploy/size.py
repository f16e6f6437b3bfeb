"""Model size, derived from what each layer declares -- never from a second table.

* ``float32_bytes``: every stored number at 32 bits (Larq's "float-32 equivalent").
* ``packed_bytes``: every weight at the precision its quantizer declares (1 bit for
  ``ste_sign``, k for DoReFa k-bit), everything else at 32 bits -- exactly Larq's
  :class:`larq.models.ModelProfile` memory, which also folds BatchNorm's ``beta`` into its
  moving mean (inference needs only one of the pair). Rounded up to whole bytes.
* ``file_bytes``: the saved ``.keras`` file on disk (weights stored as float32 latent values).

The size of the deployable flatbuffer is measured where it is made and run: :mod:`pipeline.deploy.interpreter`.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pipeline  # noqa: F401
import larq as lq
import tensorflow as tf


@dataclass(frozen=True)
class ModelSize:
    parameters: int  #: stored numbers (Larq's count, BatchNorm folded)
    float32_bytes: int  #: all of them at 32 bits
    packed_bytes: int  #: weights at their declared precision, the rest at 32 bits
    compression_ratio: float  #: float32_bytes / packed_bytes

    def as_metrics(self) -> dict[str, float]:
        return {
            "model_parameters": self.parameters,
            "model_size_float32_bytes": self.float32_bytes,
            "model_size_packed_bytes": self.packed_bytes,
            "compression_ratio": self.compression_ratio,
        }


def model_size(model: tf.keras.Model) -> ModelSize:
    profile = lq.models.ModelProfile(model)
    packed_bits = sum(weight.count * weight_bits(weight) for layer in profile.layer_profiles for weight in layer.weight_profiles)
    float_bits = profile.fp_equivalent_memory
    packed = math.ceil(packed_bits / 8)
    return ModelSize(
        parameters=int(profile.weight_count()),
        float32_bytes=math.ceil(float_bits / 8),
        packed_bytes=packed,
        compression_ratio=float_bits / 8 / packed,
    )


def weight_bits(weight: lq.models.WeightProfile) -> int:
    """The declared precision of one weight; a Larq variable without a quantizer is 32-bit."""
    return weight.bitwidth if weight.bitwidth else 32


def saved_file_bytes(model: tf.keras.Model) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        return path.stat().st_size


def larq_summary(model: tf.keras.Model) -> str:
    lines: list[str] = []
    lq.models.summary(model, print_fn=lines.append)
    return "\n".join(lines)
