"""The evaluation bench: a model's copy as chips, built, calibrated and traced once, reused by every evaluation.

An evaluation (:func:`pipeline.evaluation.robustness.evaluate_robustness`) reads a model on a copy
with its targeted layers hardware-aware (:func:`pipeline.hwmodel.chips.attach_hardware`), whose
calibration probe and accuracy function are compiled. The plain layers before the first targeted
one compute the same for every chip: the copy is split there (:class:`ChipBench`), they run once
per image, and the chips start from their output. Building them costs a second or more; the
chips themselves cost milliseconds. A :class:`ChipBench` is kept per (architecture and layer names,
target hardware, targeted layers, chips per pass, batch size) -- at most :data:`MAX_BENCHES`,
the least recently used dropped -- and every evaluation of a model of that architecture (a sweep's
trials, a sensitivity run's repeats, a model evaluated again) copies the model's weights into it and
calibrates it again (one pass over the validation images). Everything a chip is made of -- its
draws, seeded by chip, layer and effect -- is independent of the weights, so a bench gives the
numbers of a new copy, bit for bit (tested).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

import pipeline  # noqa: F401
import tensorflow as tf

from pipeline.perturbation import PerturbationConfig
from pipeline.hwmodel.chips import Calibration, attach_hardware, chips_per_pass, end_evaluation, plain_class

MAX_BENCHES = 4  #: copies kept, least recently used dropped (an evaluation uses one or two: the curves' and the target's pass size;
#: each holds its chips' kernels and draws: about 130 MB for the default MLP at 10 chips a pass with every kernel effect)


class CompiledAccuracy:
    """Test accuracy of ``model``, compiled once (one trace for any batch size, level and chip).

    A model that evaluates P chips per pass (``chips_per_pass``) gets batches of P equal parts,
    part k on chip k. :meth:`per_chip` gives every chip every image (each part the same batch of
    ``batch_size`` images: what that chip alone would see); :meth:`one_chip` shares the images
    among the parts -- for when every chip computes the same (clean, or a level without
    randomness), it costs one chip's evaluation, not P.
    """

    def __init__(self, model: tf.keras.Model, batch_size: int):
        self.chips = chips_per_pass(model)
        self.batch_size = batch_size
        self.traces = 0
        chips = self.chips

        @tf.function(autograph=False, input_signature=[tf.TensorSpec([None, *model.input_shape[1:]], tf.float32),
                                      tf.TensorSpec([None], tf.int64), tf.TensorSpec([], tf.bool)])
        def correct(images, labels, stack):
            """Hits per chip; ``stack``: give every chip all of ``images`` (else they are the parts)."""
            self.traces += 1  # Python side effect: runs only while tracing
            if chips > 1:
                copies = lambda tensor: tf.tile(tensor, [chips] + [1] * (tensor.shape.rank - 1))  # noqa: E731
                images = tf.cond(stack, lambda: copies(images), lambda: images)
                labels = tf.cond(stack, lambda: copies(labels), lambda: labels)
            hits = tf.cast(tf.equal(tf.argmax(model(images, training=False), axis=1), labels), tf.int64)
            return tf.reduce_sum(tf.reshape(hits, [chips, -1]), axis=1)

        self._correct = correct

    def per_chip(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Accuracy of each chip of the pass on all of ``images``."""
        hits = np.zeros(self.chips, np.int64)
        for start in range(0, len(labels), self.batch_size):
            hits += self._correct(images[start : start + self.batch_size], labels[start : start + self.batch_size], True).numpy()
        return hits / len(labels)

    def one_chip(self, images: np.ndarray, labels: np.ndarray) -> float:
        """Accuracy on ``images`` when every chip of the pass computes the same."""
        step = self.batch_size * self.chips
        hits = 0
        for start in range(0, len(labels), step):
            batch, truth = images[start : start + step], labels[start : start + step]
            if pad := -len(truth) % self.chips:  # equal parts; padded images count for nothing
                batch = np.concatenate([batch, np.zeros((pad, *batch.shape[1:]), batch.dtype)])
                truth = np.concatenate([truth, np.full(pad, -1, truth.dtype)])
            hits += int(self._correct(batch, truth, False).numpy().sum())
        return hits / len(labels)


@dataclass(frozen=True)
class ChipBench:
    """A model's copy with its targeted layers hardware-aware, split where the chips begin: ``prefix``,
    the plain layers before the first targeted one, computed once per image for every chip (None when
    only a reshape comes first); ``model``, the rest -- the chips -- with its calibration probe and
    compiled accuracy, reading :meth:`features`."""

    copy: tf.keras.Model  #: the whole copy (its layers are the prefix's and the chips' model's)
    prefix: Callable[[tf.Tensor], tf.Tensor] | None
    model: tf.keras.Model
    calibration: Calibration
    accuracy: CompiledAccuracy
    batch_size: int

    def features(self, images: np.ndarray) -> np.ndarray:
        """What the chips' first layer reads for ``images``: the prefix's clean output (``images`` without a prefix)."""
        if self.prefix is None:
            return images
        features = np.empty((len(images), *self.model.input_shape[1:]), np.float32)
        for start in range(0, len(images), self.batch_size):
            features[start : start + self.batch_size] = self.prefix(tf.constant(images[start : start + self.batch_size], tf.float32)).numpy()
        return features


def new_bench(model: tf.keras.Model, target: PerturbationConfig, targets: Sequence[str], side_by_side: int, batch_size: int) -> ChipBench:
    """Copy ``model`` with ``targets`` hardware-aware, split before the first targeted layer when a layer
    with weights (a plain layer, BatchNorm) comes before it: those are the same for every chip."""
    copy = attach_hardware(model, target, targets, chips_per_pass=side_by_side)
    first = next((index for index, layer in enumerate(copy.layers) if layer.name in targets), 0)  # nothing targeted: no split
    prefix, chips = None, copy
    if any(layer.weights for layer in copy.layers[:first]):
        before = tf.keras.Sequential([tf.keras.Input(shape=model.input_shape[1:]), *copy.layers[:first]])
        prefix = tf.function(lambda images: before(images, training=False), autograph=False,
                             input_signature=[tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)])
        chips = tf.keras.Sequential([tf.keras.Input(shape=before.output_shape[1:]), *copy.layers[first:]], name=copy.name)
    return ChipBench(copy, prefix, chips, Calibration(chips), CompiledAccuracy(chips, batch_size), batch_size)


BENCHES: OrderedDict[tuple, ChipBench] = OrderedDict()


def architecture(model: tf.keras.Model) -> str:
    """What a copy of ``model`` computes: its input shape, its layers' names (they seed the chips), plain
    classes and configurations -- without what the copied weights replace (initializers) or what only
    names an object (a quantizer's own name, numbered by Keras per process)."""
    layers = [(layer.name, plain_class(layer).__name__, _computing(layer.get_config())) for layer in model.layers]
    return json.dumps([list(model.input_shape[1:]), layers], sort_keys=True, default=str)


def _computing(config, top: bool = False, named: bool = True):
    """``config`` without initializers and without the names inside quantizers and constraints."""
    if isinstance(config, dict):
        return {key: _computing(value, named=named and not key.endswith(("_quantizer", "_constraint"))) for key, value in config.items()
                if not key.endswith("_initializer") and key not in ("hardware", "pixel_inputs") and (named or key != "name")}
    if isinstance(config, (list, tuple)):
        return [_computing(value, named=named) for value in config]
    return config


def chip_bench(model: tf.keras.Model, target: PerturbationConfig, targets: Sequence[str], side_by_side: int, batch_size: int,
               calibration_images: np.ndarray) -> ChipBench:
    """The bench of ``model`` at ``target`` (its tiles) with ``targets`` hardware-aware and ``side_by_side``
    chips per pass, holding ``model``'s weights, calibrated on ``calibration_images``."""
    key = (architecture(model), json.dumps(target.parameters(), sort_keys=True, default=str), tuple(targets), side_by_side, batch_size)
    bench = BENCHES.pop(key, None)
    if bench is None:
        bench = new_bench(model, target, targets, side_by_side, batch_size)
    else:
        end_evaluation(bench.model)  # plain again, whatever an interrupted evaluation left
        bench.copy.set_weights(model.get_weights())
    BENCHES[key] = bench
    while len(BENCHES) > MAX_BENCHES:
        BENCHES.popitem(last=False)
    bench.calibration(bench.features(calibration_images))
    return bench
