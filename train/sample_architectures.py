"""Writes architectures drawn uniformly at random from the search space, one JSON file each.

  python -m train.sample_architectures --num=8 --seed=0 --output_dir=runs/random
  python -m train.sample_architectures --num=8 --seed=0 --output_dir=runs/random_demo \
      --num_layers=6            # the demo search's L (train/search.py DEMO_DEFAULTS)

The space flags (--num_layers, --num_levels, --num_blocks) are train.search's, with its
defaults (the paper's). Sample I of seed S goes to OUTPUT_DIR/random_seedS_III.json, with
metadata {"origin": "random", "seed": S, "index": I}; the same (S, I) and space always give
the same architecture. The cell and the path are each exactly uniform over the space
(auto_deeplab_tf/random_architecture.py). Feed the files to train.compare_architectures.
"""

from __future__ import annotations

import dataclasses

from absl import app
from absl import flags

from auto_deeplab_tf.search import SearchConfig
from train import cli

# train.search's defaults, read from its config so the two cannot drift apart.
_SEARCH_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SearchConfig)}


_NUM = flags.DEFINE_integer("num", 8, "How many architectures to sample.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the sampler (sample I of seed S is a fixed "
                             "function of S, I and the space).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Directory for the JSON files "
                                  "(created if needed).")
_L = flags.DEFINE_integer("num_layers", _SEARCH_DEFAULTS["num_layers"],
                          "L: searchable layers of the trellis (as train.search).")
_LEVELS = flags.DEFINE_integer("num_levels", _SEARCH_DEFAULTS["num_levels"],
                               "Resolution levels (OS 4, 8, 16, 32, ...; as train.search).")
_B = flags.DEFINE_integer("num_blocks", _SEARCH_DEFAULTS["num_blocks"],
                          "B: blocks per cell (as train.search).")


def run(log=print) -> int:
    from auto_deeplab_tf import random_architecture

    if not _OUTPUT_DIR.value:
        raise ValueError("--output_dir is required")
    if _SEED.value < 0:
        raise ValueError(f"--seed must be >= 0, got {_SEED.value}")
    paths = random_architecture.write_samples(
        _OUTPUT_DIR.value, _NUM.value, _SEED.value, num_blocks=_B.value,
        num_layers=_L.value, num_levels=_LEVELS.value)
    paths_total = random_architecture.count_paths(_L.value, _LEVELS.value)
    cells_total = random_architecture.num_cells(_B.value)
    log(f"wrote {len(paths)} architectures to {_OUTPUT_DIR.value} (seed {_SEED.value}; space: "
        f"{cells_total:.4g} cells x {paths_total} paths, L={_L.value}, B={_B.value}, "
        f"{_LEVELS.value} levels)")
    for path in paths:
        log(f"  {path}")
    return 0


main = cli.main_from(run)


if __name__ == "__main__":
    app.run(main)
