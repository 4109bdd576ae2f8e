"""Retrains several architectures under one budget and compares them (searched vs random).

  python -m train.sample_architectures --num=8 --seed=0 --output_dir=runs/random_demo \
      --num_layers=6
  python -m train.compare_architectures --dataset=demo --model_dir=runs/compare_demo \
      --architectures=runs/search_demo/architecture.json,runs/random_demo/*.json \
      --retrain_seeds=0,1 [--supernet_dir=runs/search_demo]

Every architecture is retrained once per --retrain_seeds seed with the same settings: every
train.retrain flag passes through (--train_steps, --crop_size, --filter_multiplier,
--optimizer, ...; with --dataset=demo the flags not given take train.retrain's demo
defaults), except --architecture and --seed, which --architectures and --retrain_seeds
replace. Each run is then evaluated on the dataset's evaluation split (val).

Writes MODEL_DIR/comparison.json (per architecture: the mIoU of each seed, their mean,
params, multiply-adds, origin, rank; the searched ones' rank and relative improvement over
the random mean; Kendall's tau with --supernet_dir), MODEL_DIR/comparison.png and the same
image in TensorBoard, and prints the table. Rerunning the same command resumes: finished
runs are not retrained, even with their checkpoints deleted (their retrain_config.json and
eval_val.json suffice: README, "Searched vs random architectures", says which files to carry
to another machine). See auto_deeplab_tf/comparison.py.
"""

from __future__ import annotations

import dataclasses
import sys

from absl import app
from absl import flags

from auto_deeplab_tf import allocator
from train import cli
from train import retrain as retrain_script

# The retrain flags are this script's too: list them in --help.
flags.adopt_module_key_flags(retrain_script)

_ARCHITECTURES = flags.DEFINE_list(
    "architectures", None, "Architectures to compare: JSON files (from train.search, "
    "train.decode or train.sample_architectures), glob patterns (quote them) or built-in "
    "names, comma-separated. Their metadata's origin ('search' or 'random') marks them.")
_SEEDS = flags.DEFINE_list("retrain_seeds", ["0"], "Seeds to retrain every architecture "
                           "with (initialisation and data order), comma-separated.")
_SUPERNET_DIR = flags.DEFINE_string(
    "supernet_dir", None, "A train.search --model_dir: also evaluate each architecture's "
    "sub-network inside that trained supernet (inherited mIoU) and report Kendall's tau "
    "between inherited and retrained mIoU. The architectures must have its L, B and levels.")


def _seeds() -> list[int]:
    try:
        return [int(s) for s in _SEEDS.value]
    except ValueError:
        raise ValueError(f"--retrain_seeds must be integers, got {','.join(_SEEDS.value)}") \
            from None


def run(log=print) -> int:
    from auto_deeplab_tf import comparison

    for flag, instead in (("architecture", "--architectures"), ("seed", "--retrain_seeds")):
        if flags.FLAGS[flag].present:
            raise ValueError(f"--{flag} is not used by train.compare_architectures; give "
                             f"{instead} instead")
    seeds = _seeds()
    candidates = comparison.expand_architectures(_ARCHITECTURES.value or [])
    config = retrain_script.config_from_flags()
    out_dir = flags.FLAGS.model_dir or f"runs/compare_{config.dataset}"
    template = dataclasses.replace(config, model_dir=out_dir)
    log(f"comparing {len(candidates)} architectures "
        f"({', '.join(c.name for c in candidates)}) on {config.dataset}, retrain seeds "
        f"{','.join(map(str, seeds))}, {config.train_steps} steps each, in {out_dir}")
    comparison.run_comparison(template, candidates, seeds, out_dir,
                              supernet_dir=_SUPERNET_DIR.value, log=log)
    return 0


def main(argv: list) -> int:
    from auto_deeplab_tf import retrain as retrain_lib

    allocator.limit_malloc_arenas()
    try:
        return cli.main_from(run)(argv)
    except retrain_lib.RetrainDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    app.run(main)
