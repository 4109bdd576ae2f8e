"""Coarse classes of TF op types, shared by the step profile and the GPU projection.

`bench.profile_step` times the step's ops by type and `bench.gpu_projection` costs them;
both group the types into the same classes so that their tables line up. A class is what a
GPU (or a CPU) does with the op: convolutions on tensor cores, the rest moving memory.
"""

from __future__ import annotations

import re

DEPTHWISE = "depthwise conv"
CONV = "dense/grouped conv"
DILATED = "dilated conv"
BN = "batch norm"
ELEMENTWISE = "elementwise"
REDUCTION = "reduction"
POOLING = "pooling"
RESIZE = "resize"
DATA_MOVEMENT = "concat/split/pad/tile"
LOOP = "loop bookkeeping"
OTHER = "other"
CLASSES = (DEPTHWISE, CONV, DILATED, BN, ELEMENTWISE, REDUCTION, POOLING, RESIZE,
           DATA_MOVEMENT, LOOP, OTHER)

# Convolutions (and matrix products, which run on the same tensor-core kernels).
_CONV_TYPES = {"Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "FusedConv2D",
               "MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum"}
_DEPTHWISE_TYPES = {"DepthwiseConv2dNative", "DepthwiseConv2dNativeBackpropInput",
                    "DepthwiseConv2dNativeBackpropFilter", "FusedDepthwiseConv2dNative"}
_BN_TYPES = {"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3", "FusedBatchNormEx",
             "FusedBatchNormGrad", "FusedBatchNormGradV2", "FusedBatchNormGradV3",
             "FusedBatchNormGradEx"}
_ELEMENTWISE_TYPES = {
    "Mul", "Add", "AddV2", "AddN", "Sub", "RealDiv", "Div", "DivNoNan", "Neg", "Maximum",
    "Minimum", "Relu", "ReluGrad", "Relu6", "Relu6Grad", "Square", "SquaredDifference",
    "Sqrt", "Rsqrt", "Reciprocal", "Pow", "Exp", "Log", "Cast", "Select", "SelectV2",
    "Softmax", "LogSoftmax", "SparseSoftmaxCrossEntropyWithLogits", "BiasAdd", "Equal",
    "NotEqual", "Less", "LessEqual", "Greater", "GreaterEqual", "LogicalAnd", "LogicalOr",
    "LogicalNot", "ZerosLike", "OnesLike", "Fill", "BroadcastTo", "Cos", "Sin", "FloorDiv",
    "FloorMod", "Abs", "Sign", "Tanh", "Sigmoid", "IsFinite", "ClipByValue"}
_REDUCTION_TYPES = {"Sum", "Mean", "Max", "Min", "Prod", "ArgMax", "ArgMin", "All", "Any",
                    "UnsortedSegmentSum", "BiasAddGrad"}
_POOLING_TYPES = {"AvgPool", "MaxPool", "AvgPoolGrad", "MaxPoolGrad", "MaxPoolGradV2",
                  "MaxPoolV2"}
_RESIZE_TYPES = {"ResizeBilinear", "ResizeBilinearGrad", "ResizeNearestNeighbor",
                 "ResizeNearestNeighborGrad"}
_DATA_MOVEMENT_TYPES = {"ConcatV2", "Concat", "Split", "SplitV", "Pad", "PadV2", "MirrorPad",
                        "Tile", "Slice", "StridedSlice", "StridedSliceGrad", "Pack", "Unpack",
                        "GatherV2", "Gather", "Transpose", "ScatterNd", "ReverseV2"}
# The while loop: its accumulators (TensorList*) and, where lowered, its control-flow ops.
_LOOP_PATTERN = re.compile(r"^(TensorList|TensorArray)|^(While|StatelessWhile|Enter|Exit|"
                           r"Merge|Switch|NextIteration|LoopCond)$")

# oneDNN kernels report their type with a prefix (e.g. "_MklNativeConv2D"), and fused
# kernels with a leading underscore (e.g. "_FusedBatchNormEx").
_KERNEL_PREFIX = re.compile(r"^(_MklNative|_Mkl|_)")


def op_type_of_kernel(kernel_type: str) -> str:
    """The op type behind a kernel's reported type: "_MklNativeConv2D" -> "Conv2D"."""
    return _KERNEL_PREFIX.sub("", kernel_type)


def op_class(op_type: str, dilated: bool = False) -> str:
    """The coarse class of an op type (one of CLASSES); `dilated` marks convolutions with a
    dilation rate above 1, which get their own class."""
    op_type = op_type_of_kernel(op_type)
    if op_type in _CONV_TYPES:
        return DILATED if dilated else CONV
    if op_type in _DEPTHWISE_TYPES:
        return DEPTHWISE
    if op_type in _BN_TYPES:
        return BN
    if op_type in _ELEMENTWISE_TYPES:
        return ELEMENTWISE
    if op_type in _REDUCTION_TYPES:
        return REDUCTION
    if op_type in _POOLING_TYPES:
        return POOLING
    if op_type in _RESIZE_TYPES:
        return RESIZE
    if op_type in _DATA_MOVEMENT_TYPES:
        return DATA_MOVEMENT
    if _LOOP_PATTERN.match(op_type):
        return LOOP
    return OTHER


def is_dilated(op) -> bool:
    """Whether a graph op (tf.Operation) is a convolution, or its gradient, with a dilation
    rate above 1."""
    try:
        rates = op.get_attr("dilations")
    except (ValueError, AttributeError):
        return False
    return any(r > 1 for r in list(rates)[1:3])


def is_grouped(op) -> bool:
    """Whether a Conv2D (or its gradient) graph op is grouped: its filter sees fewer input
    channels than the input has."""
    t = op.type
    try:
        if t == "Conv2D":
            return op.inputs[1].shape[2] != op.inputs[0].shape[-1]
        if t == "Conv2DBackpropInput":
            return op.inputs[1].shape[2] != op.outputs[0].shape[-1]
        if t == "Conv2DBackpropFilter":
            return op.outputs[0].shape[2] != op.inputs[0].shape[-1]
    except (IndexError, TypeError):
        return False
    return False
