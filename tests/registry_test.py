"""Dataset registry: descriptors and the unknown-name error."""

import pytest

from auto_deeplab_datasets import registry


def test_known_datasets():
    assert registry.names() == ("ade20k", "cityscapes", "demo", "pascal_voc")
    expected = {"cityscapes": (19, {"train": 2975, "val": 500, "test": 1525}),
                "pascal_voc": (21, {"train": 1464, "val": 1449, "trainval": 2913,
                                    "train_aug": 10582}),
                "ade20k": (150, {"train": 20210, "val": 2000}),
                "demo": (11, {"train": 240, "val": 60})}
    for name, (num_classes, splits) in expected.items():
        d = registry.get(name)
        assert (d.name, d.num_classes, d.ignore_label, dict(d.splits)) == (
            name, num_classes, 255, splits)
        assert len(d.class_names) == len(d.palette) == num_classes
        assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in d.palette)
        assert d.file_pattern == "{split}-*.tfrecord"
        assert d.split_pattern("val") == "val-*.tfrecord"


def test_cityscapes_train_id_to_label_id():
    d = registry.get("cityscapes")
    assert d.train_id_to_label_id == (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27,
                                      28, 31, 32, 33)
    assert d.class_names[0] == "road" and d.class_names[18] == "bicycle"
    assert registry.get("ade20k").class_names[-1] == "flag"
    assert registry.get("pascal_voc").palette[1] == (128, 0, 0)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown dataset 'coco'; known datasets: ade20k, "
                                         r"cityscapes, demo, pascal_voc"):
        registry.get("coco")


def test_descriptor_is_frozen():
    with pytest.raises(Exception):
        registry.get("demo").num_classes = 3
