"""Colouring label maps with a dataset's palette (TensorBoard images, predicted PNGs)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

# Pixels with the ignore label (or any id outside the palette) are drawn in white.
IGNORE_COLOR = (255, 255, 255)


def palette_array(palette: Sequence[Sequence[int]]) -> np.ndarray:
    """[256, 3] uint8 lookup table: the palette, then IGNORE_COLOR for every other id."""
    table = np.tile(np.asarray(IGNORE_COLOR, np.uint8), (256, 1))
    colours = np.asarray(palette, np.uint8).reshape(-1, 3)[:256]
    table[: len(colours)] = colours
    return table


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """uint8 RGB [..., 3] from integer labels [...]; unknown ids become IGNORE_COLOR."""
    labels = np.asarray(labels)
    table = palette_array(palette)
    index = np.where((labels >= 0) & (labels < 256), labels, 255).astype(np.int64)
    return table[index]


def colorize_tf(labels: tf.Tensor, palette: Sequence[Sequence[int]]) -> tf.Tensor:
    """As `colorize`, in TensorFlow: uint8 [..., 3]."""
    table = tf.constant(palette_array(palette))
    labels = tf.cast(labels, tf.int32)
    index = tf.where((labels >= 0) & (labels < 256), labels, 255)
    return tf.gather(table, index)


def denormalize_image(image: tf.Tensor) -> tf.Tensor:
    """uint8 image from one normalised to [-1, 1] (inverse of the data layer's
    normalization.normalize_image)."""
    return tf.cast(tf.clip_by_value(tf.round((image + 1.0) * 127.5), 0, 255), tf.uint8)
