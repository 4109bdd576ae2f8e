"""Pixel normalisation of the network's input, in one place: the tf.data pipelines
(`input_pipeline`) and the exported SavedModel (`auto_deeplab_tf.export`) must agree on it bit
for bit, or a served model sees other inputs than it was trained on.

The inverse, for TensorBoard images, is `auto_deeplab_tf.palette.denormalize_image`.
"""

from __future__ import annotations

import tensorflow as tf


def normalize_image(image: tf.Tensor) -> tf.Tensor:
    """Maps pixel values 0..255 (uint8 or float) to float32 in [-1, 1]."""
    return tf.cast(image, tf.float32) / 127.5 - 1.0
