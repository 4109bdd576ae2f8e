r"""Converts ADE20K SceneParsing (ADEChallengeData2016) to sharded DeepLab-style TFRecords.

  python -m datasets.build_ade20k_tfrecord --ade20k_root=/data/ADEChallengeData2016 \
      --output_dir=/data/ade20k/tfrecord [--splits=train,val]

Annotation 0 ('other') becomes the ignore label 255; classes 1..150 become train ids 0..149.
"""

from __future__ import annotations

import functools

from absl import app, flags

from . import ade20k, cli, registry

flags.DEFINE_string("ade20k_root", None,
                    "ADEChallengeData2016 folder (images/, annotations/).", required=True)
cli.define_common_flags(default_splits=("train", "val"))
FLAGS = flags.FLAGS


def main(argv):
    del argv
    discover = functools.partial(ade20k.discover, FLAGS.ade20k_root)
    return cli.run(lambda: cli.convert_splits(
        registry.get("ade20k"), discover, FLAGS.splits, output_dir=FLAGS.output_dir,
        num_shards=FLAGS.num_shards, skip_bad=FLAGS.skip_bad, num_workers=FLAGS.num_workers))


if __name__ == "__main__":
    app.run(main)
