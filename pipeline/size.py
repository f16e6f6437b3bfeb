"""Model size, derived from what each layer declares -- never from a second table.

* ``float32_bytes``: every stored number at 32 bits (Larq's "float-32 equivalent").
* ``packed_bytes``: every weight at the precision its quantizer declares (1 bit for
  ``ste_sign``, k for DoReFa k-bit), everything else at 32 bits -- exactly Larq's
  :class:`larq.models.ModelProfile` memory, which also folds BatchNorm's ``beta`` into its
  moving mean (inference needs only one of the pair). Rounded up to whole bytes.
* ``file_bytes``: the saved ``.keras`` file on disk (weights stored as float32 latent values).
* ``tflite_bytes``: the converted flatbuffer -- Larq Compute Engine for 1-bit models (which
  packs binary convolutions to 1 bit, but not binary Dense layers), the TFLite converter otherwise.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pipeline  # noqa: F401
import larq as lq
import tensorflow as tf

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class TfliteResult:
    flatbuffer: bytes
    converter: str  #: ``larq-compute-engine`` or ``tflite``

    @property
    def nbytes(self) -> int:
        return len(self.flatbuffer)


def convert_to_tflite(model: tf.keras.Model, bits: int) -> TfliteResult:
    """The model as a TFLite flatbuffer: LCE for 1-bit models where it loads, TFLite otherwise."""
    if bits == 1:
        try:
            import larq_compute_engine as lce

            return TfliteResult(lce.convert_keras_model(model), "larq-compute-engine")
        except Exception as error:  # LCE missing or unable to convert: say so, use TFLite
            log.warning("Larq Compute Engine could not convert the model (%s); using the TFLite converter", error)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    return TfliteResult(converter.convert(), "tflite")


TFLITE_SKIPPED = "not converted (sweep trial)"  #: ``tflite_converter`` tag of a run without a flatbuffer


def size_report(model: tf.keras.Model, bits: int, tflite: bool = True) -> tuple[dict[str, float], dict[str, str]]:
    """Size metrics and tags for one trained model (``tflite=False``: without the flatbuffer, which
    takes about a second to convert -- sweep trials leave it to the sweep's best trial)."""
    metrics = {**model_size(model).as_metrics(), "model_size_file_bytes": saved_file_bytes(model)}
    if not tflite:
        return metrics, {"tflite_converter": TFLITE_SKIPPED}
    converted = convert_to_tflite(model, bits)
    return {**metrics, "model_size_tflite_bytes": converted.nbytes}, {"tflite_converter": converted.converter}


def larq_summary(model: tf.keras.Model) -> str:
    lines: list[str] = []
    lq.models.summary(model, print_fn=lines.append)
    return "\n".join(lines)



