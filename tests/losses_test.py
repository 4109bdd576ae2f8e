import numpy as np
import tensorflow as tf

from auto_deeplab_tf import losses


def _logits_and_labels():
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(size=(2, 3, 4, 5)).astype(np.float32))
    labels = rng.integers(0, 5, size=(2, 3, 4)).astype(np.int32)
    labels[0, 0] = 255
    return logits, labels


def test_mean_over_the_pixels_not_ignored():
    logits, labels = _logits_and_labels()
    valid = labels != 255
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(np.where(valid, labels, 0), logits)
    expected = float(tf.reduce_sum(tf.where(valid, ce, 0.0))) / valid.sum()
    assert float(losses.count_valid(labels)) == valid.sum()
    np.testing.assert_allclose(float(losses.masked_cross_entropy(labels, logits)), expected,
                               rtol=1e-6)
    # num_classes changes nothing while every label is a class or the ignore label.
    assert float(losses.masked_cross_entropy(labels, logits, num_classes=5)) == \
        float(losses.masked_cross_entropy(labels, logits))


def test_labels_outside_the_classes_are_ignored_when_num_classes_is_given():
    logits, labels = _logits_and_labels()
    stray = labels.copy()
    stray[1, 0] = 7
    stray[1, 1] = -1
    cleaned = stray.copy()
    cleaned[1, :2] = 255
    assert float(losses.count_valid(stray, num_classes=5)) == float(
        losses.count_valid(cleaned))
    assert float(losses.masked_cross_entropy(stray, logits, num_classes=5)) == float(
        losses.masked_cross_entropy(cleaned, logits))


def test_num_valid_divides_and_an_empty_batch_gives_zero():
    logits, labels = _logits_and_labels()
    total = float(losses.masked_cross_entropy(labels, logits, num_valid=1.0))
    np.testing.assert_allclose(
        float(losses.masked_cross_entropy(labels, logits, num_valid=10.0)), total / 10,
        rtol=1e-6)
    empty = np.full_like(labels, 255)
    assert float(losses.masked_cross_entropy(empty, logits)) == 0.0
