"""Cityscapes read through TensorFlow Datasets ('cityscapes/semantic_segmentation').

TFDS builds its own copy from the official zips in a manual-download folder
(leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip); this module then hands its encoded
images and labelId PNGs to the same validation and writing as the file-tree converter, so
both sources give identical shards. Nothing is downloaded: TFDS only reads the zips.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator

from datasets import cityscapes, conversion

BUILDER_NAME = "cityscapes/semantic_segmentation"
ZIP_FILES = ("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip")
# Our split names -> TFDS split names.
TFDS_SPLITS = {"train": "train", "val": "validation", "test": "test"}


class LazySamples:
    """A sized, re-iterable stream of samples that holds no image in memory."""

    def __init__(self, count: int, make_iterator: Callable[[], Iterator[conversion.Sample]]):
        self._count, self._make_iterator = count, make_iterator

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[conversion.Sample]:
        return self._make_iterator()


def _prepared_builder(manual_dir: str, data_dir: str | None):
    # Imported here: TFDS is only needed by this optional source, and it is slow to import.
    import tensorflow_datasets as tfds

    if not os.path.isdir(manual_dir):
        raise conversion.ConversionError(conversion.msg_missing_root(manual_dir))
    missing = [z for z in ZIP_FILES if not os.path.isfile(os.path.join(manual_dir, z))]
    if missing:
        raise conversion.ConversionError(
            f"{manual_dir}: missing {', '.join(missing)} (download from "
            "https://www.cityscapes-dataset.com and place the zips there)")
    builder = tfds.builder(BUILDER_NAME, data_dir=data_dir)
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except Exception as err:  # TFDS raises many types; all mean the zips are unusable.
        raise conversion.ConversionError(
            f"{manual_dir}: TFDS could not build {BUILDER_NAME}: {err}") from err
    return builder


def discover(manual_dir: str, split: str, *, data_dir: str | None = None
             ) -> tuple[LazySamples, list[str]]:
    """Prepares the TFDS copy (once) and returns a lazy stream of `split`'s samples.

    Args:
      manual_dir: folder holding the official Cityscapes zips.
      split: 'train', 'val' or 'test'.
      data_dir: where TFDS keeps its prepared copy (TFDS default: ~/tensorflow_datasets).

    Returns:
      (samples, problems): a sized lazy stream whose samples carry the encoded bytes and the
      labelId mapping; TFDS pairs the files itself, so `problems` is always empty.

    Raises:
      ConversionError: missing zips, or TFDS failed to read them.
    """
    import tensorflow_datasets as tfds

    if split not in TFDS_SPLITS:
        raise conversion.ConversionError(
            f"TFDS Cityscapes has no split {split!r}; known: {', '.join(TFDS_SPLITS)}")
    builder = _prepared_builder(manual_dir, data_dir)
    tfds_split = TFDS_SPLITS[split]
    count = builder.info.splits[tfds_split].num_examples
    dataset = builder.as_dataset(
        split=tfds_split,
        shuffle_files=False,
        # Keep the PNG bytes as stored: the converter decodes and checks them itself.
        decoders={"image_left": tfds.decode.SkipDecoding(),
                  "segmentation_label": tfds.decode.SkipDecoding()})

    def samples() -> Iterator[conversion.Sample]:
        for example in tfds.as_numpy(dataset):
            name = example["image_id"].decode("utf-8")
            where = f"tfds:{BUILDER_NAME}/{tfds_split}/{name}"
            yield conversion.Sample(
                name=name,
                image_path=f"{where}/image_left",
                label_path=f"{where}/segmentation_label",
                # TFDS stores labelIds (0-33), not trainIds.
                label_mapping=cityscapes.LABEL_IDS,
                image_bytes=example["image_left"],
                label_bytes=example["segmentation_label"])

    return LazySamples(count, samples), []
