"""The TFDS source: 'cityscapes/semantic_segmentation' built offline from zips the test makes.

TFDS's builder insists on 1024x2048 images and on train/val/test folders in both zips, so the
test writes one full-size (but flat, hence tiny) PNG per split.
"""

from __future__ import annotations

import functools
import os
import zipfile

import numpy as np
import pytest

pytest.importorskip("importlib_resources", reason="tfds 4.9.10 on Python 3.11 needs it")
pytest.importorskip("tensorflow_datasets")

from auto_deeplab_datasets import (  # noqa: E402
    cityscapes, cli, conversion, keys, registry, tfds_cityscapes, tfrecord_io)
from tests import data_helpers as h  # noqa: E402
from tests.converter_scripts_test import run_module  # noqa: E402

DESCRIPTOR = registry.get("cityscapes")
# Several train images: TFDS stores a split in an order of its own (a hash of each key), so
# the test can see whether the converter restores the sorted order.
NAMES = {"train": ["aachen_000000_000019", "aachen_000001_000019", "aachen_000002_000019",
                   "bochum_000000_000313", "bochum_000000_000600"],
         "val": ["frankfurt_000001_000002"],
         "test": ["berlin_000000_000003"]}


def _make_tree_and_zips(root: str, manual_dir: str) -> None:
    label = np.zeros((1024, 2048), np.uint8)
    label[:400], label[400:800, :1000], label[800:] = 7, 26, 1  # road, car, ego vehicle
    for split, names in NAMES.items():
        for i, name in enumerate(names):
            city = name.split("_")[0]
            image = np.zeros((1024, 2048, 3), np.uint8)
            image[:, :1024] = (10, 20 + i, 30) if split == "train" else (40, 50, 60)
            h.write_png(os.path.join(root, "leftImg8bit", split, city,
                                     f"{name}_leftImg8bit.png"), image)
            h.write_png(os.path.join(root, "gtFine", split, city,
                                     f"{name}_gtFine_labelIds.png"), label)
    os.makedirs(manual_dir)
    for zip_name, top in (("leftImg8bit_trainvaltest.zip", "leftImg8bit"),
                          ("gtFine_trainvaltest.zip", "gtFine")):
        with zipfile.ZipFile(os.path.join(manual_dir, zip_name), "w") as archive:
            for folder, _, files in os.walk(os.path.join(root, top)):
                for f in files:
                    path = os.path.join(folder, f)
                    archive.write(path, os.path.relpath(path, root))


def _records(out, split):
    """Every record of `split`, parsed, in the order the shards hold them."""
    return list(tfrecord_io.iterate_examples(tfrecord_io.existing_shards(out, split)))


def _names(records):
    return [r[keys.KEY_IMAGE_FILENAME].decode() for r in records]


def _assert_same_records(records_a, records_b):
    assert len(records_a) == len(records_b)
    for a, b in zip(records_a, records_b):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == b[key], key


def test_tfds_source_gives_the_file_tree_converters_records_in_its_order(tmp_path):
    """The README's promise: the same records, in the same order, whichever the source; and
    so the same filenames index (the order the search's A/B split is drawn from)."""
    root, manual = str(tmp_path / "cityscapes"), str(tmp_path / "manual")
    _make_tree_and_zips(root, manual)
    from_tfds, from_files = str(tmp_path / "tfds_out"), str(tmp_path / "files_out")
    splits = ["train", "val"]
    # The premise: TFDS itself hands the train images over in another order.
    samples, _ = tfds_cityscapes.discover(manual, "train", data_dir=str(tmp_path / "tfds_data"))
    import tensorflow_datasets as tfds
    stored = [e["image_id"].decode() for e in tfds.as_numpy(
        tfds.builder(tfds_cityscapes.BUILDER_NAME, data_dir=str(tmp_path / "tfds_data"))
        .as_dataset(split="train", shuffle_files=False))]
    assert sorted(stored) == NAMES["train"] and stored != NAMES["train"]

    for num_shards in (1, 2):
        results = cli.convert_splits(
            DESCRIPTOR, functools.partial(tfds_cityscapes.discover, manual,
                                          data_dir=str(tmp_path / "tfds_data")),
            splits, output_dir=from_tfds, num_shards=num_shards, num_workers=2, stream=None)
        assert [(r.split, r.count) for r in results] == [("train", 5), ("val", 1)]
        cli.convert_splits(DESCRIPTOR, functools.partial(cityscapes.discover, root), splits,
                           output_dir=from_files, num_shards=num_shards, num_workers=2,
                           stream=None)
        for split in splits:
            tfds_records, file_records = _records(from_tfds, split), _records(from_files, split)
            if num_shards == 1:
                assert _names(tfds_records) == NAMES[split]
            # Same image bytes, same remapped labels (labelIds -> trainIds), same order.
            _assert_same_records(tfds_records, file_records)
            assert (tfrecord_io.read_filenames_index(from_tfds, split)
                    == tfrecord_io.read_filenames_index(from_files, split) == NAMES[split])
            # And so the shards themselves are byte-identical.
            tfds_shards = tfrecord_io.existing_shards(from_tfds, split)
            file_shards = tfrecord_io.existing_shards(from_files, split)
            assert [os.path.basename(p) for p in tfds_shards] == [
                os.path.basename(p) for p in file_shards]
            for a, b in zip(tfds_shards, file_shards):
                with open(a, "rb") as fa, open(b, "rb") as fb:
                    assert fa.read() == fb.read(), a


def test_tfds_source_prints_one_line_instead_of_tfds_progress(tmp_path):
    """The script as a user runs it: TFDS's "Downloading and preparing" (nothing is
    downloaded), its progress bars and info log lines are replaced by one line."""
    root, manual = str(tmp_path / "cityscapes"), str(tmp_path / "manual")
    _make_tree_and_zips(root, manual)
    tfds_data = str(tmp_path / "tfds_data")
    args = ("--source=tfds", f"--tfds_manual_dir={manual}", f"--tfds_data_dir={tfds_data}",
            f"--output_dir={tmp_path / 'out'}", "--splits=val")
    first = run_module("datasets.build_cityscapes_tfrecord", *args)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.splitlines()[0] == (
        f"TFDS: preparing its copy of {tfds_cityscapes.BUILDER_NAME} in {tfds_data} from the "
        f"zips in {manual} (nothing is downloaded; done once)")
    assert first.stdout.splitlines()[1].startswith("val: 1/1 (100%)")
    for noise in ("Downloading and preparing", "Generating", "Extraction", "%|",
                  "dataset_info", "writer.py"):
        assert noise not in first.stdout + first.stderr, noise
    again = run_module("datasets.build_cityscapes_tfrecord", *args)  # prepared: no line
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.splitlines()[0].startswith("val: 1/1 (100%)")
    assert "dataset_info" not in again.stderr and "Reusing" not in again.stderr


def test_tfds_source_reports_missing_zips(tmp_path):
    manual = str(tmp_path / "manual")
    os.makedirs(manual)
    with pytest.raises(conversion.ConversionError) as err:
        tfds_cityscapes.discover(manual, "train", data_dir=str(tmp_path / "data"))
    assert str(err.value) == (
        f"{manual}: missing leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip (download "
        "from https://www.cityscapes-dataset.com and place the zips there)")
