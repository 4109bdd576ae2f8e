"""String keys shared across the library and the scripts.

One module, so that a JSON key written by search and read by retrain cannot drift apart.
The TFRecord feature keys and the shard naming belong to the data layer (datasets/keys.py).
"""

# Architecture JSON keys.
ARCH_CELL = "cell"
ARCH_PATH = "path"
ARCH_NUM_LEVELS = "num_levels"
ARCH_FORMAT = "format"
ARCH_METADATA = "metadata"
# Metadata keys saying where an architecture came from: ARCH_ORIGIN is ORIGIN_SEARCH (with the
# search run's seed) or ORIGIN_RANDOM (with the sampler's seed and the sample's index).
ARCH_ORIGIN = "origin"
ARCH_ORIGIN_SEED = "seed"
ARCH_SAMPLE_INDEX = "index"
ORIGIN_SEARCH = "search"
ORIGIN_RANDOM = "random"

# TensorBoard folders under --model_dir, as deeplab2 lays them out: the training loop
# (search and retraining) writes to train/, evaluation to eval/, so that
# `tensorboard --logdir MODEL_DIR` shows the two as runs side by side.
TRAIN_SUMMARY_SUBDIR = "train"
EVAL_SUMMARY_SUBDIR = "eval"

# Files a run writes under --model_dir.
ARCHITECTURE_FILENAME = "architecture.json"
