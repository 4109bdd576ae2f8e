"""String keys shared across the library, the data pipelines and the scripts.

One module, so that a TFRecord written by one tool and read by another, or a JSON key
written by search and read by retrain, cannot drift apart.
"""

# DeepLab TFRecord feature keys (tensorflow/models research/deeplab and deeplab2 use the same).
KEY_IMAGE_ENCODED = "image/encoded"
KEY_IMAGE_FILENAME = "image/filename"
KEY_IMAGE_FORMAT = "image/format"
KEY_IMAGE_HEIGHT = "image/height"
KEY_IMAGE_WIDTH = "image/width"
KEY_IMAGE_CHANNELS = "image/channels"
KEY_LABEL_ENCODED = "image/segmentation/class/encoded"
KEY_LABEL_FORMAT = "image/segmentation/class/format"

# Shard naming used by the DeepLab tools: '{split}-%05d-of-%05d.tfrecord'.
SHARD_PATTERN = "{split}-{index:05d}-of-{num_shards:05d}.tfrecord"

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

# Files a run writes under --model_dir.
ARCHITECTURE_FILENAME = "architecture.json"
SEARCH_SPLIT_FILENAME = "search_split.json"
