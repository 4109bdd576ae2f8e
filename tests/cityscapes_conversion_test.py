"""Cityscapes converter: label mapping, TFRecord round trip, and every kind of bad input."""

from __future__ import annotations

import functools
import io
import os

import numpy as np
import pytest
from PIL import Image

from auto_deeplab_datasets import cityscapes, cli, conversion, keys, registry, tfrecord_io
from tests import data_helpers as h

# SPEC section 6, written out independently of the code under test.
SPEC_LABEL_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                       24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
DESCRIPTOR = registry.get("cityscapes")


def convert(root, out, splits=("train",), skip_bad=False, num_shards=2, stream=None):
    return cli.convert_splits(
        DESCRIPTOR, functools.partial(cityscapes.discover, root), list(splits),
        output_dir=out, num_shards=num_shards, skip_bad=skip_bad, num_workers=2, stream=stream)


def records(out, split):
    return list(tfrecord_io.iterate_examples(tfrecord_io.existing_shards(out, split)))


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def assert_no_output(out):
    """Nothing a reader could pick up, no temporary file, and no folder either: `out` did not
    exist before the failed run, so the run must not leave it behind (even empty)."""
    assert not os.path.exists(out)


def test_label_id_mapping_covers_every_id():
    mapping = cityscapes.label_id_to_train_id()
    for label_id in range(34):
        assert mapping[label_id] == SPEC_LABEL_TO_TRAIN.get(label_id, 255), label_id
    assert mapping[255] == 255  # labelId -1 (license plate) as stored in 8 bits
    assert tuple(SPEC_LABEL_TO_TRAIN) == DESCRIPTOR.train_id_to_label_id


def test_every_label_id_is_remapped_in_the_written_record(tmp_path):
    root, out = str(tmp_path / "cs"), str(tmp_path / "out")
    paths = h.cityscapes_paths(root, "train", "aachen", 0)
    ids = np.array([*range(34), 255], dtype=np.uint8)
    label = np.tile(ids, (2, 1))  # 2 x 35
    h.write_png(paths["image"], np.zeros((2, 35, 3), np.uint8))
    h.write_png(paths["labelIds"], label)
    convert(root, out)
    (record,) = records(out, "train")
    written = decode_png(record[keys.KEY_LABEL_ENCODED])
    expected = [SPEC_LABEL_TO_TRAIN.get(int(i), 255) for i in ids]
    assert written.tolist() == [expected, expected]


def test_round_trip_bytes_shapes_and_names(tmp_path):
    root, out = str(tmp_path / "cs"), str(tmp_path / "out")
    tree = h.make_cityscapes_tree(root, {"train": 3, "val": 2}, size=(8, 12))
    results = convert(root, out, splits=("train", "val"), num_shards=2)
    assert [(r.split, r.count, len(r.shards)) for r in results] == [("train", 3, 2), ("val", 2, 2)]
    assert [os.path.basename(p) for p in results[0].shards] == [
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    for split in ("train", "val"):
        by_name = {r[keys.KEY_IMAGE_FILENAME].decode(): r for r in records(out, split)}
        assert sorted(by_name) == sorted(e["name"] for e in tree[split])
        assert tfrecord_io.read_filenames_index(out, split) is not None
        for entry in tree[split]:
            record = by_name[entry["name"]]
            with open(entry["image"], "rb") as f:
                assert record[keys.KEY_IMAGE_ENCODED] == f.read()  # image bytes kept as is
            assert record[keys.KEY_IMAGE_FORMAT] == b"png"
            assert record[keys.KEY_LABEL_FORMAT] == b"png"
            assert (record[keys.KEY_IMAGE_HEIGHT], record[keys.KEY_IMAGE_WIDTH]) == (8, 12)
            assert record[keys.KEY_IMAGE_CHANNELS] == 3
            lut = np.array([SPEC_LABEL_TO_TRAIN.get(i, 255) for i in range(256)], np.uint8)
            np.testing.assert_array_equal(decode_png(record[keys.KEY_LABEL_ENCODED]),
                                          lut[entry["label_array"]])


def test_train_ids_files_are_preferred_and_kept(tmp_path):
    root, out = str(tmp_path / "cs"), str(tmp_path / "out")
    tree = h.make_cityscapes_tree(root, {"train": 2}, label_kind="labelTrainIds")
    # A labelIds file beside it must be ignored in favour of the trainIds one.
    h.write_png(tree["train"][0]["labelIds"], np.full((8, 12), 7, np.uint8))
    convert(root, out)
    by_name = {r[keys.KEY_IMAGE_FILENAME].decode(): r for r in records(out, "train")}
    for entry in tree["train"]:
        np.testing.assert_array_equal(
            decode_png(by_name[entry["name"]][keys.KEY_LABEL_ENCODED]), entry["label_array"])


def test_shards_from_an_earlier_run_with_more_shards_are_removed(tmp_path):
    root, out = str(tmp_path / "cs"), str(tmp_path / "out")
    h.make_cityscapes_tree(root, {"train": 3})
    convert(root, out, num_shards=3)
    convert(root, out, num_shards=1)
    assert sorted(os.listdir(out)) == ["train-00000-of-00001.tfrecord", "train.filenames.txt"]


# --- bad input: one tree per case, so each message can be asserted exactly. ---------------


def _good_tree(tmp_path, count=3):
    root = str(tmp_path / "cs")
    return root, h.make_cityscapes_tree(root, {"train": count})["train"]


def test_image_without_label(tmp_path):
    root, entries = _good_tree(tmp_path)
    os.remove(entries[1]["labelIds"])
    out = str(tmp_path / "out")
    with pytest.raises(conversion.ConversionError) as err:
        convert(root, out)
    assert str(err.value) == (
        f"{entries[1]['image']}: image has no label (expected {entries[1]['labelIds']})")
    assert_no_output(out)


def test_label_without_image(tmp_path):
    root, entries = _good_tree(tmp_path)
    os.remove(entries[2]["image"])
    out = str(tmp_path / "out")
    with pytest.raises(conversion.ConversionError) as err:
        convert(root, out)
    assert str(err.value) == (
        f"{entries[2]['labelIds']}: label has no image (expected {entries[2]['image']})")
    assert_no_output(out)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_image(tmp_path, damage):
    root, entries = _good_tree(tmp_path)
    bad = entries[2]["image"]  # the last one, so earlier examples were already written
    if damage == "truncated":
        h.truncate(bad)
    else:
        with open(bad, "r+b") as f:
            f.seek(40)
            f.write(b"\x00garbage" * 8)
    out = str(tmp_path / "out")
    with pytest.raises(conversion.ConversionError) as err:
        convert(root, out)
    assert str(err.value) == f"{bad}: cannot decode image (corrupt or truncated file)"
    assert_no_output(out)


def test_truncated_label(tmp_path):
    root, entries = _good_tree(tmp_path)
    bad = entries[0]["labelIds"]
    h.truncate(bad)
    out = str(tmp_path / "out")
    with pytest.raises(conversion.ConversionError) as err:
        convert(root, out)
    assert str(err.value) == f"{bad}: cannot decode label PNG (corrupt or truncated file)"
    assert_no_output(out)


def test_sizes_differ(tmp_path):
    root, entries = _good_tree(tmp_path)
    h.write_png(entries[1]["labelIds"], np.zeros((8, 10), np.uint8))
    out = str(tmp_path / "out")
    with pytest.raises(conversion.ConversionError) as err:
        convert(root, out)
    assert str(err.value) == (
        f"{entries[1]['labelIds']}: label is 8x10 (HxW) but its image "
        f"{entries[1]['image']} is 8x12")
    assert_no_output(out)


def test_label_values_outside_known_ids(tmp_path):
    root, entries = _good_tree(tmp_path)
    label = np.zeros((8, 12), np.uint8)
    label[0, 0], label[1, 1] = 200, 40
    h.write_png(entries[1]["labelIds"], label)
    out = str(tmp_path / "out")
    with pytest.raises(conversion.ConversionError) as err:
        convert(root, out)
    assert str(err.value) == (
        f"{entries[1]['labelIds']}: label values 40, 200 are not Cityscapes labelIds "
        "(known: 0-33, 255)")
    assert_no_output(out)


def test_train_id_values_outside_known_ids(tmp_path):
    root = str(tmp_path / "cs")
    entries = h.make_cityscapes_tree(root, {"train": 1}, label_kind="labelTrainIds")["train"]
    h.write_png(entries[0]["labelTrainIds"], np.full((8, 12), 19, np.uint8))
    with pytest.raises(conversion.ConversionError) as err:
        convert(root, str(tmp_path / "out"))
    assert str(err.value) == (
        f"{entries[0]['labelTrainIds']}: label values 19 are not trainIds (known: 0-18, 255)")


def test_colour_label_is_rejected(tmp_path):
    root, entries = _good_tree(tmp_path, count=1)
    h.write_png(entries[0]["labelIds"], np.zeros((8, 12, 3), np.uint8))
    with pytest.raises(conversion.ConversionError) as err:
        convert(root, str(tmp_path / "out"))
    assert str(err.value) == (
        f"{entries[0]['labelIds']}: label must be a single-channel 8-bit PNG, got mode RGB")


def test_missing_and_empty_root(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(conversion.ConversionError) as err:
        convert(missing, str(tmp_path / "out"))
    assert str(err.value) == f"{missing}: dataset root does not exist"
    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    with pytest.raises(conversion.ConversionError) as err:
        convert(empty, str(tmp_path / "out"))
    assert str(err.value) == (
        f"{empty}: no images found for split 'train' (expected "
        "leftImg8bit/train/<city>/<city>_<seq>_<frame>_leftImg8bit.png)")
    assert_no_output(str(tmp_path / "out"))


def test_failed_run_removes_only_the_folders_it_created(tmp_path):
    root, entries = _good_tree(tmp_path)
    h.truncate(entries[2]["image"])
    nested = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(conversion.ConversionError):
        convert(root, str(nested))
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(conversion.ConversionError):
        convert(root, str(existing))
    assert existing.is_dir() and os.listdir(existing) == []  # there before: kept


def test_failed_rerun_keeps_the_previous_good_shards(tmp_path):
    root, entries = _good_tree(tmp_path)
    out = str(tmp_path / "out")
    convert(root, out)
    before = {n: open(os.path.join(out, n), "rb").read() for n in sorted(os.listdir(out))}
    h.truncate(entries[2]["image"])
    with pytest.raises(conversion.ConversionError):
        convert(root, out)
    after = {n: open(os.path.join(out, n), "rb").read() for n in sorted(os.listdir(out))}
    assert after == before


def test_skip_bad_converts_the_rest_and_lists_what_was_skipped(tmp_path):
    root, entries = _good_tree(tmp_path, count=4)
    os.remove(entries[0]["labelIds"])
    h.truncate(entries[3]["image"])
    out = str(tmp_path / "out")
    stream = io.StringIO()
    (result,) = convert(root, out, skip_bad=True, stream=stream)
    assert result.count == 2
    assert result.skipped == [
        f"{entries[0]['image']}: image has no label (expected {entries[0]['labelIds']})",
        f"{entries[3]['image']}: cannot decode image (corrupt or truncated file)",
    ]
    names = sorted(r[keys.KEY_IMAGE_FILENAME].decode() for r in records(out, "train"))
    assert names == [entries[1]["name"], entries[2]["name"]]
    text = stream.getvalue()
    assert "skipped 2 bad input(s)" in text and result.skipped[1] in text


def test_summary_reports_counts_rate_and_official_size_warning(tmp_path):
    root, _ = _good_tree(tmp_path)
    stream = io.StringIO()
    convert(root, str(tmp_path / "out"), stream=stream)
    text = stream.getvalue()
    assert "train: 3/3 (100%)" in text and "images/s" in text
    assert "  train: 3 examples in 2 shards" in text
    assert ("WARNING: cityscapes split 'train' has 3 examples, the official split has 2975 "
            "(incomplete download or subset?)") in text
