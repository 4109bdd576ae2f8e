"""The weight optimizers: MomentumSGD is Keras' SGD, one fused op per weight."""

import numpy as np
import pytest
import tensorflow as tf

from auto_deeplab_tf import distribute
from auto_deeplab_tf import optimizers


def _train(make_optimizer, strategy, steps=3):
    """Weights after `steps` updates of a quadratic loss, the optimizer and the update
    graph's op types."""
    with strategy.scope():
        optimizer = make_optimizer()
        weights = [tf.Variable(np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)),
                   tf.Variable([0.5, -0.25], dtype=tf.float32)]
        optimizer.build(weights)

    @tf.function
    def step():
        def replica():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(weights[0] - 0.3)) + tf.reduce_sum(
                    tf.exp(weights[1]))
            grads = tape.gradient(loss, weights)
            optimizer.apply_gradients(zip(grads, weights))
        strategy.run(replica)

    for _ in range(steps):
        step()
    graph_ops = [op.type for op in step.get_concrete_function().graph.get_operations()]
    return [w.numpy() for w in weights], optimizer, graph_ops


@pytest.mark.parametrize("strategy", ["default", "mirrored"])
def test_momentum_sgd_makes_keras_sgd_updates_with_one_op_per_weight(strategy):
    def make_strategy():
        if strategy == "mirrored":
            return distribute.make_strategy("mirrored")
        return tf.distribute.get_strategy()

    schedule = tf.keras.optimizers.schedules.PolynomialDecay(0.1, 10, 0.0, power=0.9)
    ours, fused, ours_ops = _train(lambda: optimizers.MomentumSGD(schedule, momentum=0.9),
                                   make_strategy())
    theirs, keras_sgd, keras_ops = _train(
        lambda: tf.keras.optimizers.SGD(schedule, momentum=0.9), make_strategy())
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        assert not np.allclose(a, np.linspace(-1, 1, a.size).reshape(a.shape))
    # Same optimizer variables (checkpoint layout), same values.
    assert [v.path for v in fused.variables] == [
        v.path.replace(keras_sgd.name, fused.name) for v in keras_sgd.variables]
    for a, b in zip(fused.variables, keras_sgd.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    replicas = 2 if strategy == "mirrored" else 1
    assert ours_ops.count("ResourceApplyKerasMomentum") == 2 * replicas
    assert len(ours_ops) < len(keras_ops)


def test_nesterov_and_no_momentum_are_keras_own_updates():
    for kwargs in ({"momentum": 0.9, "nesterov": True}, {"momentum": 0.0}):
        ours, _, ours_ops = _train(lambda: optimizers.MomentumSGD(0.1, **kwargs),
                                   tf.distribute.get_strategy())
        theirs, _, _ = _train(lambda: tf.keras.optimizers.SGD(0.1, **kwargs),
                              tf.distribute.get_strategy())
        assert "ResourceApplyKerasMomentum" not in ours_ops
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(a, b)


def test_weight_optimizer_kinds():
    assert isinstance(optimizers.weight_optimizer("sgd", 0.1, 0.9, "sgd"),
                      optimizers.MomentumSGD)
    adam = optimizers.weight_optimizer("adam", 0.1, 0.9, "adam")
    assert isinstance(adam, tf.keras.optimizers.Adam) and adam.name == "adam"
    with pytest.raises(ValueError, match="^unknown optimizer 'rmsprop', expected one of "
                                         "sgd, adam$"):
        optimizers.weight_optimizer("rmsprop", 0.1, 0.9, "x")
