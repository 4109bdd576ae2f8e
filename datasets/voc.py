"""PASCAL VOC 2012: discovery of (JPEG image, class PNG) pairs listed by a split file.

Layout (VOCtrainval_11-May-2012.tar, unpacked):
  {root}/JPEGImages/{id}.jpg
  {root}/SegmentationClass/{id}.png          palette PNG; the index is the class
  {root}/ImageSets/Segmentation/{train,val,trainval}.txt
Optional augmented set (SBD, as used by DeepLab): a folder of greyscale class PNGs
('SegmentationClassAug') and a list of its ids (e.g. 'train_aug.txt'), converted as split
'train_aug'.
"""

from __future__ import annotations

import os

from . import conversion
from .registry import IGNORE_LABEL

NUM_CLASSES = 21
AUG_SPLIT = "train_aug"

# 0 background, 1..20 objects, 255 the 'void' boundary band (ignored).
LABELS = conversion.LabelMapping.from_dict(
    "PASCAL VOC class ids", {**{c: c for c in range(NUM_CLASSES)}, IGNORE_LABEL: IGNORE_LABEL})


def _read_list(list_file: str) -> list[str]:
    with open(list_file, encoding="utf-8") as f:
        # Some published lists hold 'JPEGImages/x.jpg SegmentationClassAug/x.png' lines.
        ids = [os.path.splitext(os.path.basename(line.split()[0]))[0]
               for line in f if line.strip()]
    return ids


def discover(root: str, split: str, *, aug_label_dir: str | None = None,
             aug_list: str | None = None) -> tuple[list[conversion.Sample], list[str]]:
    """Pairs the images listed for `split` with their class PNGs.

    Split 'train_aug' reads ids from `aug_list` and labels from `aug_label_dir`; any other
    split reads ImageSets/Segmentation/{split}.txt and SegmentationClass.

    Returns:
      (samples, problems), as `conversion.pair_samples`.

    Raises:
      ConversionError: missing root, missing or empty split list, or missing aug flags.
    """
    if not os.path.isdir(root):
        raise conversion.ConversionError(conversion.msg_missing_root(root))
    if split == AUG_SPLIT:
        if not (aug_label_dir and aug_list):
            raise conversion.ConversionError(
                f"{root}: split '{AUG_SPLIT}' needs both the SegmentationClassAug folder and "
                "its id list (--segmentation_class_aug_dir, --train_aug_list)")
        list_file, label_dir = aug_list, aug_label_dir
    else:
        list_file = os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")
        label_dir = os.path.join(root, "SegmentationClass")
    if not os.path.isfile(list_file):
        raise conversion.ConversionError(f"{list_file}: split list does not exist")
    ids = _read_list(list_file)
    if not ids:
        raise conversion.ConversionError(conversion.msg_no_images(
            root, split, f"ids of JPEGImages/<id>.jpg listed in {list_file}"))
    image_dir = os.path.join(root, "JPEGImages")
    return conversion.pair_samples(
        ids,
        image_path_of=lambda key: os.path.join(image_dir, key + ".jpg"),
        label_of=lambda key: (os.path.join(label_dir, key + ".png"), LABELS))
