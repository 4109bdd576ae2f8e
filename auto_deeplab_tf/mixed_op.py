"""The mixed op: the softmax(alpha)-weighted sum of the candidate ops on an edge.

    MixedOp_e(x) = sum_k w[e, k] * op_k(x)

This is the search's hot path, so it is fused: one layer computes every candidate op for
every edge that reads the same input (all outgoing edges of one cell state), with a handful
of kernels instead of one chain of small ops per (edge, op):

* separable convs of every kernel size and every edge run as one grouped chain
  (tile -> depthwise -> grouped 1x1 -> BN -> ReLU -> depthwise -> grouped 1x1 -> BN); 3x3
  kernels are zero-padded to 5x5 in the graph, which leaves their results exact;
* atrous convs of every size and edge run as one convolution with E * sizes * C outputs;
* pooling and identity are the same on every edge, so they run once;
* zero is never run: its term is 0;
* the mix is one multiply and one reduction per group of ops.

On the supernet this cuts the traced graph about 3x and the step time accordingly
(see bench/). The search BN is affine-free with batch statistics (`ops.group_batch_norm`),
so each edge's ops are exactly the plain `ops` layers with the same weights; the tests
check that equality.

Partial channels (PC-DARTS, Xu et al. 2020; `partial_channels` K > 1, not the paper's
search): the candidate ops of every edge see only the first C/K channels of the input, the
other channels bypass the ops unchanged, and each edge's output, [mixed ops on the first
C/K | bypassed channels], is channel-shuffled with K groups, so that the next edges apply
their ops to other channels. The fused layer then runs its kernels on C/K channels: the ops'
weights shrink K-fold (depthwise) to K**2-fold (pointwise and atrous), their activations
K-fold. K = 1 is the unchanged mixed op.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from auto_deeplab_tf import ops
from auto_deeplab_tf import search_space
from auto_deeplab_tf import stacking

_SEP = {"sep_conv_3x3": 3, "sep_conv_5x5": 5}
_ATROUS = {"atrous_conv_3x3": 3, "atrous_conv_5x5": 5}
_POOL = {"avg_pool_3x3": "avg", "max_pool_3x3": "max"}
_SEP_KINDS = ("depthwise1", "pointwise1", "depthwise2", "pointwise2")
ATROUS_RATE = 2
POOL_SIZE = 3


def check_partial_channels(partial_channels: int, filter_multiplier: int,
                           num_levels: int) -> None:
    """Raises unless `partial_channels` (K) is >= 1 and divides the channels of every
    level's mixed ops, F * 2**level, naming the flag and the first channel count it does
    not divide."""
    if int(partial_channels) < 1:
        raise ValueError(f"--partial_channels must be >= 1, got {partial_channels}")
    for level in range(num_levels):
        channels = search_space.cell_filters(filter_multiplier, level)
        if channels % int(partial_channels):
            raise ValueError(
                f"--partial_channels={partial_channels} must divide the channels of every "
                f"mixed op, but level {level} has {channels} (F * {2**level} with "
                f"--filter_multiplier={filter_multiplier}); pick a K that divides "
                f"{filter_multiplier} or a larger F")


def _pad_to(kernel, size: int, lead: int = 0):
    """Zero-pads a square [k, k, ...] kernel to [size, size, ...], centred; the kernel's
    spatial axes start after `lead` leading axes (1 for stacked copies)."""
    p = (size - int(kernel.shape[lead])) // 2
    if p == 0:
        return kernel
    pads = [[0, 0]] * lead + [[p, p], [p, p]] + [[0, 0]] * (len(kernel.shape) - 2 - lead)
    return tf.pad(kernel, pads)


class MixedOp(keras.layers.Layer):
    """Mixed ops of `num_edges` edges that read the same input (stride 1, search BN).

    call(x, weights, groups): x [groups * N, H, W, filters]; weights [num_edges,
    len(op_names)] (rows of softmax(alpha)); returns [groups * N, H, W, num_edges, filters].
    `groups` says how many independent batches are stacked in x (BN statistics are
    computed per group).

    Every kernel is stored per op, all edges side by side along the channel axis
    (edge-major), e.g. `sep_conv_3x3_depthwise1` is [3, 3, num_edges * filters, 1]; see
    `edge_weights`. All kernels live in one flat variable, `flat_kernels`, and are views
    of it.
    With `num_copies` every weight gets a leading axis of that many independent copies
    (`stacking`) and `call(..., copy=i)` runs copy i. `kernels()` gives the fused kernels
    the call runs on (for every copy at once when stacked), and `call(..., kernels=...)`
    takes them ready-made: the supernet's loop prepares them once, outside its body.

    With `partial_channels` K > 1 (module docstring) the ops run on the first
    `op_filters` = filters / K channels, so every kernel is that of a mixed op of
    `op_filters` channels; the output keeps `filters` channels per edge.
    """

    def __init__(self, filters: int, num_edges: int = 1,
                 op_names: Sequence[str] = search_space.OPS, num_copies: int | None = None,
                 partial_channels: int = 1, **kwargs):
        super().__init__(**kwargs)
        unknown = [o for o in op_names if o not in search_space.OPS]
        if unknown:
            raise ValueError(f"unknown ops {unknown}; known ops: {', '.join(search_space.OPS)}")
        if int(partial_channels) < 1 or filters % int(partial_channels):
            raise ValueError(f"--partial_channels={partial_channels} must be >= 1 and divide "
                             f"the mixed op's {filters} channels")
        self.filters = filters
        self.partial_channels = int(partial_channels)
        # Channels the candidate ops run on; the other filters - op_filters bypass them.
        self.op_filters = filters // self.partial_channels
        self.num_edges = num_edges
        self.op_names = tuple(op_names)
        self.num_copies = stacking.check_num_copies(num_copies)
        index = {name: k for k, name in enumerate(self.op_names)}
        self._sep = [(n, _SEP[n]) for n in self.op_names if n in _SEP]
        self._atrous = [(n, _ATROUS[n]) for n in self.op_names if n in _ATROUS]
        self._pools = [(n, _POOL[n]) for n in self.op_names if n in _POOL]
        self._has_skip = search_space.SKIP in index
        # Columns of `weights` in the order the fused outputs are stacked.
        self._edge_cols = [index[n] for n, _ in self._sep + self._atrous]
        self._shared_cols = [index[n] for n, _ in self._pools] + (
            [index[search_space.SKIP]] if self._has_skip else [])
        self._nonzero_cols = self._edge_cols + self._shared_cols
        if not self._edge_cols and not self._shared_cols:
            raise ValueError("a mixed op needs at least one op other than 'zero'")

    def build(self, input_shape):
        c, e, f = int(input_shape[-1]), self.num_edges, self.op_filters
        if c != self.filters:
            raise ValueError(f"MixedOp expects {self.filters} input channels, got {c}")
        # (name, shape) of every kernel, in storage order.
        parts = []
        for name, k in self._sep:
            parts += [(f"{name}_depthwise1", (k, k, e * f, 1)),
                      (f"{name}_pointwise1", (1, 1, f, e * f)),
                      (f"{name}_depthwise2", (k, k, e * f, 1)),
                      (f"{name}_pointwise2", (1, 1, f, e * f))]
        parts += [(f"{name}_kernel", (k, k, f, e * f)) for name, k in self._atrous]
        self._part_names = [name for name, _ in parts]
        self._part_shapes = [shape for _, shape in parts]
        self._part_sizes = [int(np.prod(shape)) for shape in self._part_shapes]
        # One variable for all kernels: the optimizer's update, and the ops it adds to the
        # traced step, are per variable, and the supernet's ~1000 kernels as separate
        # variables made those about a quarter of the step's graph and host memory.
        self.flat_kernels = self.add_weight(
            name="kernels",
            shape=stacking.stacked_shape(self.num_copies, (sum(self._part_sizes),)),
            initializer=stacking.stacked_initializer(self._flat_initializer,
                                                     self.num_copies))

    def _flat_initializer(self):
        """Initialises the flat weight one kernel at a time, each as an unpacked kernel of
        its shape would be (the fan-in comes from that shape)."""
        def initialize(shape, dtype=None):
            return tf.concat([tf.reshape(ops.kernel_initializer()(s, dtype=dtype), [-1])
                              for s in self._part_shapes], axis=0)

        return initialize

    def _parts(self, copy=None) -> dict:
        """Every kernel by name, shaped [*shape] (or [num_copies, *shape] for a stacked
        layer with `copy` None), as views of the flat weight, in the compute dtype (one
        cast of the flat weight under mixed precision; none otherwise)."""
        flat = tf.cast(tf.convert_to_tensor(stacking.select(self.flat_kernels, copy)),
                       self.compute_dtype)
        lead = list(flat.shape[:-1])
        pieces = tf.split(flat, self._part_sizes, axis=-1)
        return {name: tf.reshape(piece, lead + list(shape))
                for name, shape, piece in zip(self._part_names, self._part_shapes, pieces)}

    def edge_weights(self, op_name: str, edge: int, copy: int | None = None) -> list:
        """The weights of `op_name` on one edge (of copy `copy` when stacked), shaped as
        the plain `ops` layer's (of `op_filters` channels)."""
        f = self.op_filters
        cut = slice(edge * f, (edge + 1) * f)
        parts = self._parts(copy)
        if op_name in _SEP:
            dw1, pw1, dw2, pw2 = (parts[f"{op_name}_{kind}"] for kind in _SEP_KINDS)
            return [dw1[:, :, cut], pw1[..., cut], dw2[:, :, cut], pw2[..., cut]]
        if op_name in _ATROUS:
            return [parts[f"{op_name}_kernel"][..., cut]]
        return []

    def split_weights(self, weights, scale_bypass: bool = False):
        """[num_edges, len(op_names)] -> the (per-edge ops, shared ops, bypass) mixing
        factors, shaped to broadcast against the stacked op outputs. Cells with the same
        structure share alpha, so the supernet computes these once per forward pass.

        bypass is None (the bypassed channels pass unscaled, as in PC-DARTS) unless
        `scale_bypass` and partial_channels > 1: then each edge's bypassed channels are
        scaled by the sum of its weights on ops other than zero, so that an edge whose
        weights are all on zero (a sub-network's edge off the cell, `inherited`) passes
        nothing at all."""
        e = self.num_edges

        def part(cols):
            if not cols:
                return None
            w = tf.transpose(tf.gather(weights, cols, axis=1))
            return tf.reshape(w, [1, 1, 1, len(cols), e, 1])

        bypass = None
        if scale_bypass and self.partial_channels > 1:
            on = tf.reduce_sum(tf.gather(weights, self._nonzero_cols, axis=1), axis=1)
            bypass = tf.reshape(on, [1, 1, 1, e, 1])
        return part(self._edge_cols), part(self._shared_cols), bypass

    def kernels(self, copy=None) -> list:
        """The fused kernels `call` runs on: depthwise1, pointwise1, depthwise2, pointwise2
        of all separable convs (3x3 zero-padded to 5x5, concatenated along the channels),
        then the atrous kernel, each present only when its ops are. For a stacked layer
        with `copy` None, every kernel of every copy: [num_copies, ...]."""
        lead = 1 if self.num_copies is not None and copy is None else 0
        parts = self._parts(copy)
        out = []
        if self._sep:
            size = max(k for _, k in self._sep)
            for i, kind in enumerate(_SEP_KINDS):
                depthwise = i % 2 == 0
                kernels = [parts[f"{name}_{kind}"] for name, _ in self._sep]
                out.append(tf.concat([_pad_to(k, size, lead) if depthwise else k
                                      for k in kernels], axis=(2 if depthwise else 3) + lead))
        if self._atrous:
            size = max(k for _, k in self._atrous)
            out.append(tf.concat([_pad_to(parts[f"{name}_kernel"], size, lead)
                                  for name, _ in self._atrous], axis=3 + lead))
        return out

    def call(self, x, weights, groups: int = 1, split_weights=None, copy=None,
             kernels=None):
        """See the class docstring; `split_weights` (from `split_weights`) replaces
        `weights` when given; `copy` picks the copy of stacked weights, or `kernels`
        (from `kernels(copy)`) gives that copy's kernels ready-made."""
        e, f = self.num_edges, self.op_filters
        n, h, w_, _ = ops.shape_list(x)
        if split_weights is None:
            split_weights = self.split_weights(tf.cast(weights, x.dtype))
        if kernels is None:
            stacking.check_copy(self.num_copies, copy)
            kernels = self.kernels(copy)
        kernels = list(kernels)
        # Under mixed precision the (float32) mixing factors meet 16-bit features.
        edge_w, shared_w, bypass_w = (None if w is None else tf.cast(w, x.dtype)
                                      for w in split_weights)
        full = x
        if self.partial_channels > 1:
            x = full[..., :f]
        terms = []
        stacked = []
        if self._sep:
            dw1, pw1, dw2, pw2 = kernels[:4]
            y = tf.tile(tf.nn.relu(x), [1, 1, 1, len(self._sep) * e])
            y = tf.nn.depthwise_conv2d(y, dw1, [1, 1, 1, 1], "SAME")
            y = ops.pointwise_conv2d(y, pw1)  # grouped: one group per (size, edge)
            y = tf.nn.relu(ops.group_batch_norm(y, groups))
            y = tf.nn.depthwise_conv2d(y, dw2, [1, 1, 1, 1], "SAME")
            y = ops.pointwise_conv2d(y, pw2)
            stacked.append(ops.group_batch_norm(y, groups))
        if self._atrous:
            y = ops.atrous_conv2d(tf.nn.relu(x), kernels[-1], ATROUS_RATE)
            stacked.append(ops.group_batch_norm(y, groups))
        if stacked:
            y = stacked[0] if len(stacked) == 1 else tf.concat(stacked, axis=-1)
            y = tf.reshape(y, [n, h, w_, len(self._edge_cols), e, f])
            terms.append(tf.reduce_sum(y * edge_w, axis=3))
        shared = []
        if self._pools:
            pooled = [(tf.nn.avg_pool2d if kind == "avg" else tf.nn.max_pool2d)(
                x, POOL_SIZE, 1, "SAME") for _, kind in self._pools]
            pooled = pooled[0] if len(pooled) == 1 else tf.concat(pooled, axis=-1)
            shared.append(ops.group_batch_norm(pooled, groups))
        if self._has_skip:
            shared.append(x)
        if shared:
            y = shared[0] if len(shared) == 1 else tf.concat(shared, axis=-1)
            y = tf.reshape(y, [n, h, w_, len(self._shared_cols), 1, f])
            terms.append(tf.reduce_sum(y * shared_w, axis=3))
        mixed = terms[0] if len(terms) == 1 else terms[0] + terms[1]
        if self.partial_channels == 1:
            return mixed
        return self._bypass_and_shuffle(mixed, full, bypass_w)

    def _bypass_and_shuffle(self, mixed, x, bypass_w):
        """mixed [N, H, W, E, C/K], the ops on the first C/K channels of x [N, H, W, C] ->
        [N, H, W, E, C]: per edge, the channel shuffle with K groups of
        concat(mixed, x[..., C/K:]), i.e. output channel j * K + g is channel j of group g
        (group 0 the mixed channels, group g > 0 the input's channels g * C/K + j)."""
        k, f = self.partial_channels, self.op_filters
        n, h, w_, e, _ = ops.shape_list(mixed)
        rest = x[..., f:][:, :, :, None, :]  # [N, H, W, 1, (K - 1) * C/K], every edge's
        if bypass_w is not None:
            rest = rest * bypass_w
        rest = tf.broadcast_to(rest, [n, h, w_, e, (k - 1) * f])
        groups = [mixed] + tf.split(rest, k - 1, axis=-1)
        # Stacking the K groups on a new last axis and merging it is the shuffle.
        return tf.reshape(tf.stack(groups, axis=-1), [n, h, w_, e, k * f])

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "num_edges": self.num_edges,
                "op_names": list(self.op_names), "num_copies": self.num_copies,
                "partial_channels": self.partial_channels}
