"""The built-in demo dataset: determinism, shape-not-colour classes, sizes and the cache."""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy import ndimage
from sklearn.linear_model import LogisticRegression

from auto_deeplab_datasets import demo, input_pipeline, registry, tfrecord_io


def _tree_bytes(root):
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


def test_two_generations_give_identical_bytes(tmp_path):
    demo.write_cityscapes_tree(str(tmp_path / "a"))
    demo.write_cityscapes_tree(str(tmp_path / "b"))
    a, b = _tree_bytes(str(tmp_path / "a")), _tree_bytes(str(tmp_path / "b"))
    assert len(a) == 2 * sum(demo.SPLIT_SIZES.values())
    assert a == b
    assert "leftImg8bit/train/demo/demo_000000_000000_leftImg8bit.png" in a
    assert "gtFine/val/demo/demo_000001_000059_gtFine_labelTrainIds.png" in a


def _colour_features(split, count):
    """Per (image, class) present: mean and std RGB of that class's pixels, and the class."""
    features, classes = [], []
    for index in range(count):
        image, label = demo.generate_example(split, index)
        assert image.shape == (demo.HEIGHT, demo.WIDTH, 3) and image.dtype == np.uint8
        assert set(np.unique(label).tolist()) <= set(range(11))
        for c in np.unique(label):
            if c == 0:
                continue
            pixels = image[label == c].astype(np.float32)
            features.append(np.concatenate([pixels.mean(0), pixels.std(0)]))
            classes.append(int(c))
    return np.array(features), np.array(classes)


def test_colour_does_not_tell_the_digit():
    x_train, y_train = _colour_features("train", 240)
    x_val, y_val = _colour_features("val", 60)
    assert set(y_train.tolist()) == set(range(1, 11))  # every digit occurs
    # Every class draws from one colour distribution: per-class mean colours agree...
    overall = x_train[:, :3].mean(0)
    for c in range(1, 11):
        assert np.abs(x_train[y_train == c, :3].mean(0) - overall).max() < 30, c
    # ...and a classifier on colour statistics alone stays near chance (10 %).
    model = LogisticRegression(max_iter=2000).fit(x_train / 255.0, y_train)
    assert model.score(x_val / 255.0, y_val) < 0.2


def test_digit_sizes_and_counts():
    heights = []
    for index in range(30):
        _, label = demo.generate_example("train", index)
        present = set(np.unique(label).tolist()) - {0}
        assert 1 <= len(present) <= demo.DIGITS_PER_IMAGE[1]
        # Digits never touch (3 px margins), so each connected piece lies within one digit.
        pieces, count = ndimage.label(label > 0, structure=np.ones((3, 3)))
        for box in ndimage.find_objects(pieces):
            heights.append(box[0].stop - box[0].start)
    assert max(heights) <= demo.DIGIT_HEIGHT_RANGE[1]
    assert np.median(heights) >= demo.DIGIT_HEIGHT_RANGE[0] * 0.6


def test_ensure_demo_data_builds_once_and_splits_match_registry(tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    data_dir = demo.ensure_demo_data(cache)
    descriptor = registry.get("demo")
    for split, size in descriptor.splits.items():
        assert input_pipeline.split_size(descriptor, data_dir, split) == size
        assert len(tfrecord_io.existing_shards(data_dir, split)) == demo.NUM_SHARDS
    assert demo.SPLIT_SIZES == dict(descriptor.splits)
    # Cached: a second call must not generate anything.
    monkeypatch.setattr(demo, "write_cityscapes_tree", lambda root: pytest.fail("rebuilt"))
    assert demo.ensure_demo_data(cache) == data_dir
    assert input_pipeline.resolve_data_dir("demo", cache) == data_dir
    assert input_pipeline.resolve_data_dir("demo", data_dir) == data_dir


def test_default_cache_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(demo.CACHE_ENV, str(tmp_path))
    assert demo.default_cache_dir() == os.path.join(str(tmp_path), "demo")
    monkeypatch.delenv(demo.CACHE_ENV)
    assert demo.default_cache_dir() == os.path.join(
        os.path.expanduser("~"), ".cache", "auto_deeplab_tf", "demo")


def test_a_crash_leaves_no_half_cache(tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo.cli, "convert_splits", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        demo.ensure_demo_data(cache)
    assert sorted(os.listdir(cache)) == [".lock"]
