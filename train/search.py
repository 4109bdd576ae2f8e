"""Architecture search: first-order bilevel training of the Auto-DeepLab supernet.

  python -m train.search --dataset=demo                 # a short demo search, minutes on CPU
  python -m train.search --dataset=cityscapes --data_dir=TFRECORDS --model_dir=runs/search

Defaults are the paper's settings (40 epochs, alpha/beta from epoch 20, batch 2, 321 crops
at half resolution, F=8, L=12). With --dataset=demo, flags not given on the command line
take the demo's small values instead (see DEMO_DEFAULTS). Re-running the same command on
the same --model_dir resumes. Open --model_dir in TensorBoard to watch the architecture form.
"""

from __future__ import annotations

import sys

import tensorflow as tf
from absl import app
from absl import flags

from auto_deeplab_datasets import script_hygiene
from auto_deeplab_tf import allocator
from auto_deeplab_tf import search as search_lib
from train import cli

_DATASET = flags.DEFINE_string("dataset", "cityscapes", "Registered dataset: cityscapes, "
                               "pascal_voc, ade20k or demo (built in, no download).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Directory of the dataset's TFRecords "
                                "(not needed for --dataset=demo).")
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Run directory: checkpoints, TensorBoard "
                                 "logs, architecture.json. Default: runs/search_<dataset>.")
_EPOCHS = flags.DEFINE_integer("epochs", 40, "Search epochs (over trainA/trainB pairs).")
_ARCH_START = flags.DEFINE_integer("arch_start_epoch", 20, "First epoch (0-based) in which "
                                   "alpha/beta are updated; before it only the weights train.")
_BATCH = flags.DEFINE_integer("batch_size", 2, "Global batch size (split over replicas), for "
                              "trainA and trainB each.")
_CROP = flags.DEFINE_integer("crop_size", 321, "Square random crop, in pixels. Default: the "
                             "dataset's recommended search crop (321 for Cityscapes).")
_SCALE = flags.DEFINE_float("scale", 0.5, "Image scale before cropping. Default: the "
                            "dataset's recommended search scale (paper: half resolution).")
_F = flags.DEFINE_integer("filter_multiplier", 8, "F: channels per op at OS 4 (F * 2^level).")
_L = flags.DEFINE_integer("num_layers", 12, "L: searchable layers of the trellis.")
_B = flags.DEFINE_integer("num_blocks", 5, "B: blocks per cell.")
_LEVELS = flags.DEFINE_integer("num_levels", 4, "Resolution levels (OS 4, 8, 16, 32, ...).")
_LOOP = flags.DEFINE_bool("loop_uniform_layers", True, "Run layers num_levels+1..L (3..L "
                          "with one level) of the supernet as one tf.while_loop over stacked weights: on CPU ~25% "
                          "less memory and half the tracing time, ~10% slower steps. "
                          "--noloop_uniform_layers traces every layer (README, Performance).")
_RECOMPUTE = flags.DEFINE_bool("recompute_layers", False, "Recompute each layer of the "
                               "supernet in the backward pass instead of keeping its "
                               "activations: less memory for one more forward pass of the "
                               "layers; same results. A run may resume with the other "
                               "setting (README, Performance).")
_PARTIAL = flags.DEFINE_integer(
    "partial_channels", 1, "K: partial-channel search (PC-DARTS). Each mixed op applies its "
    "candidate ops to 1/K of its channels, the rest bypass, then the channels are shuffled; "
    "less memory and time per step. 1 (default) is the paper's search; K > 1 is not. K "
    "must divide --filter_multiplier (README, 'Partial-channel search').")
_WEIGHT_OPTIMIZER = flags.DEFINE_enum(
    "weight_optimizer", "sgd", list(search_lib.WEIGHT_OPTIMIZERS),
    "Optimizer of the weights: the paper's SGD with momentum, or Adam (the demo's default: "
    "it leaves the background-only plateau within a short search).")
_WEIGHT_LR = flags.DEFINE_float("weight_lr", 0.025, "Initial learning rate of the weights "
                                "(cosine decay to --weight_lr_min).")
_WEIGHT_LR_MIN = flags.DEFINE_float("weight_lr_min", 0.001, "Final learning rate of the "
                                    "weights.")
_MOMENTUM = flags.DEFINE_float("momentum", 0.9, "SGD momentum (--weight_optimizer=sgd).")
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", 3e-4, "L2 weight decay of the weights.")
_ARCH_LR = flags.DEFINE_float("arch_lr", 3e-3, "Adam learning rate of alpha and beta.")
_ARCH_DECAY = flags.DEFINE_float("arch_weight_decay", 1e-3, "L2 weight decay of alpha, beta.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the initialisation, the A/B split and the "
                             "data order.")
for _flag in cli.distribute_flags(
        "default: mirrored over the visible GPUs, else the CPU; multi_worker: "
        "MultiWorkerMirroredStrategy over the cluster in the TF_CONFIG environment variable "
        "(README, 'Running on several machines')."):
    flags.DEFINE_flag(_flag)
_STEPS_PER_EPOCH = flags.DEFINE_integer("steps_per_epoch", None, "Cap on steps per epoch "
                                        "(default: every pair of the A/B halves).")
_CKPT_EVERY = flags.DEFINE_integer("checkpoint_every_steps", 100, "Checkpoint interval within "
                                   "an epoch (a checkpoint is also written at each epoch end).")
_LOG_EVERY = flags.DEFINE_integer("log_every_steps", 10, "Progress line interval.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", None, "Stop after this many steps in total "
                                  "(checkpointed; re-run to continue).")
_DETERMINISTIC = flags.DEFINE_bool("deterministic", False, "Enable TensorFlow op determinism "
                                   "(reproducible, somewhat slower).")
_JIT = flags.DEFINE_bool("jit_compile", False, "Compile the training step with XLA.")
flags.DEFINE_flag(cli.mixed_precision_flag())

# The demo's small search, sized to learn within minutes on 2 CPU cores (README, "The demo
# search"): Adam, because the paper's SGD stays on the background-only plateau of this data;
# batch 16, because at 64x64 crops one step of 16 images costs far less than 4 steps of 4;
# alpha and
# beta updated only once the supernet predicts more than background, at a rate for a
# few hundred steps rather than the paper's tens of thousands.
DEMO_DEFAULTS = {
    "epochs": 65, "arch_start_epoch": 50, "batch_size": 16, "filter_multiplier": 4,
    "num_layers": 6, "weight_optimizer": "adam", "weight_lr": 5e-3, "weight_lr_min": 5e-4,
    "arch_lr": 3e-2, "checkpoint_every_steps": 50, "log_every_steps": 7,
}


def config_from_flags() -> search_lib.SearchConfig:
    """SearchConfig from the command line (demo defaults for flags left unset)."""
    values = {name: flags.FLAGS[name].value for name in (
        "epochs", "arch_start_epoch", "batch_size", "crop_size", "scale", "filter_multiplier",
        "num_layers", "num_blocks", "num_levels", "loop_uniform_layers", "recompute_layers",
        "partial_channels",
        "weight_optimizer",
        "weight_lr", "weight_lr_min", "momentum",
        "weight_decay", "arch_lr", "arch_weight_decay", "seed", "steps_per_epoch",
        "checkpoint_every_steps", "log_every_steps", "max_steps", "deterministic",
        "jit_compile", "mixed_precision") + cli.DISTRIBUTE_FLAGS}
    from auto_deeplab_datasets import registry  # imported late: --help must not need the data layer

    try:
        descriptor = registry.get(_DATASET.value)
    except ValueError as e:
        raise app.UsageError(f"--dataset={_DATASET.value}: {e}")
    defaults = {"crop_size": descriptor.search_crop_size, "scale": descriptor.search_scale}
    if _DATASET.value == "demo":
        defaults.update(DEMO_DEFAULTS)
    for name, value in defaults.items():
        if not flags.FLAGS[name].present:
            values[name] = value
    model_dir = _MODEL_DIR.value or f"runs/search_{_DATASET.value}"
    return search_lib.SearchConfig(model_dir=model_dir, dataset=_DATASET.value,
                                   data_dir=_DATA_DIR.value, **values)


def main(argv):
    if cli.refuses_stray_arguments(argv):
        return cli.STRAY_ARGUMENTS_EXIT_CODE
    allocator.limit_malloc_arenas()
    script_hygiene.quiet_info_logs()  # e.g. "Sharding callback duration" at each checkpoint
    config = config_from_flags()
    try:
        result = search_lib.run_search(config)
    except (ValueError, search_lib.SearchDiverged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except tf.errors.OpError as e:
        if config.strategy != "multi_worker":
            raise
        cli.exit_multi_worker_failure(e, "search", config.model_dir)
    if result.completed:
        print(f"\nDecoded architecture (written to {config.model_dir}/architecture.json):")
        print(result.architecture.to_json(result.metadata))
        print(f"TensorBoard: tensorboard --logdir {config.model_dir}")
    return 0


def console_main() -> None:
    """`auto-deeplab-search`: the command setup.cfg installs for this script."""
    cli.run_command(main, __name__)


if __name__ == "__main__":
    console_main()
