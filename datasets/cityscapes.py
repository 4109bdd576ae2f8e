"""Cityscapes: labelId -> trainId mapping and discovery of (image, label) pairs on disk.

Layout (official download, unpacked):
  {root}/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
  {root}/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png
  {root}/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelTrainIds.png  (optional)
"""

from __future__ import annotations

import glob
import os

from . import conversion
from .registry import CITYSCAPES_TRAIN_ID_TO_LABEL_ID, IGNORE_LABEL

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"

NUM_LABEL_IDS = 34  # labelIds 0..33 ('unlabeled' .. 'bicycle') in cityscapesScripts labels.py


def label_id_to_train_id() -> dict[int, int]:
    """labelId -> trainId for every labelId a gtFine_labelIds.png can hold.

    Ids 0..33 map to 0..18 or to the ignore label. 255 is also accepted (as ignored): it is
    how an 8-bit PNG would store the license plate's labelId -1.
    """
    mapping = {label_id: IGNORE_LABEL for label_id in range(NUM_LABEL_IDS)}
    for train_id, label_id in enumerate(CITYSCAPES_TRAIN_ID_TO_LABEL_ID):
        mapping[label_id] = train_id
    mapping[255] = IGNORE_LABEL
    return mapping


LABEL_IDS = conversion.LabelMapping.from_dict("Cityscapes labelIds", label_id_to_train_id())


def train_ids_mapping(num_classes: int = 19) -> conversion.LabelMapping:
    """Identity on 0..num_classes-1 and the ignore label (for *_gtFine_labelTrainIds.png)."""
    mapping = {c: c for c in range(num_classes)}
    mapping[IGNORE_LABEL] = IGNORE_LABEL
    return conversion.LabelMapping.from_dict("trainIds", mapping)


def discover(root: str, split: str, num_classes: int = 19
             ) -> tuple[list[conversion.Sample], list[str]]:
    """Pairs every image of `split` with its label.

    Takes '*_gtFine_labelTrainIds.png' when present (checked against `num_classes`), else
    '*_gtFine_labelIds.png' (remapped to trainIds).

    Returns:
      (samples sorted by name, problems): a problem is an image without a label or a label
      without an image, worded for the user.

    Raises:
      ConversionError: `root` does not exist or holds no image for `split`.
    """
    if not os.path.isdir(root):
        raise conversion.ConversionError(conversion.msg_missing_root(root))
    image_dir = os.path.join(root, "leftImg8bit", split)
    label_dir = os.path.join(root, "gtFine", split)

    def keys_of(directory: str, suffix: str) -> list[str]:
        # A key is '{city}/{city}_{seq}_{frame}', relative to the split directory.
        return [os.path.relpath(p, directory)[:-len(suffix)]
                for p in glob.glob(os.path.join(directory, "*", "*" + suffix))]

    image_keys = keys_of(image_dir, IMAGE_SUFFIX)
    if not image_keys:
        raise conversion.ConversionError(conversion.msg_no_images(
            root, split, f"leftImg8bit/{split}/<city>/<city>_<seq>_<frame>{IMAGE_SUFFIX}"))
    label_keys = keys_of(label_dir, LABEL_IDS_SUFFIX) + keys_of(label_dir, TRAIN_IDS_SUFFIX)
    trainid_mapping = train_ids_mapping(num_classes)

    def label_of(key: str) -> tuple[str, conversion.LabelMapping]:
        train_ids = os.path.join(label_dir, key + TRAIN_IDS_SUFFIX)
        if os.path.isfile(train_ids):
            return train_ids, trainid_mapping
        return os.path.join(label_dir, key + LABEL_IDS_SUFFIX), LABEL_IDS

    return conversion.pair_samples(
        image_keys + label_keys,
        image_path_of=lambda key: os.path.join(image_dir, key + IMAGE_SUFFIX),
        label_of=label_of)
