"""Decodes a search checkpoint into an architecture JSON.

  python -m train.decode --checkpoint_path=MODEL_DIR [--output=arch.json]

--checkpoint_path (as in train.evaluate and train.export; --checkpoint, its earlier name,
still works) takes a checkpoint prefix or a directory (its latest checkpoint is used). The
cell is decoded from alpha (top-2 inputs per block, strongest non-zero op each) and the
network path from beta (Viterbi); see auto_deeplab_tf/decoding.py.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app
from absl import flags

from auto_deeplab_tf import architecture as architecture_lib
from auto_deeplab_tf import checkpointing
from auto_deeplab_tf import common
from auto_deeplab_tf import decoding
from auto_deeplab_tf import search as search_lib
from train import cli

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint_path", None, "Search checkpoint prefix, or a directory holding search "
    "checkpoints (the latest is used).")
# The flag's name before it matched train.evaluate's and train.export's; kept for old commands.
flags.DEFINE_alias("checkpoint", "checkpoint_path")
_OUTPUT = flags.DEFINE_string(
    "output", None, "Where to write the architecture JSON. Default: print it only.")


def search_seed(checkpoint: str) -> int | None:
    """The --seed of the search that wrote `checkpoint` (from its search_config.json, next to
    the checkpoint directory), or None when that file is not found."""
    start = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(checkpoint)
    for directory in (start, os.path.dirname(os.path.abspath(start))):
        path = os.path.join(directory, search_lib.CONFIG_FILENAME)
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f).get("seed")
    return None


def _checkpoint_spelling() -> str:
    """The checkpoint flag's name as the command line spelled it, for error messages."""
    return "checkpoint" if flags.FLAGS["checkpoint"].present else _CHECKPOINT.name


def main(argv):
    if cli.refuses_stray_arguments(argv):
        return cli.STRAY_ARGUMENTS_EXIT_CODE
    if not _CHECKPOINT.value:
        raise app.UsageError(
            "--checkpoint_path is required (a search checkpoint or its directory)")
    try:
        alpha, beta = checkpointing.arch_values_from_checkpoint(_CHECKPOINT.value)
        arch, metadata = decoding.decode_architecture(alpha, beta)
    except ValueError as e:
        print(f"error: --{_checkpoint_spelling()}={_CHECKPOINT.value}: {e}", file=sys.stderr)
        return 1
    metadata.update(architecture_lib.origin_metadata(common.ORIGIN_SEARCH,
                                                     search_seed(_CHECKPOINT.value)))
    metadata["checkpoint"] = _CHECKPOINT.value
    print(arch.to_json(metadata))
    if _OUTPUT.value:
        arch.save(_OUTPUT.value, metadata)
        print(f"wrote {_OUTPUT.value}", file=sys.stderr)
    return 0


def console_main() -> None:
    """`auto-deeplab-decode`: the command setup.cfg installs for this script."""
    cli.run_command(main, __name__)


if __name__ == "__main__":
    console_main()
