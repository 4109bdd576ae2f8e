"""String keys of what the data layer writes and reads: the DeepLab TFRecord feature keys, the
shard naming and the search split's file name.

One module, so that a TFRecord written by one tool and read by another cannot drift apart.
The library's own JSON and file keys are in auto_deeplab_tf/common.py.
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

# The search's A/B split, written under --model_dir by input_pipeline.search_split.
SEARCH_SPLIT_FILENAME = "search_split.json"
