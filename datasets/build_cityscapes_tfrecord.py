r"""Converts Cityscapes (gtFine) to sharded DeepLab-style TFRecords.

From the unpacked official download:
  python -m datasets.build_cityscapes_tfrecord --cityscapes_root=/data/cityscapes \
      --output_dir=/data/cityscapes/tfrecord [--splits=train,val] [--num_shards=10]

From the official zips, through TensorFlow Datasets:
  python -m datasets.build_cityscapes_tfrecord --source=tfds \
      --tfds_manual_dir=/data/cityscapes_zips --output_dir=/data/cityscapes/tfrecord
"""

from __future__ import annotations

import functools

from absl import app, flags

from . import cityscapes, cli, registry

flags.DEFINE_string("cityscapes_root", None,
                    "Folder holding leftImg8bit/ and gtFine/ (for --source=files).")
flags.DEFINE_enum("source", "files", ["files", "tfds"],
                  "'files': the unpacked layout under --cityscapes_root; 'tfds': the official "
                  "zips in --tfds_manual_dir, read through tensorflow-datasets.")
flags.DEFINE_string("tfds_manual_dir", None,
                    "Folder with leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip.")
flags.DEFINE_string("tfds_data_dir", None, "Where TFDS keeps its prepared copy.")
cli.define_common_flags(default_splits=("train", "val"))
FLAGS = flags.FLAGS


def main(argv):
    del argv
    descriptor = registry.get("cityscapes")
    if FLAGS.source == "files":
        if not FLAGS.cityscapes_root:
            raise app.UsageError("--cityscapes_root is required with --source=files")
        discover = functools.partial(cityscapes.discover, FLAGS.cityscapes_root,
                                     num_classes=descriptor.num_classes)
    else:
        if not FLAGS.tfds_manual_dir:
            raise app.UsageError("--tfds_manual_dir is required with --source=tfds")
        from . import tfds_cityscapes  # optional source; TFDS is slow to import
        discover = functools.partial(tfds_cityscapes.discover, FLAGS.tfds_manual_dir,
                                     data_dir=FLAGS.tfds_data_dir)
    return cli.run(lambda: cli.convert_splits(
        descriptor, discover, FLAGS.splits, output_dir=FLAGS.output_dir,
        num_shards=FLAGS.num_shards, skip_bad=FLAGS.skip_bad, num_workers=FLAGS.num_workers))


if __name__ == "__main__":
    app.run(main)
