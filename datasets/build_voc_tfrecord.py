r"""Converts PASCAL VOC 2012 segmentation to sharded DeepLab-style TFRecords.

  python -m datasets.build_voc_tfrecord --voc_root=/data/VOCdevkit/VOC2012 \
      --output_dir=/data/voc/tfrecord [--splits=train,val]

With the augmented training set (SBD, 10582 images) as split 'train_aug':
  python -m datasets.build_voc_tfrecord --voc_root=/data/VOCdevkit/VOC2012 \
      --segmentation_class_aug_dir=/data/SegmentationClassAug \
      --train_aug_list=/data/train_aug.txt --splits=train_aug,val --output_dir=...
"""

from __future__ import annotations

import functools

from absl import app, flags

from . import cli, registry, voc

flags.DEFINE_string("voc_root", None,
                    "VOC2012 folder (JPEGImages/, SegmentationClass/, ImageSets/).",
                    required=True)
flags.DEFINE_string("segmentation_class_aug_dir", None,
                    "Folder of greyscale class PNGs of the augmented set (split 'train_aug').")
flags.DEFINE_string("train_aug_list", None, "Ids of split 'train_aug', one per line.")
cli.define_common_flags(default_splits=("train", "val"))
FLAGS = flags.FLAGS


def main(argv):
    del argv
    discover = functools.partial(voc.discover, FLAGS.voc_root,
                                 aug_label_dir=FLAGS.segmentation_class_aug_dir,
                                 aug_list=FLAGS.train_aug_list)
    return cli.run(lambda: cli.convert_splits(
        registry.get("pascal_voc"), discover, FLAGS.splits, output_dir=FLAGS.output_dir,
        num_shards=FLAGS.num_shards, skip_bad=FLAGS.skip_bad, num_workers=FLAGS.num_workers))


if __name__ == "__main__":
    app.run(main)
