"""Validation and writing shared by every converter: raw files in, checked TFRecord shards out.

A converter only has to say which (image, label) pairs a split holds (`Sample`s), which raw
label values exist and what train id each becomes (`LabelMapping`); this module decodes every
file, rejects bad input with a message naming the file, and writes the shards atomically.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import os
import sys
import time
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from . import tfrecord_io

# Image modes TensorFlow's decoders turn into RGB with channels=3.
_IMAGE_MODES = ("RGB", "RGBA", "L", "LA", "P")
_IMAGE_FORMATS = {"PNG": "png", "JPEG": "jpeg"}


class ConversionError(Exception):
    """Bad input: the message names the file and what is wrong with it."""


@dataclasses.dataclass(frozen=True, eq=False)
class LabelMapping:
    """The raw values a label file may hold and the train id each one becomes.

    Attributes:
      name: what the raw values are called in messages, e.g. 'Cityscapes labelIds'.
      lut: int16[256]; lut[raw] is the train id (or the ignore label), -1 for unknown values.
    """

    name: str
    lut: np.ndarray

    @classmethod
    def from_dict(cls, name: str, mapping: Mapping[int, int]) -> "LabelMapping":
        """A mapping from {raw value: train id}; raw values not listed are rejected."""
        lut = np.full(256, -1, dtype=np.int16)
        for raw, train_id in mapping.items():
            lut[raw] = train_id
        return cls(name=name, lut=lut)

    def known_values(self) -> str:
        """The accepted raw values as compact ranges, e.g. '0-33, 255'."""
        values = np.flatnonzero(self.lut >= 0).tolist()
        ranges: list[str] = []
        start = prev = None
        for v in values + [None]:
            if v is not None and prev is not None and v == prev + 1:
                prev = v
                continue
            if start is not None:
                ranges.append(str(start) if start == prev else f"{start}-{prev}")
            start = prev = v
        return ", ".join(ranges)


@dataclasses.dataclass(frozen=True)
class Sample:
    """One (image, label) pair to convert.

    `image_path` and `label_path` name the files in messages; the bytes are read from them
    unless given (sources such as TFDS hand over encoded bytes with no file behind them).
    """

    name: str
    image_path: str
    label_path: str
    label_mapping: LabelMapping
    image_bytes: bytes | None = dataclasses.field(default=None, repr=False)
    label_bytes: bytes | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass
class SplitResult:
    """What `convert_split` did: examples written, problems skipped, shards published."""

    split: str
    count: int
    skipped: list[str]
    shards: list[str]
    seconds: float


# Messages, in one place so that every converter words a problem the same way.
def msg_missing_root(root: str) -> str:
    return f"{root}: dataset root does not exist"


def msg_no_images(root: str, split: str, expected: str) -> str:
    return f"{root}: no images found for split '{split}' (expected {expected})"


def msg_image_without_label(image_path: str, label_path: str) -> str:
    return f"{image_path}: image has no label (expected {label_path})"


def msg_label_without_image(label_path: str, image_path: str) -> str:
    return f"{label_path}: label has no image (expected {image_path})"


def pair_samples(
    keys: Iterable[str],
    image_path_of: Callable[[str], str],
    label_of: Callable[[str], tuple[str, LabelMapping]],
    name_of: Callable[[str], str] = os.path.basename,
) -> tuple[list[Sample], list[str]]:
    """Pairs images with labels by key; every unpaired file becomes a problem message.

    Args:
      keys: every key seen on either side (image stems, label stems, or listed ids).
      image_path_of: key -> the image path the key must have.
      label_of: key -> (label path, mapping of its raw values).
      name_of: key -> example name stored in the TFRecord.

    Returns:
      (samples sorted by key, problems).
    """
    samples: list[Sample] = []
    problems: list[str] = []
    for key in sorted(set(keys)):
        image_path = image_path_of(key)
        label_path, mapping = label_of(key)
        has_image, has_label = os.path.isfile(image_path), os.path.isfile(label_path)
        if has_image and has_label:
            samples.append(Sample(name_of(key), image_path, label_path, mapping))
        elif has_image:
            problems.append(msg_image_without_label(image_path, label_path))
        elif has_label:
            problems.append(msg_label_without_image(label_path, image_path))
        else:
            problems.append(f"{image_path}: listed image does not exist (nor its label {label_path})")
    return samples, problems


def _read(path: str, data: bytes | None) -> bytes:
    if data is not None:
        return data
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ConversionError(f"{path}: file does not exist") from None


def _decode_image(path: str, data: bytes) -> tuple[str, int, int]:
    """Fully decodes the image so truncation is caught now; returns (format, height, width)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format
            if image_format not in _IMAGE_FORMATS:
                raise ConversionError(
                    f"{path}: unsupported image format {image_format} (expected PNG or JPEG)")
            if image.mode not in _IMAGE_MODES:
                raise ConversionError(
                    f"{path}: unsupported image mode {image.mode} (expected RGB or greyscale)")
            image.load()
            return _IMAGE_FORMATS[image_format], image.height, image.width
    except ConversionError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ConversionError(f"{path}: cannot decode image (corrupt or truncated file)") from err


def _decode_label(path: str, data: bytes) -> np.ndarray:
    """Decodes an 8-bit single-channel PNG (greyscale or palette indices) to uint8 [H, W]."""
    try:
        with Image.open(io.BytesIO(data)) as label:
            if label.format != "PNG":
                raise ConversionError(f"{path}: label must be a PNG, got {label.format}")
            if label.mode not in ("L", "P"):
                raise ConversionError(
                    f"{path}: label must be a single-channel 8-bit PNG, got mode {label.mode}")
            label.load()
            # For a palette PNG ('P') this is the palette index, i.e. the class id.
            return np.asarray(label, dtype=np.uint8)
    except ConversionError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ConversionError(
            f"{path}: cannot decode label PNG (corrupt or truncated file)") from err


def _encode_png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def encode_sample(sample: Sample):
    """Validates one sample and returns its tf.train.Example (label remapped to train ids).

    Raises:
      ConversionError: a file is missing, cannot be decoded, sizes differ or the label holds
        values outside `sample.label_mapping`.
    """
    image_bytes = _read(sample.image_path, sample.image_bytes)
    label_bytes = _read(sample.label_path, sample.label_bytes)
    image_format, height, width = _decode_image(sample.image_path, image_bytes)
    raw = _decode_label(sample.label_path, label_bytes)
    if raw.shape != (height, width):
        raise ConversionError(
            f"{sample.label_path}: label is {raw.shape[0]}x{raw.shape[1]} (HxW) but its image "
            f"{sample.image_path} is {height}x{width}")
    mapped = sample.label_mapping.lut[raw]
    if (mapped < 0).any():
        bad = np.unique(raw[mapped < 0]).tolist()
        shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
        raise ConversionError(
            f"{sample.label_path}: label values {shown} are not {sample.label_mapping.name} "
            f"(known: {sample.label_mapping.known_values()})")
    return tfrecord_io.make_example(
        image_bytes=image_bytes,
        image_format=image_format,
        label_bytes=_encode_png(mapped.astype(np.uint8)),
        filename=sample.name,
        height=height,
        width=width,
    )


def _ordered_parallel_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """Like map(fn, items) on a thread pool, in order, with a bounded number in flight.

    PIL and zlib release the GIL while decoding and compressing, so threads do help; the
    window keeps at most a few decoded images in memory however slow the writer is.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        window: collections.deque = collections.deque()
        for item in items:
            window.append(pool.submit(fn, item))
            if len(window) >= 2 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def _try_encode(sample: Sample):
    try:
        return sample, encode_sample(sample), None
    except ConversionError as err:
        return sample, None, err


class _Progress:
    """Prints 'split: done/total (pct) rate, eta' every few seconds and at the end."""

    def __init__(self, split: str, total: int, stream, every_s: float = 5.0):
        self._split, self._total, self._stream, self._every = split, total, stream, every_s
        self._start = self._last = time.monotonic()

    def update(self, done: int, force: bool = False) -> None:
        if self._stream is None:
            return
        now = time.monotonic()
        if not force and now - self._last < self._every:
            return
        self._last = now
        rate = done / max(now - self._start, 1e-9)
        eta = (self._total - done) / rate if rate > 0 else 0.0
        print(f"{self._split}: {done}/{self._total} ({100.0 * done / max(self._total, 1):.0f}%) "
              f"{rate:.1f} images/s, eta {eta:.0f}s", file=self._stream, flush=True)


def convert_split(
    samples: Iterable[Sample],
    problems: Sequence[str],
    *,
    output_dir: str,
    split: str,
    num_shards: int,
    skip_bad: bool = False,
    num_workers: int | None = None,
    progress_stream=sys.stdout,
    total: int | None = None,
) -> SplitResult:
    """Validates and writes one split; either every shard is published or none is.

    Args:
      samples: the pairs to convert, in the order they should be written; may be a lazy
        iterable (then pass `total`), so a source need not hold every image in memory.
      problems: problems found while pairing files (e.g. an image without its label).
      output_dir: where '{split}-%05d-of-%05d.tfrecord' shards go.
      split: split name used in the shard names.
      num_shards: requested shard count (capped at the number of samples).
      skip_bad: convert the good samples and report the bad ones instead of failing.
      num_workers: decoding threads (default: the number of CPUs).
      progress_stream: where progress lines go; None for quiet.
      total: number of samples, when `samples` has no len().

    Raises:
      ConversionError: bad input (without `skip_bad`), or nothing left to convert.
    """
    start = time.monotonic()
    if problems and not skip_bad:
        more = len(problems) - 1
        raise ConversionError(problems[0] + (
            f"\n(and {more} more problem{'s' if more > 1 else ''} in split '{split}')"
            if more else ""))
    skipped = list(problems)
    if total is None:
        total = len(samples)  # type: ignore[arg-type]
    workers = num_workers or os.cpu_count() or 1
    progress = _Progress(split, total, progress_stream)
    with tfrecord_io.ShardedWriter(output_dir, split, max(1, min(num_shards, total))) as writer:
        done = 0
        for sample, example, error in _ordered_parallel_map(_try_encode, samples, workers):
            done += 1
            if error is not None:
                if not skip_bad:
                    raise error
                skipped.append(str(error))
            else:
                writer.write(example, sample.name)
            progress.update(done)
        progress.update(done, force=True)
        if writer.count == 0:
            raise ConversionError(
                f"{output_dir}: no valid example left to write for split '{split}'")
        shards = writer.commit()
    return SplitResult(split=split, count=writer.count, skipped=skipped, shards=shards,
                       seconds=time.monotonic() - start)
