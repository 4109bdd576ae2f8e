"""The pixel cross-entropy of search and retraining, and the count of pixels it averages over.

One definition, so that the two stages cannot drift: a pixel counts when its label is not
`ignore_label` and, when `num_classes` is given, when it names a class (0 <= label <
num_classes); other labels (stray values in a converted dataset) are ignored rather than
fed to the softmax, where they would fail.

Under several replicas the mean must be over the global batch, so callers pass `num_valid`,
the count summed over replicas (`global_count_valid`).
"""

from __future__ import annotations

import tensorflow as tf

from auto_deeplab_tf import ops


def valid_pixels(labels: tf.Tensor, ignore_label: int = 255,
                 num_classes: int | None = None) -> tf.Tensor:
    """Boolean mask of the pixels that count in the loss (see the module docstring)."""
    labels = tf.cast(labels, tf.int32)
    valid = tf.not_equal(labels, ignore_label)
    if num_classes is not None:
        valid = tf.logical_and(valid, tf.logical_and(labels >= 0, labels < num_classes))
    return valid


def count_valid(labels: tf.Tensor, ignore_label: int = 255,
                num_classes: int | None = None) -> tf.Tensor:
    """The number of pixels that count in the loss (float32 scalar)."""
    return tf.reduce_sum(tf.cast(valid_pixels(labels, ignore_label, num_classes), tf.float32))


def global_count_valid(labels: tf.Tensor, ignore_label: int = 255,
                       num_classes: int | None = None) -> tf.Tensor:
    """`count_valid` of the global batch: summed over the replicas inside `strategy.run`
    with several replicas (call it outside any nested function or loop), else this
    batch's."""
    num_valid = count_valid(labels, ignore_label, num_classes)
    context = ops.cross_replica_context()
    if context is not None:
        num_valid = context.all_reduce(tf.distribute.ReduceOp.SUM, num_valid)
    return num_valid


def masked_cross_entropy(labels: tf.Tensor, logits: tf.Tensor, ignore_label: int = 255,
                         num_valid: tf.Tensor | None = None,
                         num_classes: int | None = None) -> tf.Tensor:
    """Softmax cross-entropy summed over the pixels that count (`valid_pixels`), divided by
    `num_valid` (default: their count here, i.e. the mean; at least 1, so a batch without
    such pixels gives 0).

    Under several replicas `num_valid` is the count over the global batch, so that the
    replicas' results add up to the mean over the global batch."""
    labels = tf.cast(labels, tf.int32)
    valid = valid_pixels(labels, ignore_label, num_classes)
    safe = tf.where(valid, labels, tf.zeros_like(labels))
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(safe, tf.cast(logits, tf.float32))
    weights = tf.cast(valid, ce.dtype)
    if num_valid is None:
        num_valid = tf.reduce_sum(weights)
    return tf.reduce_sum(ce * weights) / tf.maximum(num_valid, 1.0)
