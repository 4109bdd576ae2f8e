"""Prints the params and multiply-adds of the fixed network or the supernet as one JSON line.

Fixed network (the paper's Table 2 setting):
  python -m train.model_stats --architecture=autodeeplab --model_size=S --image_size=1024,2048 --num_classes=19 [--breakdown]
Supernet:
  python -m train.model_stats --supernet --filter_multiplier=8 --num_layers=12 --image_size=321,321 --num_classes=19
--summary prints Keras' model.summary() first.

Counting conventions are described in auto_deeplab_tf/model_stats.py.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from auto_deeplab_tf import model_stats
from train import cli

FLAGS = flags.FLAGS

flags.DEFINE_bool("supernet", False, "Count the search supernet instead of the fixed network.")
flags.DEFINE_string("architecture", "autodeeplab",
                    "Fixed network: a built-in architecture name (autodeeplab) or the path "
                    "of an architecture JSON file.")
flags.DEFINE_enum("model_size", None, sorted(model_stats.MODEL_SIZES),
                  "Fixed network: named size, S (F=20), M (F=32) or L (F=48). Exclusive "
                  "with --filter_multiplier.")
flags.DEFINE_integer("filter_multiplier", None,
                     "F: filters of a level-0 cell op. Default: 20 (fixed network, size S), "
                     "8 (supernet).", lower_bound=1)
flags.DEFINE_string("image_size", "1024,2048", "Input size of one image, as HEIGHT,WIDTH.")
flags.DEFINE_integer("num_classes", 19, "Number of output classes.", lower_bound=1)
flags.DEFINE_integer("num_layers", 12, "Supernet: number of layers L.", lower_bound=1)
flags.DEFINE_integer("num_blocks", 5, "Supernet: blocks per cell B.", lower_bound=1)
flags.DEFINE_integer("num_levels", 4, "Supernet: number of levels (OS 4, 8, 16, 32).",
                     lower_bound=1)
flags.DEFINE_bool("breakdown", False,
                  "Fixed network: add params_<part> and multiply_adds_<part> for the stem, "
                  "cells, ASPP and decoder.")
flags.DEFINE_bool("summary", False, "Also print Keras' model.summary() of the network "
                  "(before the JSON line, which stays the last line).")
flags.DEFINE_enum("convention", "standard", list(model_stats.CONVENTIONS),
                  "Multiply-add convention: 'standard' counts every conv at its output "
                  "resolution; 'tf1_space_to_batch' counts dilated convs over the padded "
                  "SpaceToBatch grid, as the official TF1 graph computes them; "
                  "'deeplab_tf1_profiler' also counts the ASPP image pooling as DeepLab's "
                  "TF1 eval graph with a 769x769 pooling crop, the way TF's profiler does.")


def parse_image_size(value: str) -> tuple[int, int]:
    """'H,W' -> (H, W); raises ValueError unless both are positive integers."""
    parts = [p.strip() for p in str(value).split(",")]
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"expected HEIGHT,WIDTH with positive integers, got '{value}'")
    return int(parts[0]), int(parts[1])


def _valid_image_size(value: str) -> bool:
    try:
        parse_image_size(value)
    except ValueError:
        return False
    return True


flags.register_validator("image_size", _valid_image_size,
                         message="--image_size must be HEIGHT,WIDTH with positive integers, "
                                 "e.g. 1024,2048")


@flags.multi_flags_validator(["model_size", "filter_multiplier"],
                             message="--model_size and --filter_multiplier are exclusive: "
                                     "give one of them")
def _size_or_multiplier(values):
    return values["model_size"] is None or values["filter_multiplier"] is None


@flags.multi_flags_validator(["supernet", "model_size"],
                             message="--model_size is for the fixed network; use "
                                     "--filter_multiplier with --supernet")
def _model_size_not_supernet(values):
    return not (values["supernet"] and values["model_size"] is not None)


def main(argv):
    if cli.refuses_stray_arguments(argv):
        return cli.STRAY_ARGUMENTS_EXIT_CODE
    image_size = parse_image_size(FLAGS.image_size)
    if FLAGS.supernet:
        dims = (FLAGS.num_classes, FLAGS.filter_multiplier or 8, FLAGS.num_layers,
                FLAGS.num_blocks, FLAGS.num_levels)
        model = model_stats.build_supernet(*dims)
        stats = model_stats.supernet_stats(*dims, image_size, model=model)
    else:
        if FLAGS.model_size is not None:
            multiplier = model_stats.MODEL_SIZES[FLAGS.model_size]
        else:
            multiplier = FLAGS.filter_multiplier or model_stats.MODEL_SIZES["S"]
        try:
            arch = model_stats.as_architecture(FLAGS.architecture)
        except ValueError as e:
            raise app.UsageError(f"--architecture: {e}") from e
        model = model_stats.build_fixed_network(arch, FLAGS.num_classes, multiplier)
        stats = model_stats.fixed_network_stats(
            arch, FLAGS.num_classes, multiplier, image_size, breakdown=FLAGS.breakdown,
            convention=FLAGS.convention, model=model)
        stats["architecture"] = FLAGS.architecture
        if FLAGS.model_size is not None:
            stats["model_size"] = FLAGS.model_size
    if FLAGS.summary:
        model.summary()
        sys.stdout.flush()
    print(json.dumps(stats), flush=True)
    sys.stdout.flush()


def console_main() -> None:
    """`auto-deeplab-model-stats`: the command setup.cfg installs for this script."""
    cli.run_command(main, __name__)


if __name__ == "__main__":
    console_main()
