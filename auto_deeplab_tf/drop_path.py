"""Scheduled drop path (as in NASNet and the official Auto-DeepLab network).

The output of each op of a cell (every op but `zero`) is dropped as a whole, before its
block adds it to the block's other op, independently for every op and every sample of the
batch, as Google's nas_cell.py does; the survivors are scaled by 1 / keep so that the
expected value is unchanged. A block is thus zeroed only when both of its ops are dropped,
with probability (1 - keep)^2. The keep probability of cell c (0-based) out of L cells is

    keep_c = 1 - ((c + 1) / L) * (1 - p)

so deeper cells are dropped more, and it is ramped linearly from 1 at the start of training
to keep_c at the end:

    keep_c(t) = 1 - progress(t) * (1 - keep_c),    progress(t) = min(1, step / total_steps).
"""

from __future__ import annotations

import keras
import tensorflow as tf


def cell_keep_prob(keep_prob: float, cell_index: int, num_cells: int, progress=1.0):
    """Keep probability of cell `cell_index` (0-based) of `num_cells` at training `progress`.

    `progress` (a float or a scalar tensor in [0, 1]) is the fraction of training done; the
    result is a float or a scalar tensor accordingly.
    """
    if not 0.0 < keep_prob <= 1.0:
        raise ValueError(f"keep_prob must be in (0, 1], got {keep_prob}")
    final = 1.0 - (cell_index + 1) / num_cells * (1.0 - keep_prob)
    return 1.0 - progress * (1.0 - final)


def drop_path(x, keep_prob, seed=None):
    """Zeroes whole samples of `x` with probability 1 - keep_prob, scales the rest by 1/keep.

    The mask is drawn per sample (shape [N, 1, 1, 1] for NHWC), as the official network.
    `seed`: a `keras.random.SeedGenerator` (or anything `keras.random.uniform` takes).
    """
    keep_prob = tf.cast(keep_prob, x.dtype)
    noise_shape = tf.concat([tf.shape(x)[:1], tf.ones([tf.rank(x) - 1], tf.int32)], axis=0)
    # floor(keep + U[0, 1)) is 1 with probability keep, else 0.
    mask = tf.floor(keep_prob + keras.random.uniform(noise_shape, dtype=x.dtype, seed=seed))
    return x * (mask / keep_prob)


@keras.saving.register_keras_serializable(package="auto_deeplab_tf")
class DropPath(keras.layers.Layer):
    """`drop_path` as a layer: active only when called with training=True.

    `call(x, keep_prob, training)`: keep_prob is a float or scalar tensor; at inference (or
    with keep_prob == 1) the input comes back unchanged, so outputs are deterministic.

    The masks come from the layer's own `SeedGenerator`, whose state is a variable of the
    model: checkpointed with it, so a resumed run draws the masks an uninterrupted one would
    (a global-seed op would restart its sequence on resume).
    """

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, keep_prob=1.0, training=None):
        if not training:
            return x
        if isinstance(keep_prob, (int, float)) and keep_prob >= 1.0:
            return x
        return drop_path(x, keep_prob, seed=self.seed_generator)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}
