"""tf.data pipelines: the A/B split, crop/pad/flip, determinism, eval sizes, DeepLab files."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from auto_deeplab_datasets import cityscapes, cli, input_pipeline as ip, keys, registry
from tests import data_helpers as h

DESCRIPTOR = registry.get("cityscapes")
NUM_TRAIN = 9


def _convert(root, out, splits):
    cli.convert_splits(DESCRIPTOR, functools.partial(cityscapes.discover, root), splits,
                       output_dir=out, num_shards=3, num_workers=2, stream=None)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Train: example i is 10x12 with every label pixel = i; val: two sizes, random labels."""
    base = tmp_path_factory.mktemp("pipeline")
    root, out = str(base / "cs"), str(base / "tfrecord")
    rng = np.random.default_rng(0)
    for i in range(NUM_TRAIN):
        paths = h.cityscapes_paths(root, "train", "bonn", i)
        h.write_png(paths["image"], h.random_image(rng, 10, 12))
        h.write_png(paths["labelTrainIds"], np.full((10, 12), i, np.uint8))
    val = {}
    for i, size in enumerate([(10, 12), (14, 9)]):
        paths = h.cityscapes_paths(root, "val", "lindau", i)
        image = h.random_image(rng, *size)
        label = rng.choice(np.array([*range(19), 255], np.uint8), size=size)
        h.write_png(paths["image"], image)
        h.write_png(paths["labelTrainIds"], label)
        val[paths["name"]] = (image, label)
    _convert(root, out, ["train", "val"])
    return {"dir": out, "val": val, "root": root}


def test_normalize_image():
    out = ip.normalize_image(tf.constant([0, 255], tf.uint8)).numpy()
    assert out.dtype == np.float32 and out.tolist() == [-1.0, 1.0]


def test_search_split_is_disjoint_covering_and_stable(data, tmp_path):
    names = ip.split_names(DESCRIPTOR, data["dir"], "train")
    assert len(names) == NUM_TRAIN
    a, b = ip.search_split(DESCRIPTOR, data["dir"], str(tmp_path / "run1"), seed=7)
    assert not set(a) & set(b)
    assert sorted(a + b) == names
    assert (len(a), len(b)) == (5, 4)
    split_file = tmp_path / "run1" / keys.SEARCH_SPLIT_FILENAME
    saved = json.loads(split_file.read_text())
    assert (saved["train_a"], saved["train_b"], saved["seed"]) == (a, b, 7)
    # Resume: read back from the file; a second run with the same seed draws the same halves.
    assert ip.search_split(DESCRIPTOR, data["dir"], str(tmp_path / "run1"), seed=7) == (a, b)
    assert ip.search_split(DESCRIPTOR, data["dir"], str(tmp_path / "run2"), seed=7) == (a, b)
    assert ip.search_split(DESCRIPTOR, data["dir"], str(tmp_path / "run3"), seed=8) != (a, b)
    with pytest.raises(ValueError, match="was written for seed=7, this run has 8"):
        ip.search_split(DESCRIPTOR, data["dir"], str(tmp_path / "run1"), seed=8)


def test_search_batches_come_from_their_half(data, tmp_path):
    model_dir = str(tmp_path / "run")
    a, b = ip.search_split(DESCRIPTOR, data["dir"], model_dir, seed=3)
    steps = ip.search_steps_per_epoch(DESCRIPTOR, data["dir"], model_dir, 2, seed=3)
    assert steps == 2
    ds = ip.search_datasets(DESCRIPTOR, data["dir"], model_dir, batch_size=2, crop_size=16,
                            scale=1.0, seed=3)
    spec = ds.element_spec
    assert spec[0][0].shape == (2, 16, 16, 3) and spec[0][0].dtype == tf.float32
    assert spec[1][1].shape == (2, 16, 16) and spec[1][1].dtype == tf.int32
    index_of = {n: int(n.split("_")[1]) for n in a + b}  # label value == example index
    seen_a, seen_b = set(), set()
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == steps
    for (images_a, labels_a), (images_b, labels_b) in batches:
        assert images_a.min() >= -1.0 and images_a.max() <= 1.0
        seen_a |= set(np.unique(labels_a).tolist()) - {255}
        seen_b |= set(np.unique(labels_b).tolist()) - {255}
    assert seen_a <= {index_of[n] for n in a} and len(seen_a) == 4
    assert seen_b <= {index_of[n] for n in b} and len(seen_b) == 4


def _labels(ds):
    return [x[0][1] if isinstance(x[0], tuple) else x[1] for x in ds.as_numpy_iterator()]


def test_order_is_a_function_of_seed_and_epoch(data, tmp_path):
    model_dir = str(tmp_path / "run")

    def epoch_labels(seed, epoch):
        return _labels(ip.search_datasets(DESCRIPTOR, data["dir"], model_dir, batch_size=1,
                                          crop_size=16, scale=1.0, seed=seed, epoch=epoch))

    first = epoch_labels(0, 0)
    assert all(np.array_equal(x, y) for x, y in zip(first, epoch_labels(0, 0)))
    orders = {tuple(int(np.unique(x)[0]) for x in epoch_labels(0, e)) for e in range(4)}
    assert len(orders) > 1  # epochs reshuffle
    # Resume: skipping k batches of a rebuilt epoch gives exactly the rest of that epoch.
    rebuilt = ip.search_datasets(DESCRIPTOR, data["dir"], model_dir, batch_size=1,
                                 crop_size=16, scale=1.0, seed=0, epoch=0).skip(2)
    rest = _labels(rebuilt)
    assert len(rest) == len(first) - 2
    assert all(np.array_equal(x, y) for x, y in zip(first[2:], rest))


def test_pad_uses_ignore_label_and_grey(data, tmp_path):
    ds = ip.retrain_dataset(DESCRIPTOR, data["dir"], batch_size=1, crop_size=16,
                            min_scale=1.0, max_scale=1.0, seed=5)
    flips = set()
    for images, labels in ds.as_numpy_iterator():
        image, label = images[0], labels[0]
        pad = label == 255
        assert pad.sum() == 16 * 16 - 10 * 12  # labels hold no 255 of their own
        assert np.all(image[pad] == 0.0)  # grey after normalisation
        assert not np.any(pad[:10, 4:12])  # the image sits at the top, left or right
        flips.add(bool(pad[0, 0]))  # flipped: padding on the left
        np.testing.assert_array_equal(label[~pad], np.unique(label[~pad])[0])
    assert flips == {True, False}


def test_crop_is_a_window_of_the_scaled_example(data):
    ds = ip.retrain_dataset(DESCRIPTOR, data["dir"], split="val", batch_size=1, crop_size=6,
                            min_scale=1.0, max_scale=1.0, seed=1)
    originals = [label for _, label in data["val"].values()]
    for _, labels in ds.as_numpy_iterator():
        crop = labels[0]
        found = False
        for label in originals:
            for candidate in (label, label[:, ::-1]):
                for y in range(candidate.shape[0] - 5):
                    for x in range(candidate.shape[1] - 5):
                        found |= np.array_equal(candidate[y:y + 6, x:x + 6], crop)
        assert found


def test_retrain_random_scale(data):
    ds = ip.retrain_dataset(DESCRIPTOR, data["dir"], batch_size=1, crop_size=40,
                            min_scale=0.5, max_scale=2.0, seed=2)
    areas = {int((labels[0] != 255).sum()) for _, labels in ds.as_numpy_iterator()}
    assert len(areas) > 3  # different scales give different unpadded areas
    assert min(areas) >= 5 * 6 and max(areas) <= 20 * 24


def test_search_scale_halves_the_image(data, tmp_path):
    ds = ip.search_datasets(DESCRIPTOR, data["dir"], str(tmp_path), batch_size=1, crop_size=8,
                            scale=0.5, seed=0)
    for (_, labels_a), _ in ds.as_numpy_iterator():
        assert int((labels_a[0] != 255).sum()) == 5 * 6


def test_eval_keeps_the_original_size(data):
    ds = ip.eval_dataset(DESCRIPTOR, data["dir"], split="val")
    seen = {}
    for element in ds.as_numpy_iterator():
        name = element["filename"][0].decode()
        image, label = data["val"][name]
        assert element["image"].shape == (1, *image.shape)
        assert element["label"].shape == (1, *label.shape)
        assert element["label"].dtype == np.int32
        np.testing.assert_array_equal(element["label"][0], label)
        np.testing.assert_allclose(element["image"][0], image / 127.5 - 1.0, atol=1e-6)
        seen[name] = True
    assert len(seen) == 2


def test_reads_deeplab_written_shards_without_index(data, tmp_path):
    """Only the keys every DeepLab tool writes, and no filenames index beside the shards."""
    out = str(tmp_path / "deeplab")
    os.makedirs(out)
    with tf.io.TFRecordWriter(os.path.join(out, "train-00000-of-00001.tfrecord")) as writer:
        for i in range(4):
            feature = {
                keys.KEY_IMAGE_ENCODED: tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[h.png_bytes(np.full((6, 7, 3), 10 * i, np.uint8))])),
                keys.KEY_IMAGE_FILENAME: tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[f"img{i}".encode()])),
                keys.KEY_LABEL_ENCODED: tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[h.png_bytes(np.full((6, 7), i, np.uint8))])),
            }
            writer.write(tf.train.Example(
                features=tf.train.Features(feature=feature)).SerializeToString())
    assert ip.resolve_data_dir("cityscapes", out) == out
    a, b = ip.search_split(DESCRIPTOR, out, str(tmp_path / "run"), seed=0)
    assert sorted(a + b) == ["img0", "img1", "img2", "img3"]
    ds = ip.search_datasets(DESCRIPTOR, out, str(tmp_path / "run"), batch_size=1, crop_size=8,
                            scale=1.0, seed=0)
    assert len(list(ds)) == 2


def test_resolve_data_dir_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'kitti'; known datasets: ade20k, "
                                         "cityscapes, demo, pascal_voc"):
        ip.resolve_data_dir("kitti", None)
    with pytest.raises(ValueError, match="--dataset=cityscapes needs --data_dir=DIR"):
        ip.resolve_data_dir("cityscapes", None)
    with pytest.raises(ValueError, match="holds no cityscapes shards"):
        ip.resolve_data_dir("cityscapes", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no TFRecord shards for split 'train'"):
        ip.split_files(DESCRIPTOR, str(tmp_path), "train")


_DISTRIBUTED = r"""
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from auto_deeplab_datasets import input_pipeline as ip, registry
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
d = registry.get("cityscapes")
ds = ip.search_datasets(d, sys.argv[1], sys.argv[2], batch_size=4, crop_size=8, scale=1.0)
n = 0
for (ia, la), (ib, lb) in strategy.experimental_distribute_dataset(ds):
    shapes = [t.shape.as_list() for t in strategy.experimental_local_results(la)]
    assert shapes == [[2, 8, 8], [2, 8, 8]], shapes
    n += 1
assert n == 1, n
print("OK")
"""


def test_works_with_experimental_distribute_dataset(data, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, "-c", _DISTRIBUTED, data["dir"], str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]
