"""The trellis supernet: every cell at every legal (layer, level), weighted by alpha and beta.

Node relaxation (paper, eq. 6): for a node at level i of layer l,

    H^l_i = sum_{j in {i-1, i, i+1}} beta_{l-1, j -> i} * Cell(T_{j->i}(H^{l-1}_j), H^{l-2}_i; alpha)

with beta normalised over the outgoing transitions of each node (see `search_space`).

Choices the paper leaves open, as taken here (also in the README):
* A node's cell weights are shared by its incoming transitions; each transition has its own
  resampling + projection to the node's F * 2**i channels (T_{j->i} above):
  finer -> coarser: ReLU -> 3x3 conv stride 2 -> BN; same level: ReLU -> 1x1 conv -> BN;
  coarser -> finer: bilinear upsampling -> ReLU -> 1x1 conv -> BN.
* H^{l-2}_i is the node two layers back at the same level. Where that node does not exist
  (the first layers, whose level sets are smaller), the coarsest node of layer l-2 is
  resized bilinearly to level i instead, as the official network does with cell inputs of
  another size; for layer 1 that is the OS-2 stem tensor. It then goes through
  ReLU -> 1x1 conv -> BN, shared by the node's transitions.
* All BNs use batch statistics (the supernet is only trained, never deployed); those inside
  cells and transitions are affine-free as in DARTS. With several replicas they are
  synchronised: the statistics of the global batch (`ops.group_batch_norm`).

The Python loops over layers and nodes run once, when the call is traced; the node's
incoming transitions run through its shared cell as one batched call. From layer
num_levels + 1 on (layer 3 on with one level) every layer has the same structure; those
layers (8 of 12 for the paper's trellis) run as one `tf.while_loop` over stacked weights (`uniform_layers`), whose body is
traced once, which cuts the traced graph, its tracing time and its memory about 2.5x.
"""

from __future__ import annotations

import functools
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from auto_deeplab_tf import ops
from auto_deeplab_tf import search_space
from auto_deeplab_tf.cell import SearchCell
from auto_deeplab_tf.mixed_op import check_partial_channels
from auto_deeplab_tf.recompute import recomputed
from auto_deeplab_tf.search_head import SearchASPP
from auto_deeplab_tf.search_space import ALPHA_NAME, BETA_NAME
from auto_deeplab_tf.stem import Stem
from auto_deeplab_tf.uniform_layers import UniformLayers, num_uniform_layers

ARCH_INIT_STDDEV = 1e-3
_MASKED_LOGIT = -1e9
# Fewer uniform layers than this run unrolled: a one-iteration loop saves nothing.
MIN_LOOP_LAYERS = 2
# The second half of the stateless seed of each architecture parameter's initial draw.
ALPHA_STREAM = 0
BETA_STREAM = 1


def arch_initializer(seed: int | None, stream: int):
    """The initializer of one architecture parameter: ARCH_INIT_STDDEV * N(0, 1).

    With a `seed`, a stateless draw from (seed, stream): alpha and beta take different
    streams, so they are independent, and reproducible from the seed alone. Without one, a
    new Keras initializer object, which picks its own seed from the global random state.
    (One object must not draw both: a Keras 3 initializer keeps its seed and would return
    the same numbers twice.)
    """
    if seed is None:
        return keras.initializers.RandomNormal(stddev=ARCH_INIT_STDDEV)

    def initialize(shape, dtype=None):
        dtype = tf.as_dtype(dtype or "float32")
        return ARCH_INIT_STDDEV * tf.random.stateless_normal(shape, seed=(seed, stream),
                                                              dtype=dtype)

    return initialize


class AutoDeepLabSupernet(keras.Model):
    """The Auto-DeepLab search model. Input: images [N, H, W, 3]; output: logits [N, H, W, C].

    alpha ([num_edges, 8], shared by every cell) and beta ([L, num_levels, 3]) are weights of
    the model, exposed as `arch_variables`; all other trainable weights are
    `weight_variables`, so that two optimizers can own them separately.

    With `loop_uniform_layers` (the default) the last `num_uniform_layers` layers run as
    one loop (`uniform_layers.UniformLayers`, held as `uniform`) when there are at least
    MIN_LOOP_LAYERS of them; `cells`, `transitions` and `prev_prev` then hold the layers
    before them only. `loop_uniform_layers=False` builds one set of layers per layer, as
    earlier versions did: the same function, a ~2.5x larger graph.

    With `recompute_layers`, every layer 1..L (unrolled, or an iteration of the loop) keeps
    only its inputs for the backward pass and is recomputed there (`recompute`): the same
    function and gradients, for less activation memory and one more forward pass of the
    layers. The stem and the heads keep their activations.

    alpha and beta start as independent ARCH_INIT_STDDEV * N(0, 1) draws, made from `seed`
    alone when it is given (`arch_initializer`).

    `dtype` (a Keras dtype policy, e.g. `precision.dtype_policy(mode)`) is passed down to
    every layer. Under a mixed policy the cells, transitions, stem and heads compute in
    16 bits on float32 variables, while alpha, beta and their normalisation stay float32
    (their variables are not autocast) and are cast only where they weight features.

    `partial_channels` K > 1 is PC-DARTS's partial-channel search, not the paper's: every
    mixed op applies its candidate ops to 1/K of its channels and lets the rest bypass,
    then shuffles the channels (`mixed_op`). K must divide F.
    """

    def __init__(self, num_classes: int, filter_multiplier: int = 8, num_blocks: int = 5,
                 num_layers: int = 12, num_levels: int = 4,
                 stem_filters: Sequence[int] = (64, 64, 128), head_filters: int = 64,
                 head_base_rate: int = 96, loop_uniform_layers: bool = True,
                 recompute_layers: bool = False, seed: int | None = None,
                 partial_channels: int = 1, **kwargs):
        super().__init__(**kwargs)
        for flag, value, low in (("num_classes", num_classes, 1),
                                 ("filter_multiplier", filter_multiplier, 1),
                                 ("num_blocks", num_blocks, 1), ("num_layers", num_layers, 1),
                                 ("num_levels", num_levels, 1), ("head_filters", head_filters, 1)):
            if int(value) < low:
                raise ValueError(f"{flag} must be >= {low}, got {value}")
        self.num_classes = int(num_classes)
        self.filter_multiplier = int(filter_multiplier)
        self.num_blocks = int(num_blocks)
        self.num_layers = int(num_layers)
        self.num_levels = int(num_levels)
        self.stem_filters = tuple(int(f) for f in stem_filters)
        self.head_filters = int(head_filters)
        self.head_base_rate = int(head_base_rate)
        self.loop_uniform_layers = bool(loop_uniform_layers)
        self.recompute_layers = bool(recompute_layers)
        check_partial_channels(partial_channels, self.filter_multiplier, self.num_levels)
        self.partial_channels = int(partial_channels)
        self.seed = None if seed is None else int(seed)
        uniform = num_uniform_layers(self.num_layers, self.num_levels)
        self.num_looped_layers = (uniform if self.loop_uniform_layers
                                  and uniform >= MIN_LOOP_LAYERS else 0)
        # Layers 1..unrolled_layers get their own cells; the rest run in the loop.
        unrolled_layers = self.num_layers - self.num_looped_layers

        policy = self.dtype_policy  # every layer computes as the model does
        self.stem = Stem(self.stem_filters, norm="search", name="stem", dtype=policy)
        self.cells, self.transitions, self.prev_prev = [], [], []
        plan = []
        for layer, level in search_space.trellis_nodes(unrolled_layers, self.num_levels):
            filters = search_space.cell_filters(self.filter_multiplier, level)
            sources = []
            for source in search_space.incoming_levels(layer, level, self.num_levels):
                t = ops.search_transition(source, level, filters, f"l{layer}", dtype=policy)
                sources.append((source, len(self.transitions),
                                search_space.direction(source, level)))
                self.transitions.append(t)
            pp_layer = layer - 2
            if pp_layer < 0:
                pp_level = None  # the OS-2 stem tensor
            else:
                pp_level = min(level, max(search_space.levels_at_layer(pp_layer,
                                                                        self.num_levels)))
            self.prev_prev.append(ops.ReLUConvBN(filters, 1, norm="search",
                                                 name=f"l{layer}_level{level}_prev_prev",
                                                 dtype=policy))
            self.cells.append(SearchCell(filters, self.num_blocks,
                                         partial_channels=self.partial_channels,
                                         name=f"cell_l{layer}_level{level}", dtype=policy))
            plan.append((layer, level, tuple(sources), pp_layer, pp_level))
        self._plan = tuple(plan)
        # Per unrolled layer, the indices into _plan of its nodes, in level order: the
        # unit that `recompute_layers` recomputes.
        by_layer = {}
        for k, (layer, *_) in enumerate(plan):
            by_layer.setdefault(layer, []).append(k)
        self._layer_nodes = tuple((layer, tuple(ks)) for layer, ks in by_layer.items())
        self.uniform = None
        if self.num_looped_layers:
            self.uniform = UniformLayers(self.num_looped_layers, self.filter_multiplier,
                                         self.num_blocks, self.num_levels,
                                         recompute=self.recompute_layers,
                                         partial_channels=self.partial_channels,
                                         name="uniform_layers", dtype=policy)
        self.heads = []
        for level in search_space.levels_at_layer(self.num_layers, self.num_levels):
            rate = max(1, self.head_base_rate // (4 * 2**level))
            self.heads.append(SearchASPP(self.num_classes, self.head_filters, rate,
                                         name=f"aspp_level{level}", dtype=policy))

        # autocast=False: read as float32 even inside a mixed-precision call, so their
        # softmax and normalisation are float32 (`precision`).
        self.alpha = self.add_weight(name=ALPHA_NAME,
                                     initializer=arch_initializer(self.seed, ALPHA_STREAM),
                                     shape=(search_space.num_edges(self.num_blocks),
                                            search_space.NUM_OPS), autocast=False)
        self.beta = self.add_weight(name=BETA_NAME,
                                    initializer=arch_initializer(self.seed, BETA_STREAM),
                                    shape=(self.num_layers, self.num_levels,
                                           search_space.NUM_DIRECTIONS), autocast=False)
        self._beta_mask = search_space.beta_mask(self.num_layers, self.num_levels)

    # -- architecture parameters ---------------------------------------------------------
    @property
    def arch_variables(self) -> list:
        return [self.alpha, self.beta]

    @property
    def weight_variables(self) -> list:
        arch = {id(v) for v in self.arch_variables}
        return [v for v in self.trainable_variables if id(v) not in arch]

    def alpha_weights(self):
        """softmax(alpha) over the ops of each edge."""
        return tf.nn.softmax(self.alpha, axis=-1)

    def beta_weights(self):
        """beta normalised over each node's outgoing transitions; 0 where masked."""
        mask = tf.constant(self._beta_mask)
        probs = tf.nn.softmax(tf.where(mask, self.beta, _MASKED_LOGIT), axis=-1)
        return tf.where(mask, probs, tf.zeros_like(probs))

    @property
    def nodes(self) -> list[tuple[int, int]]:
        """(layer, level) of every cell of the trellis, in evaluation order."""
        return search_space.trellis_nodes(self.num_layers, self.num_levels)

    def incoming(self, layer: int, level: int) -> list[int]:
        """Levels of layer-1 whose transitions feed node (layer, level)."""
        if (layer, level) not in self.nodes:
            raise ValueError(f"node (layer {layer}, level {level}) is not in the trellis")
        return search_space.incoming_levels(layer, level, self.num_levels)

    @property
    def beta_mask(self) -> np.ndarray:
        return self._beta_mask.copy()

    # -- forward -------------------------------------------------------------------------
    def call(self, images, training=None, arch_weights=None):
        """`arch_weights`, when given, replaces softmax(alpha), normalised beta and the equal
        sum of the heads: (alpha weights [num_edges, num_ops], beta weights [L, num_levels,
        3], head weights [levels of layer L]). 0/1 masks select one sub-network (its
        inherited accuracy, `inherited.subnetwork_weights`). With partial_channels > 1 an
        edge's bypassed channels are then scaled by its weight on ops other than zero, so
        that an edge the masks switch off passes nothing (`MixedOp.split_weights`)."""
        if arch_weights is None:
            alpha_w, beta_w, head_w = self.alpha_weights(), self.beta_weights(), None
        else:
            alpha_w, beta_w, head_w = arch_weights
        # Normalised in float32, cast once to the compute dtype (a no-op in float32) where
        # they meet the features: not once per cell that uses them.
        compute = self.compute_dtype
        mixing = [tuple(None if w is None else tf.cast(w, compute) for w in state)
                  for state in self.cells[0].mixing_weights(
                      alpha_w, scale_bypass=arch_weights is not None)]
        beta_w = tf.cast(beta_w, compute)
        os2, os4 = self.stem(images)
        # outputs[layer][level]; layer 0 is the stem.
        outputs = {0: {0: os4}}
        for layer, indices in self._layer_nodes:
            prev = [outputs[layer - 1][i] for i in sorted(outputs[layer - 1])]
            pps = []
            for k in indices:
                _, _, _, pp_layer, pp_level = self._plan[k]
                pps.append(os2 if pp_level is None else outputs[pp_layer][pp_level])
            # Not in `build`'s pass, which creates the weights (a layer's first call does).
            if self.recompute_layers and self.built:
                # Every weight goes in as a tensor argument (`recompute.recomputed`).
                kernels = [self._node_kernels(k) for k in indices]
                nodes = recomputed(functools.partial(self._unrolled_layer, indices), prev, pps,
                                   beta_w[layer - 1], mixing, kernels)
            else:
                nodes = self._unrolled_layer(indices, prev, pps, beta_w[layer - 1], mixing)
            outputs[layer] = {self._plan[k][1]: node for k, node in zip(indices, nodes)}
        if self.uniform is not None:
            first = self.num_layers - self.num_looped_layers + 1
            levels = range(self.num_levels)
            states = ([outputs[first - 2][i] for i in levels],
                      [outputs[first - 1][i] for i in levels])
            # Layer l's transitions are weighted by beta row l - 1. With several replicas
            # the BNs exchange their statistics, each exchange a collective with a key of
            # its own (`ops`), which one loop body traced once cannot give every
            # iteration: the layers then run unrolled, on the same stacked weights.
            last = self.uniform(states, beta_weights=beta_w[first - 1:], mixing=mixing,
                                unroll=ops.search_bn_context() is not None)
            outputs[self.num_layers] = dict(enumerate(last))
        last = outputs[self.num_layers]
        image_size = tf.shape(images)[1:3]
        logits = [head(last[level], image_size) for level, head in enumerate(self.heads)]
        if head_w is not None:
            logits = [tf.cast(head_w[level], x.dtype) * x for level, x in enumerate(logits)]
        return tf.add_n(logits)

    def _node_kernels(self, k: int) -> tuple:
        """The weights of node k of `_plan` as (transition kernels per source, H^{l-2}
        projection kernels, cell kernels), in the form the layers' `kernels=` takes."""
        return ([self.transitions[t].kernels() for _, t, _ in self._plan[k][2]],
                self.prev_prev[k].kernels(), self.cells[k].kernels())

    def _unrolled_layer(self, indices: Sequence[int], prev: list, pps: list, beta_row,
                        mixing, kernels=None) -> list:
        """The nodes of one unrolled layer (`indices` into `_plan`, in level order).

        prev: the levels of layer - 1; pps: per node of the layer, its H^{l-2} source (a
        node of layer - 2 or the OS-2 stem tensor); beta_row [num_levels, 3]: beta weights
        row layer - 1; mixing: the cells' shared `mixing_weights`; kernels: per node, its
        `_node_kernels`, or None to read them from the variables. Only these arguments are
        read, so that the layer can be recomputed (`recompute.recomputed`).
        """
        size = ops.shape_list(prev[0])[1:3]
        sizes = [size]
        for _ in range(self.num_levels - 1):
            sizes.append([ops.downsample_size(d) for d in sizes[-1]])
        nodes = []
        for i, k in enumerate(indices):
            _, level, sources, _, pp_level = self._plan[k]
            transition_kernels, pp_kernels, cell_kernels = (
                (None, None, None) if kernels is None else kernels[i])
            size = sizes[level]
            xs = []
            for j, (source, t, _) in enumerate(sources):
                resize = size if source > level else None
                xs.append(self.transitions[t](
                    prev[source], size=resize,
                    kernels=None if transition_kernels is None else transition_kernels[j]))
            # The stem's OS-2 tensor and coarser nodes of layer - 2 are resized to the level.
            pp_size = size if pp_level is None or pp_level != level else None
            h_pp = self.prev_prev[k](pps[i], size=pp_size, kernels=pp_kernels)
            w = [beta_row[source, d] for source, _, d in sources]
            nodes.append(self.cells[k].node(xs, h_pp, w, mixing, kernels=cell_kernels))
        return nodes

    def build(self, input_shape):
        """Creates every weight by tracing one small forward pass."""
        channels = int(input_shape[-1]) if input_shape[-1] is not None else 3
        # call(), not __call__: the latter would come back here while the model is unbuilt.
        self.call(tf.zeros((1, 32, 32, channels)))
        self.built = True

    def get_config(self):
        return {"num_classes": self.num_classes, "filter_multiplier": self.filter_multiplier,
                "num_blocks": self.num_blocks, "num_layers": self.num_layers,
                "num_levels": self.num_levels, "stem_filters": list(self.stem_filters),
                "head_filters": self.head_filters, "head_base_rate": self.head_base_rate,
                "loop_uniform_layers": self.loop_uniform_layers,
                "recompute_layers": self.recompute_layers, "seed": self.seed,
                "partial_channels": self.partial_channels, "name": self.name}
