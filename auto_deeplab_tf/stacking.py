"""Stacked weights: one variable holding the weights of several identical layers.

From layer `num_levels + 1` on (layer 3 on with one level), every layer of the trellis
has the same structure (see `uniform_layers`), so the supernet runs those layers as one `tf.while_loop` whose body is
traced once. A loop body cannot pick a different Keras layer per iteration, so the layers
that run inside it hold `num_copies` copies of each weight in one variable with a leading
axis of that size. `select` reads one copy (index a Python int or a tensor); inside the
loop, `CopyReader` reads the copy of the current iteration with a cheaper gradient.

Each copy is initialised exactly as an unstacked weight would be: an initializer such as
VarianceScaling would otherwise count the leading axis into its fan-in and draw every copy
too small.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf


def check_num_copies(num_copies: int | None) -> int | None:
    """Validates a layer's `num_copies` argument (None: an ordinary, unstacked layer)."""
    if num_copies is None:
        return None
    if int(num_copies) < 1:
        raise ValueError(f"num_copies must be >= 1 or None, got {num_copies}")
    return int(num_copies)


def stacked_shape(num_copies: int | None, shape: tuple) -> tuple:
    """The variable shape of a weight of `shape`: with a leading copies axis when stacked."""
    return tuple(shape) if num_copies is None else (num_copies, *shape)


def stacked_initializer(factory: Callable[[], Callable], num_copies: int | None):
    """An initializer for a weight of `num_copies` copies, each drawn by a fresh
    `factory()` initializer on the shape of one copy.

    A fresh instance per copy matters: a Keras initializer without an explicit seed draws
    its seed once, at construction, and returns the same values on every call.
    """
    if num_copies is None:
        return factory()

    def initialize(shape, dtype=None):
        return tf.stack([factory()(tuple(shape[1:]), dtype=dtype)
                         for _ in range(num_copies)])

    return initialize


def check_copy(num_copies: int | None, copy) -> None:
    """Raises unless `copy` is given exactly when the layer is stacked."""
    if num_copies is None and copy is not None:
        raise ValueError("copy= was given to a layer built without num_copies")
    if num_copies is not None and copy is None:
        raise ValueError(f"this layer holds {num_copies} stacked copies of its weights; "
                         "call it with copy=<index>")


def select(variable, copy):
    """Copy `copy` (an int or a scalar int tensor) of a stacked variable; the variable
    itself when `copy` is None."""
    return variable if copy is None else tf.gather(variable, copy)


class CopyReader:
    """Reads copy k of several stacked tensors [num_copies, ...] inside a loop.

    Each tensor is unstacked into a TensorArray before the loop and the loop body reads
    its item k. Why not `tf.gather(stacked, k)`: the gradient of a gather from a tensor
    captured by a while loop is densified every iteration, so each iteration of the
    backward loop would build and add a zero-filled gradient of the whole stack (for the
    paper's supernet about 200 MB of kernels, 8 copies), and cost about a dozen ops per
    kernel. A TensorArray read has its gradient written into slot k of a gradient array
    instead: one copy's worth of work and a few ops.
    """

    def __init__(self, tensors):
        self._arrays = []
        for t in tensors:
            t = tf.convert_to_tensor(t)
            if not t.shape.is_fully_defined():
                raise ValueError(f"stacked tensors need static shapes, got {t.shape}")
            self._arrays.append(tf.TensorArray(t.dtype, size=int(t.shape[0]),
                                               element_shape=t.shape[1:]).unstack(t))
        if not self._arrays:
            raise ValueError("nothing to read")

    def row(self, copy) -> list:
        """The tensors of copy `copy` (int or scalar int tensor, e.g. a loop counter)."""
        return [array.read(copy) for array in self._arrays]
