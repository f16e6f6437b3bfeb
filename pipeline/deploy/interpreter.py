"""The deployed model, run: the flatbuffer of :mod:`pipeline.deploy.export` in its interpreter, checked
against the Keras model on the test split, and timed.

* ``deployed_accuracy``: test accuracy of the flatbuffer's predictions (the logged batch-1 file).
* ``deployed_agreement``: fraction of test images where its argmax equals the Keras model's; below
  :data:`AGREEMENT_WARNING` the run carries a warning (tag ``deployed_warning`` and the terminal).
* ``deployed_latency_ms``: one image at a time, the median of :data:`LATENCY_RUNS` invocations
  after :data:`WARMUP_RUNS` (Python call overhead of a few microseconds included).
* ``deployed_images_per_s``: a flatbuffer converted for batches of :data:`THROUGHPUT_BATCH`, the
  median of :data:`THROUGHPUT_RUNS` invocations.

Both timings use ``deployed_threads`` interpreter threads (every core of the machine). LCE
flatbuffers run in LCE's interpreter (``larq_compute_engine.testing.Interpreter``), the others in
LiteRT's (``ai_edge_litert.interpreter.Interpreter``, the successor of the deprecated
``tf.lite.Interpreter``; the same TFLite runtime and kernels). LCE's optimized binary kernels target
64-bit ARM; on x86 its binary convolutions run portable code, while TFLite's float kernels use the
CPU's vector units -- compare speeds on the target device before concluding anything from the x86
numbers.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from collections.abc import Callable

import numpy as np

import pipeline  # noqa: F401
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from pipeline.deploy.export import LCE, ExportError, Flatbuffer, convert
from pipeline.native_logs import native_noise_filtered

AGREEMENT_WARNING = 0.999  #: a lower agreement with the Keras model is a warning on the run
LATENCY_RUNS = 100
WARMUP_RUNS = 10
THROUGHPUT_BATCH = 64
THROUGHPUT_RUNS = 20
SKIPPED = "not converted (sweep trial)"  #: ``tflite_converter`` tag of a run whose model was not converted

Predict = Callable[[np.ndarray], np.ndarray]  #: exactly the flatbuffer's batch of images -> its outputs


def interpreter(flatbuffer: Flatbuffer, threads: int) -> Predict:
    """A function running ``flatbuffer`` on one batch of its size: LCE's interpreter or TFLite's."""
    if flatbuffer.converter == LCE:
        import larq_compute_engine as lce

        # the wrapper's own one-batch call (``Interpreter.predict`` loops over single images)
        lite = lce.testing.Interpreter(flatbuffer.content, num_threads=threads).interpreter
        return lambda batch: lite.predict([batch])[0]
    with native_noise_filtered():  # TFLite's "INFO: Created TensorFlow Lite XNNPACK delegate" line
        lite = Interpreter(model_content=flatbuffer.content, num_threads=threads)
        lite.allocate_tensors()
    source, result = lite.get_input_details()[0]["index"], lite.get_output_details()[0]["index"]

    def predict(batch: np.ndarray) -> np.ndarray:
        lite.set_tensor(source, batch)
        lite.invoke()
        return lite.get_tensor(result).copy()

    return predict


def predict_all(predict: Predict, batch_size: int, images: np.ndarray) -> np.ndarray:
    """Outputs for every image, in batches of ``batch_size`` (the last one filled up with repeats)."""
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        outputs.append(predict(np.resize(batch, (batch_size, *batch.shape[1:])))[: len(batch)])
    return np.concatenate(outputs)


def median_seconds(call: Callable[[], object], runs: int, warmup: int = 0) -> float:
    """Median wall time of ``call()`` over ``runs`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


@dataclass(frozen=True)
class Deployment:
    """The deployed model as measured (see the module docstring)."""

    converter: str
    file_bytes: int
    accuracy: float
    agreement: float
    latency_ms: float
    images_per_s: float
    threads: int

    def metrics(self) -> dict[str, float]:
        return {"model_size_tflite_bytes": self.file_bytes, "deployed_accuracy": self.accuracy,
                "deployed_agreement": self.agreement, "deployed_latency_ms": self.latency_ms,
                "deployed_images_per_s": self.images_per_s, "deployed_threads": self.threads}

    @property
    def warning(self) -> str | None:
        if self.agreement >= AGREEMENT_WARNING:
            return None
        return (f"the deployed model ({self.converter}) disagrees with the Keras model on {100 * (1 - self.agreement):.2f}% "
                f"of the test images (more than {100 * (1 - AGREEMENT_WARNING):.1f}%)")


def deploy(model: tf.keras.Model, images: np.ndarray, labels: np.ndarray, threads: int | None = None) -> tuple[Deployment, Flatbuffer]:
    """Convert a plain model, run the batch-1 flatbuffer on ``images``, time it; returns the
    measurements and the flatbuffer. Raises :class:`pipeline.deploy.export.ExportError` when it cannot be
    converted or its interpreter cannot run it."""
    threads = threads or os.cpu_count() or 1
    single, batched = convert(model, 1), convert(model, THROUGHPUT_BATCH)
    batch = np.resize(images, (THROUGHPUT_BATCH, *images.shape[1:]))
    try:
        run_single, run_batched = interpreter(single, threads), interpreter(batched, threads)
        deployed = predict_all(run_single, 1, images).argmax(axis=1)
        latency = median_seconds(lambda: run_single(images[:1]), LATENCY_RUNS, WARMUP_RUNS)
        batch_seconds = median_seconds(lambda: run_batched(batch), THROUGHPUT_RUNS, WARMUP_RUNS // 2)
    except Exception as error:  # converted, but the interpreter cannot run it (an op it lacks)
        raise ExportError(f"the {single.converter} interpreter failed: {type(error).__name__}: "
                          f"{str(error).splitlines()[0][:300] if str(error) else ''}") from error
    keras = model.predict(images, batch_size=1024, verbose=0).argmax(axis=1)
    measured = Deployment(single.converter, single.nbytes, float(np.mean(deployed == labels)),
                          float(np.mean(deployed == keras)), 1000 * latency, THROUGHPUT_BATCH / batch_seconds, threads)
    return measured, single
