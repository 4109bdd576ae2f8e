"""The uniform layers of the trellis, run as one loop over stacked weights.

In a trellis of `num_levels` levels, layer l has levels 0 .. min(l, num_levels - 1). From
layer `num_levels + 1` on (layer 3 on with a single level: layer 2 reads the stem), the
previous layer and the one two back are both searchable layers with every level, so every
such layer has the same nodes, transitions, H^{l-2} sources, shapes and channel counts:
the layers differ only in their weights and in their row of beta. For the paper's L = 12
and 4 levels that is layers 5..12, 32 of the 45 cells.

Traced one by one, those layers make most of the supernet's forward+backward graph (about
105k ops for L = 12), and it is the graph, not the activations, that dominates the search's
memory (several GB at small crops) and its tracing time. Here they run as one
`tf.while_loop` whose body, one full layer, is traced once; each layer's weights are one
copy of stacked variables (`stacking`) read by the loop counter, and so is its beta row.
The computation is the same as the unrolled layers'; only its graph is smaller.

Gradients of the stacked weights come out of while_v2 dense (each copy is gathered once per
iteration and the backward loop accumulates them); the activations the backward pass needs
are kept in the loop's accumulators, as the unrolled graph would keep them. With
`recompute`, the body's layer is `recompute.recomputed`: the accumulators then keep only
each layer's inputs, and the backward loop reruns the layer's forward before
differentiating it.
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from auto_deeplab_tf import ops
from auto_deeplab_tf import search_space
from auto_deeplab_tf.recompute import recomputed
from auto_deeplab_tf import stacking
from auto_deeplab_tf.cell import SearchCell


def first_uniform_layer(num_levels: int) -> int:
    """The first layer whose previous layer and the one two back are searchable layers
    with every level.

    Layer num_levels - 1 is the first with every level, so that is layer num_levels + 1,
    except with a single level: there layer 2's H^{l-2} is the stem (layer 0), whose
    channels differ from a cell's, and the trellis is uniform from layer 3 on.
    """
    return max(num_levels + 1, 3)


def num_uniform_layers(num_layers: int, num_levels: int) -> int:
    """How many of layers 1..num_layers are uniform (see the module docstring)."""
    return max(0, num_layers - first_uniform_layer(num_levels) + 1)


class UniformLayers(keras.layers.Layer):
    """`num_copies` consecutive uniform layers of the supernet (all `num_levels` levels).

    Node (level i) of the layer with copy index k computes, as `supernet` describes,

        H_i = sum_j beta[k, j, d(j, i)] * Cell_i^k(T_{j->i}^k(H^{prev}_j), P_i^k(H^{prev prev}_i))

    with transitions T, the H^{l-2} projection P and the cell holding their k-th weight
    copy. `call(states, beta_weights=..., mixing=...)` takes the two layers before the first
    uniform one and returns the levels of the last one.

    With `recompute`, each layer is recomputed in the backward pass instead of keeping its
    activations (`recompute.recomputed`), looped or unrolled.
    """

    def __init__(self, num_copies: int, filter_multiplier: int, num_blocks: int,
                 num_levels: int, recompute: bool = False, partial_channels: int = 1,
                 **kwargs):
        super().__init__(**kwargs)
        if int(num_copies) < 1:
            raise ValueError(f"num_copies must be >= 1, got {num_copies}")
        self.num_copies = int(num_copies)
        self.filter_multiplier = int(filter_multiplier)
        self.num_blocks = int(num_blocks)
        self.num_levels = int(num_levels)
        self.recompute = bool(recompute)
        self.partial_channels = int(partial_channels)
        # Any uniform layer has the same structure; take the first as the model.
        layer = first_uniform_layer(self.num_levels)
        # Flat lists of layers (Keras tracks those); per level, its sources as
        # (source level, beta direction, index into self.transitions).
        self.transitions = []
        self._sources = []
        self.prev_prev = []
        self.cells = []
        for level in range(self.num_levels):
            filters = search_space.cell_filters(self.filter_multiplier, level)
            sources = []
            for source in search_space.incoming_levels(layer, level, self.num_levels):
                t = ops.search_transition(source, level, filters, f"level{level}",
                                          num_copies=self.num_copies,
                                          dtype=self.dtype_policy)
                sources.append((source, search_space.direction(source, level),
                                len(self.transitions)))
                self.transitions.append(t)
            self._sources.append(tuple(sources))
            self.prev_prev.append(ops.ReLUConvBN(filters, 1, norm="search",
                                                 num_copies=self.num_copies,
                                                 name=f"level{level}_prev_prev",
                                                 dtype=self.dtype_policy))
            self.cells.append(SearchCell(filters, self.num_blocks, num_copies=self.num_copies,
                                         partial_channels=self.partial_channels,
                                         name=f"cell_level{level}", dtype=self.dtype_policy))

    def node_channels(self, level: int) -> int:
        """Channels of a node's output at `level`: B * F * 2**level."""
        return self.num_blocks * search_space.cell_filters(self.filter_multiplier, level)

    def build(self, input_shape=None):
        """Creates every weight up front: a variable cannot be created inside the loop."""
        for level in range(self.num_levels):
            filters = search_space.cell_filters(self.filter_multiplier, level)
            for source, _, t in self._sources[level]:
                self.transitions[t].build((None, None, None, self.node_channels(source)))
            self.prev_prev[level].build((None, None, None, self.node_channels(level)))
            self.cells[level].build((None, None, None, filters))
        self.built = True

    def _loop_layers(self) -> list:
        """Every layer holding stacked weights, in a fixed order."""
        return [*self.transitions, *self.prev_prev, *self.cells]

    def layer(self, prev_prev: Sequence, prev: Sequence, beta_row, mixing,
              kernels: Sequence) -> list:
        """One uniform layer.

        prev_prev, prev: the level tensors of the two layers before it; beta_row
        [num_levels, 3]: beta_weights of the transitions into it (beta row layer - 1);
        mixing: the cells' `mixing_weights` (shared alpha); kernels: for each of
        `_loop_layers()`, its `kernels(copy)` for this layer's copy.
        """
        n = len(self.transitions)
        transition_kernels = kernels[:n]
        prev_prev_kernels = kernels[n:n + self.num_levels]
        cell_kernels = kernels[n + self.num_levels:]
        outputs = []
        for level in range(self.num_levels):
            sources = self._sources[level]
            size = ops.shape_list(prev[level])[1:3]
            xs = [self.transitions[t](prev[source], size=size if source > level else None,
                                      kernels=transition_kernels[t])
                  for source, _, t in sources]
            h_pp = self.prev_prev[level](prev_prev[level], kernels=prev_prev_kernels[level])
            w = [beta_row[source, d] for source, d, _ in sources]
            outputs.append(self.cells[level].node(xs, h_pp, w, mixing,
                                                  kernels=cell_kernels[level]))
        return outputs

    def _run_layer(self, prev_prev, prev, beta_row, mixing, kernels) -> list:
        """`layer`, recomputed in the backward pass when `recompute` is set (every tensor
        it reads, the kernels and mixing weights included, goes in as an argument so that
        gradients reach them)."""
        if not self.recompute:
            return self.layer(prev_prev, prev, beta_row, mixing, kernels)
        return list(recomputed(self.layer, list(prev_prev), list(prev), beta_row, mixing,
                               kernels))

    def call(self, states, beta_weights=None, mixing=None, unroll: bool = False):
        """states = (prev_prev levels, prev levels) before the first uniform layer;
        beta_weights [num_copies, num_levels, 3], the normalised beta rows of the uniform
        layers in order. Returns the levels of the last uniform layer.

        Before the loop, every stacked layer's kernels are prepared for all copies at once
        (`kernels()`: the mixed ops' padding and concatenation run once, outside the loop
        and its backward) and each iteration reads its copy (`stacking.CopyReader`).
        `unroll=True` runs the layers as a Python loop instead, each copy read straight
        from the variables (one traced body per layer): the reference the loop is tested
        against, and what eager execution (the model's build) does anyway.
        """
        prev_prev, prev = (tuple(s) for s in states)
        layers = self._loop_layers()
        # Eagerly a loop runs as Python anyway; unrolled, it also makes no copy of every
        # kernel, which would grow the process's memory for good (the allocator keeps it).
        if unroll or tf.executing_eagerly():
            for k in range(self.num_copies):
                kernels = [layer.kernels(k) for layer in layers]
                prev_prev, prev = prev, tuple(self._run_layer(prev_prev, prev, beta_weights[k],
                                                              mixing, kernels))
            return list(prev)

        structure = [layer.kernels() for layer in layers]
        reader = stacking.CopyReader(tf.nest.flatten(structure))

        def body(k, prev_prev, prev):
            kernels = tf.nest.pack_sequence_as(structure, reader.row(k))
            new = self._run_layer(prev_prev, prev, tf.gather(beta_weights, k), mixing,
                                  kernels)
            return k + 1, prev, tuple(new)

        _, _, last = tf.while_loop(lambda k, *_: k < self.num_copies, body,
                                   (tf.constant(0), prev_prev, prev),
                                   maximum_iterations=self.num_copies)
        return list(last)

    def get_config(self):
        return {**super().get_config(), "num_copies": self.num_copies,
                "filter_multiplier": self.filter_multiplier, "num_blocks": self.num_blocks,
                "num_levels": self.num_levels, "recompute": self.recompute,
                "partial_channels": self.partial_channels}
