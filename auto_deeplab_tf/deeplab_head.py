"""The DeepLabv3+ head of the fixed network: ASPP, decoder and logits.

As the official DeepLab code configures it for Auto-DeepLab (SPEC section 4, and the
structure that reproduces the paper's parameter counts, SPEC section 5):

* ASPP on the backbone output: image pooling (global mean -> 1x1 conv -> BN -> ReLU,
  broadcast back), a 1x1 conv and three *regular* (not separable) 3x3 atrous convs, all
  with 256 filters, BN and ReLU; concat (5 x 256) -> 1x1 conv 256 -> BN -> ReLU -> dropout
  (keep 0.9).
* Decoder: the OS-4 low-level features -> 1x1 conv 48 -> BN -> ReLU; the ASPP output
  upsampled bilinearly to their size; concat; two regular 3x3 convs of 256 (BN, ReLU);
  1x1 logits conv (the only conv with a bias).
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import tensorflow as tf

from auto_deeplab_tf import ops
from auto_deeplab_tf.fixed_cell import resize_bilinear, spatial_size

# DeepLab's ASPP rates (6, 12, 18) are meant for output stride 16; they scale with it.
ASPP_RATES_AT_OS16 = (6, 12, 18)


def aspp_rates_for_output_stride(output_stride: int) -> tuple[int, ...]:
    """DeepLab's ASPP rates scaled to a backbone output stride (12, 24, 36 at OS 8)."""
    return tuple(max(1, r * 16 // output_stride) for r in ASPP_RATES_AT_OS16)


@keras.saving.register_keras_serializable(package="auto_deeplab_tf")
class ConvBNReLU(keras.layers.Layer):
    """KxK conv (no bias; optional dilation) -> BN -> ReLU."""

    def __init__(self, filters: int, kernel_size: int = 1, rate: int = 1,
                 norm: str = "batch", bn_momentum: float = ops.BN_MOMENTUM, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.rate = int(rate)
        self.norm = norm
        self.bn_momentum = float(bn_momentum)

    def build(self, input_shape):
        k = self.kernel_size
        self.kernel = self.add_weight(name="kernel",
                                      shape=(k, k, int(input_shape[-1]), self.filters),
                                      initializer=ops.kernel_initializer())
        self.bn = ops.make_norm(self.norm, name="bn", affine=True, dtype=self.dtype_policy,
                                bn_momentum=self.bn_momentum)

    def call(self, x, training=None):
        kernel = tf.cast(self.kernel, self.compute_dtype)  # mixed precision; else a no-op
        y = ops.atrous_conv2d(x, kernel, self.rate)
        return tf.nn.relu(ops.apply_norm(self.bn, y, training=training))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "rate": self.rate, "norm": self.norm,
                "bn_momentum": self.bn_momentum}


@keras.saving.register_keras_serializable(package="auto_deeplab_tf")
class ASPP(keras.layers.Layer):
    """Atrous spatial pyramid pooling (DeepLabv3), output `filters` channels, same size."""

    def __init__(self, filters: int = 256, rates: Sequence[int] = (12, 24, 36),
                 dropout_rate: float = 0.1, norm: str = "batch",
                 bn_momentum: float = ops.BN_MOMENTUM, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.rates = tuple(int(r) for r in rates)
        self.dropout_rate = float(dropout_rate)
        self.norm = norm
        self.bn_momentum = float(bn_momentum)
        kw = dict(norm=norm, bn_momentum=self.bn_momentum, dtype=self.dtype_policy)
        self.image_pooling = ConvBNReLU(self.filters, 1, name="image_pooling", **kw)
        self.branch_1x1 = ConvBNReLU(self.filters, 1, name="conv_1x1", **kw)
        self.atrous = [ConvBNReLU(self.filters, 3, rate=r, name=f"atrous_rate{r}", **kw)
                       for r in self.rates]
        self.projection = ConvBNReLU(self.filters, 1, name="projection", **kw)
        self.dropout = keras.layers.Dropout(self.dropout_rate, name="dropout",
                                            dtype=self.dtype_policy)

    def call(self, x, training=None):
        size = spatial_size(x)
        pooled = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        pooled = self.image_pooling(pooled, training=training)
        # Bilinear resize of a 1x1 map is a broadcast; it keeps static shapes.
        branches = [resize_bilinear(pooled, size), self.branch_1x1(x, training=training)]
        branches += [conv(x, training=training) for conv in self.atrous]
        y = self.projection(tf.concat(branches, axis=-1), training=training)
        return self.dropout(y, training=training)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "filters": self.filters, "rates": list(self.rates),
                "dropout_rate": self.dropout_rate, "norm": self.norm,
                "bn_momentum": self.bn_momentum}


@keras.saving.register_keras_serializable(package="auto_deeplab_tf")
class Decoder(keras.layers.Layer):
    """DeepLabv3+ decoder + logits: fuses the ASPP output with low-level features.

    `call(x, low_level, training)` returns logits at the low-level features' size.
    """

    def __init__(self, num_classes: int, low_level_filters: int = 48, filters: int = 256,
                 num_convs: int = 2, norm: str = "batch",
                 bn_momentum: float = ops.BN_MOMENTUM, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.low_level_filters = int(low_level_filters)
        self.filters = int(filters)
        self.num_convs = int(num_convs)
        self.norm = norm
        self.bn_momentum = float(bn_momentum)
        kw = dict(norm=norm, bn_momentum=self.bn_momentum, dtype=self.dtype_policy)
        self.low_level_projection = ConvBNReLU(self.low_level_filters, 1,
                                               name="low_level_projection", **kw)
        self.convs = [ConvBNReLU(self.filters, 3, name=f"conv{k}", **kw)
                      for k in range(self.num_convs)]

    def build(self, x_shape, low_level_shape):
        channels = self.filters if self.num_convs else \
            int(x_shape[-1]) + self.low_level_filters
        self.logits_kernel = self.add_weight(
            name="logits_kernel", shape=(1, 1, channels, self.num_classes),
            initializer=ops.kernel_initializer())
        self.logits_bias = self.add_weight(name="logits_bias", shape=(self.num_classes,),
                                           initializer="zeros")

    def call(self, x, low_level, training=None):
        low = self.low_level_projection(low_level, training=training)
        y = tf.concat([resize_bilinear(x, spatial_size(low)), low], axis=-1)
        for conv in self.convs:
            y = conv(y, training=training)
        kernel, bias = (tf.cast(w, self.compute_dtype)  # mixed precision; else no-ops
                        for w in (self.logits_kernel, self.logits_bias))
        return tf.nn.conv2d(y, kernel, 1, "SAME") + bias

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes,
                "low_level_filters": self.low_level_filters, "filters": self.filters,
                "num_convs": self.num_convs, "norm": self.norm,
                "bn_momentum": self.bn_momentum}
