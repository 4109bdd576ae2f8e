"""The cell of the fixed (retrained) network, with the official "hnasnet" internals.

    H^{l-1} [-> bilinear x2 when going up] -> ReLU -> 1x1 conv -> BN          = state 0
    H^{l-2} [-> bilinear resize to state 0's size] [-> ReLU -> 1x1 -> BN]    = state 1
    block b = [drop path](op_a(state a)) + [drop path](op_b(state b))    = state 2 + b
    output  = concat(block 0 .. block B-1)

Scheduled drop path masks each op's output (every op but `zero`) before the block adds its
two inputs, as Google's nas_cell.py does inside its op function: 2 B independent masks per
cell, so a block is zeroed only when both of its ops are dropped.

Going down a level, the ops that read states 0 and 1 run at stride 2 (block states are
already at the output resolution). A stride-2 atrous op first halves its input bilinearly
and then uses rate 1, as the official network does (the library op `ops.AtrousConv` keeps
rate 2 at stride 2, which is what the supernet mixes, so the fixed cell asks for rate 1
explicitly).
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import tensorflow as tf

from auto_deeplab_tf import ops
from auto_deeplab_tf import search_space
from auto_deeplab_tf.drop_path import DropPath

TRANSITIONS = ("same", "down", "up")


def spatial_size(x):
    """[H, W] of an NHWC tensor: Python ints when static (keeps static shapes downstream)."""
    static = x.shape[1:3]
    if all(d is not None for d in static):
        return [int(d) for d in static]
    return tf.shape(x)[1:3]


def resize_bilinear(x, size):
    """Bilinear resize to `size`, a no-op when the (static) size already matches; in x's
    dtype (the resize itself returns float32 for 16-bit x, under mixed precision)."""
    if not isinstance(size, tf.Tensor) and list(x.shape[1:3]) == list(size):
        return x
    return tf.cast(tf.image.resize(x, size, method="bilinear"), x.dtype)


def _make_cell_op(op_name: str, filters: int, stride: int, norm: str, name: str, dtype=None,
                  bn_momentum: float = ops.BN_MOMENTUM):
    if op_name.startswith("atrous_conv_") and stride == 2:
        kernel_size = int(op_name[-1])
        return ops.AtrousConv(filters, kernel_size, rate=1, stride=2, norm=norm, name=name,
                              dtype=dtype, bn_momentum=bn_momentum)
    return ops.make_op(op_name, filters, stride=stride, norm=norm, name=name, dtype=dtype,
                       bn_momentum=bn_momentum)


@keras.saving.register_keras_serializable(package="auto_deeplab_tf")
class FixedCell(keras.layers.Layer):
    """One cell of the fixed network.

    Args:
      genotype: B blocks, each two (state, op) pairs (the `cell` of an `Architecture`);
        states 0 = H^{l-1}, 1 = H^{l-2}, 2 + b = block b.
      filters: channels of every op (F * 2**level); the output has B * filters channels.
      transition: level change from H^{l-1} to this cell: "same", "down" (stride 2, to a
        coarser level) or "up" (bilinear x2 first, to a finer level).
      norm: normalisation kind of `ops.make_norm` ("batch" for the fixed network).
      bn_momentum: decay of the BNs' moving statistics (`ops.make_norm`).

    `call(h_prev, h_prev_prev, size=None, keep_prob=1.0, training=None)`: `size` is the
    output [H, W], required when going up so that odd sizes come out exact; keep_prob is
    the drop-path keep probability of each of this cell's ops (used only when training).
    """

    def __init__(self, genotype: Sequence[Sequence[Sequence[Any]]], filters: int,
                 transition: str = "same", norm: str = "batch",
                 bn_momentum: float = ops.BN_MOMENTUM, **kwargs):
        super().__init__(**kwargs)
        if transition not in TRANSITIONS:
            raise ValueError(f"transition must be one of {TRANSITIONS}, got '{transition}'")
        self.genotype = tuple(tuple((int(s), str(op)) for s, op in block) for block in genotype)
        self.filters = int(filters)
        self.transition = transition
        self.norm = norm
        self.bn_momentum = float(bn_momentum)
        self.preprocess = ops.ReLUConvBN(self.filters, 1, norm=norm, name="preprocess",
                                         dtype=self.dtype_policy, bn_momentum=self.bn_momentum)
        self.block_ops = []
        for b, block in enumerate(self.genotype):
            pair = []
            for side, (state, op_name) in zip(("left", "right"), block):
                stride = 2 if transition == "down" and state < 2 else 1
                pair.append(_make_cell_op(op_name, self.filters, stride, norm,
                                          name=f"block{b}_{side}_{op_name}",
                                          dtype=self.dtype_policy,
                                          bn_momentum=self.bn_momentum))
            self.block_ops.append(pair)
        self.drop_path = DropPath(name="drop_path", dtype=self.dtype_policy)

    def build(self, h_prev_shape, h_prev_prev_shape):
        # The official cell projects H^{l-2} only when its channels differ from the cell's.
        self.project_prev_prev = int(h_prev_prev_shape[-1]) != self.filters
        self.prev_prev_projection = (
            ops.ReLUConvBN(self.filters, 1, norm=self.norm, name="prev_prev_projection",
                           dtype=self.dtype_policy, bn_momentum=self.bn_momentum)
            if self.project_prev_prev else None)

    def call(self, h_prev, h_prev_prev, size=None, keep_prob=1.0, training=None):
        if self.transition == "up":
            if size is None:
                current = spatial_size(h_prev)
                size = 2 * current if isinstance(current, tf.Tensor) else \
                    [2 * d for d in current]
            h_prev = resize_bilinear(h_prev, size)
        input_size = spatial_size(h_prev)
        h_prev_prev = resize_bilinear(h_prev_prev, input_size)
        if self.prev_prev_projection is not None:
            h_prev_prev = self.prev_prev_projection(h_prev_prev, training=training)
        states = [self.preprocess(h_prev, training=training), h_prev_prev]
        for block, pair in zip(self.genotype, self.block_ops):
            outputs = []
            for (state, op_name), op in zip(block, pair):
                y = op(states[state], training=training)
                # Each call draws its own masks, so the two ops drop independently. A
                # zero op (which `Architecture` rejects anyway) has nothing to drop.
                if op_name != search_space.ZERO:
                    y = self.drop_path(y, keep_prob=keep_prob, training=training)
                outputs.append(y)
            states.append(outputs[0] + outputs[1])
        return tf.concat(states[2:], axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(),
                "genotype": [[list(p) for p in block] for block in self.genotype],
                "filters": self.filters, "transition": self.transition, "norm": self.norm,
                "bn_momentum": self.bn_momentum}
