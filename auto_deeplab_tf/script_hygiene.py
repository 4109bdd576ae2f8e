"""What every script does so that a run prints only its own lines and a failed run leaves
nothing half-made behind: TensorFlow's info log lines hidden, and output folders that the
failed run itself created removed again (never one that existed before).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator, Sequence


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
