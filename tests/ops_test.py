import numpy as np
import pytest
import tensorflow as tf

from auto_deeplab_tf import ops
from auto_deeplab_tf import search_space as ss


@pytest.mark.parametrize("op_name", ss.OPS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(16, 16), (15, 9)])
def test_op_keeps_or_halves_resolution(op_name, stride, size):
    x = tf.random.normal((2, *size, 4))
    op = ops.make_op(op_name, filters=6, stride=stride, norm="batch")
    y = op(x, training=True)
    expected = size if stride == 1 else tuple((s + 1) // 2 for s in size)
    assert tuple(y.shape) == (2, *expected, 6)


def test_zero_contributes_nothing_and_has_no_weights():
    op = ops.make_op("zero", filters=3, stride=2)
    y = op(tf.ones((1, 5, 5, 3)))
    assert op.weights == []
    assert float(tf.reduce_max(tf.abs(y))) == 0.0


def test_skip_is_the_identity_at_stride_1():
    x = tf.random.normal((1, 7, 7, 5))
    op = ops.make_op("skip_connect", filters=5)
    np.testing.assert_array_equal(op(x).numpy(), x.numpy())
    assert op.weights == []


def test_unknown_op_and_stride_fail():
    with pytest.raises(ValueError, match="unknown op 'conv9'"):
        ops.make_op("conv9", 4)
    with pytest.raises(ValueError, match="stride must be 1 or 2, got 3"):
        ops.make_op("sep_conv_3x3", 4, stride=3)


def test_group_batch_norm_normalises_each_group_on_its_own():
    rng = np.random.default_rng(0)
    a = rng.normal(3.0, 2.0, size=(2, 6, 6, 4)).astype(np.float32)
    b = rng.normal(-1.0, 0.5, size=(2, 6, 6, 4)).astype(np.float32)
    y = ops.group_batch_norm(tf.concat([a, b], 0), groups=2).numpy()
    for part, ref in ((y[:2], a), (y[2:], b)):
        expected = (ref - ref.mean(axis=(0, 1, 2))) / np.sqrt(
            ref.var(axis=(0, 1, 2)) + ops.SEARCH_BN_EPSILON)
        np.testing.assert_allclose(part, expected, atol=1e-4)


def test_op_config_round_trip():
    op = ops.make_op("atrous_conv_5x5", filters=8, stride=2, norm="search")
    clone = type(op).from_config(op.get_config())
    assert clone.get_config() == op.get_config()
