"""The fixed Auto-DeepLab network: stem, one cell per layer along the path, DeepLabv3+ head.

Built from any valid `Architecture` (the paper's one is `architecture.AUTODEEPLAB`) and a
filter multiplier F; the paper's sizes are S (F=20), M (F=32) and L (F=48).

    image -> Stem (OS 2 pre-ReLU, OS 4)
          -> cell 0 .. cell L-1 (cell i at level path[i], ops with F * 2**level filters)
          -> ReLU -> ASPP -> decoder (+ low-level OS-4 features) -> logits
          -> bilinear upsampling to the input size

Low-level features for the decoder: the official network taps "Cell_2", the third cell,
which is the last cell of the run of OS-4 cells the paper's path starts with
([0, 0, 0, 1, ...]). For a general path the rule is the same: the output of the last cell
of the initial run of level-0 cells; when the path leaves OS 4 at once (path[0] = 1) the
stem's OS-4 output is used instead.

Resolutions: level k has size ceil(size_{k-1} / 2) starting from the stem's OS-4 output,
whatever the input size (odd sizes included); going up a level resizes to that exact size,
so every tensor of a level agrees and the logits are resized to the exact input size.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import keras
import tensorflow as tf

from auto_deeplab_tf import architecture as architecture_lib
from auto_deeplab_tf import ops
from auto_deeplab_tf import search_space
from auto_deeplab_tf.deeplab_head import ASPP, Decoder, aspp_rates_for_output_stride
from auto_deeplab_tf.drop_path import cell_keep_prob
from auto_deeplab_tf.fixed_cell import FixedCell, resize_bilinear, spatial_size
from auto_deeplab_tf.stem import Stem

MODEL_SIZES: dict[str, int] = {"S": 20, "M": 32, "L": 48}

# A small odd size: every level exists and weights get created in a fraction of a second.
_BUILD_SIZE = 33


def as_architecture(arch: architecture_lib.Architecture | Mapping[str, Any] | str
                    ) -> architecture_lib.Architecture:
    """An `Architecture` from itself, its dict (as in get_config) or a name / JSON path."""
    if isinstance(arch, architecture_lib.Architecture):
        return arch
    if isinstance(arch, Mapping):
        return architecture_lib.Architecture.from_dict(arch)
    if isinstance(arch, str):
        return architecture_lib.get_architecture(arch)
    raise TypeError(f"expected an Architecture, its dict or a name, got {type(arch).__name__}")


def low_level_cell_index(path: Sequence[int]) -> int | None:
    """Index of the cell whose output feeds the decoder; None means the stem's OS-4 output.

    The last cell of the initial run of level-0 (OS-4) cells: 2 ("Cell_2") for the paper.
    """
    index = None
    for i, level in enumerate(path):
        if level != 0:
            break
        index = i
    return index


@keras.saving.register_keras_serializable(package="auto_deeplab_tf")
class AutoDeepLab(keras.Model):
    """The retrained Auto-DeepLab network. Input: images [N, H, W, C]; output: logits
    [N, H, W, num_classes] at the input size.

    Args:
      architecture: an `Architecture`, its dict (`to_dict()`, what get_config stores) or a
        built-in name / JSON path.
      num_classes: output classes.
      filter_multiplier: F; cells at level k use F * 2**k filters per op (see MODEL_SIZES).
      stem_filters: the three stem convolutions.
      aspp_filters, aspp_rates, aspp_dropout_rate: ASPP width, atrous rates (default:
        DeepLab's (6, 12, 18) scaled to the backbone's output stride, (12, 24, 36) at OS 8)
        and dropout (0.1, i.e. keep 0.9).
      low_level_filters, decoder_filters: decoder widths (48 and 256).
      drop_path_keep_prob: p of scheduled drop path; 1.0 turns it off. The ramp is driven by
        the `drop_path_progress` variable (0 = start of training, 1 = end), which the
        retraining step sets each step and the checkpoint keeps (`set_drop_path_progress`
        sets it by hand); passing `drop_path_progress=` to call overrides it for that call.
        Drop path only acts with training=True.
      bn_momentum: decay of every BN's moving statistics (the official network's 0.9997;
        short runs need a faster one, see `train.retrain --bn_momentum`).
      dtype: a Keras dtype policy, passed down to every layer (`precision.dtype_policy`):
        under a mixed policy the network computes in 16 bits on float32 variables, BN
        statistics in float32; the logits come out in the compute dtype.
    """

    def __init__(self, architecture: architecture_lib.Architecture | Mapping[str, Any] | str,
                 num_classes: int, filter_multiplier: int = MODEL_SIZES["S"],
                 stem_filters: Sequence[int] = (64, 64, 128), aspp_filters: int = 256,
                 aspp_rates: Sequence[int] | None = None, aspp_dropout_rate: float = 0.1,
                 low_level_filters: int = 48, decoder_filters: int = 256,
                 drop_path_keep_prob: float = 1.0, bn_momentum: float = ops.BN_MOMENTUM,
                 **kwargs):
        super().__init__(**kwargs)
        self.architecture = as_architecture(architecture)
        for flag, value in (("num_classes", num_classes),
                            ("filter_multiplier", filter_multiplier)):
            if int(value) < 1:
                raise ValueError(f"{flag} must be >= 1, got {value}")
        if not 0.0 <= bn_momentum < 1.0:
            raise ValueError(f"bn_momentum must be in [0, 1), got {bn_momentum}")
        if not 0.0 < drop_path_keep_prob <= 1.0:
            raise ValueError(f"drop_path_keep_prob must be in (0, 1], got {drop_path_keep_prob}")
        self.num_classes = int(num_classes)
        self.filter_multiplier = int(filter_multiplier)
        self.stem_filters = tuple(int(f) for f in stem_filters)
        self.output_stride = 4 * 2**self.architecture.path[-1]
        self.aspp_rates = tuple(int(r) for r in aspp_rates) if aspp_rates is not None \
            else aspp_rates_for_output_stride(self.output_stride)
        self.aspp_filters = int(aspp_filters)
        self.aspp_dropout_rate = float(aspp_dropout_rate)
        self.low_level_filters = int(low_level_filters)
        self.decoder_filters = int(decoder_filters)
        self.drop_path_keep_prob = float(drop_path_keep_prob)
        self.bn_momentum = float(bn_momentum)
        self.low_level_index = low_level_cell_index(self.architecture.path)

        # Every layer computes as the model does, with the model's BN decay.
        kw = dict(norm="batch", bn_momentum=self.bn_momentum, dtype=self.dtype_policy)
        self.stem = Stem(self.stem_filters, name="stem", **kw)
        self.cells = []
        previous = 0  # the stem's OS-4 output is at level 0
        for i, level in enumerate(self.architecture.path):
            transition = ("same", "down", "up")[level - previous]
            self.cells.append(FixedCell(
                self.architecture.cell,
                search_space.cell_filters(self.filter_multiplier, level),
                transition=transition, name=f"cell_{i}", **kw))
            previous = level
        self.aspp = ASPP(self.aspp_filters, self.aspp_rates, self.aspp_dropout_rate,
                         name="aspp", **kw)
        self.decoder = Decoder(self.num_classes, self.low_level_filters, self.decoder_filters,
                               name="decoder", **kw)
        # Set inside the replicated training step (every replica computes the same value,
        # so the first one's write stands for all); checkpointed with the model.
        self.drop_path_progress = self.add_weight(
            name="drop_path_progress", shape=(), initializer="zeros", trainable=False,
            autocast=False, aggregation="only_first_replica")

    def set_drop_path_progress(self, progress: float) -> None:
        """Sets the fraction of training done (0..1) that ramps drop path in."""
        self.drop_path_progress.assign(min(1.0, max(0.0, float(progress))))

    def _keep_probs(self, training, progress):
        num_cells = len(self.cells)
        if not training or self.drop_path_keep_prob >= 1.0:
            return [1.0] * num_cells
        if progress is None:
            progress = self.drop_path_progress
        progress = tf.cast(tf.convert_to_tensor(progress), tf.float32)
        return [cell_keep_prob(self.drop_path_keep_prob, i, num_cells, progress)
                for i in range(num_cells)]

    def call(self, images, training=None, drop_path_progress=None):
        os2, os4 = self.stem(images, training=training)
        sizes = [spatial_size(os4)]
        for _ in range(max(self.architecture.path)):
            last = sizes[-1]
            sizes.append(ops.downsample_size(last) if isinstance(last, tf.Tensor)
                         else [ops.downsample_size(d) for d in last])
        keep_probs = self._keep_probs(training, drop_path_progress)
        prev_prev, prev = os2, os4
        low_level = os4
        for i, (cell, level) in enumerate(zip(self.cells, self.architecture.path)):
            out = cell(prev, prev_prev, size=sizes[level], keep_prob=keep_probs[i],
                       training=training)
            prev_prev, prev = prev, out
            if i == self.low_level_index:
                low_level = out
        x = self.aspp(tf.nn.relu(prev), training=training)
        logits = self.decoder(x, low_level, training=training)
        return resize_bilinear(logits, spatial_size(images))

    def build(self, input_shape):
        """Creates every weight by running one small forward pass (any input size works)."""
        channels = int(input_shape[-1]) if input_shape[-1] is not None else 3
        # call(), not __call__: the latter would come back here while the model is unbuilt.
        self.call(tf.zeros((1, _BUILD_SIZE, _BUILD_SIZE, channels)), training=False)
        self.built = True

    def get_config(self) -> dict[str, Any]:
        return {"architecture": self.architecture.to_dict(), "num_classes": self.num_classes,
                "filter_multiplier": self.filter_multiplier,
                "stem_filters": list(self.stem_filters), "aspp_filters": self.aspp_filters,
                "aspp_rates": list(self.aspp_rates),
                "aspp_dropout_rate": self.aspp_dropout_rate,
                "low_level_filters": self.low_level_filters,
                "decoder_filters": self.decoder_filters,
                "drop_path_keep_prob": self.drop_path_keep_prob,
                "bn_momentum": self.bn_momentum, "name": self.name}
