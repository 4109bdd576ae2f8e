"""Stacked weights: each copy of a stacked layer is an ordinary layer's weights."""

import numpy as np
import pytest
import tensorflow as tf

from auto_deeplab_tf import ops
from auto_deeplab_tf import search_space as ss
from auto_deeplab_tf import stacking
from auto_deeplab_tf.cell import SearchCell
from auto_deeplab_tf.mixed_op import MixedOp


def test_stacked_layers_run_each_copy_as_an_unstacked_layer():
    rng = np.random.default_rng(4)
    x = tf.constant(rng.normal(size=(2, 8, 8, 4)).astype(np.float32))
    stacked = ops.ReLUConvBN(3, 3, stride=2, norm="search", num_copies=3)
    stacked.build(x.shape)
    single = ops.ReLUConvBN(3, 3, stride=2, norm="search")
    single.build(x.shape)
    weights = MixedOp(4, num_edges=2, num_copies=3)
    weights.build(x.shape)
    plain = MixedOp(4, num_edges=2)
    plain.build(x.shape)
    alpha_w = tf.nn.softmax(rng.normal(size=(2, ss.NUM_OPS)).astype(np.float32))
    for copy in range(3):
        single.kernel.assign(stacked.kernel[copy])
        np.testing.assert_allclose(stacked(x, copy=copy).numpy(), single(x).numpy(),
                                   atol=1e-6)
        for a, b in zip(plain.weights, weights.weights):
            a.assign(b[copy])
        np.testing.assert_allclose(weights(x, alpha_w, copy=copy).numpy(),
                                   plain(x, alpha_w).numpy(), atol=1e-6)
        for w, ref in zip(weights.edge_weights("sep_conv_5x5", 1, copy=copy),
                          plain.edge_weights("sep_conv_5x5", 1)):
            np.testing.assert_array_equal(w.numpy(), ref.numpy())


def test_stacked_copies_are_initialised_independently_at_the_unstacked_scale():
    layer = ops.ReLUConvBN(64, 3, norm="search", num_copies=4)
    layer.build((None, None, None, 32))
    kernel = layer.kernel.numpy()
    assert kernel.shape == (4, 3, 3, 32, 64)
    fan_in_std = np.sqrt(2.0 / (3 * 3 * 32))  # VarianceScaling(2, fan_in) of one copy
    for copy in range(4):
        assert 0.8 * fan_in_std < kernel[copy].std() < 1.1 * fan_in_std
        for other in range(copy):
            assert not np.allclose(kernel[copy], kernel[other])


def test_stacked_layers_refuse_a_missing_copy_and_stateful_norms():
    layer = ops.ReLUConvBN(2, 1, norm="search", num_copies=2)
    with pytest.raises(ValueError, match="call it with copy=<index>"):
        layer(tf.zeros((1, 4, 4, 2)))
    with pytest.raises(ValueError, match="needs norm='search' and affine=False"):
        ops.ReLUConvBN(2, 1, norm="batch", num_copies=2)
    with pytest.raises(ValueError, match="num_copies must be >= 1"):
        MixedOp(2, num_copies=0)
    with pytest.raises(ValueError, match="copy= was given to a layer built without"):
        ops.ReLUConvBN(2, 1, norm="search")(tf.zeros((1, 4, 4, 2)), copy=0)


def test_a_stacked_cell_runs_each_copy_as_a_plain_cell():
    rng = np.random.default_rng(5)
    stacked = SearchCell(3, num_blocks=2, num_copies=2)
    plain = SearchCell(3, num_blocks=2)
    alpha_w = tf.nn.softmax(rng.normal(size=(ss.num_edges(2), ss.NUM_OPS)).astype(np.float32))
    h_prev = tf.constant(rng.normal(size=(4, 6, 6, 3)).astype(np.float32))  # 2 groups
    h_pp = tf.constant(rng.normal(size=(2, 6, 6, 3)).astype(np.float32))
    stacked.build(h_prev.shape)
    plain.build(h_prev.shape)
    for copy in range(2):
        for a, b in zip(plain.weights, stacked.weights):
            a.assign(b[copy])
        expected = plain(h_prev, h_pp, alpha_w, groups=2).numpy()
        np.testing.assert_allclose(stacked(h_prev, h_pp, alpha_w, groups=2, copy=copy).numpy(),
                                   expected, atol=1e-5)
        ready = stacked.kernels(copy)
        np.testing.assert_allclose(stacked(h_prev, h_pp, alpha_w, groups=2,
                                           kernels=ready).numpy(), expected, atol=1e-5)


def test_copy_reader_in_a_loop_reads_each_copy_with_a_dense_gradient():
    rng = np.random.default_rng(6)
    stacked = tf.Variable(rng.normal(size=(3, 4, 4)).astype(np.float32))
    bias = tf.Variable(rng.normal(size=(3, 4)).astype(np.float32))
    x = tf.constant(rng.normal(size=(2, 4)).astype(np.float32))

    def step(y, w, b):
        return tf.tanh(y @ w + b)

    @tf.function
    def looped():
        with tf.GradientTape() as tape:
            reader = stacking.CopyReader([stacked, bias])

            def body(k, y):
                return k + 1, step(y, *reader.row(k))

            _, y = tf.while_loop(lambda k, y: k < 3, body, (tf.constant(0), x))
            loss = tf.reduce_sum(y ** 2)
        return y, tape.gradient(loss, [stacked, bias])

    with tf.GradientTape() as tape:
        y_ref = x
        for k in range(3):
            y_ref = step(y_ref, stacking.select(stacked, k), stacking.select(bias, k))
        loss = tf.reduce_sum(y_ref ** 2)
    ref_grads = tape.gradient(loss, [stacked, bias])
    y, grads = looped()
    np.testing.assert_allclose(y.numpy(), y_ref.numpy(), atol=1e-6)
    for g, ref in zip(grads, ref_grads):
        assert isinstance(g, tf.Tensor)  # dense: the optimizers and decay take it as is
        np.testing.assert_allclose(g.numpy(), tf.convert_to_tensor(ref).numpy(), atol=1e-6)
