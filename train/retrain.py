"""Retrains a found architecture from scratch (paper's schedule by default).

  python -m train.retrain --dataset=demo --architecture=runs/search_demo/architecture.json
  python -m train.retrain --dataset=cityscapes --data_dir=TFRECORDS --architecture=autodeeplab \
      --model_size=S --model_dir=runs/retrain_cityscapes

Defaults are the paper's (poly learning rate from 0.05, power 0.9; crop 769; 1.5M steps; L2
4e-5). With --dataset=demo, flags not given on the command line take small demo values instead
(see DEMO_DEFAULTS: about 5 minutes on 2 CPU cores). Re-running the same command on the same
--model_dir resumes. Evaluate with `python -m train.evaluate --model_dir=...`.
--strategy=multi_worker retrains on several machines: run the same command on every host
(README, "Running on several machines").
"""

from __future__ import annotations

import sys

import tensorflow as tf
from absl import flags

from auto_deeplab_datasets import script_hygiene
from auto_deeplab_tf import allocator
from auto_deeplab_tf import retrain as retrain_lib
from auto_deeplab_tf.fixed_network import MODEL_SIZES
from train import cli

_ARCH = flags.DEFINE_string("architecture", "autodeeplab", "'autodeeplab' (the paper's "
                            "network) or an architecture JSON written by train.search or "
                            "train.decode.")
_MODEL_SIZE = flags.DEFINE_enum("model_size", "S", list(MODEL_SIZES), "Paper model size: "
                                "S (F=20), M (F=32) or L (F=48). --filter_multiplier overrides.")
_F = flags.DEFINE_integer("filter_multiplier", None, "F: filters per op at OS 4 (F * 2^level); "
                          "overrides --model_size.")
_DATASET = flags.DEFINE_string("dataset", "cityscapes", "Registered dataset: cityscapes, "
                               "pascal_voc, ade20k or demo (built in, no download).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Directory of the dataset's TFRecords "
                                "(not needed for --dataset=demo).")
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Run directory: checkpoints, TensorBoard "
                                 "logs, retrain_config.json. Default: runs/retrain_<dataset>.")
_CROP = flags.DEFINE_integer("crop_size", 769, "Square random training crop, in pixels.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Global batch size (split over replicas).")
_MIN_SCALE = flags.DEFINE_float("min_scale", 0.5, "Smallest random scale of an image.")
_MAX_SCALE = flags.DEFINE_float("max_scale", 2.0, "Largest random scale of an image.")
_STEPS = flags.DEFINE_integer("train_steps", 1_500_000, "Training steps (the poly schedule "
                              "and the drop path ramp span them).")
_LR = flags.DEFINE_float("base_learning_rate", 0.05, "Initial learning rate of the poly "
                         "schedule (power 0.9, down to 0 at --train_steps).")
_OPTIMIZER = flags.DEFINE_enum("optimizer", "sgd", list(retrain_lib.OPTIMIZERS), "sgd: the "
                               "paper's, SGD with --momentum. adam: Adam, for short runs (the "
                               "demo's default).")
_MOMENTUM = flags.DEFINE_float("momentum", 0.9, "SGD momentum (--optimizer=sgd).")
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", 4e-5, "L2 weight decay of the convolution "
                                   "kernels (weight_decay * sum(w^2) / 2 added to the loss).")
_DROP_PATH = flags.DEFINE_float("drop_path_keep_prob", 1.0, "Scheduled drop path keep "
                                "probability p of each op of the last cell (1.0: off; every "
                                "op's output is dropped on its own, as in Google's network); "
                                "ramped in over training.")
_BN_MOMENTUM = flags.DEFINE_float("bn_momentum", 0.9997, "Batch norm moving-average decay "
                                  "(paper: 0.9997; short runs need less, e.g. 0.99).")
_STEM = flags.DEFINE_list("stem_filters", ["64", "64", "128"], "Filters of the three stem "
                          "convolutions (paper: 64,64,128).")
_ASPP = flags.DEFINE_integer("aspp_filters", 256, "ASPP filters (paper: 256).")
_DECODER = flags.DEFINE_integer("decoder_filters", 256, "Decoder filters (paper: 256).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the initialisation and the data order.")
for _flag in cli.distribute_flags(
        "default: mirrored over the visible GPUs, else the CPU; multi_worker: "
        "MultiWorkerMirroredStrategy over the cluster in the TF_CONFIG environment variable "
        "(README, 'Running on several machines'); --batch_size is the global batch."):
    flags.DEFINE_flag(_flag)
_CKPT_EVERY = flags.DEFINE_integer("checkpoint_every_steps", 1000, "Checkpoint interval (a "
                                   "checkpoint is also written at the end).")
_LOG_EVERY = flags.DEFINE_integer("log_every_steps", 100, "Progress line / scalar interval.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", None, "Stop once this step is reached "
                                  "(checkpointed; re-run without it to continue).")
_DETERMINISTIC = flags.DEFINE_bool("deterministic", False, "Enable TensorFlow op determinism "
                                   "(reproducible, somewhat slower).")
_JIT = flags.DEFINE_bool("jit_compile", False, "Compile the training step with XLA.")
flags.DEFINE_flag(cli.mixed_precision_flag())

# The demo's small retraining: about 5 minutes on 2 CPU cores (README, "Retrain, evaluate,
# export, predict"). Adam, not the paper's SGD: in a few thousand steps SGD stays on the
# background-only plateau (measured: val mIoU 0.13 after 2000 steps at a constant 0.1,
# 0.09 after 500 at 0.05), Adam at 5e-3 leaves it after about 1000 steps and ends at 0.44.
DEMO_DEFAULTS = {
    "filter_multiplier": 8, "stem_filters": ["16", "16", "32"], "aspp_filters": 64,
    "decoder_filters": 64, "crop_size": 128, "batch_size": 8, "min_scale": 0.75,
    "max_scale": 1.25, "train_steps": 2000, "optimizer": "adam", "base_learning_rate": 5e-3,
    "bn_momentum": 0.99, "checkpoint_every_steps": 500, "log_every_steps": 100,
}


def config_from_flags() -> retrain_lib.RetrainConfig:
    """RetrainConfig from the command line (demo defaults for flags left unset)."""
    names = ("crop_size", "batch_size", "min_scale", "max_scale", "train_steps",
             "base_learning_rate", "optimizer", "momentum", "weight_decay",
             "drop_path_keep_prob", "bn_momentum", "stem_filters", "aspp_filters",
             "decoder_filters", "seed", "checkpoint_every_steps", "log_every_steps",
             "max_steps", "deterministic", "jit_compile",
             "mixed_precision") + cli.DISTRIBUTE_FLAGS
    values = {name: flags.FLAGS[name].value for name in names}
    demo = _DATASET.value == "demo"
    if demo:
        for name, value in DEMO_DEFAULTS.items():
            if name in values and not flags.FLAGS[name].present:
                values[name] = value
    if _F.present or _F.value is not None:
        filter_multiplier = _F.value
    elif demo and not _MODEL_SIZE.present:
        filter_multiplier = DEMO_DEFAULTS["filter_multiplier"]
    else:
        filter_multiplier = MODEL_SIZES[_MODEL_SIZE.value]
    try:
        values["stem_filters"] = tuple(int(v) for v in values["stem_filters"])
    except ValueError:
        raise ValueError(f"--stem_filters must be three integers, got "
                         f"{','.join(values['stem_filters'])}") from None
    model_dir = _MODEL_DIR.value or f"runs/retrain_{_DATASET.value}"
    return retrain_lib.RetrainConfig(model_dir=model_dir, architecture=_ARCH.value,
                                     dataset=_DATASET.value, data_dir=_DATA_DIR.value,
                                     filter_multiplier=filter_multiplier, **values)


def main(argv):
    if cli.refuses_stray_arguments(argv):
        return cli.STRAY_ARGUMENTS_EXIT_CODE
    allocator.limit_malloc_arenas()
    script_hygiene.quiet_info_logs()  # e.g. "Sharding callback duration" at each checkpoint
    try:
        config = config_from_flags()
        result = retrain_lib.run_retrain(config)
    except (ValueError, FileNotFoundError, retrain_lib.RetrainDiverged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except tf.errors.OpError as e:
        if config.strategy != "multi_worker":
            raise
        cli.exit_multi_worker_failure(e, "retraining", config.model_dir)
    print(f"checkpoint: {result.checkpoint}")
    print(f"evaluate:   python -m train.evaluate --model_dir={config.model_dir}"
          + (f" --dataset={config.dataset}" if config.dataset != "cityscapes" else ""))
    print(f"TensorBoard: tensorboard --logdir {config.model_dir}")
    return 0


def console_main() -> None:
    """`auto-deeplab-retrain`: the command setup.cfg installs for this script."""
    cli.run_command(main, __name__)


if __name__ == "__main__":
    console_main()
