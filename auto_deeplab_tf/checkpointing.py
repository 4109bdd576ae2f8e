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
    """A trackable dict {keras variable path: variable}; paths must be unique.

    `VariableBundle(variables)` keys each variable by its Keras `path` as it is. For a whole
    model use `VariableBundle.for_model(model)`: some Keras variables (the state of the
    `SeedGenerator` of a Dropout layer) get process-global paths ('seed_generator_N/...', N
    counting the generators created so far in the process), which would make the keys depend
    on what else the process built; `for_model` keys those by their owner in the model.
    """

    def __init__(self, variables: Iterable = (), name: str | None = None):
        super().__init__(name=name)
        self.variables_by_path = {}
        for v in variables:
            self._add(getattr(v, "path", None) or v.name, v)

    def _add(self, path: str, variable) -> None:
        key = _key(path)
        existing = self.variables_by_path.get(key)
        if existing is not None and existing is not variable:
            raise ValueError(f"two variables share the path '{path}'; give the layers "
                             "unique names")
        self.variables_by_path[key] = variable

    @classmethod
    def for_model(cls, model, name: str | None = None) -> "VariableBundle":
        """Every variable of a Keras model, keyed so that the keys depend only on the model.

        Variables whose path lies under the model's name keep it. A seed generator's state is
        keyed by the path of the layer that owns the generator (layer names from the model
        down) and the generator's index in that layer:
        '<model>/<layer>/.../seed_generator_<i>/<variable name>'. Any other variable outside
        the model's name scope is keyed by its order among those:
        '<model>/unscoped_<i>/<variable name>'.
        """
        prefix = model.name + "/"
        owned = {}  # id(variable) -> stable path

        def walk(layer, path):
            for i, generator in enumerate(getattr(layer, "_seed_generators", None) or ()):
                state = generator.state
                owned.setdefault(id(state), f"{path}/seed_generator_{i}/{_leaf(state)}")
            for child in layer._flatten_layers(include_self=False, recursive=False):
                walk(child, f"{path}/{child.name}")

        walk(model, model.name)
        bundle = cls(name=name)
        unscoped = 0
        for v in model.variables:
            path = getattr(v, "path", None) or v.name
            if path.startswith(prefix):
                bundle._add(path, v)
            elif id(v) in owned:
                bundle._add(owned[id(v)], v)
            else:
                bundle._add(f"{model.name}/unscoped_{unscoped}/{_leaf(v)}", v)
                unscoped += 1
        return bundle


def _leaf(variable) -> str:
    return (getattr(variable, "path", None) or variable.name).split("/")[-1]


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
