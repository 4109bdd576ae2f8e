"""The search head: a small ASPP per level of the supernet's last layer."""

from __future__ import annotations

import keras
import tensorflow as tf

from auto_deeplab_tf import ops


class SearchASPP(keras.layers.Layer):
    """ASPP with a 1x1 branch, a 3x3 atrous branch and image pooling, then 1x1 to logits.

    The supernet puts one at each level with atrous rate 96 / OS (24, 12, 6, 3) and sums
    their logits after upsampling them to the input size. The pooling branch has a bias
    and no BN: batch statistics over N 1x1 maps are meaningless at search batch sizes.
    """

    def __init__(self, num_classes: int, filters: int = 64, rate: int = 24, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.filters = filters
        self.rate = rate

    def build(self, input_shape):
        cin, f = int(input_shape[-1]), self.filters
        # A new initializer object per kernel: a Keras 3 initializer keeps its seed, so
        # one object would give every kernel (a prefix of) the same random numbers.
        def kernel(name, shape):
            return self.add_weight(name=name, shape=shape, initializer=ops.kernel_initializer())

        self.k_1x1 = kernel("conv1x1", (1, 1, cin, f))
        self.k_atrous = kernel("atrous", (3, 3, cin, f))
        self.k_pool = kernel("pool_conv", (1, 1, cin, f))
        self.b_pool = self.add_weight(name="pool_bias", shape=(f,), initializer="zeros")
        self.k_logits = kernel("logits", (1, 1, 3 * f, self.num_classes))
        self.b_logits = self.add_weight(name="logits_bias", shape=(self.num_classes,),
                                        initializer="zeros")
        self.bn_1x1 = ops.make_norm("search", name="bn_1x1", affine=True,
                                    dtype=self.dtype_policy)
        self.bn_atrous = ops.make_norm("search", name="bn_atrous", affine=True,
                                       dtype=self.dtype_policy)

    def call(self, x, output_size):
        # Weights in the compute dtype (mixed precision; else no-ops).
        k_1x1, k_atrous, k_pool, b_pool, k_logits, b_logits = (
            tf.cast(w, self.compute_dtype) for w in (
                self.k_1x1, self.k_atrous, self.k_pool, self.b_pool, self.k_logits,
                self.b_logits))
        b1 = tf.nn.relu(self.bn_1x1(tf.nn.conv2d(x, k_1x1, 1, "SAME")))
        b2 = tf.nn.relu(self.bn_atrous(ops.atrous_conv2d(x, k_atrous, self.rate)))
        pooled = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        b3 = tf.nn.relu(tf.nn.conv2d(pooled, k_pool, 1, "SAME") + b_pool)
        b3 = tf.broadcast_to(b3, tf.shape(b1))
        y = tf.concat([b1, b2, b3], axis=-1)
        logits = tf.nn.conv2d(y, k_logits, 1, "SAME") + b_logits
        # The resize returns float32 whatever its input: back to the compute dtype.
        return tf.cast(tf.image.resize(logits, output_size, method="bilinear"),
                       logits.dtype)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "filters": self.filters, "rate": self.rate}
