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
