"""The candidate operations of the Auto-DeepLab search space, as Keras layers.

Every op works at any channel count and at stride 1 or 2. These are the plain,
one-edge layers: the fixed network uses them, and they are the reference that the fused
search implementation (`mixed_op.MixedOp`) is tested against.

Two normalisations:
* ``norm="search"``: batch statistics always, no affine parameters (the affine-free BN of
  DARTS keeps the scale of each op's output fixed, so alpha alone sets the mix), computed
  separately for each of ``groups`` equal slices of the batch: the supernet stacks the
  incoming transitions of a node along the batch axis and must not mix their statistics.
* ``norm="batch"``: Keras BatchNormalization (decay 0.9997, epsilon 1e-3, as the official
  network), for the fixed network.

Under a strategy with several replicas in sync (inside `strategy.run`), both take the
statistics of the global batch (synchronised BN): each replica all-reduces its per-channel
sums, so N replicas of b images normalise exactly as one device with the N * b images
would. Outside a replica context, or with one replica, nothing is exchanged.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Iterator

import keras
import tensorflow as tf

from auto_deeplab_tf import search_space
from auto_deeplab_tf import stacking

BN_MOMENTUM = 0.9997
BN_EPSILON = 1e-3
SEARCH_BN_EPSILON = 1e-5
NORM_KINDS = ("search", "batch")


# The statistics all-reduces of synchronised BN run with no timeout. A timed collective holds
# a sleeping thread for the whole timeout (distribute.py), and there are a few hundred of
# these per step, where the few timed ones around them (gradients, the loss's valid-pixel
# count, which each step starts with) already notice a stuck peer, and TF's coordination
# service a dead one. (Zero disables the timeout; None would take the strategy's.)
_STATISTICS_OPTIONS = tf.distribute.experimental.CommunicationOptions(timeout_seconds=0)


def cross_replica_context(multi_worker: bool = True) -> tf.distribute.ReplicaContext | None:
    """The replica context when called inside `strategy.run` of a strategy with more than
    one replica in sync, else None (no strategy, one replica, or a cross-replica context
    such as building the model in `strategy.scope()`). With `multi_worker=False`, also None
    under MultiWorkerMirroredStrategy."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    if not multi_worker and isinstance(context.strategy,
                                       tf.distribute.MultiWorkerMirroredStrategy):
        return None
    return context


# Per thread: MirroredStrategy traces each replica's step in a thread of its own, and the
# search model enters the scope below in that thread around its forward and backward pass.
_SEARCH_BN_SCOPE = threading.local()


@contextlib.contextmanager
def per_replica_search_statistics() -> Iterator[None]:
    """Within this scope (in the calling thread), the search BNs traced keep each replica's
    own batch statistics even under several replicas: `SearchModel(sync_bn=False)`, which
    exists to measure what the synchronisation costs (`bench.search_step --nosync_bn`)."""
    previous = getattr(_SEARCH_BN_SCOPE, "per_replica", False)
    _SEARCH_BN_SCOPE.per_replica = True
    try:
        yield
    finally:
        _SEARCH_BN_SCOPE.per_replica = previous


def search_bn_context() -> tf.distribute.ReplicaContext | None:
    """The replica context in which the search supernet's BNs synchronise their statistics:
    several replicas of one process (MirroredStrategy), outside
    `per_replica_search_statistics`. Not under MultiWorkerMirroredStrategy:
    there the supernet's few hundred statistics exchanges per step deadlocked 2 CPU workers
    in the first step (while the retrained network's, fewer and outside a bilevel step, run),
    so a multi-worker search keeps per-replica statistics (README, "Several GPUs")."""
    if getattr(_SEARCH_BN_SCOPE, "per_replica", False):
        return None
    return cross_replica_context(multi_worker=False)


class _LocalCollectives:
    """The keys of the statistics exchanges between the replicas of one process
    (MirroredStrategy), which run as collective ops of each replica's own graph.

    Not `ReplicaContext.all_gather`/`all_reduce`: each of those is a merge_call, which
    stops every replica's tracing thread and builds the exchange from the main thread,
    once per BN (a few hundred in the supernet); what the change measured, faster at one
    configuration and slower at another, is in the README ("The statistics exchanges as
    collective ops").

    Every replica traces the same BNs in the same order into the same function graph, so
    the k-th exchange of a graph gets the same instance key on every replica, whichever
    thread asks first; keys are never reused, so no two exchanges meet by mistake, even
    after a trace that failed half-way."""

    # Far above the group keys TF's own strategies hand out (from 1 up).
    _FIRST_GROUP_KEY = 1 << 24

    def __init__(self):
        self._lock = threading.Lock()
        self._groups: dict[tuple, int] = {}
        self._tokens: dict[str, tf.Tensor] = {}
        self._next_instance_key = 1
        # graph -> ({replica: exchanges traced so far}, {k: instance key of the k-th})
        self._graphs = weakref.WeakKeyDictionary()

    def op_args(self, devices: tuple, replica: int) -> dict:
        """group_size, group_key, instance_key and ordering_token of the next exchange
        that `replica` traces."""
        graph = tf.compat.v1.get_default_graph()
        # Branches of a cond or loop are graphs of their own, one per replica.
        while getattr(graph, "is_control_flow_graph", False):
            graph = graph.outer_graph
        with self._lock:
            group_key = self._groups.setdefault(devices,
                                                self._FIRST_GROUP_KEY + len(self._groups))
            counts, keys = self._graphs.setdefault(graph, ({}, {}))
            k = counts.get(replica, 0)
            counts[replica] = k + 1
            if k not in keys:
                keys[k] = self._next_instance_key
                self._next_instance_key += 1
            return dict(group_size=len(devices), group_key=group_key, instance_key=keys[k],
                        ordering_token=[self._ordering_token(devices[replica])])

    def _ordering_token(self, device: str) -> tf.Tensor:
        # A resource on the device that orders its exchanges, and only those: without one,
        # automatic control dependencies run every collective of the function in program
        # order, and the first replica's then wait for ever for the second's.
        if device not in self._tokens:
            with tf.init_scope(), tf.device(device):
                self._tokens[device] = tf.raw_ops.VarHandleOp(
                    dtype=tf.float32, shape=[],
                    shared_name=f"auto_deeplab_statistics_order_{len(self._tokens)}")
        return self._tokens[device]


_LOCAL_COLLECTIVES = _LocalCollectives()


def _local_collective_args(context: tf.distribute.ReplicaContext) -> dict | None:
    """The arguments of a collective op for the next exchange of this replica when the
    replicas are devices of one process, else None (MultiWorkerMirroredStrategy, whose
    exchanges go through the strategy)."""
    if isinstance(context.strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None
    replica = tf.get_static_value(context.replica_id_in_sync_group)
    if replica is None:
        return None
    args = _LOCAL_COLLECTIVES.op_args(tuple(context.strategy.extended.worker_devices),
                                      int(replica))
    return dict(args, communication_hint="auto",
                timeout_seconds=_STATISTICS_OPTIONS.timeout_seconds or 0.0)


def _all_reduce_sum(x, context: tf.distribute.ReplicaContext):
    """The untimed all-reduce sum of x over the replicas, with no gradient of its own."""
    args = _local_collective_args(context)
    if args is not None:
        return tf.raw_ops.CollectiveReduceV2(input=x, merge_op="Add", final_op="Id", **args)

    def batch_sum(strategy, value):
        return strategy.extended.batch_reduce_to(
            tf.distribute.ReduceOp.SUM, [(value, value)], options=_STATISTICS_OPTIONS)[0]

    return context.merge_call(batch_sum, args=(x,))


def _all_gather(x, context: tf.distribute.ReplicaContext):
    """[num_replicas, *x.shape]: x of every replica, in replica order (collective ops
    gather in the order of the group's devices, which is the strategy's)."""
    args = _local_collective_args(context)
    if args is not None:
        return tf.raw_ops.CollectiveGatherV2(input=x[None], **args)
    return context.all_gather(x[None], axis=0, options=_STATISTICS_OPTIONS)


def cross_replica_gather(x, context: tf.distribute.ReplicaContext):
    """[num_replicas, *x.shape]: x of every replica, in replica order (the same on every
    replica).

    Its gradient sends each replica the sum over replicas of the gradient of its own slice
    (every replica's loss depends on every replica's x). Not `context.all_gather`'s own
    gradient, for speed of tracing: a custom gradient searches the graph between its
    inputs and outputs for variables, and through a cross-replica op that search walks
    every replica's whole graph, once per BN (quadratic: minutes for a tiny supernet).
    Behind stop_gradients the search ends at once, and the gradient is given by hand."""
    @tf.custom_gradient
    def gather(value):
        def grad(dy):
            return tf.gather(_all_reduce_sum(dy, context), context.replica_id_in_sync_group)

        gathered = _all_gather(tf.stop_gradient(value), context)
        return tf.stop_gradient(gathered), grad

    return gather(x)


def cross_replica_moments(x, context: tf.distribute.ReplicaContext):
    """Per-channel mean and variance of x [G, M, C] over its axis 1 and over every replica:
    [G, C] each.

    One all-gather of each replica's count, mean and sum of squared deviations, combined
    as Chan et al.'s parallel variance: as exact as the fused kernel's two passes (the
    one-pass E[x^2] - E[x]^2 of Keras' synchronised BN loses the variance of nearly equal
    values, e.g. one image per replica at a 1x1 level), for one collective per BN."""
    count = tf.cast(tf.shape(x)[1], x.dtype)
    mean, variance = tf.nn.moments(x, axes=[1])
    local = tf.stack([tf.broadcast_to(count, tf.shape(mean)), mean, variance * count])
    # Indexed, not unstacked: under MultiWorkerMirroredStrategy the gathered tensor has no
    # static shape.
    gathered = cross_replica_gather(local, context)
    counts, means, squares = gathered[:, 0], gathered[:, 1], gathered[:, 2]
    total = tf.reduce_sum(counts, axis=0)
    global_mean = tf.reduce_sum(counts * means, axis=0) / total
    deviation = tf.reduce_sum(counts * tf.square(means - global_mean), axis=0)
    return global_mean, (tf.reduce_sum(squares, axis=0) + deviation) / total


def _cross_replica_group_batch_norm(x, groups: int, epsilon: float,
                                    context: tf.distribute.ReplicaContext):
    """Affine-free BN of each of `groups` consecutive batch slices of NHWC x, with the
    statistics of that slice on every replica."""
    shape = shape_list(x)
    # Statistics in float32 under mixed precision (`precision`); a no-op for float32 x.
    grouped = tf.cast(tf.reshape(x, [groups, -1, shape[-1]]), tf.float32)
    mean, variance = cross_replica_moments(grouped, context)
    y = (grouped - mean[:, None, :]) * tf.math.rsqrt(variance + epsilon)[:, None, :]
    return tf.cast(tf.reshape(y, shape), x.dtype)


@keras.saving.register_keras_serializable(package="auto_deeplab_tf")
class SyncBatchNormalization(keras.layers.BatchNormalization):
    """Keras BatchNormalization whose training statistics are those of the global batch
    when it runs inside `strategy.run` with several replicas (`cross_replica_moments`);
    elsewhere it is the plain layer. Same weights, so checkpoints of either load in the
    other.

    Not Keras' own `synchronized=True`: that makes three all-reduces per BN with the
    strategy's timeout, i.e. three sleeping threads per BN and step under multi_worker."""

    def call(self, inputs, training=None, mask=None):
        # Training on one replica: one fused kernel each way (the statistics, the
        # normalisation and its gradient), where Keras' layer builds ~25 ops forward and
        # as many backward; BNs were a third of the retraining step's graph.
        if (not training or not self.trainable or mask is not None or self.renorm
                or not (self.scale and self.center) or inputs.shape.rank != 4
                or list(self._reduction_axes) != [0, 1, 2]
                or cross_replica_context() is not None):
            return super().call(inputs, training=training, mask=mask)
        # Statistics and normalisation in float32 under mixed precision, as Keras does.
        x = tf.cast(inputs, tf.float32)
        empty = tf.constant([], tf.float32)
        y, mean, unbiased_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=tf.convert_to_tensor(self.gamma), offset=tf.convert_to_tensor(self.beta),
            mean=empty, variance=empty, epsilon=self.epsilon, is_training=True)
        # The kernel's variance output is Bessel-corrected; the moving average takes the
        # batch's own (biased) variance, as Keras' layer and the synchronised path do.
        count = 1
        for d in shape_list(x)[:3]:
            count *= d
        if isinstance(count, int):
            variance = unbiased_variance * (max(count - 1, 1) / count)
        else:
            count = tf.cast(count, tf.float32)
            variance = unbiased_variance * (tf.maximum(count - 1.0, 1.0) / count)
        self.moving_mean.assign(self.moving_mean * self.momentum
                                + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum
                                    + variance * (1.0 - self.momentum))
        return tf.cast(y, self.compute_dtype)

    def _moments(self, inputs, mask):
        context = cross_replica_context()
        nhwc = list(self._reduction_axes) == [0, 1, 2]
        if context is None or mask is not None or not nhwc:
            return super()._moments(inputs, mask)
        mean, variance = cross_replica_moments(
            tf.reshape(inputs, [1, -1, int(inputs.shape[-1])]), context)
        return mean[0], variance[0]


def kernel_initializer():
    """He-normal (truncated) for conv kernels. Call it once per weight: a Keras 3
    initializer object keeps its seed and draws the same numbers on every call."""
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_in",
                                              distribution="truncated_normal")


class GroupBatchNorm(keras.layers.Layer):
    """Batch normalisation with batch statistics, computed per group of the batch.

    With ``groups=G`` the batch is read as G consecutive equal slices, each normalised with
    its own mean and variance. It keeps no moving averages: the supernet is only ever run
    as a search model.
    """

    def __init__(self, affine: bool = False, epsilon: float = SEARCH_BN_EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.affine = affine
        self.epsilon = epsilon

    def build(self, input_shape):
        if self.affine:
            channels = input_shape[-1]
            self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones")
            self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")

    def call(self, x, groups: int = 1):
        return group_batch_norm(x, groups, self.epsilon,
                                self.gamma if self.affine else None,
                                self.beta if self.affine else None)

    def get_config(self):
        return {**super().get_config(), "affine": self.affine, "epsilon": self.epsilon}


def shape_list(x) -> list:
    """Static dims where known, dynamic scalars elsewhere: keeps reshapes to one constant
    when the graph is traced at a fixed input size."""
    static = x.shape.as_list()
    dynamic = tf.shape(x) if any(d is None for d in static) else None
    return [d if d is not None else dynamic[i] for i, d in enumerate(static)]


def _fused_batch_norm(x, epsilon: float):
    """Affine-free batch normalisation with batch statistics, one fused kernel each way.

    The gradient recomputes the batch statistics from x instead of keeping the forward
    kernel's three statistics outputs: a backward pass that keeps only x needs a third as
    many saved tensors per BN. That matters inside the supernet's loop (`uniform_layers`),
    where each saved tensor is a per-iteration accumulator with its own handful of ops in
    the forward, the backward and the outer graph; BN outputs were about half of them.
    The recomputation is one more read of x per BN.

    For 16-bit x (mixed precision) scale, offset and the statistics are float32: the
    kernel computes its moments in float32 and returns y in x's dtype.
    """
    ones = tf.constant(1.0, tf.float32, shape=[x.shape[-1]])
    zeros = tf.constant(0.0, tf.float32, shape=[x.shape[-1]])
    empty = tf.constant([], tf.float32)

    def forward(x):
        return tf.raw_ops.FusedBatchNormV3(
            x=x, scale=ones, offset=zeros, mean=empty, variance=empty, epsilon=epsilon,
            is_training=True)

    @tf.custom_gradient
    def normalize(x):
        def grad(dy):
            _, _, _, mean, inv_var, extra = forward(x)
            dx, _, _, _, _ = tf.raw_ops.FusedBatchNormGradV3(
                y_backprop=dy, x=x, scale=ones, reserve_space_1=mean,
                reserve_space_2=inv_var, reserve_space_3=extra, epsilon=epsilon,
                is_training=True)
            return dx

        return forward(x)[0], grad

    return normalize(x)


def group_batch_norm(x, groups: int = 1, epsilon: float = SEARCH_BN_EPSILON,
                     gamma=None, beta=None):
    """Normalises NHWC `x` with the batch statistics of each of `groups` batch slices.

    Uses the fused kernel (one op forward, one backward) on each slice; inside
    `strategy.run` with several replicas, each slice's statistics are those of that slice
    on every replica (synchronised BN, `cross_replica_moments`).
    """
    context = search_bn_context()
    if context is not None:
        y = _cross_replica_group_batch_norm(x, groups, epsilon, context)
    elif groups == 1:
        y = _fused_batch_norm(x, epsilon)
    else:
        y = tf.concat([_fused_batch_norm(part, epsilon)
                       for part in tf.split(x, groups, axis=0)], axis=0)
    if gamma is not None:
        y = y * tf.cast(gamma, y.dtype) + tf.cast(beta, y.dtype)
    return y


def make_norm(kind: str, name: str | None = None, affine: bool = False,
              dtype=None, bn_momentum: float = BN_MOMENTUM) -> keras.layers.Layer:
    """The normalisation layer of a given kind (see module docstring); `dtype`: its Keras
    dtype policy (None: the global one), normally its parent layer's; `bn_momentum`: the
    moving statistics' decay of the "batch" kind (the search kind keeps none)."""
    if kind == "search":
        return GroupBatchNorm(affine=affine, name=name, dtype=dtype)
    if kind == "batch":
        return SyncBatchNormalization(momentum=bn_momentum, epsilon=BN_EPSILON, name=name,
                                      dtype=dtype)
    raise ValueError(f"unknown norm '{kind}', expected one of {NORM_KINDS}")


def apply_norm(layer: keras.layers.Layer, x, groups: int = 1, training=None):
    if isinstance(layer, GroupBatchNorm):
        return layer(x, groups=groups)
    return layer(x, training=training)


def atrous_conv2d(x, kernel, rate: int):
    """Stride-1 'SAME' NHWC convolution at dilation `rate`.

    In float16 (--mixed_precision=fp16) a dilated convolution runs as a dilation-1 one
    between space_to_batch and batch_to_space (`tf.nn.atrous_conv2d`, the same result):
    TensorFlow's CPU kernels have no float16 gradient for dilated convolutions. Other
    dtypes use the dilated convolution itself."""
    if rate > 1 and x.dtype == tf.float16:
        return tf.nn.atrous_conv2d(x, kernel, rate, "SAME")
    return tf.nn.conv2d(x, kernel, 1, "SAME", dilations=rate)


def pointwise_conv2d(x, kernel):
    """1x1 NHWC convolution, grouped when the kernel's input depth [1, 1, C / G, O] is a
    1/G share of x's C channels (each group of C / G channels to O / G outputs).

    In float16 (--mixed_precision=fp16) a grouped one runs as an einsum over the groups
    (the same result): TensorFlow's CPU kernels have no gradient for grouped convolutions
    outside oneDNN's float32 and bfloat16. Other dtypes use the grouped convolution."""
    c, c_in = int(x.shape[-1]), int(kernel.shape[2])
    groups = c // c_in
    if groups == 1 or x.dtype != tf.float16:
        return tf.nn.conv2d(x, kernel, 1, "SAME")
    shape = shape_list(x)
    out = int(kernel.shape[3])
    grouped_x = tf.reshape(x, shape[:3] + [groups, c_in])
    grouped_k = tf.reshape(kernel, [c_in, groups, out // groups])
    y = tf.einsum("nhwgc,cgo->nhwgo", grouped_x, grouped_k)
    return tf.reshape(y, shape[:3] + [out])


def downsample_size(size):
    """Spatial size after a stride-2 'SAME' op: ceil(size / 2)."""
    return (size + 1) // 2


class CandidateOp(keras.layers.Layer):
    """Base of the candidate ops: shared constructor arguments and config."""

    def __init__(self, filters: int, stride: int = 1, norm: str = "batch",
                 bn_momentum: float = BN_MOMENTUM, **kwargs):
        super().__init__(**kwargs)
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if norm not in NORM_KINDS:
            raise ValueError(f"unknown norm '{norm}', expected one of {NORM_KINDS}")
        self.filters = filters
        self.stride = stride
        self.norm = norm
        self.bn_momentum = float(bn_momentum)

    def _kernel(self, name, shape):
        return self.add_weight(name=name, shape=shape, initializer=kernel_initializer())

    def _norm(self, name: str) -> keras.layers.Layer:
        return make_norm(self.norm, name=name, dtype=self.dtype_policy,
                         bn_momentum=self.bn_momentum)

    def _cast(self, kernel):
        """A float32 kernel in the compute dtype (mixed precision; else unchanged)."""
        return tf.cast(kernel, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "stride": self.stride,
                "norm": self.norm, "bn_momentum": self.bn_momentum}


class SepConv(CandidateOp):
    """[ReLU -> depthwise KxK -> pointwise 1x1 -> BN] twice; the first may have stride 2."""

    def __init__(self, filters, kernel_size: int, **kwargs):
        super().__init__(filters, **kwargs)
        self.kernel_size = kernel_size

    def build(self, input_shape):
        cin, f, k = int(input_shape[-1]), self.filters, self.kernel_size
        self.dw1 = self._kernel("depthwise1", (k, k, cin, 1))
        self.pw1 = self._kernel("pointwise1", (1, 1, cin, f))
        self.dw2 = self._kernel("depthwise2", (k, k, f, 1))
        self.pw2 = self._kernel("pointwise2", (1, 1, f, f))
        self.bn1 = self._norm("bn1")
        self.bn2 = self._norm("bn2")

    def call(self, x, groups: int = 1, training=None):
        y = tf.nn.relu(x)
        s = self.stride
        y = tf.nn.depthwise_conv2d(y, self._cast(self.dw1), [1, s, s, 1], "SAME")
        y = tf.nn.conv2d(y, self._cast(self.pw1), 1, "SAME")
        y = tf.nn.relu(apply_norm(self.bn1, y, groups, training))
        y = tf.nn.depthwise_conv2d(y, self._cast(self.dw2), [1, 1, 1, 1], "SAME")
        y = tf.nn.conv2d(y, self._cast(self.pw2), 1, "SAME")
        return apply_norm(self.bn2, y, groups, training)

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size}


class AtrousConv(CandidateOp):
    """ReLU -> regular KxK convolution at a dilation rate -> BN.

    Stride 2 cannot combine with dilation in one convolution, so, as the official network
    does, the input is first resized bilinearly to half size and the rate is kept.
    """

    def __init__(self, filters, kernel_size: int, rate: int = 2, **kwargs):
        super().__init__(filters, **kwargs)
        self.kernel_size = kernel_size
        self.rate = rate

    def build(self, input_shape):
        k = self.kernel_size
        self.kernel = self._kernel("kernel", (k, k, int(input_shape[-1]), self.filters))
        self.bn = self._norm("bn")

    def call(self, x, groups: int = 1, training=None):
        y = tf.nn.relu(x)
        if self.stride == 2:
            # The resize returns float32 whatever its input: back to the compute dtype.
            y = tf.cast(tf.image.resize(y, downsample_size(tf.shape(y)[1:3]),
                                        method="bilinear"), y.dtype)
        y = atrous_conv2d(y, self._cast(self.kernel), self.rate)
        return apply_norm(self.bn, y, groups, training)

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size, "rate": self.rate}


class Pool(CandidateOp):
    """3x3 average or max pooling ('SAME'; averages exclude the padding).

    A 1x1 ReLU-conv-BN follows when the channel count changes. In search mode an
    affine-free BN follows as in DARTS, so pooled outputs live on the same scale as the
    convolutions they are mixed with.
    """

    def __init__(self, filters, pool_type: str, pool_size: int = 3, **kwargs):
        super().__init__(filters, **kwargs)
        if pool_type not in ("avg", "max"):
            raise ValueError(f"pool_type must be 'avg' or 'max', got '{pool_type}'")
        self.pool_type = pool_type
        self.pool_size = pool_size

    def build(self, input_shape):
        cin = int(input_shape[-1])
        self.project = cin != self.filters
        if self.project:
            self.kernel = self._kernel("kernel", (1, 1, cin, self.filters))
        self.bn = self._norm("bn") if (self.project or self.norm == "search") else None

    def call(self, x, groups: int = 1, training=None):
        pool = tf.nn.avg_pool2d if self.pool_type == "avg" else tf.nn.max_pool2d
        y = pool(x, self.pool_size, self.stride, "SAME")
        if self.project:
            y = tf.nn.conv2d(tf.nn.relu(y), self._cast(self.kernel), 1, "SAME")
        if self.bn is not None:
            y = apply_norm(self.bn, y, groups, training)
        return y

    def get_config(self):
        return {**super().get_config(), "pool_type": self.pool_type, "pool_size": self.pool_size}


class Skip(CandidateOp):
    """Identity; a ReLU -> 1x1 conv (stride 2 when asked) -> BN when shape must change."""

    def build(self, input_shape):
        cin = int(input_shape[-1])
        self.project = self.stride != 1 or cin != self.filters
        if self.project:
            self.kernel = self._kernel("kernel", (1, 1, cin, self.filters))
            self.bn = self._norm("bn")

    def call(self, x, groups: int = 1, training=None):
        if not self.project:
            return x
        y = tf.nn.conv2d(tf.nn.relu(x), self._cast(self.kernel), self.stride, "SAME")
        return apply_norm(self.bn, y, groups, training)


class Zero(CandidateOp):
    """No connection: zeros of the output shape. Mixed ops skip it and pay nothing."""

    def call(self, x, groups: int = 1, training=None):
        shape = tf.shape(x)
        size = shape[1:3] if self.stride == 1 else downsample_size(shape[1:3])
        return tf.zeros(tf.concat([shape[:1], size, [self.filters]], axis=0), dtype=x.dtype)


def make_op(op_name: str, filters: int, stride: int = 1, norm: str = "batch",
            name: str | None = None, dtype=None, bn_momentum: float = BN_MOMENTUM
            ) -> CandidateOp:
    """Builds the candidate op called `op_name` (one of `search_space.OPS`); `dtype`: its
    Keras dtype policy (None: the global one); `bn_momentum`: see `make_norm`."""
    kw = dict(stride=stride, norm=norm, name=name or op_name, dtype=dtype,
              bn_momentum=bn_momentum)
    if op_name == "sep_conv_3x3":
        return SepConv(filters, 3, **kw)
    if op_name == "sep_conv_5x5":
        return SepConv(filters, 5, **kw)
    if op_name == "atrous_conv_3x3":
        return AtrousConv(filters, 3, rate=2, **kw)
    if op_name == "atrous_conv_5x5":
        return AtrousConv(filters, 5, rate=2, **kw)
    if op_name == "avg_pool_3x3":
        return Pool(filters, "avg", **kw)
    if op_name == "max_pool_3x3":
        return Pool(filters, "max", **kw)
    if op_name == search_space.SKIP:
        return Skip(filters, **kw)
    if op_name == search_space.ZERO:
        return Zero(filters, **kw)
    raise ValueError(f"unknown op '{op_name}'; known ops: {', '.join(search_space.OPS)}")


class ReLUConvBN(keras.layers.Layer):
    """[bilinear resize ->] ReLU -> KxK conv -> BN: the projections around the cells.

    `call(x, size=...)` first resizes x to `size` (used to bring a cell input to another
    level's resolution); stride 2 halves the resolution instead.

    With `num_copies`, the kernel holds that many independent copies (see `stacking`) and
    `call(..., copy=i)` uses copy i, or `call(..., kernels=[kernel])` a kernel given
    ready-made (as `kernels(i)` returns it). Only the search norm (affine-free, batch
    statistics, no state) can be stacked: a stacked layer has no per-copy BN weights or
    moving statistics to keep.
    """

    def __init__(self, filters: int, kernel_size: int = 1, stride: int = 1,
                 norm: str = "batch", affine: bool = False, num_copies: int | None = None,
                 bn_momentum: float = BN_MOMENTUM, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.stride = stride
        self.norm = norm
        self.affine = affine
        self.bn_momentum = float(bn_momentum)
        self.num_copies = stacking.check_num_copies(num_copies)
        if self.num_copies is not None and (norm != "search" or affine):
            raise ValueError("a stacked ReLUConvBN (num_copies) needs norm='search' and "
                             f"affine=False, got norm='{norm}', affine={affine}")

    def build(self, input_shape):
        k = self.kernel_size
        shape = (k, k, int(input_shape[-1]), self.filters)
        self.kernel = self.add_weight(
            name="kernel", shape=stacking.stacked_shape(self.num_copies, shape),
            initializer=stacking.stacked_initializer(kernel_initializer, self.num_copies))
        self.bn = make_norm(self.norm, name="bn", affine=self.affine, dtype=self.dtype_policy,
                            bn_momentum=self.bn_momentum)

    def kernels(self, copy=None) -> list:
        """[kernel] (of copy `copy`; of all copies, stacked, when None), in the compute
        dtype."""
        return [tf.cast(stacking.select(self.kernel, copy), self.compute_dtype)]

    def call(self, x, size=None, groups: int = 1, training=None, copy=None, kernels=None):
        if size is not None:
            # The resize returns float32 whatever its input: back to the compute dtype.
            x = tf.cast(tf.image.resize(x, size, method="bilinear"), x.dtype)
        if kernels is None:
            stacking.check_copy(self.num_copies, copy)
            kernels = self.kernels(copy)
        (kernel,) = kernels
        y = tf.nn.conv2d(tf.nn.relu(x), kernel, self.stride, "SAME")
        return apply_norm(self.bn, y, groups, training)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "stride": self.stride, "norm": self.norm,
                "affine": self.affine, "num_copies": self.num_copies,
                "bn_momentum": self.bn_momentum}


def search_transition(source_level: int, level: int, filters: int, name_prefix: str,
                      num_copies: int | None = None, dtype=None) -> ReLUConvBN:
    """The supernet's transition from a node at `source_level` to one at `level`: finer ->
    coarser ReLU-conv3x3/2-BN, same level or coarser -> finer (after a bilinear resize in
    the call) ReLU-conv1x1-BN; search BN, named `{name_prefix}_{down|same|up}_{s}to{l}`;
    `dtype`: its Keras dtype policy."""
    kind = "down" if source_level < level else "same" if source_level == level else "up"
    name = f"{name_prefix}_{kind}_{source_level}to{level}"
    if kind == "down":
        return ReLUConvBN(filters, 3, stride=2, norm="search", num_copies=num_copies,
                          name=name, dtype=dtype)
    return ReLUConvBN(filters, 1, norm="search", num_copies=num_copies, name=name,
                      dtype=dtype)
