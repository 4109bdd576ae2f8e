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

from auto_deeplab_tf import common  # noqa: E402
from datasets import cityscapes, cli, conversion, registry, tfds_cityscapes, tfrecord_io  # noqa: E402
from tests import data_helpers as h  # noqa: E402

DESCRIPTOR = registry.get("cityscapes")
NAMES = {"train": "aachen_000000_000019", "val": "frankfurt_000001_000002",
         "test": "berlin_000000_000003"}


def _make_tree_and_zips(root: str, manual_dir: str) -> None:
    label = np.zeros((1024, 2048), np.uint8)
    label[:400], label[400:800, :1000], label[800:] = 7, 26, 1  # road, car, ego vehicle
    for split, name in NAMES.items():
        city = name.split("_")[0]
        image = np.zeros((1024, 2048, 3), np.uint8)
        image[:, :1024] = (10, 20, 30) if split == "train" else (40, 50, 60)
        h.write_png(os.path.join(root, "leftImg8bit", split, city, f"{name}_leftImg8bit.png"),
                    image)
        h.write_png(os.path.join(root, "gtFine", split, city, f"{name}_gtFine_labelIds.png"),
                    label)
    os.makedirs(manual_dir)
    for zip_name, top in (("leftImg8bit_trainvaltest.zip", "leftImg8bit"),
                          ("gtFine_trainvaltest.zip", "gtFine")):
        with zipfile.ZipFile(os.path.join(manual_dir, zip_name), "w") as archive:
            for folder, _, files in os.walk(os.path.join(root, top)):
                for f in files:
                    path = os.path.join(folder, f)
                    archive.write(path, os.path.relpath(path, root))


def _records(out, split):
    return {r[common.KEY_IMAGE_FILENAME].decode(): r
            for r in tfrecord_io.iterate_examples(tfrecord_io.existing_shards(out, split))}


def test_tfds_source_matches_the_file_tree_converter(tmp_path):
    root, manual = str(tmp_path / "cityscapes"), str(tmp_path / "manual")
    _make_tree_and_zips(root, manual)
    from_tfds, from_files = str(tmp_path / "tfds_out"), str(tmp_path / "files_out")
    splits = ["train", "val"]
    results = cli.convert_splits(
        DESCRIPTOR, functools.partial(tfds_cityscapes.discover, manual,
                                      data_dir=str(tmp_path / "tfds_data")),
        splits, output_dir=from_tfds, num_shards=1, num_workers=2, stream=None)
    assert [(r.split, r.count) for r in results] == [("train", 1), ("val", 1)]
    cli.convert_splits(DESCRIPTOR, functools.partial(cityscapes.discover, root), splits,
                       output_dir=from_files, num_shards=1, num_workers=2, stream=None)
    for split in splits:
        tfds_records, file_records = _records(from_tfds, split), _records(from_files, split)
        assert list(tfds_records) == [NAMES[split]]
        # Same image bytes, same remapped labels (labelIds -> trainIds) from either source.
        assert tfds_records == file_records


def test_tfds_source_reports_missing_zips(tmp_path):
    manual = str(tmp_path / "manual")
    os.makedirs(manual)
    with pytest.raises(conversion.ConversionError) as err:
        tfds_cityscapes.discover(manual, "train", data_dir=str(tmp_path / "data"))
    assert str(err.value) == (
        f"{manual}: missing leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip (download "
        "from https://www.cityscapes-dataset.com and place the zips there)")
