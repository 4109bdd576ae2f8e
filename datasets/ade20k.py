"""ADE20K SceneParsing (ADEChallengeData2016): discovery of (JPEG, annotation PNG) pairs.

Layout (ADEChallengeData2016.zip, unpacked):
  {root}/images/{training,validation}/ADE_{train,val}_%08d.jpg
  {root}/annotations/{training,validation}/ADE_{train,val}_%08d.png
Annotation value 0 is 'other' (ignored); classes 1..150 become train ids 0..149.
"""

from __future__ import annotations

import glob
import os

from . import conversion
from .registry import IGNORE_LABEL

NUM_CLASSES = 150
SPLIT_DIRS = {"train": "training", "val": "validation"}

LABELS = conversion.LabelMapping.from_dict(
    "ADE20K class ids", {0: IGNORE_LABEL, **{c: c - 1 for c in range(1, NUM_CLASSES + 1)}})


def discover(root: str, split: str) -> tuple[list[conversion.Sample], list[str]]:
    """Pairs every image of `split` ('train' or 'val') with its annotation.

    Returns:
      (samples, problems), as `conversion.pair_samples`.

    Raises:
      ConversionError: unknown split, missing root, or no image for the split.
    """
    if split not in SPLIT_DIRS:
        raise conversion.ConversionError(
            f"ADE20K has no split {split!r}; known: {', '.join(SPLIT_DIRS)}")
    if not os.path.isdir(root):
        raise conversion.ConversionError(conversion.msg_missing_root(root))
    image_dir = os.path.join(root, "images", SPLIT_DIRS[split])
    label_dir = os.path.join(root, "annotations", SPLIT_DIRS[split])
    image_keys = [os.path.basename(p)[:-4] for p in glob.glob(os.path.join(image_dir, "*.jpg"))]
    if not image_keys:
        raise conversion.ConversionError(conversion.msg_no_images(
            root, split, f"images/{SPLIT_DIRS[split]}/*.jpg"))
    label_keys = [os.path.basename(p)[:-4] for p in glob.glob(os.path.join(label_dir, "*.png"))]
    return conversion.pair_samples(
        image_keys + label_keys,
        image_path_of=lambda key: os.path.join(image_dir, key + ".jpg"),
        label_of=lambda key: (os.path.join(label_dir, key + ".png"), LABELS))
