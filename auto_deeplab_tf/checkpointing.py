"""Checkpoints of Keras 3 models and optimizers through `tf.train.Checkpoint`.

Keras 3 keeps sublayers and variables held in lists out of TensorFlow's object graph, so
`tf.train.Checkpoint(model=model)` silently saves only the top-level weights. Here every
variable is exposed under its unique Keras path instead, which also makes checkpoints
readable with `tf.train.list_variables`.

`ChiefCheckpoints` is the run's checkpoint manager under any strategy: under multi_worker
only the chief keeps what it saves. It writes MODEL_DIR/checkpoints/ckpt-STEP, STEP being
the global step (`checkpoint_step` reads it back), for the search and the retraining alike.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Iterable

import numpy as np
import tensorflow as tf

from auto_deeplab_tf import distribute
from auto_deeplab_tf import search_space

_VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
# Where a run's checkpoints go, under its MODEL_DIR.
CHECKPOINT_SUBDIR = "checkpoints"


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
        if len(parts) == 2 and parts[1] in (search_space.ALPHA_NAME, search_space.BETA_NAME):
            found.setdefault(parts[1], []).append(key)
    for name in (search_space.ALPHA_NAME, search_space.BETA_NAME):
        if len(found.get(name, [])) != 1:
            raise ValueError(f"{checkpoint_path}: expected one supernet '{name}' variable, "
                             f"found {len(found.get(name, []))}; is this a search checkpoint?")
    return (reader.get_tensor(found[search_space.ALPHA_NAME][0]),
            reader.get_tensor(found[search_space.BETA_NAME][0]))


def checkpoint_step(path: str) -> int:
    """The global step of a checkpoint written by a training loop ('.../ckpt-STEP'); -1 when
    the name does not end in a number."""
    try:
        return int(path.rsplit("-", 1)[-1])
    except ValueError:
        return -1


class ChiefCheckpoints:
    """Checkpoints of a run that only the chief keeps, in `chief_dir`.

    Under MultiWorkerMirroredStrategy saving involves collectives, so every worker saves:
    the chief into `chief_dir`, any other worker into a private temporary local directory
    that is deleted after each save and by `close()`. Every worker resumes from the chief's
    `latest`, so `chief_dir` must be storage every worker can read (NFS, GCS): with one
    process (any other strategy) this is a plain CheckpointManager on `chief_dir`.
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, chief_dir: str, is_chief: bool,
                 temp_prefix: str, max_to_keep: int):
        self.chief_dir, self.is_chief = chief_dir, is_chief
        self.save_dir = chief_dir if is_chief else tempfile.mkdtemp(prefix=temp_prefix)
        self.manager = tf.train.CheckpointManager(checkpoint, self.save_dir,
                                                  max_to_keep=max_to_keep)

    @property
    def latest(self) -> str | None:
        """The chief's latest checkpoint (what every worker restores)."""
        return tf.train.latest_checkpoint(self.chief_dir)

    def save(self, checkpoint_number: int) -> str:
        """Saves on every worker; returns the path of the chief's copy."""
        path = self.manager.save(checkpoint_number=checkpoint_number)
        if not self.is_chief:  # only the chief's copy is kept
            shutil.rmtree(self.save_dir, ignore_errors=True)
            path = os.path.join(self.chief_dir, os.path.basename(path))
        return path

    def check_resumed_together(self, strategy: tf.distribute.Strategy, step: int,
                               restored: str | None) -> None:
        """Under multi_worker, fails unless every worker restored the same `step` (from
        `restored`, None: none) (a collective: every worker must call it). A --model_dir
        that is not shared leaves the workers at different steps."""
        if not distribute.is_multi_worker(strategy):
            return
        low, high = distribute.agreed_step(strategy, step)
        if low != high:
            raise ValueError(
                f"the workers resumed from different steps ({low} to {high}; this one from "
                f"{restored or 'scratch'}): every worker must read the chief's "
                f"{self.chief_dir}, so --model_dir must be shared storage (NFS, GCS)")

    def close(self) -> None:
        """Deletes a non-chief worker's temporary directory."""
        if not self.is_chief:
            shutil.rmtree(self.save_dir, ignore_errors=True)
