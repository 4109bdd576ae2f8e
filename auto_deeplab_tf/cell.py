"""The searchable cell: B blocks over a DAG of mixed ops (the continuous relaxation)."""

from __future__ import annotations

import keras
import tensorflow as tf

from auto_deeplab_tf import search_space
from auto_deeplab_tf import stacking
from auto_deeplab_tf.mixed_op import MixedOp


class SearchCell(keras.layers.Layer):
    """A cell of the supernet: block b = sum over states s <= b+1 of MixedOp_{b,s}(state s).

    States: 0 = H^{l-1}, 1 = H^{l-2}, 2 + b = block b; output = concat(blocks), B * filters
    channels. Both inputs must already have `filters` channels and the cell's resolution
    (the supernet's transitions take care of that).

    Instead of one mixed op per edge, each state runs one fused `MixedOp` over all of its
    outgoing edges as soon as it is ready, which gives B + 1 fused calls per cell instead of
    one per edge and op.

    The supernet shares a node's cell between its incoming transitions and stacks those
    along the batch: `h_prev` is then [groups * N, ...] while `h_prev_prev`, identical for
    all transitions, stays [N, ...]; its edges are computed once and tiled. Normalisation
    statistics are kept per group, so the result equals running the cell once per
    transition.

    With `num_copies`, the cell holds that many independent copies of its weights
    (`stacking`; the supernet's loop over its uniform layers) and `call(..., copy=i)` runs
    copy i, or `call(..., kernels=...)` the kernels of one copy given ready-made (as
    `kernels(i)` returns them).

    `partial_channels` K > 1: every mixed op applies its ops to 1/K of the channels, the
    rest bypass, then shuffled (PC-DARTS; `mixed_op`).
    """

    def __init__(self, filters: int, num_blocks: int = 5, num_copies: int | None = None,
                 partial_channels: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.num_blocks = num_blocks
        self.num_copies = stacking.check_num_copies(num_copies)
        self.partial_channels = int(partial_channels)
        # For state s: the blocks it feeds and the alpha rows of those edges.
        self._targets = []
        self._edge_rows = []
        self.mixed_ops = []
        for s in range(num_blocks + 1):
            blocks = list(range(max(0, s - 1), num_blocks))
            self._targets.append(blocks)
            self._edge_rows.append([search_space.edge_index(b, s) for b in blocks])
            self.mixed_ops.append(MixedOp(filters, num_edges=len(blocks),
                                          num_copies=self.num_copies,
                                          partial_channels=self.partial_channels,
                                          name=f"state{s}", dtype=self.dtype_policy))

    def build(self, h_prev_shape, h_prev_prev_shape=None):
        # Built up front (not lazily in call) so that the supernet's loop over stacked
        # cells never creates a variable inside its body.
        for op in self.mixed_ops:
            op.build((None, None, None, self.filters))

    def kernels(self, copy=None) -> list:
        """Per state, its mixed op's `kernels(copy)`."""
        return [op.kernels(copy) for op in self.mixed_ops]

    def mixing_weights(self, alpha_weights, scale_bypass: bool = False) -> list:
        """Per state, the mixing factors of its fused mixed op, from softmax(alpha)
        (`scale_bypass`: see `MixedOp.split_weights`).

        Every cell of a supernet has the same structure and shares alpha, so one cell's
        result serves all of them (passed back to `call` as `mixing`)."""
        return [op.split_weights(tf.gather(alpha_weights, rows), scale_bypass)
                for op, rows in zip(self.mixed_ops, self._edge_rows)]

    def call(self, h_prev, h_prev_prev, alpha_weights=None, groups: int = 1, mixing=None,
             copy=None, kernels=None):
        """h_prev [groups*N, H, W, filters], h_prev_prev [N, H, W, filters] -> [groups*N,
        H, W, B*filters]. Give either softmax(alpha) or `mixing` from `mixing_weights`;
        `copy` picks the copy of stacked weights, or `kernels` gives them ready-made."""
        if mixing is None:
            mixing = self.mixing_weights(alpha_weights)
        incoming = [[] for _ in range(self.num_blocks)]
        states = [h_prev, h_prev_prev]
        blocks = []
        for s in range(self.num_blocks + 1):
            x = states[s]
            # State 1 is shared by all groups: run it once at batch N, then tile.
            g = 1 if s == 1 else groups
            y = self.mixed_ops[s](x, None, groups=g, split_weights=mixing[s], copy=copy,
                                  kernels=None if kernels is None else kernels[s])
            if s == 1 and groups > 1:
                y = tf.tile(y, [groups, 1, 1, 1, 1])
            for b, edge_out in zip(self._targets[s], tf.unstack(y, axis=3)):
                incoming[b].append(edge_out)
            if s >= 1:  # block s-1 now has all its inputs
                block = tf.add_n(incoming[s - 1])
                blocks.append(block)
                states.append(block)
        return tf.concat(blocks, axis=-1)

    def node(self, xs: list, h_prev_prev, weights: list, mixing, kernels=None):
        """A trellis node: sum_j weights[j] * cell(xs[j], h_prev_prev), the transitions xs
        run as one batched call (`groups`); weights are the transitions' beta weights."""
        x = xs[0] if len(xs) == 1 else tf.concat(xs, axis=0)
        y = self(x, h_prev_prev, groups=len(xs), mixing=mixing, kernels=kernels)
        # float32 beta weights meet 16-bit features under mixed precision.
        weights = [tf.cast(w, y.dtype) for w in weights]
        if len(xs) == 1:
            return weights[0] * y
        return tf.add_n([w * part for w, part in zip(weights, tf.split(y, len(xs)))])

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "num_blocks": self.num_blocks,
                "num_copies": self.num_copies, "partial_channels": self.partial_channels}
