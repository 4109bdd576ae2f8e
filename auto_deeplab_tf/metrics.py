"""Segmentation metrics from a streaming confusion matrix (ignored pixels excluded)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


class ConfusionMatrix(keras.metrics.Metric):
    """Accumulates a [num_classes, num_classes] confusion matrix (rows: truth).

    `update_state(labels, logits_or_predictions)` skips pixels whose label is
    `ignore_label` or outside [0, num_classes); predictions may be logits
    ([..., num_classes]) or class ids (in [0, num_classes)). It runs on the device alone
    (no value is read back to the host), so it can sit in a traced GPU training step.
    The variable sums across replicas, so it works under tf.distribute.
    """

    def __init__(self, num_classes: int, ignore_label: int = 255, name: str = "confusion",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.matrix = self.add_variable(shape=(num_classes, num_classes), initializer="zeros",
                                        dtype="float64", name="matrix", aggregation="sum")

    def update_state(self, labels, predictions, sample_weight=None):
        del sample_weight
        labels = tf.cast(labels, tf.int32)
        if predictions.shape.rank == labels.shape.rank + 1:
            predictions = tf.argmax(predictions, axis=-1, output_type=tf.int32)
        labels = tf.reshape(labels, [-1])
        predictions = tf.reshape(tf.cast(predictions, tf.int32), [-1])
        c = self.num_classes
        valid = tf.logical_and(tf.not_equal(labels, self.ignore_label),
                               tf.logical_and(labels >= 0, labels < c))
        # Predictions come from an argmax; one out of range would land in another cell.
        valid = tf.logical_and(valid, tf.logical_and(predictions >= 0, predictions < c))
        # One segment per (truth, prediction) cell; invalid pixels get the id -1, which
        # unsorted_segment_sum drops. Unlike boolean_mask (a Where, whose output size the
        # GPU copies to the host) and tf.math.confusion_matrix (asserts on the values), this
        # stays on the device, and it is deterministic on GPU too.
        cells = tf.where(valid, labels * c + predictions, -tf.ones_like(labels))
        counts = tf.math.unsorted_segment_sum(tf.ones_like(cells, dtype=tf.float64), cells,
                                              c * c)
        self.matrix.assign_add(tf.reshape(counts, [c, c]))

    def result(self):
        return mean_iou(self.matrix)

    def reset_state(self):
        self.matrix.assign(tf.zeros_like(self.matrix))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "ignore_label": self.ignore_label}


def per_class_iou(matrix):
    """IoU of each class; NaN for classes absent from both truth and prediction."""
    matrix = tf.convert_to_tensor(matrix, tf.float64)
    tp = tf.linalg.diag_part(matrix)
    union = tf.reduce_sum(matrix, 0) + tf.reduce_sum(matrix, 1) - tp
    return tf.where(union > 0, tp / tf.maximum(union, 1.0), tf.constant(np.nan, tf.float64))


def mean_iou(matrix):
    """Mean IoU over the classes present in truth or prediction."""
    iou = per_class_iou(matrix)
    present = tf.logical_not(tf.math.is_nan(iou))
    return tf.reduce_mean(tf.boolean_mask(iou, present))


def pixel_accuracy(matrix):
    matrix = tf.convert_to_tensor(matrix, tf.float64)
    return tf.linalg.trace(matrix) / tf.maximum(tf.reduce_sum(matrix), 1.0)
