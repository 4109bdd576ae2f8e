import numpy as np
import pytest
import tensorflow as tf

from auto_deeplab_tf import distribute
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


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_sync_batch_norm_trains_as_keras_batch_norm_with_one_fused_kernel(dtype):
    """On one replica the training call is one FusedBatchNormV3 each way; the output, the
    gradients and the moving statistics (biased batch variance, as Keras') are Keras'."""
    x = tf.random.stateless_normal((2, 5, 7, 3), seed=(1, 2)) * 3.0 + 1.0
    ours = ops.SyncBatchNormalization(momentum=0.5, epsilon=1e-3, dtype=dtype)
    keras_bn = tf.keras.layers.BatchNormalization(momentum=0.5, epsilon=1e-3, dtype=dtype)
    results = []
    for layer in (ours, keras_bn):
        layer.build(x.shape)
        layer.gamma.assign([0.5, 1.0, 2.0])
        layer.beta.assign([0.1, -0.2, 0.3])
        layer.moving_variance.assign([2.0, 2.0, 2.0])

        @tf.function
        def step(x, layer=layer):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=True)
                loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.range(3, dtype=tf.float32))
            return y, tape.gradient(loss, [x, layer.gamma, layer.beta])

        y, grads = step(x)
        ops_used = [op.type for op in step.get_concrete_function(x).graph.get_operations()]
        results.append((y, grads, layer.moving_mean.numpy(), layer.moving_variance.numpy(),
                        ops_used))
    (y1, g1, mean1, var1, ops1), (y2, g2, mean2, var2, ops2) = results
    assert y1.dtype == y2.dtype
    tol = 1e-5 if dtype == "float32" else 2e-2
    np.testing.assert_allclose(tf.cast(y1, tf.float32), tf.cast(y2, tf.float32),
                               rtol=tol, atol=tol)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    np.testing.assert_allclose(mean1, mean2, rtol=1e-5)
    np.testing.assert_allclose(var1, var2, rtol=1e-5)
    # The layer sees x in its compute dtype.
    seen = tf.cast(tf.cast(x, ours.compute_dtype), tf.float32).numpy()
    batch_variance = np.var(seen.reshape(-1, 3), axis=0)
    np.testing.assert_allclose(var1, 0.5 * 2.0 + 0.5 * batch_variance, rtol=1e-5)
    assert ops1.count("FusedBatchNormV3") == 1 and ops1.count("FusedBatchNormGradV3") == 1
    assert not {"Mean", "SquaredDifference"} & set(ops1)  # Keras' moments: not built


def test_search_bn_statistics_are_global_unless_the_scope_keeps_them_per_replica():
    """Under 2 replicas the search BN normalises with the global batch's statistics;
    inside `per_replica_search_statistics` (SearchModel(sync_bn=False)) with its own."""
    strategy = distribute.make_strategy("mirrored")
    parts = [np.array([0.0, 1.0, 1.0, 2.0], np.float32).reshape(1, 2, 2, 1),
             np.array([3.0, 5.0, 5.0, 7.0], np.float32).reshape(1, 2, 2, 1)]
    values = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(parts[context.replica_id_in_sync_group]))

    def normalised(per_replica):
        def replica(x):
            if per_replica:
                with ops.per_replica_search_statistics():
                    return ops.group_batch_norm(x)
            return ops.group_batch_norm(x)
        out = tf.function(lambda v: strategy.run(replica, args=(v,)))(values)
        return [t.numpy() for t in strategy.experimental_local_results(out)]

    def bn(x, of):
        return (x - of.mean()) / np.sqrt(of.var() + ops.SEARCH_BN_EPSILON)

    both = np.concatenate(parts)
    np.testing.assert_allclose(np.concatenate(normalised(False)), bn(both, both), atol=1e-5)
    for got, x in zip(normalised(True), parts):
        np.testing.assert_allclose(got, bn(x, x), atol=1e-5)
    assert ops.search_bn_context() is None  # outside any replica context


def test_replicas_of_one_process_exchange_statistics_without_merge_call(monkeypatch):
    """Under MirroredStrategy the search BN's statistics and their gradient travel as
    collective ops of each replica's graph, not through merge_call (which stops every
    replica's tracing thread, once per BN); values and input gradients are the
    single-device ones on the concatenated batch, with different images per replica."""
    strategy = distribute.make_strategy("mirrored")
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(1, 3, 3, 2)).astype(np.float32) * (i + 1) + i for i in range(2)]
    ws = [rng.normal(size=(1, 3, 3, 2)).astype(np.float32) for _ in range(2)]
    values = strategy.experimental_distribute_values_from_function(
        lambda context: (tf.constant(xs[context.replica_id_in_sync_group]),
                         tf.constant(ws[context.replica_id_in_sync_group])))

    def normalised_and_gradient(x, w):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = ops.group_batch_norm(x)
            loss = tf.reduce_sum(y * w)
        return y, tape.gradient(loss, x)

    def no_merge_call(*args, **kwargs):
        raise AssertionError("merge_call")

    with monkeypatch.context() as patch:
        patch.setattr(tf.distribute.ReplicaContext, "merge_call", no_merge_call)
        out = tf.function(lambda v: strategy.run(normalised_and_gradient, args=v))(values)
    y, dx = (np.concatenate([t.numpy() for t in strategy.experimental_local_results(o)])
             for o in out)
    want_y, want_dx = normalised_and_gradient(tf.constant(np.concatenate(xs)),
                                              tf.constant(np.concatenate(ws)))
    np.testing.assert_allclose(y, want_y, atol=1e-5)
    np.testing.assert_allclose(dx, want_dx, atol=1e-5)
