"""Cityscapes read through TensorFlow Datasets ('cityscapes/semantic_segmentation').

TFDS builds its own copy from the official zips in a manual-download folder
(leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip); this module then hands its encoded
images and labelId PNGs to the same validation and writing as the file-tree converter, sorted
by image id as the file-tree converter sorts its files, so both sources give the same records
in the same order (byte for byte: the writer serialises deterministically). Nothing is
downloaded: TFDS only reads the zips.

TFDS stores a split in an order of its own (shuffled by a hash of each key), and its TFRecord
files cannot be read at an index, so the split is read twice: once for every record's image
id and byte offset (`tf.data`, which checks each record's checksum), then record by record in
id order from those offsets. Only the index is held in memory, never the images.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import sys
from typing import Callable, Iterator, TextIO

from . import cityscapes, conversion

BUILDER_NAME = "cityscapes/semantic_segmentation"
ZIP_FILES = ("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip")
# Our split names -> TFDS split names.
TFDS_SPLITS = {"train": "train", "val": "validation", "test": "test"}
# The features of one TFDS example this module reads.
IMAGE_ID, IMAGE, LABEL = "image_id", "image_left", "segmentation_label"
# TFRecord framing: uint64 length, uint32 CRC of the length, the data, uint32 CRC of the data.
_RECORD_HEADER_BYTES = 12
_RECORD_OVERHEAD_BYTES = 16
# `discover`'s default stream: sys.stdout when called (it may have been replaced since import).
STDOUT = object()


class LazySamples:
    """A sized, re-iterable stream of samples that holds no image in memory."""

    def __init__(self, count: int, make_iterator: Callable[[], Iterator[conversion.Sample]]):
        self._count, self._make_iterator = count, make_iterator

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[conversion.Sample]:
        return self._make_iterator()


@contextlib.contextmanager
def _quiet_tfds():
    """Hides what TFDS says while it builds its copy: "Downloading and preparing dataset"
    (nothing is downloaded), about sixty progress-bar lines and its info log lines. Its
    errors still raise."""
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()  # TFDS offers no way to read the setting back
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        absl_logger.setLevel(level)


def _prepared_builder(manual_dir: str, data_dir: str | None, stream: TextIO | None):
    # Imported here: TFDS is only needed by this optional source, and it is slow to import.
    import tensorflow_datasets as tfds

    if not os.path.isdir(manual_dir):
        raise conversion.ConversionError(conversion.msg_missing_root(manual_dir))
    missing = [z for z in ZIP_FILES if not os.path.isfile(os.path.join(manual_dir, z))]
    if missing:
        raise conversion.ConversionError(
            f"{manual_dir}: missing {', '.join(missing)} (download from "
            "https://www.cityscapes-dataset.com and place the zips there)")
    with _quiet_tfds():
        builder = tfds.builder(BUILDER_NAME, data_dir=data_dir)
        if builder.is_prepared():
            return builder
        if stream is not None:
            print(f"TFDS: preparing its copy of {BUILDER_NAME} in {builder.data_dir_root} "
                  f"from the zips in {manual_dir} (nothing is downloaded; done once)",
                  file=stream, flush=True)
        try:
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
        except Exception as err:  # TFDS raises many types; all mean the zips are unusable.
            raise conversion.ConversionError(
                f"{manual_dir}: TFDS could not build {BUILDER_NAME}: {err}") from err
    return builder


def _id_index(paths: list[str]) -> list[tuple[str, str, int]]:
    """(image id, file, byte offset) of every record of `paths`, sorted by image id."""
    import tensorflow as tf

    spec = {IMAGE_ID: tf.io.FixedLenFeature((), tf.string)}

    def id_and_length(record):
        return tf.io.parse_single_example(record, spec)[IMAGE_ID], tf.strings.length(record)

    index = []
    for path in paths:
        offset = 0
        for image_id, length in tf.data.TFRecordDataset(path).map(
                id_and_length).as_numpy_iterator():
            index.append((image_id.decode("utf-8"), path, offset))
            offset += _RECORD_OVERHEAD_BYTES + int(length)
    index.sort()
    return index


def _read_record(f, path: str, offset: int) -> bytes:
    """The data of the TFRecord record at `offset` of the open file `f` (checked by the first
    pass already)."""
    f.seek(offset)
    header = f.read(_RECORD_HEADER_BYTES)
    (length,) = struct.unpack("<Q", header[:8])
    data = f.read(length)
    if len(header) != _RECORD_HEADER_BYTES or len(data) != length:
        raise conversion.ConversionError(f"{path}: TFDS record at byte {offset} is truncated")
    return data


def discover(manual_dir: str, split: str, *, data_dir: str | None = None,
             stream: TextIO | None | object = STDOUT) -> tuple[LazySamples, list[str]]:
    """Prepares the TFDS copy (once) and returns a lazy stream of `split`'s samples, sorted
    by image id.

    Args:
      manual_dir: folder holding the official Cityscapes zips.
      split: 'train', 'val' or 'test'.
      data_dir: where TFDS keeps its prepared copy (TFDS default: ~/tensorflow_datasets).
      stream: where the one line saying that TFDS prepares its copy goes (default: the
        sys.stdout of the moment; None: nowhere).

    Returns:
      (samples, problems): a sized lazy stream whose samples carry the encoded bytes and the
      labelId mapping; TFDS pairs the files itself, so `problems` is always empty.

    Raises:
      ConversionError: missing zips, TFDS failed to read them, or its copy is not stored as
        TFRecord files.
    """
    import tensorflow as tf

    if split not in TFDS_SPLITS:
        raise conversion.ConversionError(
            f"TFDS Cityscapes has no split {split!r}; known: {', '.join(TFDS_SPLITS)}")
    builder = _prepared_builder(manual_dir, data_dir,
                                sys.stdout if stream is STDOUT else stream)
    tfds_split = TFDS_SPLITS[split]
    file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
    if file_format not in (None, "tfrecord"):
        raise conversion.ConversionError(
            f"{builder.data_dir}: TFDS's copy is stored as {file_format}; this converter reads "
            "TFRecord copies (TFDS's default): pass another --tfds_data_dir")
    info = builder.info.splits[tfds_split]
    count = info.num_examples
    paths = [os.fspath(p) for p in info.filepaths]
    index: list[tuple[str, str, int]] = []

    def samples() -> Iterator[conversion.Sample]:
        if not index:
            index.extend(_id_index(paths))
            if len(index) != count:
                raise conversion.ConversionError(
                    f"{builder.data_dir}: TFDS's {tfds_split} files hold {len(index)} "
                    f"records, its metadata says {count}")
        with contextlib.ExitStack() as files:
            opened = {p: files.enter_context(tf.io.gfile.GFile(p, "rb")) for p in paths}
            for name, path, offset in index:
                example = tf.train.Example.FromString(_read_record(opened[path], path, offset))
                feature = example.features.feature
                where = f"tfds:{BUILDER_NAME}/{tfds_split}/{name}"
                yield conversion.Sample(
                    name=name,
                    image_path=f"{where}/{IMAGE}",
                    label_path=f"{where}/{LABEL}",
                    # TFDS stores labelIds (0-33), not trainIds.
                    label_mapping=cityscapes.LABEL_IDS,
                    # The PNG bytes as stored: the converter decodes and checks them itself.
                    image_bytes=feature[IMAGE].bytes_list.value[0],
                    label_bytes=feature[LABEL].bytes_list.value[0])

    return LazySamples(count, samples), []
