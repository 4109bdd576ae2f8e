"""Multiply-add costing of a traced graph's ops, and the walk over a graph and the functions it
calls; `model_stats.traced_multiply_adds` sums them for a model.

Counts what the model really runs, whatever layers it is built from: the forward function
is traced at a fixed input shape and every convolution and matrix product in the graph is
costed from its static shapes. Convention: one multiply-add per weight tap per output
element; elementwise ops, normalisation, pooling and resizing are not counted (the usual
"Multi-Adds" of the NAS literature). The convolutions' gradient ops (input and filter
backprop) are costed too, each as the forward convolution it differentiates (the same
products, summed the other way), so a traced backward pass can be counted the same way.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import tensorflow as tf


# Gradient ops of the convolutions, costed as the forward convolution they differentiate.
_BACKPROP_INPUT = ("Conv2DBackpropInput", "DepthwiseConv2dNativeBackpropInput")
_BACKPROP_FILTER = ("Conv2DBackpropFilter", "DepthwiseConv2dNativeBackpropFilter")


def _static(shape) -> list[int]:
    dims = shape.as_list()
    if any(d is None for d in dims):
        raise ValueError(f"multiply-adds need static shapes, got {dims}")
    return dims


def op_multiply_adds(op: tf.Operation) -> int:
    """Multiply-adds of one graph op by the module's convention (0 for ops not counted)."""
    t = op.type
    if t in ("Conv2D", "DepthwiseConv2dNative"):
        out = _static(op.outputs[0].shape)
        kernel = _static(op.inputs[1].shape)
        taps = kernel[0] * kernel[1]
        if t == "Conv2D":
            taps *= kernel[2]  # input channels per group
        return int(np.prod(out)) * taps
    if t in _BACKPROP_INPUT or t in _BACKPROP_FILTER:
        # Inputs: (input or its sizes, filter or its sizes, out_backprop); out_backprop has
        # the forward output's shape, and the filter's shape is input 1 (backprop input)
        # or the output (backprop filter).
        out = _static(op.inputs[2].shape)
        kernel = _static(op.inputs[1].shape if t in _BACKPROP_INPUT else op.outputs[0].shape)
        taps = kernel[0] * kernel[1]
        if t.startswith("Conv2D"):
            taps *= kernel[2]
        return int(np.prod(out)) * taps
    if t == "MatMul":
        a = _static(op.inputs[0].shape)
        out = _static(op.outputs[0].shape)
        k = a[0] if op.get_attr("transpose_a") else a[1]
        return int(np.prod(out)) * k
    if t in ("BatchMatMulV2", "BatchMatMulV3", "BatchMatMul"):
        a = _static(op.inputs[0].shape)
        out = _static(op.outputs[0].shape)
        k = a[-2] if op.get_attr("adj_x") else a[-1]
        return int(np.prod(out)) * k
    if t == "Einsum":
        equation = op.get_attr("equation").decode()
        inputs, _ = equation.split("->")
        sizes = {}
        for term, tensor in zip(inputs.split(","), op.inputs):
            for letter, dim in zip(term, _static(tensor.shape)):
                sizes[letter] = dim
        return int(np.prod(list(sizes.values())))
    return 0


def nested_graphs(graph: tf.Graph) -> Iterator[tf.Graph]:
    """`graph`, then every function graph called from it, depth first (each graph before the
    functions it calls), so that a caller can keep per-graph state while walking the ops."""
    yield graph
    # A traced Keras model keeps its layers' bodies in functions (e.g. the uniform layers'
    # while loop); their ops are not in the outer graph's operation list.
    for fn in getattr(graph, "_functions", {}).values():
        inner = getattr(fn, "graph", None)
        if inner is not None:
            yield from nested_graphs(inner)

