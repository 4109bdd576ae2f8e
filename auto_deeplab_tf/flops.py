"""Multiply-add counting from a traced graph.

Counts what the model really runs, whatever layers it is built from: the forward function
is traced at a fixed input shape and every convolution and matrix product in the graph is
costed from its static shapes. Convention: one multiply-add per weight tap per output
element; elementwise ops, normalisation, pooling and resizing are not counted (the usual
"Multi-Adds" of the NAS literature).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import tensorflow as tf


def _static(shape) -> list[int]:
    dims = shape.as_list()
    if any(d is None for d in dims):
        raise ValueError(f"multiply-adds need static shapes, got {dims}")
    return dims


def _op_multiply_adds(op) -> int:
    t = op.type
    if t in ("Conv2D", "DepthwiseConv2dNative"):
        out = _static(op.outputs[0].shape)
        kernel = _static(op.inputs[1].shape)
        taps = kernel[0] * kernel[1]
        if t == "Conv2D":
            taps *= kernel[2]  # input channels per group
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


def count_graph_multiply_adds(graph: tf.Graph) -> dict[str, int]:
    """Multiply-adds per op type of a graph (functions called from it included)."""
    totals: dict[str, int] = {}

    def visit(g):
        for op in g.get_operations():
            n = _op_multiply_adds(op)
            if n:
                totals[op.type] = totals.get(op.type, 0) + n
        for fn in getattr(g, "_functions", {}).values():
            inner = getattr(fn, "graph", None)
            if inner is not None:
                visit(inner)

    visit(graph)
    return totals


def count_multiply_adds(fn: Callable, input_shape: Sequence[int],
                        dtype: tf.DType = tf.float32) -> int:
    """Multiply-adds of one call of `fn` on an input of `input_shape` (batch included)."""
    concrete = tf.function(fn).get_concrete_function(tf.TensorSpec(input_shape, dtype))
    return sum(count_graph_multiply_adds(concrete.graph).values())
