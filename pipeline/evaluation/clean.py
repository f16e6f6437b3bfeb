"""Clean evaluation on the test split: accuracy, loss, confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import pipeline  # noqa: F401
import tensorflow as tf

from pipeline.learning.data import NUM_CLASSES, PreparedData


@dataclass(frozen=True)
class Evaluation:
    test_accuracy: float
    test_loss: float
    confusion: np.ndarray  #: (10, 10) counts, rows = true class, columns = predicted class

    def as_metrics(self) -> dict[str, float]:
        return {"test_accuracy": self.test_accuracy, "test_loss": self.test_loss}


def evaluate(model: tf.keras.Model, data: PreparedData, batch_size: int = 256) -> Evaluation:
    images, labels = data.images("test"), data.labels("test")
    probabilities = model.predict(images, batch_size=batch_size, verbose=0)
    predicted = probabilities.argmax(axis=1)
    eps = np.finfo(np.float32).eps
    loss = float(-np.mean(np.log(np.clip(probabilities[np.arange(len(labels)), labels], eps, 1.0))))
    return Evaluation(
        test_accuracy=float(np.mean(predicted == labels)),
        test_loss=loss,
        confusion=confusion_matrix(labels, predicted),
    )


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    matrix = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix
