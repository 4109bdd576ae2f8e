"""One descriptor per supported dataset: classes, ignore label, palette, splits, file names.

Every script resolves `--dataset=NAME` through `get(NAME)`, so the number of classes, the
ignore label and the TFRecord file pattern are stated in exactly one place.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

IGNORE_LABEL = 255

# Shards written by the converters (and by the DeepLab tools) are '{split}-%05d-of-%05d.tfrecord'.
TFRECORD_FILE_PATTERN = "{split}-*.tfrecord"


@dataclasses.dataclass(frozen=True)
class DatasetDescriptor:
    """What the pipelines and scripts need to know about one dataset.

    Attributes:
      name: registry key, e.g. 'cityscapes'.
      num_classes: number of train ids (0..num_classes-1); the ignore label is not counted.
      ignore_label: label value excluded from loss and metrics.
      class_names: one name per train id.
      palette: one RGB tuple per train id, for colour visualisations.
      splits: split name -> official number of examples.
      file_pattern: glob of a split's TFRecord shards, with a '{split}' placeholder.
      train_split: split used for search and retraining.
      eval_split: split with public labels used for evaluation.
      train_id_to_label_id: for Cityscapes, the labelId of each train id (evaluation-server
        PNGs must hold labelIds); None where the dataset has no such second id space.
      search_scale: recommended image scale during the architecture search.
      search_crop_size: recommended square crop during the search.
      retrain_crop_size: recommended square crop when retraining the found network.
    """

    name: str
    num_classes: int
    ignore_label: int
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    splits: Mapping[str, int]
    file_pattern: str = TFRECORD_FILE_PATTERN
    train_split: str = "train"
    eval_split: str = "val"
    train_id_to_label_id: tuple[int, ...] | None = None
    search_scale: float = 0.5
    search_crop_size: int = 321
    retrain_crop_size: int = 513

    def __post_init__(self) -> None:
        # A registry typo would otherwise surface much later as a shape error in the model.
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes")
        if len(self.palette) != self.num_classes:
            raise ValueError(
                f"{self.name}: {len(self.palette)} palette colours for {self.num_classes} classes")

    def split_pattern(self, split: str) -> str:
        """The glob of `split`'s shards, relative to the data directory."""
        return self.file_pattern.format(split=split)


def bit_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC colour map: the bits of the index spread over R, G and B, high bit first."""
    colours = []
    for index in range(n):
        r = g = b = 0
        code = index
        for bit in range(7, -1, -1):
            r |= (code & 1) << bit
            g |= ((code >> 1) & 1) << bit
            b |= ((code >> 2) & 1) << bit
            code >>= 3
        colours.append((r, g, b))
    return tuple(colours)


CITYSCAPES_CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)
CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
# trainId -> labelId (cityscapesScripts labels.py), needed to write evaluation-server PNGs.
CITYSCAPES_TRAIN_ID_TO_LABEL_ID = (
    7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33,
)

VOC_CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)

# ADE20K SceneParsing (ADEChallengeData2016) classes 1..150, in file order; train id = class - 1.
ADE20K_CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

# Demo: train id 0 is background, train id d+1 is the handwritten digit d.
DEMO_CLASS_NAMES = ("background",) + tuple(f"digit {d}" for d in range(10))
DEMO_PALETTE = (
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
)

_DESCRIPTORS = {
    d.name: d
    for d in (
        DatasetDescriptor(
            name="cityscapes",
            num_classes=19,
            ignore_label=IGNORE_LABEL,
            class_names=CITYSCAPES_CLASS_NAMES,
            palette=CITYSCAPES_PALETTE,
            splits={"train": 2975, "val": 500, "test": 1525},
            train_id_to_label_id=CITYSCAPES_TRAIN_ID_TO_LABEL_ID,
            search_scale=0.5,
            search_crop_size=321,
            retrain_crop_size=769,
        ),
        DatasetDescriptor(
            name="pascal_voc",
            num_classes=21,
            ignore_label=IGNORE_LABEL,
            class_names=VOC_CLASS_NAMES,
            palette=bit_palette(21),
            splits={"train": 1464, "val": 1449, "trainval": 2913, "train_aug": 10582},
            search_scale=1.0,
            search_crop_size=321,
            retrain_crop_size=513,
        ),
        DatasetDescriptor(
            name="ade20k",
            num_classes=150,
            ignore_label=IGNORE_LABEL,
            class_names=ADE20K_CLASS_NAMES,
            # ADE20K has no official colour map; the VOC one, skipping black, is distinct enough.
            palette=bit_palette(151)[1:],
            splits={"train": 20210, "val": 2000},
            search_scale=1.0,
            search_crop_size=321,
            retrain_crop_size=513,
        ),
        DatasetDescriptor(
            name="demo",
            num_classes=11,
            ignore_label=IGNORE_LABEL,
            class_names=DEMO_CLASS_NAMES,
            palette=DEMO_PALETTE,
            splits={"train": 240, "val": 60},
            # Images are 128x256; half resolution keeps digits 12-28 px tall, enough to read.
            search_scale=0.5,
            search_crop_size=64,
            retrain_crop_size=128,
        ),
    )
}


def names() -> tuple[str, ...]:
    """The registered dataset names, sorted."""
    return tuple(sorted(_DESCRIPTORS))


def get(name: str) -> DatasetDescriptor:
    """Returns the descriptor of dataset `name`.

    Raises:
      ValueError: `name` is not registered; the message lists the known names.
    """
    try:
        return _DESCRIPTORS[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; known datasets: {', '.join(names())}") from None
