"""The stem: three 3x3 convolutions that bring the image to output stride 4."""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from auto_deeplab_tf import ops


class Stem(keras.layers.Layer):
    """conv3x3/2 -> BN -> ReLU -> conv3x3 -> BN [= OS-2 output] -> ReLU -> conv3x3/2 -> BN.

    Returns (OS-2 tensor, OS-4 tensor): the official network feeds the pre-ReLU OS-2 tensor
    to the first cell as H^{l-2} and the OS-4 one as H^{l-1}.
    """

    def __init__(self, filters: Sequence[int] = (64, 64, 128), norm: str = "batch",
                 bn_momentum: float = ops.BN_MOMENTUM, **kwargs):
        super().__init__(**kwargs)
        if len(filters) != 3:
            raise ValueError(f"the stem needs 3 filter counts, got {list(filters)}")
        self.filters = tuple(int(f) for f in filters)
        self.norm = norm
        self.bn_momentum = float(bn_momentum)

    def build(self, input_shape):
        cin = int(input_shape[-1])
        self.kernels = []
        for k, (a, b) in enumerate(zip((cin,) + self.filters[:-1], self.filters)):
            self.kernels.append(self.add_weight(name=f"kernel{k}", shape=(3, 3, a, b),
                                                initializer=ops.kernel_initializer()))
        self.norms = [ops.make_norm(self.norm, name=f"bn{k}", affine=True,
                                    dtype=self.dtype_policy, bn_momentum=self.bn_momentum)
                      for k in range(3)]

    def call(self, images, training=None):
        def conv_bn(x, k, stride):
            # Kernels in the compute dtype (mixed precision; else a no-op).
            kernel = tf.cast(self.kernels[k], self.compute_dtype)
            y = tf.nn.conv2d(x, kernel, stride, "SAME")
            return ops.apply_norm(self.norms[k], y, training=training)

        y = tf.nn.relu(conv_bn(images, 0, 2))
        os2 = conv_bn(y, 1, 1)
        os4 = conv_bn(tf.nn.relu(os2), 2, 2)
        return os2, os4

    def get_config(self):
        return {**super().get_config(), "filters": list(self.filters), "norm": self.norm,
                "bn_momentum": self.bn_momentum}
