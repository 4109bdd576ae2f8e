"""DeepLab-compatible TFRecord examples and sharded writing that never leaves partial shards.

Examples use the DeepLab feature keys (keys.py), so shards written by
tensorflow/models research/deeplab or deeplab2 can be read here and the other way round.
"""

from __future__ import annotations

import glob
import os
from typing import Iterable, Sequence

import tensorflow as tf

from . import atomic_write, keys, script_hygiene

# Beside the shards, the converters list each split's example names in record order, so the
# search's A/B split does not have to scan gigabytes of records just to learn the names.
FILENAMES_INDEX = "{split}.filenames.txt"


def _bytes_feature(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64_feature(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def make_example(
    *,
    image_bytes: bytes,
    image_format: str,
    label_bytes: bytes,
    filename: str,
    height: int,
    width: int,
    channels: int = 3,
) -> tf.train.Example:
    """Builds one DeepLab-style example: encoded image, encoded PNG label, name and size."""
    feature = {
        keys.KEY_IMAGE_ENCODED: _bytes_feature(image_bytes),
        keys.KEY_IMAGE_FILENAME: _bytes_feature(filename.encode("utf-8")),
        keys.KEY_IMAGE_FORMAT: _bytes_feature(image_format.encode("utf-8")),
        keys.KEY_IMAGE_HEIGHT: _int64_feature(height),
        keys.KEY_IMAGE_WIDTH: _int64_feature(width),
        keys.KEY_IMAGE_CHANNELS: _int64_feature(channels),
        keys.KEY_LABEL_ENCODED: _bytes_feature(label_bytes),
        keys.KEY_LABEL_FORMAT: _bytes_feature(b"png"),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


# Only the encoded bytes are required: DeepLab-written files may omit or disagree on the rest,
# and the decoders recover the true size anyway.
_FEATURE_SPEC = {
    keys.KEY_IMAGE_ENCODED: tf.io.FixedLenFeature((), tf.string),
    keys.KEY_IMAGE_FILENAME: tf.io.FixedLenFeature((), tf.string, default_value=""),
    keys.KEY_IMAGE_FORMAT: tf.io.FixedLenFeature((), tf.string, default_value="png"),
    keys.KEY_IMAGE_HEIGHT: tf.io.FixedLenFeature((), tf.int64, default_value=0),
    keys.KEY_IMAGE_WIDTH: tf.io.FixedLenFeature((), tf.int64, default_value=0),
    keys.KEY_IMAGE_CHANNELS: tf.io.FixedLenFeature((), tf.int64, default_value=3),
    keys.KEY_LABEL_ENCODED: tf.io.FixedLenFeature((), tf.string, default_value=""),
    keys.KEY_LABEL_FORMAT: tf.io.FixedLenFeature((), tf.string, default_value="png"),
}


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses one serialized example into its raw (still encoded) features, keyed as written."""
    return tf.io.parse_single_example(serialized, _FEATURE_SPEC)


def parse_filename(serialized: tf.Tensor) -> tf.Tensor:
    """Parses only the example name, cheaply, e.g. to filter records by name."""
    spec = {keys.KEY_IMAGE_FILENAME: _FEATURE_SPEC[keys.KEY_IMAGE_FILENAME]}
    return tf.io.parse_single_example(serialized, spec)[keys.KEY_IMAGE_FILENAME]


def shard_paths(output_dir: str, split: str, num_shards: int) -> list[str]:
    """The final paths of `split`'s shards, named '{split}-%05d-of-%05d.tfrecord'."""
    return [
        os.path.join(output_dir, keys.SHARD_PATTERN.format(
            split=split, index=index, num_shards=num_shards))
        for index in range(num_shards)
    ]


def existing_shards(data_dir: str, split: str, file_pattern: str = "{split}-*.tfrecord"
                    ) -> list[str]:
    """The sorted shards of `split` present in `data_dir`."""
    return sorted(tf.io.gfile.glob(os.path.join(data_dir, file_pattern.format(split=split))))


class ShardedWriter:
    """Writes one split's examples round-robin into shards under temporary names.

    Nothing is visible under the final names until `commit()`: it renames every shard, then
    deletes shards of the same split left by an earlier run with another shard count, and
    writes the filenames index. `abort()` (or leaving the `with` block on an exception)
    deletes the temporary files, so a failed conversion leaves no partial or corrupt shard
    (nor an empty output folder that it created).
    """

    def __init__(self, output_dir: str, split: str, num_shards: int):
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        # Removed again by abort() when still empty: a failed conversion leaves no folder.
        self._created_dirs = script_hygiene.missing_dirs(output_dir)
        os.makedirs(output_dir, exist_ok=True)
        self._output_dir = output_dir
        self._split = split
        self._final = shard_paths(output_dir, split, num_shards)
        # Hidden and suffixed, so no '{split}-*.tfrecord' glob can pick a temporary file up.
        self._temp = [
            os.path.join(output_dir, f".{os.path.basename(p)}.tmp-{os.getpid()}")
            for p in self._final
        ]
        self._writers = [tf.io.TFRecordWriter(p) for p in self._temp]
        self._names: list[str] = []
        self._done = False

    @property
    def count(self) -> int:
        """Examples written so far."""
        return len(self._names)

    def write(self, example: tf.train.Example, name: str) -> None:
        """Appends one example (named `name`) to the next shard."""
        # Deterministic: the feature map is otherwise serialised in an order that changes from
        # process to process, and equal inputs must give byte-identical shards.
        self._writers[len(self._names) % len(self._writers)].write(
            example.SerializeToString(deterministic=True))
        self._names.append(name)

    def _close(self) -> None:
        for writer in self._writers:
            writer.close()

    def commit(self) -> list[str]:
        """Publishes the shards under their final names; returns their paths."""
        self._close()
        for temp, final in zip(self._temp, self._final):
            os.replace(temp, final)
        keep = set(self._final)
        for stale in existing_shards(self._output_dir, self._split):
            if stale not in keep:
                os.remove(stale)
        atomic_write.write_text(
            os.path.join(self._output_dir, FILENAMES_INDEX.format(split=self._split)),
            "".join(f"{n}\n" for n in self._names))
        self._done = True
        return list(self._final)

    def abort(self) -> None:
        """Deletes the temporary shards, and the output folder if this writer created it and it
    is empty; the final names are left untouched."""
        self._close()
        for temp in self._temp:
            if os.path.exists(temp):
                os.remove(temp)
        script_hygiene.remove_empty_dirs(self._created_dirs)
        self._done = True

    def __enter__(self) -> "ShardedWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.abort()


def read_filenames_index(data_dir: str, split: str) -> list[str] | None:
    """The example names of `split` from its index file, or None when there is none."""
    path = os.path.join(data_dir, FILENAMES_INDEX.format(split=split))
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def scan_filenames(files: Sequence[str]) -> list[str]:
    """The example names stored in `files`, in record order (reads every record)."""
    dataset = tf.data.TFRecordDataset(list(files)).map(parse_filename)
    return [n.decode("utf-8") for n in dataset.as_numpy_iterator()]


def leftover_temp_files(output_dir: str) -> list[str]:
    """Temporary shard files in `output_dir` (there should be none after any conversion)."""
    return sorted(glob.glob(os.path.join(output_dir, ".*.tmp-*")))


def iterate_examples(files: Iterable[str]) -> Iterable[dict]:
    """Yields every record of `files` parsed to numpy values (for tests and inspection)."""
    dataset = tf.data.TFRecordDataset(list(files)).map(parse_example)
    yield from dataset.as_numpy_iterator()
