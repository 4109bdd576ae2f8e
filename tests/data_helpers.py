"""Builders of tiny dataset trees on disk, shared by the data tests."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: str, array: np.ndarray) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(png_bytes(array))
    return path


def write_jpeg(path: str, array: np.ndarray) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=95)
    return path


def write_palette_png(path: str, indices: np.ndarray) -> str:
    """A 'P' mode PNG, as VOC's SegmentationClass files are."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(indices, mode="P")
    palette = []
    for i in range(256):
        palette += [(i * 37) % 256, (i * 91) % 256, (i * 53) % 256]
    image.putpalette(palette)
    image.save(path, format="PNG")
    return path


def random_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def truncate(path: str, keep_fraction: float = 0.5) -> None:
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:max(1, int(len(data) * keep_fraction))])


def cityscapes_paths(root: str, split: str, city: str, index: int) -> dict[str, str]:
    name = f"{city}_{index:06d}_000019"
    return {
        "name": name,
        "image": os.path.join(root, "leftImg8bit", split, city, f"{name}_leftImg8bit.png"),
        "labelIds": os.path.join(root, "gtFine", split, city, f"{name}_gtFine_labelIds.png"),
        "labelTrainIds": os.path.join(root, "gtFine", split, city,
                                      f"{name}_gtFine_labelTrainIds.png"),
    }


def make_cityscapes_tree(root: str, counts: dict[str, int], *, size=(8, 12), city="aachen",
                         label_kind="labelIds", seed=0) -> dict[str, list[dict]]:
    """Writes counts[split] random image/label pairs; returns their paths and arrays."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[dict]] = {}
    for split, count in counts.items():
        out[split] = []
        for index in range(count):
            paths = cityscapes_paths(root, split, city, index)
            image = random_image(rng, *size)
            if label_kind == "labelIds":
                label = rng.integers(0, 34, size=size, dtype=np.uint8)
            else:
                label = rng.choice(np.array([*range(19), 255], np.uint8), size=size)
            write_png(paths["image"], image)
            write_png(paths[label_kind], label)
            out[split].append({**paths, "image_array": image, "label_array": label,
                               "label_path": paths[label_kind]})
    return out
