"""The built-in demo dataset: handwritten digits composited onto textured street-sized scenes.

Made for a fresh machine with no download: scikit-learn ships 1797 8x8 handwritten digits
(`sklearn.datasets.load_digits`). Each image is 128x256 (HxW) with 2 to 5 digits, 24-56 px tall,
upscaled (nearest or bilinear, then thresholded) onto a textured background, plus 0 to 3 solid
distractor blobs. Classes: 0 = background, 1 + d = digit d (11 classes, no ignored pixels).

Every digit and every blob is painted from the same random colour distribution,
whatever its class, so colour says nothing about the class: only the shape of the stroke
pattern, seen with enough context, does. Training and validation digits come from disjoint
sets of scikit-learn samples, so validation measures generalisation to unseen handwriting.

The images are written in the Cityscapes layout (city 'demo', labels as
*_gtFine_labelTrainIds.png) and converted by the Cityscapes converter, so the demo runs the
very same code as a real dataset. Everything is a deterministic function of DEMO_SEED.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shutil
import tempfile
from typing import Iterator

import numpy as np
from PIL import Image

from . import cityscapes, cli, registry

# Bump when the generator changes: the cache directory is versioned by it.
DEMO_VERSION = 3
DEMO_SEED = 1901_02985  # the paper's arXiv number
HEIGHT, WIDTH = 128, 256
SPLIT_SIZES = {"train": 240, "val": 60}
CITY = "demo"
DIGIT_HEIGHT_RANGE = (24, 56)
DIGITS_PER_IMAGE = (2, 5)
BLOBS_PER_IMAGE = (0, 3)
VAL_DIGIT_FRACTION = 0.25
NUM_SHARDS = 2
MARKER = "COMPLETE"
CACHE_ENV = "AUTO_DEEPLAB_TF_CACHE"


def default_cache_dir() -> str:
    """$AUTO_DEEPLAB_TF_CACHE/demo, else ~/.cache/auto_deeplab_tf/demo."""
    base = os.environ.get(CACHE_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "auto_deeplab_tf")
    return os.path.join(base, "demo")


@functools.lru_cache(maxsize=1)
def _digit_pools() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's digits (ink in [0, 1]) split once into disjoint train and val pools."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    order = np.random.default_rng(DEMO_SEED).permutation(len(images))
    n_val = int(round(len(images) * VAL_DIGIT_FRACTION))
    val, train = order[:n_val], order[n_val:]
    return {"train": (images[train], digits.target[train]),
            "val": (images[val], digits.target[val])}


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid upscaled bilinearly."""
    grid = rng.random((cells, max(1, cells * width // height))).astype(np.float32)
    image = Image.fromarray(grid, mode="F").resize((width, height), Image.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random two-colour texture [H, W, 3] in 0..255 (smooth blotches plus stripes)."""
    colour_a, colour_b = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    mix = _smooth_noise(rng, height, width, cells=int(rng.integers(2, 6)))
    if rng.random() < 0.5:
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 16)
        stripes = 0.5 + 0.5 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        mix = 0.6 * mix + 0.4 * stripes
    return colour_a + mix[..., None] * (colour_b - colour_a)


def _paint(rng: np.random.Generator, height: int, width: int, against: np.ndarray) -> np.ndarray:
    """A fill for a digit or blob: a random colour with a gentle random gradient.

    Redrawn until it stands out from `against`. The draw never looks at the class, so digits
    of every class (and distractor blobs) share one colour distribution.
    """
    for _ in range(20):
        colour = rng.uniform(0, 255, size=3).astype(np.float32)
        if np.abs(colour - against).max() > 80:
            break
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    slope = rng.uniform(-1.0, 1.0, size=2).astype(np.float32)
    shade = (yy - height / 2) * slope[0] + (xx - width / 2) * slope[1]
    return colour + shade[..., None]


def _digit_mask(rng: np.random.Generator, ink: np.ndarray, height: int, width: int) -> np.ndarray:
    """The digit's 8x8 ink upscaled (nearest or bilinear) to HxW and thresholded."""
    method = Image.NEAREST if rng.random() < 0.3 else Image.BILINEAR
    scaled = np.asarray(Image.fromarray(ink, mode="F").resize((width, height), method))
    return scaled > rng.uniform(0.3, 0.5)


def _blob_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A solid ellipse or rectangle: foreground-looking, but never a digit."""
    if rng.random() < 0.5:
        return np.ones((height, width), dtype=bool)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return ((yy + 0.5 - height / 2) / (height / 2)) ** 2 + (
        (xx + 0.5 - width / 2) / (width / 2)) ** 2 <= 1.0


def _place(rng: np.random.Generator, boxes: list, height: int, width: int
           ) -> tuple[int, int] | None:
    """A top-left corner whose box (with a 3 px margin) overlaps none of `boxes`."""
    for _ in range(50):
        y, x = int(rng.integers(0, HEIGHT - height + 1)), int(rng.integers(0, WIDTH - width + 1))
        if all(y + height + 3 <= by or by + bh + 3 <= y or x + width + 3 <= bx or bx + bw + 3 <= x
               for by, bx, bh, bw in boxes):
            return y, x
    return None


def generate_example(split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Image uint8 [128, 256, 3] and train ids uint8 [128, 256] of example `index` of `split`."""
    rng = np.random.default_rng([DEMO_SEED, list(SPLIT_SIZES).index(split), index])
    pool_images, pool_targets = _digit_pools()[split]
    image = _texture(rng, HEIGHT, WIDTH)
    label = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    boxes: list[tuple[int, int, int, int]] = []

    def draw(mask: np.ndarray, class_id: int) -> bool:
        corner = _place(rng, boxes, *mask.shape)
        if corner is None:
            return False
        y, x = corner
        h, w = mask.shape
        boxes.append((y, x, h, w))
        region = image[y:y + h, x:x + w]
        fill = _paint(rng, h, w, against=region.mean(axis=(0, 1)))
        region[mask] = fill[mask]
        label[y:y + h, x:x + w][mask] = class_id
        return True

    for _ in range(int(rng.integers(DIGITS_PER_IMAGE[0], DIGITS_PER_IMAGE[1] + 1))):
        pick = int(rng.integers(len(pool_images)))
        h = int(rng.integers(DIGIT_HEIGHT_RANGE[0], DIGIT_HEIGHT_RANGE[1] + 1))
        w = int(round(h * rng.uniform(0.7, 1.0)))
        draw(_digit_mask(rng, pool_images[pick], h, w), 1 + int(pool_targets[pick]))
    for _ in range(int(rng.integers(BLOBS_PER_IMAGE[0], BLOBS_PER_IMAGE[1] + 1))):
        # Near-square, so a blob never looks like the bar of a '1'.
        side = int(rng.integers(8, 29))
        draw(_blob_mask(rng, side, int(round(side * rng.uniform(0.8, 1.25)))), 0)

    image += rng.normal(0.0, 6.0, size=image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), label


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def example_paths(root: str, split: str, index: int) -> tuple[str, str]:
    """(image, label) paths of an example in the Cityscapes layout under `root`."""
    name = f"{CITY}_{list(SPLIT_SIZES).index(split):06d}_{index:06d}"
    return (os.path.join(root, "leftImg8bit", split, CITY, name + cityscapes.IMAGE_SUFFIX),
            os.path.join(root, "gtFine", split, CITY, name + cityscapes.TRAIN_IDS_SUFFIX))


def write_cityscapes_tree(root: str) -> None:
    """Writes every demo example as PNGs in the Cityscapes directory layout under `root`."""
    for split, size in SPLIT_SIZES.items():
        for index in range(size):
            image, label = generate_example(split, index)
            for path, array in zip(example_paths(root, split, index), (image, label)):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(_png(array))


@contextlib.contextmanager
def _exclusive_lock(directory: str) -> Iterator[None]:
    """Serialises concurrent builders (e.g. parallel test workers) on one cache."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): the atomic rename below still keeps it safe
        yield
        return
    with open(os.path.join(directory, ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_demo_data(cache_dir: str | None = None) -> str:
    """Returns the demo's TFRecord directory, generating and converting it on first use.

    The build happens in a temporary folder that is renamed into place only once the
    marker file is written, so a crash never leaves a half cache behind.

    Args:
      cache_dir: cache folder (default: `default_cache_dir()`).
    """
    root = cache_dir or default_cache_dir()
    final = os.path.join(root, f"v{DEMO_VERSION}")
    tfrecord_dir = os.path.join(final, "tfrecord")
    if os.path.isfile(os.path.join(final, MARKER)):
        return tfrecord_dir
    os.makedirs(root, exist_ok=True)
    with _exclusive_lock(root):
        if os.path.isfile(os.path.join(final, MARKER)):
            return tfrecord_dir
        building = tempfile.mkdtemp(prefix=".building-", dir=root)
        try:
            os.chmod(building, 0o755)  # mkdtemp makes it private; the cache may be shared
            tree = os.path.join(building, "cityscapes")
            write_cityscapes_tree(tree)
            descriptor = registry.get("demo")
            results = cli.convert_splits(
                descriptor,
                functools.partial(cityscapes.discover, tree, num_classes=descriptor.num_classes),
                list(SPLIT_SIZES), output_dir=os.path.join(building, "tfrecord"),
                num_shards=NUM_SHARDS, stream=None)
            with open(os.path.join(building, MARKER), "w", encoding="utf-8") as f:
                json.dump({"version": DEMO_VERSION, "seed": DEMO_SEED,
                           "splits": {r.split: r.count for r in results}}, f)
            if os.path.exists(final):  # an unfinished build from an older crash
                shutil.rmtree(final)
            os.rename(building, final)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
    return tfrecord_dir
