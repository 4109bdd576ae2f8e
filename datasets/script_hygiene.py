"""What every script does so that a run prints only its own lines and a failed run leaves
nothing half-made behind: TensorFlow's start-up and info log lines hidden, and output folders
that the failed run itself created removed again (never one that existed before).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from typing import Iterator, Sequence

# TensorFlow's C++ log threshold when the user has not chosen one: 3 hides INFO, WARNING and
# ERROR lines. ERROR is needed for "failed call to cuInit: ... CUDA error" on a machine without
# a GPU; errors that matter reach Python as exceptions. TF_CPP_MIN_LOG_LEVEL=0 shows them all.
DEFAULT_TF_CPP_MIN_LOG_LEVEL = "3"

# Lines TensorFlow's shared libraries log while they load, before they read
# TF_CPP_MIN_LOG_LEVEL (absl logging is not initialised yet, so no environment variable
# reaches them): the oneDNN notice and the CUDA stub's "Could not find cuda drivers".
_LOAD_TIME_LINE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} [\d:.]+ +\d+ (port\.cc|cudart_stub\.cc):\d+\] ")


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow without its C++ start-up lines, unless the user asked for them.

    Sets TF_CPP_MIN_LOG_LEVEL to DEFAULT_TF_CPP_MIN_LOG_LEVEL unless it is set, then imports
    TensorFlow with file descriptor 2 captured and writes back every line except the known
    load-time notices (_LOAD_TIME_LINE). Does nothing more when TensorFlow is already imported
    or TF_CPP_MIN_LOG_LEVEL is 0; falls back to a plain import when stderr has no descriptor.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", DEFAULT_TF_CPP_MIN_LOG_LEVEL)
    if "tensorflow" in sys.modules or os.environ["TF_CPP_MIN_LOG_LEVEL"] in ("", "0"):
        import tensorflow  # noqa: F401
        return
    try:
        saved = os.dup(2)
    except OSError:  # no stderr descriptor: nothing to filter
        import tensorflow  # noqa: F401
        return
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not _LOAD_TIME_LINE.match(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def quiet_info_logs() -> None:
    """Hides INFO log lines (absl verbosity WARNING) unless the user asked for a verbosity.

    `absl.app.run` turns INFO logging on, so TensorFlow's saver, SavedModel writer and TFDS
    would print lines such as "Sharding callback duration: N microseconds" or "Assets written
    to" at every checkpoint or export. --verbosity (or -v) on the command line still wins.
    """
    from absl import flags
    from absl import logging as absl_logging

    verbosity = flags.FLAGS["verbosity"] if "verbosity" in flags.FLAGS else None
    if verbosity is not None and verbosity.present:
        return
    absl_logging.set_verbosity(absl_logging.WARNING)
    # TensorFlow's Python logger has a level of its own ("INFO:tensorflow:..." lines).
    logging.getLogger("tensorflow").setLevel(logging.WARNING)


def _is_local(path: str) -> bool:
    # Folders on object stores (gs://, s3://) are virtual: nothing to create or remove.
    return "://" not in path


def missing_dirs(path: str) -> list[str]:
    """`path` and those of its parent folders that do not exist yet, deepest first."""
    if not path or not _is_local(path):
        return []
    missing = []
    current = os.path.abspath(path)
    while not os.path.exists(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return missing


def remove_empty_dirs(dirs: Sequence[str]) -> None:
    """Removes each of `dirs` (deepest first) that exists and is empty; keeps any other."""
    for d in sorted(dirs, key=len, reverse=True):
        try:
            os.rmdir(d)  # only ever removes an empty folder
        except OSError:
            pass


@contextlib.contextmanager
def removed_if_failed(*paths: str) -> Iterator[None]:
    """On an exception in the block, removes those of `paths` and their parents that did not
    exist on entry and are empty by then (files a run wrote are the caller's business)."""
    created = [d for p in paths for d in missing_dirs(p)]
    try:
        yield
    except BaseException:
        remove_empty_dirs(created)
        raise
