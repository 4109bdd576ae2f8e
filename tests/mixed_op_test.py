import numpy as np
import pytest
import tensorflow as tf

from auto_deeplab_tf import ops
from auto_deeplab_tf import search_space as ss
from auto_deeplab_tf.cell import SearchCell
from auto_deeplab_tf.mixed_op import MixedOp


def reference_edge(mixed, x, weights, edge):
    """sum_k w_k op_k(x) with the plain op layers holding edge `edge`'s weights."""
    total = 0.0
    for k, name in enumerate(ss.OPS):
        if name == "zero":
            continue
        op = ops.make_op(name, mixed.filters, norm="search")
        op(x)  # build
        op.set_weights([w.numpy() for w in mixed.edge_weights(name, edge)])
        total += weights[edge, k] * op(x)
    return total


def test_fused_mixed_op_equals_the_weighted_sum_of_plain_ops():
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(2, 9, 11, 4)).astype(np.float32))
    weights = tf.nn.softmax(rng.normal(size=(3, ss.NUM_OPS)).astype(np.float32)).numpy()
    mixed = MixedOp(4, num_edges=3)
    y = mixed(x, weights)
    assert tuple(y.shape) == (2, 9, 11, 3, 4)
    for edge in range(3):
        np.testing.assert_allclose(y[:, :, :, edge].numpy(),
                                   reference_edge(mixed, x, weights, edge).numpy(),
                                   atol=2e-4, rtol=1e-4)


def test_zero_only_weights_give_zero_output():
    x = tf.random.normal((1, 5, 5, 2))
    weights = np.zeros((2, ss.NUM_OPS), np.float32)
    weights[:, ss.OPS.index("zero")] = 1.0
    y = MixedOp(2, num_edges=2)(x, weights)
    assert float(tf.reduce_max(tf.abs(y))) == 0.0


def test_mixed_op_needs_matching_channels_and_known_ops():
    with pytest.raises(ValueError, match="MixedOp expects 4 input channels, got 3"):
        MixedOp(4)(tf.zeros((1, 4, 4, 3)), np.ones((1, ss.NUM_OPS), np.float32))
    with pytest.raises(ValueError, match="unknown ops"):
        MixedOp(4, op_names=("zero", "conv9"))
    with pytest.raises(ValueError, match="at least one op other than 'zero'"):
        MixedOp(4, op_names=("zero",))


@pytest.mark.parametrize("num_blocks", [2, 5])
def test_cell_with_stacked_groups_equals_separate_calls(num_blocks):
    rng = np.random.default_rng(2)
    cell = SearchCell(3, num_blocks=num_blocks)
    alpha_w = tf.nn.softmax(rng.normal(size=(ss.num_edges(num_blocks), ss.NUM_OPS))
                            .astype(np.float32))
    a, b = (tf.constant(rng.normal(size=(2, 8, 8, 3)).astype(np.float32)) for _ in range(2))
    pp = tf.constant(rng.normal(size=(2, 8, 8, 3)).astype(np.float32))
    stacked = cell(tf.concat([a, b], 0), pp, alpha_w, groups=2)
    assert tuple(stacked.shape) == (4, 8, 8, num_blocks * 3)
    np.testing.assert_allclose(stacked[:2].numpy(), cell(a, pp, alpha_w).numpy(), atol=1e-4)
    np.testing.assert_allclose(stacked[2:].numpy(), cell(b, pp, alpha_w).numpy(), atol=1e-4)


def test_cell_has_one_fused_mixed_op_per_state_covering_every_edge():
    cell = SearchCell(2, num_blocks=5)
    assert len(cell.mixed_ops) == 6
    assert sum(op.num_edges for op in cell.mixed_ops) == ss.num_edges(5)


def test_all_kernels_live_in_one_variable_with_the_plain_ops_parameter_count():
    mixed = MixedOp(4, num_edges=3)
    mixed.build((None, None, None, 4))
    assert [v.name for v in mixed.trainable_variables] == ["kernels"]
    plain = 0
    for name in ss.OPS:
        op = ops.make_op(name, 4, norm="search")
        op(tf.zeros((1, 5, 5, 4)))
        plain += sum(int(np.prod(w.shape)) for w in op.trainable_weights)
    assert int(np.prod(mixed.flat_kernels.shape)) == 3 * plain


# -- partial channels (PC-DARTS) -----------------------------------------------------------
def _fused_by_hand(mixed, x, weights):
    """The fused mixed op of all channels, computed step by step from its kernels as the
    op computed it before partial channels existed: the reference K = 1 must equal bitwise."""
    sep = [n for n in mixed.op_names if n.startswith("sep_conv")]
    atrous = [n for n in mixed.op_names if n.startswith("atrous_conv")]
    pools = [n for n in mixed.op_names if n.endswith("pool_3x3")]
    e, f = mixed.num_edges, mixed.filters
    n, h, w_ = x.shape[:3]
    dw1, pw1, dw2, pw2, atrous_kernel = mixed.kernels()
    y = tf.tile(tf.nn.relu(x), [1, 1, 1, len(sep) * e])
    y = tf.nn.depthwise_conv2d(y, dw1, [1, 1, 1, 1], "SAME")
    y = tf.nn.conv2d(y, pw1, 1, "SAME")
    y = tf.nn.relu(ops.group_batch_norm(y, 1))
    y = tf.nn.depthwise_conv2d(y, dw2, [1, 1, 1, 1], "SAME")
    y = ops.group_batch_norm(tf.nn.conv2d(y, pw2, 1, "SAME"), 1)
    a = ops.group_batch_norm(tf.nn.conv2d(tf.nn.relu(x), atrous_kernel, 1, "SAME",
                                          dilations=2), 1)
    y = tf.reshape(tf.concat([y, a], -1), [n, h, w_, len(sep) + len(atrous), e, f])
    cols = [ss.OPS.index(name) for name in sep + atrous]
    edge_w = tf.reshape(tf.transpose(tf.gather(weights, cols, axis=1)),
                        [1, 1, 1, len(cols), e, 1])
    mixed_edges = tf.reduce_sum(y * edge_w, axis=3)
    pooled = tf.concat([(tf.nn.avg_pool2d if name.startswith("avg") else tf.nn.max_pool2d)(
        x, 3, 1, "SAME") for name in pools], -1)
    shared = tf.concat([ops.group_batch_norm(pooled, 1), x], -1)
    shared = tf.reshape(shared, [n, h, w_, len(pools) + 1, 1, f])
    cols = [ss.OPS.index(name) for name in pools] + [ss.OPS.index(ss.SKIP)]
    shared_w = tf.reshape(tf.transpose(tf.gather(weights, cols, axis=1)),
                          [1, 1, 1, len(cols), e, 1])
    return mixed_edges + tf.reduce_sum(shared * shared_w, axis=3)


def _inputs(channels, edges, seed):
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(size=(2, 9, 11, channels)).astype(np.float32))
    weights = tf.nn.softmax(rng.normal(size=(edges, ss.NUM_OPS)).astype(np.float32))
    return x, weights


@pytest.mark.parametrize("explicit", [False, True])
def test_one_partial_channel_group_is_bitwise_the_fused_mixed_op(explicit):
    x, weights = _inputs(4, 3, seed=3)
    mixed = MixedOp(4, num_edges=3, **({"partial_channels": 1} if explicit else {}))
    y = mixed(x, weights)
    assert mixed.op_filters == 4
    np.testing.assert_array_equal(y.numpy(), _fused_by_hand(mixed, x, weights).numpy())
    # The sub-network masks' bypass scaling has nothing to scale with K = 1.
    _, _, bypass = mixed.split_weights(weights, scale_bypass=True)
    assert bypass is None


def _shuffle_by_hand(y, groups):
    """PC-DARTS's channel shuffle of the last axis: view as [groups, C / groups], swap the
    two, flatten."""
    c = y.shape[-1]
    out = np.empty_like(y)
    for g in range(groups):
        for j in range(c // groups):
            out[..., j * groups + g] = y[..., g * (c // groups) + j]
    return out


@pytest.mark.parametrize("k", [2, 4])
def test_partial_channels_mix_the_first_channels_bypass_the_rest_and_shuffle(k):
    c, e = 8, 3
    x, weights = _inputs(c, e, seed=4)
    partial = MixedOp(c, num_edges=e, partial_channels=k)
    y = partial(x, weights).numpy()
    assert partial.op_filters == c // k and y.shape == (2, 9, 11, e, c)
    # A plain mixed op of C/K channels holding the same kernels, on the first C/K channels.
    plain = MixedOp(c // k, num_edges=e)
    plain.build((None, None, None, c // k))
    plain.flat_kernels.assign(partial.flat_kernels)
    mixed = plain(x[..., :c // k], weights).numpy()
    bypass = np.broadcast_to(x.numpy()[:, :, :, None, c // k:], (2, 9, 11, e, c - c // k))
    expected = _shuffle_by_hand(np.concatenate([mixed, bypass], axis=-1), k)
    np.testing.assert_array_equal(y, expected)


def test_partial_channel_kernels_shrink_with_k():
    sizes = {}
    for k in (1, 2, 4):
        mixed = MixedOp(8, num_edges=3, partial_channels=k)
        mixed.build((None, None, None, 8))
        sizes[k] = int(np.prod(mixed.flat_kernels.shape))
        plain = MixedOp(8 // k, num_edges=3)
        plain.build((None, None, None, 8 // k))
        assert sizes[k] == int(np.prod(plain.flat_kernels.shape))
    assert sizes[2] * 2 <= sizes[1] and sizes[4] * 2 <= sizes[2]
    # Depthwise kernels shrink K-fold, pointwise and atrous ones K**2-fold.
    mixed = MixedOp(8, num_edges=3, partial_channels=2)
    mixed.build((None, None, None, 8))
    shapes = dict(zip(mixed._part_names, mixed._part_shapes))
    assert shapes["sep_conv_5x5_depthwise1"] == (5, 5, 12, 1)
    assert shapes["sep_conv_5x5_pointwise1"] == (1, 1, 4, 12)
    assert shapes["atrous_conv_3x3_kernel"] == (3, 3, 4, 12)


def test_zero_weights_leave_the_bypass_unless_it_is_scaled():
    x = tf.random.normal((1, 5, 5, 4))
    weights = np.zeros((2, ss.NUM_OPS), np.float32)
    weights[:, ss.OPS.index("zero")] = 1.0
    mixed = MixedOp(4, num_edges=2, partial_channels=2)
    # In the search the bypassed channels pass whatever alpha says (PC-DARTS)...
    y = mixed(x, weights).numpy()
    np.testing.assert_array_equal(y[..., 0::2], 0.0)
    np.testing.assert_array_equal(y[..., 1::2], np.stack([x.numpy()[..., 2:]] * 2, axis=3))
    # ...but a sub-network's edge that is off passes nothing.
    off = mixed(x, None, split_weights=mixed.split_weights(weights, scale_bypass=True))
    assert float(tf.reduce_max(tf.abs(off))) == 0.0


def test_partial_channels_must_divide_the_channels():
    from auto_deeplab_tf.mixed_op import check_partial_channels

    with pytest.raises(ValueError, match=r"--partial_channels=4 must be >= 1 and divide the "
                                         r"mixed op's 6 channels"):
        MixedOp(6, partial_channels=4)
    with pytest.raises(ValueError) as e:
        check_partial_channels(4, 6, 4)
    assert str(e.value) == (
        "--partial_channels=4 must divide the channels of every mixed op, but level 0 has 6 "
        "(F * 1 with --filter_multiplier=6); pick a K that divides 6 or a larger F")
    with pytest.raises(ValueError, match="--partial_channels must be >= 1, got 0"):
        check_partial_channels(0, 8, 4)
    check_partial_channels(4, 8, 4)
