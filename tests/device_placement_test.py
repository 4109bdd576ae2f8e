"""Nothing in the training steps leaves the device (issue #14, part 6).

The search's bilevel step (`search.make_step_function`, with and without the alpha/beta
update) and the retraining step (`retrain.make_train_step`) are traced on tiny models, and
every node of the traced graph is checked, including every function of its library (the
supernet's shared forward+backward, the bodies of its `While` loop, the branches of any
`If`). A node fails the check when it

* runs Python (`py_function`, `numpy_function`: EagerPyFunc, PyFunc, PyFuncStateless);
* is pinned to a CPU device (`tf.device('/cpu:0')` in the model code);
* is a host transfer op (`_HostSend`, `_HostRecv`, ...; these only appear after placement,
  but one in the traced graph would be a round trip by construction);
* reads a tensor's value back to the host to go on: `Assert` and `If`/`Case` (their
  condition lives in host memory, so a condition computed on the GPU is copied back and
  the stream waits), `Where` with one input (the size of its output is a count that the
  GPU kernel copies to the host), `Unique`, `DynamicPartition`, `CheckNumerics`, and the
  printing and summary ops;
* has no GPU kernel for its attributes (dtypes): TensorFlow would place it on the CPU and
  copy its inputs and outputs across.

The last check reads TensorFlow's kernel registry
(`kernels.get_registered_kernels_for_op`), matching each node's type attributes against
every GPU (or device-agnostic DEFAULT) kernel's constraints. The pip wheel registers its GPU
kernels even on a machine without a GPU, so the check works here; a wheel built without
GPU support registers none, and then only the explicit deny-list above applies (the test
says so rather than passing vacuously: it is skipped for the registry part only).

`While` is allowed: its condition reads an int32 loop counter, which TensorFlow keeps in
host memory on a GPU anyway, so no device tensor is copied back. Shape-only ops whose
only kernels are DEFAULT with host-memory arguments (BroadcastGradientArgs, ConcatOffset)
work on shapes, which live on the host; they are allowed too.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2
from tensorflow.python.framework import kernels

from auto_deeplab_tf import retrain as retrain_lib
from auto_deeplab_tf import search as search_lib
from tests import segmentation_helpers as sh

_PYTHON_OPS = {"EagerPyFunc", "PyFunc", "PyFuncStateless"}
_HOST_TRANSFER_OPS = {"_HostSend", "_HostRecv", "_Send", "_Recv", "_HostCast",
                      "CopyToHost", "_CopyToHost"}
# Ops whose GPU execution copies a tensor's value to the host and waits for it.
_HOST_READ_OPS = {"Assert", "If", "StatelessIf", "Case", "StatelessCase", "Where", "Unique",
                  "UniqueV2", "UniqueWithCounts", "UniqueWithCountsV2", "DynamicPartition",
                  "CheckNumerics", "CheckNumericsV2", "Print", "PrintV2", "StringFormat",
                  "WriteScalarSummary", "WriteHistogramSummary", "WriteImageSummary",
                  "WriteSummary", "ScalarSummary", "HistogramSummary", "ImageSummary"}
DENIED_OPS = _PYTHON_OPS | _HOST_TRANSFER_OPS | _HOST_READ_OPS
_DEVICE_KERNELS = ("GPU", "DEFAULT")


def _gpu_kernels_registered() -> bool:
    return any(k.device_type == "GPU"
               for k in kernels.get_registered_kernels_for_op("Conv2D").kernel)


def _attr_types(value: attr_value_pb2.AttrValue) -> list[int]:
    if value.HasField("list"):
        return list(value.list.type)
    return [value.type]


def _has_device_kernel(node) -> bool:
    """Whether some GPU or DEFAULT kernel of the node's op accepts its type attributes."""
    for kernel in kernels.get_registered_kernels_for_op(node.op).kernel:
        if kernel.device_type not in _DEVICE_KERNELS:
            continue
        if all(c.name not in node.attr or
               set(_attr_types(node.attr[c.name])) <= set(c.allowed_values.list.type)
               for c in kernel.constraint):
            return True
    return False


def _functions_called(node) -> list[str]:
    return [v.func.name for v in node.attr.values() if v.func.name] + \
        [f.name for v in node.attr.values() for f in v.list.func]


def host_round_trips(graph_def, check_kernels: bool = True) -> list[str]:
    """Every node of `graph_def` and of the functions it calls (transitively) that leaves
    the device, as 'function/node (op): why'; empty when none does."""
    library = {f.signature.name: f for f in graph_def.library.function}
    problems = []
    seen = set()
    pending = [("<top>", list(graph_def.node))]
    while pending:
        where, nodes = pending.pop()
        for node in nodes:
            name = f"{where}/{node.name} ({node.op})"
            if node.op in DENIED_OPS:
                problems.append(f"{name}: runs on or reads back to the host")
            if "cpu" in node.device.lower():
                problems.append(f"{name}: pinned to {node.device}")
            # A constant without a GPU kernel (a string: an assert's message) feeds only ops
            # that are checked themselves.
            if check_kernels and node.op not in library and node.op != "Const" and \
                    not _has_device_kernel(node):
                problems.append(f"{name}: no GPU kernel for its dtypes")
            for called in _functions_called(node) + ([node.op] if node.op in library else []):
                if called not in library:
                    problems.append(f"{name}: calls {called}, which is not in the library")
                elif called not in seen:
                    seen.add(called)
                    pending.append((called, list(library[called].node_def)))
    return problems


def _check(graph_def) -> None:
    problems = host_round_trips(graph_def, check_kernels=_gpu_kernels_registered())
    assert not problems, f"{len(problems)} host round trips:\n" + "\n".join(problems[:40])


def test_the_checker_finds_each_kind_of_round_trip():
    """The check itself: a function with one of each finds each (and a clean one none)."""

    @tf.function
    def dirty(x):
        y = tf.py_function(lambda t: t * 2, [x], tf.float32)
        y.set_shape(x.shape)
        with tf.device("/cpu:0"):
            y = y + 1.0
        y = tf.boolean_mask(x, y > 0)  # Where
        tf.debugging.assert_positive(tf.reduce_sum(y) + 1.0)  # If + Assert
        return tf.reduce_sum(y)

    @tf.function
    def clean(x):
        return tf.reduce_sum(tf.nn.relu(x) * 2.0)

    spec = tf.TensorSpec([4], tf.float32)
    graph = dirty.get_concrete_function(spec).graph.as_graph_def()
    found = "\n".join(host_round_trips(graph))
    for op in ("EagerPyFunc", "Where", "Assert"):
        assert f"({op}): runs on or reads back" in found, op
    assert "(AddV2): pinned to" in found
    assert "(If): runs on or reads back" in found or "(StatelessIf)" in found
    assert not host_round_trips(clean.get_concrete_function(spec).graph.as_graph_def())


@pytest.mark.skipif(not _gpu_kernels_registered(),
                    reason="this TensorFlow registers no GPU kernels")
def test_the_kernel_check_finds_an_op_without_a_gpu_kernel():
    """AsString has only a CPU kernel; Relu has GPU kernels, but none for int32."""

    @tf.function
    def cpu_only(x):
        return tf.strings.as_string(tf.nn.relu(tf.cast(x, tf.int32)))

    spec = tf.TensorSpec([4], tf.float32)
    found = "\n".join(host_round_trips(cpu_only.get_concrete_function(spec).graph
                                       .as_graph_def()))
    assert "(AsString): no GPU kernel" in found
    assert "(Relu): no GPU kernel" in found
    assert "(Cast): no GPU kernel" not in found


@pytest.mark.parametrize("update_arch", [True, False], ids=["bilevel", "weight_only"])
@pytest.mark.parametrize("loop", [True, False], ids=["looped", "unrolled"])
def test_search_step_stays_on_the_device(update_arch, loop):
    """The looped supernet (2 levels, 4 layers: layers 3-4 in the While loop) and the
    unrolled one, through `make_step_function` under the default (no-device) strategy."""
    config = search_lib.SearchConfig(model_dir="/unused", filter_multiplier=2, num_layers=4,
                                     num_levels=2, num_blocks=2, batch_size=2, crop_size=33,
                                     loop_uniform_layers=loop)
    strategy = tf.distribute.get_strategy()
    model = search_lib.build_search_model(config, 3, total_steps=10)
    step = search_lib.make_step_function(model, strategy, update_arch=update_arch)
    half = (tf.TensorSpec([2, 33, 33, 3], tf.float32), tf.TensorSpec([2, 33, 33], tf.int32))
    graph = step.get_concrete_function((half, half)).graph.as_graph_def()
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function
                                        for n in f.node_def}
    assert "Conv2DBackpropFilter" in ops  # the backward pass was walked
    if loop:
        assert ops & {"While", "StatelessWhile"}, "the looped supernet has a While loop"
    _check(graph)


def test_retrain_step_stays_on_the_device():
    """The retraining step of a tiny AutoDeepLab (drop path and dropout on)."""
    import keras

    from auto_deeplab_tf.architecture import Architecture
    from auto_deeplab_tf.fixed_network import AutoDeepLab

    model = AutoDeepLab(Architecture.from_dict(sh.TINY_ARCH), num_classes=4,
                        drop_path_keep_prob=0.8, name="net", **sh.TINY_MODEL)
    model.build((None, None, None, 3))
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    step = retrain_lib.make_train_step(model, optimizer, tf.distribute.get_strategy(),
                                       num_classes=4, ignore_label=255, weight_decay=1e-4,
                                       train_steps=10)
    spec = (tf.TensorSpec([2, 32, 32, 3], tf.float32), tf.TensorSpec([2, 32, 32], tf.int32))
    graph = step.get_concrete_function(spec).graph.as_graph_def()
    assert "Conv2DBackpropFilter" in {n.op for n in graph.node} | {
        n.op for f in graph.library.function for n in f.node_def}
    _check(graph)


def test_confusion_matrix_counts_are_unchanged():
    """The search's confusion matrix (built on the device without a boolean mask) counts as
    tf.math.confusion_matrix does over the valid pixels: ignored and out-of-range labels
    excluded, rows the truth."""
    from auto_deeplab_tf.metrics import ConfusionMatrix

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=(2, 7, 9)).astype(np.int32)
    labels[0, :2] = 255
    labels[1, 0, :3] = 4  # out of range for 4 classes
    logits = rng.normal(size=(2, 7, 9, 4)).astype(np.float32)
    metric = ConfusionMatrix(4, ignore_label=255)
    metric.update_state(tf.constant(labels), tf.constant(logits))
    metric.update_state(tf.constant(labels), tf.constant(logits))
    valid = labels < 4
    expected = tf.math.confusion_matrix(labels[valid], logits.argmax(-1)[valid],
                                        num_classes=4, dtype=tf.float64).numpy()
    np.testing.assert_array_equal(metric.matrix.numpy(), 2 * expected)
