"""PASCAL VOC and ADE20K converters: pairing, label mapping, round trip and bad input."""

from __future__ import annotations

import functools
import io
import os

import numpy as np
import pytest
from PIL import Image

from auto_deeplab_datasets import ade20k, cli, conversion, keys, registry, tfrecord_io, voc
from tests import data_helpers as h


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def by_name(out, split):
    return {r[keys.KEY_IMAGE_FILENAME].decode(): r
            for r in tfrecord_io.iterate_examples(tfrecord_io.existing_shards(out, split))}


# --- PASCAL VOC -----------------------------------------------------------------------------


def make_voc(root, ids_by_split, size=(10, 14), seed=0):
    rng = np.random.default_rng(seed)
    labels = {}
    for split, ids in ids_by_split.items():
        list_file = os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")
        os.makedirs(os.path.dirname(list_file), exist_ok=True)
        with open(list_file, "w") as f:
            f.write("".join(f"{i}\n" for i in ids))
        for i in ids:
            h.write_jpeg(os.path.join(root, "JPEGImages", f"{i}.jpg"), h.random_image(rng, *size))
            label = rng.choice(np.array([*range(21), 255], np.uint8), size=size)
            h.write_palette_png(os.path.join(root, "SegmentationClass", f"{i}.png"), label)
            labels[i] = label
    return labels


def convert_voc(root, out, splits, **kwargs):
    return cli.convert_splits(
        registry.get("pascal_voc"), functools.partial(voc.discover, root, **kwargs),
        list(splits), output_dir=out, num_shards=2, num_workers=2, stream=None)


def test_voc_round_trip_palette_labels_and_jpeg_bytes(tmp_path):
    root, out = str(tmp_path / "VOC2012"), str(tmp_path / "out")
    labels = make_voc(root, {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"]})
    results = convert_voc(root, out, ["train", "val"])
    assert [(r.split, r.count) for r in results] == [("train", 2), ("val", 1)]
    records = {**by_name(out, "train"), **by_name(out, "val")}
    assert sorted(records) == sorted(labels)
    for name, label in labels.items():
        record = records[name]
        assert record[keys.KEY_IMAGE_FORMAT] == b"jpeg"
        with open(os.path.join(root, "JPEGImages", f"{name}.jpg"), "rb") as f:
            assert record[keys.KEY_IMAGE_ENCODED] == f.read()
        # The palette index is the class: written back as a plain greyscale PNG.
        written = Image.open(io.BytesIO(record[keys.KEY_LABEL_ENCODED]))
        assert written.mode == "L"
        np.testing.assert_array_equal(np.asarray(written), label)


def test_voc_train_aug_reads_the_aug_folder_and_list(tmp_path):
    root, out = str(tmp_path / "VOC2012"), str(tmp_path / "out")
    make_voc(root, {"train": ["a"]})
    h.write_jpeg(os.path.join(root, "JPEGImages", "b.jpg"), np.zeros((4, 6, 3), np.uint8))
    aug_dir = str(tmp_path / "SegmentationClassAug")
    h.write_png(os.path.join(aug_dir, "a.png"), np.full((10, 14), 3, np.uint8))
    h.write_png(os.path.join(aug_dir, "b.png"), np.full((4, 6), 20, np.uint8))
    aug_list = str(tmp_path / "train_aug.txt")
    with open(aug_list, "w") as f:
        f.write("a\nb\n")
    (result,) = convert_voc(root, out, ["train_aug"], aug_label_dir=aug_dir, aug_list=aug_list)
    assert result.count == 2
    records = by_name(out, "train_aug")
    assert decode_png(records["b"][keys.KEY_LABEL_ENCODED]).tolist() == [[20] * 6] * 4


def test_voc_bad_inputs(tmp_path):
    root = str(tmp_path / "VOC2012")
    make_voc(root, {"train": ["x1", "x2", "x3"]})
    jpeg = os.path.join(root, "JPEGImages", "x3.jpg")
    h.truncate(jpeg, 0.3)
    out = str(tmp_path / "out")
    with pytest.raises(conversion.ConversionError) as err:
        convert_voc(root, out, ["train"])
    assert str(err.value) == f"{jpeg}: cannot decode image (corrupt or truncated file)"
    assert not os.path.exists(out) or os.listdir(out) == []

    os.remove(jpeg)
    with pytest.raises(conversion.ConversionError) as err:
        convert_voc(root, out, ["train"])
    label = os.path.join(root, "SegmentationClass", "x3.png")
    assert str(err.value) == f"{label}: label has no image (expected {jpeg})"

    h.write_palette_png(label, np.full((10, 14), 21, np.uint8))
    h.write_jpeg(jpeg, np.zeros((10, 14, 3), np.uint8))
    with pytest.raises(conversion.ConversionError) as err:
        convert_voc(root, out, ["train"])
    assert str(err.value) == (
        f"{label}: label values 21 are not PASCAL VOC class ids (known: 0-20, 255)")

    with pytest.raises(conversion.ConversionError) as err:
        convert_voc(root, out, ["val"])
    missing_list = os.path.join(root, "ImageSets", "Segmentation", "val.txt")
    assert str(err.value) == f"{missing_list}: split list does not exist"
    assert not os.path.exists(out) or os.listdir(out) == []


# --- ADE20K ---------------------------------------------------------------------------------


def make_ade(root, split_dir, names, size=(9, 11), seed=0):
    rng = np.random.default_rng(seed)
    labels = {}
    for name in names:
        h.write_jpeg(os.path.join(root, "images", split_dir, f"{name}.jpg"),
                     h.random_image(rng, *size))
        label = rng.integers(0, 151, size=size, dtype=np.uint8)
        label[0, :3] = (0, 1, 150)
        h.write_png(os.path.join(root, "annotations", split_dir, f"{name}.png"), label)
        labels[name] = label
    return labels


def convert_ade(root, out, splits, skip_bad=False):
    return cli.convert_splits(
        registry.get("ade20k"), functools.partial(ade20k.discover, root), list(splits),
        output_dir=out, num_shards=2, skip_bad=skip_bad, num_workers=2, stream=None)


def test_ade20k_shifts_classes_and_ignores_other(tmp_path):
    root, out = str(tmp_path / "ADEChallengeData2016"), str(tmp_path / "out")
    train = make_ade(root, "training", ["ADE_train_00000001", "ADE_train_00000002"])
    val = make_ade(root, "validation", ["ADE_val_00000001"], seed=1)
    results = convert_ade(root, out, ["train", "val"])
    assert [(r.split, r.count) for r in results] == [("train", 2), ("val", 1)]
    records = {**by_name(out, "train"), **by_name(out, "val")}
    for name, raw in {**train, **val}.items():
        written = decode_png(records[name][keys.KEY_LABEL_ENCODED])
        expected = np.where(raw == 0, 255, raw.astype(np.int32) - 1)
        np.testing.assert_array_equal(written, expected)
        assert written[0, :3].tolist() == [255, 0, 149]


def test_ade20k_bad_inputs_and_skip_bad(tmp_path):
    root, out = str(tmp_path / "ADEChallengeData2016"), str(tmp_path / "out")
    make_ade(root, "training", ["ADE_train_00000001", "ADE_train_00000002", "ADE_train_00000003"])
    bad_label = os.path.join(root, "annotations", "training", "ADE_train_00000002.png")
    h.write_png(bad_label, np.full((9, 11), 151, np.uint8))
    orphan_image = os.path.join(root, "images", "training", "ADE_train_00000003.jpg")
    os.remove(os.path.join(root, "annotations", "training", "ADE_train_00000003.png"))
    expected_missing = os.path.join(root, "annotations", "training", "ADE_train_00000003.png")

    with pytest.raises(conversion.ConversionError) as err:
        convert_ade(root, out, ["train"])
    assert str(err.value) == f"{orphan_image}: image has no label (expected {expected_missing})"
    assert not os.path.exists(out) or os.listdir(out) == []

    (result,) = convert_ade(root, out, ["train"], skip_bad=True)
    assert result.count == 1
    assert result.skipped == [
        f"{orphan_image}: image has no label (expected {expected_missing})",
        f"{bad_label}: label values 151 are not ADE20K class ids (known: 0-150)",
    ]

    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    with pytest.raises(conversion.ConversionError) as err:
        convert_ade(empty, out, ["val"])
    assert str(err.value) == (
        f"{empty}: no images found for split 'val' (expected images/validation/*.jpg)")
