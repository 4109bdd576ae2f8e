"""The bilevel step's order (issue #11, item 6): first-order DARTS takes the gradient of
alpha and beta on trainB at the weights *after* this step's update on trainA."""

import keras
import numpy as np
import tensorflow as tf

from auto_deeplab_tf import search_model
from auto_deeplab_tf.search_model import SearchModel

NUM_CLASSES = 3
CROP = 16
WEIGHT_LR = 0.5
ARCH_LR = 1.0
WEIGHT_DECAY = 3e-4
ARCH_DECAY = 1e-3


def _batch(seed):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, size=(2, CROP, CROP, 3)).astype(np.float32)
    labels = ((images[..., 0] > 0).astype(np.int32) + (images[..., 1] > 0.5))
    labels[:, :2] = 255
    return tf.constant(images), tf.constant(labels)


def _arch_gradients(model, images, labels):
    with tf.GradientTape() as tape:
        loss = search_model.masked_cross_entropy(labels, model(images, training=True))
    return tape.gradient(loss, model.arch_variables)


def test_arch_gradient_is_taken_at_the_updated_weights():
    """Plain SGD on both sides, so each update is exactly lr * (gradient + decay * value)
    and the two orders can be computed by hand. Tolerance: 1e-5 on alpha/beta, whose
    updates here are ~1e-2; the two orders differ by far more (asserted)."""
    keras.utils.set_random_seed(0)
    model = SearchModel(num_classes=NUM_CLASSES, filter_multiplier=2, num_blocks=2,
                        num_layers=2, num_levels=2, seed=0)
    model.build((None, None, None, 3))
    model.configure_search(keras.optimizers.SGD(WEIGHT_LR), keras.optimizers.SGD(ARCH_LR),
                           weight_decay=WEIGHT_DECAY, arch_weight_decay=ARCH_DECAY)
    batch_a, batch_b = _batch(1), _batch(2)
    weights_before = [v.numpy() for v in model.weight_variables]
    arch_before = [v.numpy() for v in model.arch_variables]

    tf.function(lambda a, b: model.train_step((a, b), update_arch=True))(batch_a, batch_b)
    arch_after = [v.numpy() for v in model.arch_variables]
    weights_after = [v.numpy() for v in model.weight_variables]
    assert any(np.abs(a - b).max() > 1e-3 for a, b in zip(weights_after, weights_before))

    def expected_arch(weights):
        for v, value in zip(model.weight_variables, weights):
            v.assign(value)
        for v, value in zip(model.arch_variables, arch_before):
            v.assign(value)
        grads = _arch_gradients(model, *batch_b)
        return [value - ARCH_LR * (tf.convert_to_tensor(g).numpy() + ARCH_DECAY * value)
                for value, g in zip(arch_before, grads)]

    first_order = expected_arch(weights_after)  # gradient at the updated weights
    wrong_order = expected_arch(weights_before)  # gradient at this step's old weights
    gap = max(np.abs(a - b).max() for a, b in zip(first_order, wrong_order))
    assert gap > 1e-3, f"the two orders must differ measurably on this model, got {gap}"
    for got, want in zip(arch_after, first_order):
        np.testing.assert_allclose(got, want, atol=1e-5)
