"""Checkpoints of Keras 3 models and optimizers through `tf.train.Checkpoint`.

Keras 3 keeps sublayers and variables held in lists out of TensorFlow's object graph, so
`tf.train.Checkpoint(model=model)` silently saves only the top-level weights. Here every
variable is exposed under its unique Keras path instead, which also makes checkpoints
readable with `tf.train.list_variables`.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import tensorflow as tf

from auto_deeplab_tf import supernet as supernet_lib

_VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def _key(path: str) -> str:
    # Checkpoint object names cannot hold '/': keep the path readable with '|'.
    return path.replace("/", "|")


class VariableBundle(tf.Module):
    """A trackable dict {keras variable path: variable}; paths must be unique."""

    def __init__(self, variables: Iterable, name: str | None = None):
        super().__init__(name=name)
        by_key = {}
        for v in variables:
            path = getattr(v, "path", None) or v.name
            key = _key(path)
            if key in by_key and by_key[key] is not v:
                raise ValueError(f"two variables share the path '{path}'; give the layers "
                                 "unique names")
            by_key[key] = v
        self.variables_by_path = by_key


def arch_values_from_checkpoint(checkpoint_path: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads (alpha, beta) of a supernet from a search checkpoint (file prefix or dir)."""
    path = checkpoint_path
    if tf.io.gfile.isdir(path):
        path = tf.train.latest_checkpoint(path)
        if path is None:
            raise ValueError(f"{checkpoint_path}: no checkpoint found in this directory")
    try:
        reader = tf.train.load_checkpoint(path)
    except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as e:
        raise ValueError(f"{checkpoint_path}: cannot read checkpoint: {e}") from e
    found = {}
    for key in reader.get_variable_to_shape_map():
        if not key.endswith(_VALUE_SUFFIX) or not key.startswith("model/"):
            continue
        # alpha and beta are the model's own weights: '<model name>|alpha'.
        parts = key[: -len(_VALUE_SUFFIX)].split("/")[-1].split("|")
        if len(parts) == 2 and parts[1] in (supernet_lib.ALPHA_NAME, supernet_lib.BETA_NAME):
            found.setdefault(parts[1], []).append(key)
    for name in (supernet_lib.ALPHA_NAME, supernet_lib.BETA_NAME):
        if len(found.get(name, [])) != 1:
            raise ValueError(f"{checkpoint_path}: expected one supernet '{name}' variable, "
                             f"found {len(found.get(name, []))}; is this a search checkpoint?")
    return (reader.get_tensor(found[supernet_lib.ALPHA_NAME][0]),
            reader.get_tensor(found[supernet_lib.BETA_NAME][0]))
