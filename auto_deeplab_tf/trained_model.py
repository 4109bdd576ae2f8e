"""A retrained network as evaluate, export and predict load it: MODEL_DIR in, model out.

A retraining run's MODEL_DIR holds everything needed to rebuild its network:
retrain_config.json (the network's settings, the architecture included) and the checkpoints
in MODEL_DIR/checkpoints. `load_trained_model(model_dir)` builds the `AutoDeepLab` that
config describes and restores the latest (or a given) checkpoint's weights into it;
`build_model`, `resolve_checkpoint` and `restore_model` are its steps, for callers that
restore several checkpoints into one model (`train.evaluate --continuous`). The retraining
loop (`retrain.py`) builds its network with the same `build_model`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import keras
import tensorflow as tf

from auto_deeplab_tf import architecture as architecture_lib
from auto_deeplab_tf import checkpointing
from auto_deeplab_tf import ops
from auto_deeplab_tf import precision
from auto_deeplab_tf.fixed_network import AutoDeepLab

CONFIG_FILENAME = "retrain_config.json"
# The Keras name of the network: the prefix of its weights' keys in the checkpoints.
MODEL_NAME = "autodeeplab"


def build_model(model_config: dict[str, Any], mixed_precision: str = "off") -> AutoDeepLab:
    """The network described by a retrain_config.json dict, with its weights created;
    `mixed_precision` (a `precision` mode) sets its dtype policy. The weights are float32
    under every mode, so a checkpoint loads whichever mode wrote it."""
    model = AutoDeepLab(
        architecture_lib.Architecture.from_dict(model_config["architecture_spec"]),
        num_classes=model_config["num_classes"],
        filter_multiplier=model_config["filter_multiplier"],
        stem_filters=tuple(model_config["stem_filters"]),
        aspp_filters=model_config["aspp_filters"],
        decoder_filters=model_config["decoder_filters"],
        drop_path_keep_prob=model_config.get("drop_path_keep_prob", 1.0),
        bn_momentum=model_config.get("bn_momentum", ops.BN_MOMENTUM),
        name=MODEL_NAME, dtype=precision.dtype_policy(mixed_precision))
    model.build((None, None, None, 3))
    return model


def read_model_config(model_dir: str) -> dict[str, Any]:
    """The retrain_config.json of a retraining run's MODEL_DIR, as a dict.

    Raises:
      ValueError: MODEL_DIR has none (it is not the --model_dir of a retraining run).
    """
    path = os.path.join(model_dir, CONFIG_FILENAME)
    if not tf.io.gfile.exists(path):
        raise ValueError(f"--model_dir={model_dir} has no {CONFIG_FILENAME}; is it the "
                         "--model_dir of a `python -m train.retrain` run?")
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def resolve_checkpoint(model_dir: str, checkpoint_path: str | None = None) -> str:
    """The checkpoint to load: `checkpoint_path` (a prefix or a directory) or the latest one
    in MODEL_DIR/checkpoints.

    Raises:
      ValueError: no such checkpoint; the message names --checkpoint_path only when it was
        given, and otherwise says that the model_dir has no checkpoints yet.
    """
    if not checkpoint_path:
        path = os.path.join(model_dir, checkpointing.CHECKPOINT_SUBDIR)
        latest = tf.train.latest_checkpoint(path) if tf.io.gfile.isdir(path) else None
        if latest is None:
            what = f"{path} is empty" if tf.io.gfile.isdir(path) else f"no {path}"
            raise ValueError(f"--model_dir={model_dir} has no checkpoints yet ({what}); train "
                             f"it first with python -m train.retrain --model_dir={model_dir}, "
                             "or pass --checkpoint_path")
        return latest
    if tf.io.gfile.isdir(checkpoint_path):
        latest = tf.train.latest_checkpoint(checkpoint_path)
        if latest is None:
            raise ValueError(f"--checkpoint_path={checkpoint_path}: no checkpoint in this "
                             "directory")
        return latest
    if not tf.io.gfile.exists(checkpoint_path + ".index"):
        raise ValueError(f"--checkpoint_path={checkpoint_path}: no such checkpoint")
    return checkpoint_path


def restore_model(model: keras.Model, checkpoint_path: str) -> None:
    """Loads the model's weights (only) from a retraining checkpoint; fails on any miss."""
    checkpoint = tf.train.Checkpoint(model=checkpointing.VariableBundle.for_model(model))
    status = checkpoint.restore(checkpoint_path)
    status.expect_partial()  # the optimizer and the step are not wanted here
    status.assert_existing_objects_matched()


def load_trained_model(model_dir: str, checkpoint_path: str | None = None
                       ) -> tuple[AutoDeepLab, dict[str, Any], str]:
    """(model with restored weights, its retrain_config.json dict, checkpoint path)."""
    model_config = read_model_config(model_dir)
    path = resolve_checkpoint(model_dir, checkpoint_path)
    model = build_model(model_config)
    restore_model(model, path)
    return model, model_config, path
