"""Files written so that a reader never sees half of one: the text goes to a temporary file
beside the target, which is then renamed over it.

Through `tf.io.gfile`, so that MODEL_DIR may be remote (gs://, or ram:// in tests). On a local
disk the rename is atomic; object stores have no atomic rename, and there the file appears
once it is complete, which is what readers need.
"""

from __future__ import annotations

import json
import os
from typing import Any

# TensorFlow is imported inside the functions: light modules (auto_deeplab_tf/architecture.py)
# use this one, and the train/ scripts import TensorFlow only after the allocator cap
# (auto_deeplab_tf/allocator.py).


def write_text(path: str, text: str) -> None:
    """Writes `text` to `path` atomically, creating its folder if needed.

    The temporary name carries the process id, so that two processes writing the same file
    (workers of one job) never share a temporary file; on failure it is removed again.
    """
    import tensorflow as tf

    directory = os.path.dirname(path)
    if directory:
        tf.io.gfile.makedirs(directory)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write(text)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
        raise


def write_json(path: str, payload: Any, indent: int = 2) -> None:
    """Writes `payload` as JSON (`json.dumps` with `indent`) to `path` atomically."""
    write_text(path, json.dumps(payload, indent=indent))
