"""Parameter and multiply-add counts of the fixed network and of the supernet.

Conventions (see also the README, "Checked against the paper"):

* Params: trainable weights only. Convolution kernels, BN scale (gamma) and offset (beta),
  the logits bias; BN moving statistics and the drop-path progress are not parameters.
  For the supernet, alpha and beta are reported apart (`arch_params`).
* Multiply-adds: one per weight tap per output element of every convolution and matrix
  product in the traced graph of one image (`traced_multiply_adds`); elementwise ops,
  BN, pooling and resizing are free. The graph is traced, never executed, so counting at
  1024x2048 costs about a second.
  - "standard": every convolution at its own output resolution.
  - "tf1_space_to_batch": as the official TF1 graph runs it. TF1 (and tf.nn.convolution)
    computes a dilated convolution as SpaceToBatchND -> VALID conv -> BatchToSpaceND, and
    that convolution covers ceil(H/r)*r x ceil(W/r)*r output positions, the overhang
    being cropped afterwards. With DeepLab's evaluation size 1025x2049 this is the count
    closest to the paper's Table 2 among the conventions that count convolutions only.
  - "deeplab_tf1_profiler": "tf1_space_to_batch" plus the ASPP image pooling as DeepLab's
    TF1 evaluation graph builds it when `image_pooling_crop_size` is the training crop
    (769x769 for Cityscapes): a VALID average pool of kernel scale(769, 1/OS) and stride 1
    over the feature map, its 1x1 conv applied at every pooled position, and the pool
    counted as TF's profiler does (kernel area flops per output element, halved like every
    other profiler flop into multiply-adds). At 1025x2049 this reproduces Table 2 to 0.05%.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from auto_deeplab_tf import architecture as architecture_lib
from auto_deeplab_tf import flops
from auto_deeplab_tf import search_space
from auto_deeplab_tf.fixed_network import AutoDeepLab, MODEL_SIZES, as_architecture

CONVENTIONS = ("standard", "tf1_space_to_batch", "deeplab_tf1_profiler")
# DeepLab's Cityscapes training crop, which its eval graph reuses for image pooling.
DEEPLAB_IMAGE_POOLING_CROP = (769, 769)
PARTS = ("stem", "cells", "aspp", "decoder")

# Paper, Table 2 (Cityscapes, 1024x2048 input, 19 classes): (params, multiply-adds).
PAPER_TABLE2: dict[str, tuple[float, float]] = {
    "S": (10.15e6, 333.25e9),
    "M": (21.62e6, 460.93e9),
    "L": (44.42e6, 695.03e9),
}

_PART_PATTERNS = (("stem", re.compile(r"^stem(_\d+)?$")),
                  ("cells", re.compile(r"^cell_\d+(_\d+)?$")),
                  ("aspp", re.compile(r"^aspp(_\d+)?$")),
                  ("decoder", re.compile(r"^decoder(_\d+)?$")))


def count_params(variables: Sequence[Any]) -> int:
    """Total number of scalars in `variables`."""
    return int(sum(int(np.prod(v.shape)) for v in variables))


def _op_multiply_adds(op, convention: str) -> int:
    n = flops.op_multiply_adds(op)
    if n and convention != "standard" and op.type == "Conv2D":
        rate_h, rate_w = op.get_attr("dilations")[1:3]
        if rate_h > 1 or rate_w > 1:
            _, height, width, _ = op.outputs[0].shape.as_list()
            padded = (math.ceil(height / rate_h) * rate_h) * (math.ceil(width / rate_w) * rate_w)
            n = n * padded // (height * width)
    return n


def scale_dimension(dim: int, scale: float) -> int:
    """DeepLab's feature size for an input size at a scale: int((dim - 1) * scale + 1)."""
    return int((dim - 1) * scale + 1)


def _image_pooling_multiply_adds(mean_op, pooling_conv_op, output_stride: int,
                                 crop_size: Sequence[int]) -> int:
    """Extra multiply-adds of DeepLab's crop-size image pooling over a global mean.

    The global mean + 1x1 conv on a 1x1 map is replaced by a VALID average pool with a
    kernel of the training crop's feature size (stride 1) and the 1x1 conv on its output.
    """
    _, height, width, channels = mean_op.inputs[0].shape.as_list()
    kernel_h = min(height, scale_dimension(crop_size[0], 1.0 / output_stride))
    kernel_w = min(width, scale_dimension(crop_size[1], 1.0 / output_stride))
    positions = (height - kernel_h + 1) * (width - kernel_w + 1)
    pool = kernel_h * kernel_w * channels * positions // 2  # profiler flops / 2
    conv = flops.op_multiply_adds(pooling_conv_op) * (positions - 1)
    return pool + conv


def _part_of(op_name: str) -> str:
    for scope in op_name.split("/")[:-1]:
        for part, pattern in _PART_PATTERNS:
            if pattern.match(scope):
                return part
    return "other"


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention '{convention}', expected one of {CONVENTIONS}")


def traced_multiply_adds(fn, input_shape: Sequence[int], convention: str = "standard",
                         by_part: bool = False, output_stride: int | None = None,
                         image_pooling_crop_size: Sequence[int] = DEEPLAB_IMAGE_POOLING_CROP
                         ) -> dict[str, int]:
    """Multiply-adds of one call of `fn` on `input_shape` (trace only, never executed).

    Returns {"total": n}, plus one key per part of the fixed network (by the name scopes
    of its layers: stem, cells, aspp, decoder, other) when `by_part`. The
    "deeplab_tf1_profiler" convention needs the backbone's `output_stride`.
    """
    _check_convention(convention)
    concrete = tf.function(fn).get_concrete_function(tf.TensorSpec(input_shape, tf.float32))
    totals: dict[str, int] = {"total": 0}
    if by_part:
        totals.update({part: 0 for part in PARTS + ("other",)})

    def add(op_name, n):
        totals["total"] += n
        if by_part:
            totals[_part_of(op_name)] += n

    for graph in flops.nested_graphs(concrete.graph):
        aspp_mean = None
        for op in graph.get_operations():
            if op.type == "Mean" and _part_of(op.name) == "aspp":
                aspp_mean = op  # the image pooling; its 1x1 conv is the next conv
            n = _op_multiply_adds(op, convention)
            if not n:
                continue
            add(op.name, n)
            if (convention == "deeplab_tf1_profiler" and aspp_mean is not None
                    and op.type == "Conv2D"):
                if output_stride is None:
                    raise ValueError(f"convention '{convention}' needs output_stride")
                add(op.name, _image_pooling_multiply_adds(aspp_mean, op, output_stride,
                                                          image_pooling_crop_size))
                aspp_mean = None
    return totals


def build_fixed_network(architecture: architecture_lib.Architecture | str, num_classes: int,
                        filter_multiplier: int, **kwargs) -> AutoDeepLab:
    """An AutoDeepLab with its weights created (by one small forward pass)."""
    model = AutoDeepLab(as_architecture(architecture), num_classes,
                        filter_multiplier=filter_multiplier, **kwargs)
    model.build((None, None, None, 3))
    return model


def fixed_network_stats(architecture: architecture_lib.Architecture | str, num_classes: int,
                        filter_multiplier: int, image_size: Sequence[int],
                        breakdown: bool = False, convention: str = "standard",
                        model: AutoDeepLab | None = None) -> dict[str, Any]:
    """Params and multiply-adds of the fixed network for one image of `image_size`.

    With `breakdown`, adds params_<part> and multiply_adds_<part> for stem, cells, aspp,
    decoder (the logits conv belongs to the decoder).
    """
    _check_convention(convention)
    if model is None:
        model = build_fixed_network(architecture, num_classes, filter_multiplier)
    height, width = (int(v) for v in image_size)
    madds = traced_multiply_adds(lambda x: model(x, training=False), (1, height, width, 3),
                                 convention=convention, by_part=breakdown,
                                 output_stride=model.output_stride)
    stats: dict[str, Any] = {
        "model": "fixed",
        "filter_multiplier": model.filter_multiplier,
        "num_classes": model.num_classes,
        "image_size": [height, width],
        "convention": convention,
        "params": count_params(model.trainable_variables),
        "multiply_adds": madds["total"],
    }
    if breakdown:
        layers = {"stem": [model.stem], "cells": model.cells, "aspp": [model.aspp],
                  "decoder": [model.decoder]}
        for part in PARTS:
            stats[f"params_{part}"] = count_params(
                [v for layer in layers[part] for v in layer.trainable_variables])
        for part in PARTS:
            stats[f"multiply_adds_{part}"] = madds[part]
        if madds["other"]:
            stats["multiply_adds_other"] = madds["other"]
    return stats


def build_supernet(num_classes: int, filter_multiplier: int, num_layers: int,
                   num_blocks: int, num_levels: int):
    """The search supernet, unrolled, with its weights created."""
    # Imported here: the supernet module is only needed in this mode.
    from auto_deeplab_tf.supernet import AutoDeepLabSupernet

    # Unrolled: the traced graph then holds every layer's ops, whereas the loop's body,
    # counted once, would stand for all of its iterations. Same weights either way.
    model = AutoDeepLabSupernet(num_classes, filter_multiplier=filter_multiplier,
                                num_blocks=num_blocks, num_layers=num_layers,
                                num_levels=num_levels, loop_uniform_layers=False)
    model.build((None, None, None, 3))
    return model


def supernet_stats(num_classes: int, filter_multiplier: int, num_layers: int,
                   num_blocks: int, num_levels: int, image_size: Sequence[int],
                   model=None) -> dict[str, Any]:
    """Params (alpha/beta excluded), arch params and multiply-adds of the search supernet
    (`model`, from `build_supernet` with the same arguments, when already built)."""
    if model is None:
        model = build_supernet(num_classes, filter_multiplier, num_layers, num_blocks,
                               num_levels)
    height, width = (int(v) for v in image_size)
    madds = traced_multiply_adds(lambda x: model(x, training=True), (1, height, width, 3))
    return {
        "model": "supernet",
        "filter_multiplier": filter_multiplier, "num_layers": num_layers,
        "num_blocks": num_blocks, "num_levels": num_levels, "num_classes": num_classes,
        "image_size": [height, width],
        "params": count_params(model.weight_variables),
        "arch_params": count_params(model.arch_variables),
        "multiply_adds": madds["total"],
    }


def analytic_params(architecture: architecture_lib.Architecture, num_classes: int,
                    filter_multiplier: int, stem_filters: Sequence[int] = (64, 64, 128),
                    aspp_filters: int = 256, num_atrous: int = 3,
                    low_level_filters: int = 48, decoder_filters: int = 256,
                    num_decoder_convs: int = 2, image_channels: int = 3) -> dict[str, int]:
    """Params of the fixed network counted by hand from its structure (no TF involved).

    An independent check of the Keras model: a conv of k x k from c to f has k*k*c*f
    weights, every BN has 2 per channel, separable convs are depthwise + pointwise.
    """
    def bn(c):
        return 2 * c

    def conv(k, c, f):
        return k * k * c * f

    stem = 0
    channels = image_channels
    for f in stem_filters:
        stem += conv(3, channels, f) + bn(f)
        channels = f
    os2_channels, prev_channels = stem_filters[1], stem_filters[2]
    prev_prev_channels = os2_channels
    cells = 0
    low_level_channels = prev_channels
    low_index = None
    for i, level in enumerate(architecture.path):
        if level != 0:
            break
        low_index = i
    for i, level in enumerate(architecture.path):
        f = search_space.cell_filters(filter_multiplier, level)
        cells += conv(1, prev_channels, f) + bn(f)
        if prev_prev_channels != f:
            cells += conv(1, prev_prev_channels, f) + bn(f)
        stride_down = level > (architecture.path[i - 1] if i else 0)
        for block in architecture.cell:
            for state, op in block:
                k = int(op[-1]) if op[-1].isdigit() else 0
                if op.startswith("sep_conv"):
                    cells += 2 * (k * k * f + conv(1, f, f) + bn(f))
                elif op.startswith("atrous_conv"):
                    cells += conv(k, f, f) + bn(f)
                elif op == search_space.SKIP and stride_down and state < 2:
                    cells += conv(1, f, f) + bn(f)
        prev_prev_channels, prev_channels = prev_channels, len(architecture.cell) * f
        if i == low_index:
            low_level_channels = prev_channels
    aspp = (conv(1, prev_channels, aspp_filters) + bn(aspp_filters)) * 2 \
        + (conv(3, prev_channels, aspp_filters) + bn(aspp_filters)) * num_atrous \
        + conv(1, (2 + num_atrous) * aspp_filters, aspp_filters) + bn(aspp_filters)
    decoder = conv(1, low_level_channels, low_level_filters) + bn(low_level_filters)
    channels = aspp_filters + low_level_filters
    for _ in range(num_decoder_convs):
        decoder += conv(3, channels, decoder_filters) + bn(decoder_filters)
        channels = decoder_filters
    decoder += conv(1, channels, num_classes) + num_classes
    return {"stem": stem, "cells": cells, "aspp": aspp, "decoder": decoder,
            "total": stem + cells + aspp + decoder}


__all__ = ["CONVENTIONS", "PARTS", "PAPER_TABLE2", "MODEL_SIZES", "count_params",
           "traced_multiply_adds", "build_fixed_network", "fixed_network_stats",
           "supernet_stats", "analytic_params", "as_architecture"]
