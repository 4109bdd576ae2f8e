"""tf.data input pipelines for search, retraining and evaluation, read from TFRecord shards.

Determinism: every random choice is a function of (seed, epoch) alone. The file order is
permuted in Python, records are interleaved with a fixed cycle length, the shuffle buffer has
an op-level seed, and the augmentations use stateless random ops keyed by the element's
position in the shuffled stream. So epoch e can be rebuilt bit-for-bit on resume, whatever
the parallelism, and `.skip(k)` jumps over the k batches already seen.

Images are normalised to [-1, 1]; crops are padded with 0 (mid grey) in the image and with the
ignore label in the label, so padding never counts in the loss or the metrics.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
import tensorflow as tf

from . import atomic_write, keys, registry, tfrecord_io
from .normalization import normalize_image
from .registry import DatasetDescriptor

AUTOTUNE = tf.data.AUTOTUNE
# Fixed, not AUTOTUNE: the interleave's cycle length decides the record order.
_INTERLEAVE_CYCLE = 4
# Streams get independent randomness from one user seed.
_STREAM_A, _STREAM_B, _STREAM_RETRAIN = 0, 1, 2


# The README's subsections of 'Data' on each converter (a test checks that they exist).
README_SECTIONS = {"cityscapes": "Cityscapes", "pascal_voc": "PASCAL VOC 2012",
                   "ade20k": "ADE20K"}


def convert_hint(dataset_name: str) -> str:
    """Where the README says how to convert `dataset_name`'s download."""
    section = README_SECTIONS.get(dataset_name)
    where = f", subsection '{section}'," if section else ""
    return f"the README's 'Data' section{where} says how to convert a download"


def split_files(descriptor: DatasetDescriptor, data_dir: str, split: str) -> list[str]:
    """The sorted shards of `split`.

    Raises:
      FileNotFoundError: no shard matches; the message gives the pattern looked for.
    """
    files = tfrecord_io.existing_shards(data_dir, split, descriptor.file_pattern)
    if not files:
        raise FileNotFoundError(
            f"no TFRecord shards for split '{split}' of {descriptor.name}: nothing matches "
            f"{os.path.join(data_dir, descriptor.split_pattern(split))} (convert the dataset "
            f"first: {convert_hint(descriptor.name)})")
    return files


def split_names(descriptor: DatasetDescriptor, data_dir: str, split: str) -> list[str]:
    """The example names of `split`, sorted; from the converters' index file when present."""
    names = tfrecord_io.read_filenames_index(data_dir, split)
    if names is None:  # e.g. shards written by the DeepLab tools
        names = tfrecord_io.scan_filenames(split_files(descriptor, data_dir, split))
    return sorted(names)


def split_size(descriptor: DatasetDescriptor, data_dir: str, split: str) -> int:
    """Number of examples in `split`."""
    return len(split_names(descriptor, data_dir, split))


def resolve_data_dir(dataset_name: str, data_dir: str | None) -> str:
    """The TFRecord directory to read `dataset_name` from.

    'demo' needs no data: its cached shards are built on first use (`data_dir`, if given,
    is either a folder holding demo shards or the cache folder to build them in). Every
    other dataset needs `data_dir` pointing at converted shards.

    Raises:
      ValueError: unknown dataset, missing --data_dir, or a data dir without shards.
    """
    descriptor = registry.get(dataset_name)
    if dataset_name == "demo":
        if data_dir and tfrecord_io.existing_shards(
                data_dir, descriptor.train_split, descriptor.file_pattern):
            return data_dir
        from . import demo  # imported lazily: pulls in scikit-learn

        return demo.ensure_demo_data(cache_dir=data_dir)
    if not data_dir:
        raise ValueError(
            f"--dataset={dataset_name} needs --data_dir=DIR, the folder of its TFRecord shards "
            f"('{descriptor.file_pattern}'); {convert_hint(dataset_name)}. Only "
            "--dataset=demo runs without one.")
    if not tf.io.gfile.isdir(data_dir):
        raise ValueError(f"--data_dir={data_dir} does not exist")
    found = [s for s in descriptor.splits
             if tfrecord_io.existing_shards(data_dir, s, descriptor.file_pattern)]
    if not found:
        raise ValueError(
            f"--data_dir={data_dir} holds no {descriptor.name} shards (looked for "
            f"'{descriptor.file_pattern}' with split in {', '.join(descriptor.splits)})")
    return data_dir


# ---------------------------------------------------------------------------------------------
# The A/B split of the search.


def search_split(descriptor: DatasetDescriptor, data_dir: str, model_dir: str, seed: int,
                 *, split: str = "train", write: bool = True) -> tuple[list[str], list[str]]:
    """The disjoint halves (trainA, trainB) of `split`, as sorted example names.

    The first call draws them with `seed` and writes model_dir/search_split.json; later calls
    (a resumed run) read that file, so the halves never change within a run. With
    `write=False` (the non-chief workers of a multi-worker search) a missing file is not
    written: the halves are drawn the same way, a function of (names, seed) only, so every
    worker uses the chief's split without racing it for the file.

    Raises:
      ValueError: the file was written for another dataset, split or seed, or names in it
        are no longer in the data.
    """
    path = os.path.join(model_dir, keys.SEARCH_SPLIT_FILENAME)
    names = split_names(descriptor, data_dir, split)
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            saved = json.load(f)
        wanted = {"dataset": descriptor.name, "split": split, "seed": seed}
        for key, value in wanted.items():
            if saved.get(key) != value:
                raise ValueError(
                    f"{path} was written for {key}={saved.get(key)!r}, this run has {value!r}; "
                    "use the original settings or a new model_dir")
        missing = sorted(set(saved["train_a"] + saved["train_b"]) - set(names))
        if missing:
            raise ValueError(
                f"{path} names {len(missing)} example(s) missing from {data_dir}, e.g. "
                f"{missing[0]!r}: the data changed since the search started")
        return list(saved["train_a"]), list(saved["train_b"])
    if len(set(names)) != len(names):
        raise ValueError(f"split '{split}' in {data_dir} has duplicate example names; the A/B "
                         "split needs unique image/filename values")
    if len(names) < 2:
        raise ValueError(f"split '{split}' in {data_dir} has {len(names)} example(s); the search "
                         "needs at least 2")
    order = np.random.default_rng(seed).permutation(len(names))
    half = (len(names) + 1) // 2
    train_a = sorted(names[i] for i in order[:half])
    train_b = sorted(names[i] for i in order[half:])
    if not write:
        return train_a, train_b
    tf.io.gfile.makedirs(model_dir)
    atomic_write.write_json(path, {"dataset": descriptor.name, "split": split, "seed": seed,
                                  "train_a": train_a, "train_b": train_b}, indent=1)
    return train_a, train_b


def search_steps_per_epoch(descriptor: DatasetDescriptor, data_dir: str, model_dir: str,
                           batch_size: int, seed: int, *, split: str = "train",
                           write: bool = True) -> int:
    """Batches per search epoch: pairs (A, B) until the smaller half runs out."""
    train_a, train_b = search_split(descriptor, data_dir, model_dir, seed, split=split,
                                    write=write)
    return min(len(train_a), len(train_b)) // batch_size


def retrain_steps_per_epoch(descriptor: DatasetDescriptor, data_dir: str, batch_size: int,
                            *, split: str = "train") -> int:
    """Batches per retraining epoch (the last partial batch is dropped)."""
    return split_size(descriptor, data_dir, split) // batch_size


# ---------------------------------------------------------------------------------------------
# Decoding and augmentation.


def _decode(features: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
    """(image uint8 [H, W, 3], label uint8 [H, W, 1]) from parsed features."""
    image = tf.io.decode_image(features[keys.KEY_IMAGE_ENCODED], channels=3,
                               expand_animations=False)
    image.set_shape([None, None, 3])
    label = tf.io.decode_png(features[keys.KEY_LABEL_ENCODED], channels=1)
    label.set_shape([None, None, 1])
    return image, label


def _augment(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor, *, crop_size: int,
             min_scale: float, max_scale: float, ignore_label: int
             ) -> tuple[tf.Tensor, tf.Tensor]:
    """Scale, pad to the crop, random crop and random left-right flip; stateless in `seed`."""
    scale_seed, crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=3))
    image = tf.cast(image, tf.float32)
    if not min_scale == max_scale == 1.0:
        if min_scale == max_scale:
            scale = tf.constant(min_scale, tf.float32)
        else:
            scale = tf.random.stateless_uniform([], scale_seed, min_scale, max_scale)
        size = tf.cast(tf.shape(image)[:2], tf.float32)
        new_size = tf.maximum(tf.cast(tf.round(size * scale), tf.int32), 1)
        image = tf.image.resize(image, new_size, method="bilinear")
        label = tf.image.resize(label, new_size, method="nearest")
    image = normalize_image(image)

    height, width = tf.shape(image)[0], tf.shape(image)[1]
    pad_h = tf.maximum(crop_size - height, 0)
    pad_w = tf.maximum(crop_size - width, 0)
    # 0 is mid grey after normalisation, as DeepLab pads with the mean pixel.
    image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]], constant_values=0.0)
    label = tf.pad(label, [[0, pad_h], [0, pad_w], [0, 0]],
                   constant_values=tf.cast(ignore_label, label.dtype))

    room = tf.cast(tf.stack([height + pad_h, width + pad_w]) - crop_size + 1, tf.float32)
    offset = tf.cast(tf.floor(tf.random.stateless_uniform([2], crop_seed) * room), tf.int32)
    image = image[offset[0]:offset[0] + crop_size, offset[1]:offset[1] + crop_size]
    label = label[offset[0]:offset[0] + crop_size, offset[1]:offset[1] + crop_size]

    flip = tf.random.stateless_uniform([], flip_seed) < 0.5
    image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
    label = tf.cond(flip, lambda: tf.reverse(label, axis=[1]), lambda: label)
    image.set_shape([crop_size, crop_size, 3])
    label = tf.cast(tf.squeeze(label, axis=-1), tf.int32)
    label.set_shape([crop_size, crop_size])
    return image, label


def _stream_seeds(seed: int, epoch: int, stream: int) -> tuple[int, int, int]:
    """(file order seed, shuffle seed, augmentation key), each a function of its inputs only."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(3, dtype=np.uint32)
    return int(state[0]), int(state[1]), int(state[2])


def _with_options(dataset: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True
    # Sharding by data (not by file) keeps every replica's share of A and B balanced even
    # though records are filtered by name.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return dataset.with_options(options)


def _training_stream(
    files: Sequence[str],
    keep_names: Sequence[str] | None,
    *,
    seed: int,
    epoch: int,
    stream: int,
    batch_size: int,
    crop_size: int,
    min_scale: float,
    max_scale: float,
    ignore_label: int,
    shuffle_buffer: int,
) -> tf.data.Dataset:
    """One epoch of augmented (image, label) batches, a deterministic function of its args."""
    order_seed, shuffle_seed, aug_key = _stream_seeds(seed, epoch, stream)
    files = [files[i] for i in np.random.default_rng(order_seed).permutation(len(files))]
    dataset = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=min(_INTERLEAVE_CYCLE, len(files)),
        block_length=1, num_parallel_calls=AUTOTUNE, deterministic=True)
    dataset = dataset.map(tfrecord_io.parse_example, num_parallel_calls=AUTOTUNE,
                          deterministic=True)
    if keep_names is not None:
        keep = tf.constant(sorted(keep_names), dtype=tf.string)
        dataset = dataset.filter(
            lambda f: tf.reduce_any(tf.equal(f[keys.KEY_IMAGE_FILENAME], keep)))
    dataset = dataset.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)

    def prepare(index, features):
        image, label = _decode(features)
        element_seed = tf.stack([tf.constant(aug_key, tf.int64), index])
        return _augment(image, label, element_seed, crop_size=crop_size, min_scale=min_scale,
                        max_scale=max_scale, ignore_label=ignore_label)

    dataset = dataset.enumerate().map(prepare, num_parallel_calls=AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size, drop_remainder=True)


def search_datasets(
    descriptor: DatasetDescriptor,
    data_dir: str,
    model_dir: str,
    *,
    batch_size: int,
    crop_size: int = 321,
    scale: float = 0.5,
    seed: int = 0,
    epoch: int = 0,
    split: str = "train",
    shuffle_buffer: int = 256,
    write_split: bool = True,
) -> tf.data.Dataset:
    """One search epoch of paired batches ((images_a, labels_a), (images_b, labels_b)).

    trainA and trainB are the disjoint halves from `search_split` (written to model_dir on
    first use). Each element is resized by `scale`, padded to `crop_size` where smaller,
    randomly cropped and flipped; images float32 [batch, crop, crop, 3] in [-1, 1], labels
    int32 [batch, crop, crop] with the ignore label in the padding. The epoch has
    `search_steps_per_epoch` batches (partial batches are dropped) and its order depends
    on (seed, epoch) only.

    Args:
      shuffle_buffer: examples held for shuffling per half (encoded, ~2 MB each on
        Cityscapes); the file order is permuted per epoch as well.
      write_split: whether a missing search_split.json may be written (`search_split`).

    Under MultiWorkerMirroredStrategy every worker builds this same dataset and
    `experimental_distribute_dataset` shards it by data (the policy set here): each worker
    takes its replicas' slices of every global batch, so `batch_size` stays global.
    """
    train_a, train_b = search_split(descriptor, data_dir, model_dir, seed, split=split,
                                    write=write_split)
    files = split_files(descriptor, data_dir, split)
    halves = [
        _training_stream(files, names, seed=seed, epoch=epoch, stream=stream,
                         batch_size=batch_size, crop_size=crop_size, min_scale=scale,
                         max_scale=scale, ignore_label=descriptor.ignore_label,
                         shuffle_buffer=shuffle_buffer)
        for names, stream in ((train_a, _STREAM_A), (train_b, _STREAM_B))
    ]
    return _with_options(tf.data.Dataset.zip(tuple(halves)).prefetch(AUTOTUNE))


def retrain_dataset(
    descriptor: DatasetDescriptor,
    data_dir: str,
    *,
    split: str = "train",
    batch_size: int,
    crop_size: int = 769,
    min_scale: float = 0.5,
    max_scale: float = 2.0,
    seed: int = 0,
    epoch: int = 0,
    shuffle_buffer: int = 256,
) -> tf.data.Dataset:
    """One retraining epoch of (images, labels) batches, as `search_datasets` but with a
    random scale in [min_scale, max_scale] per example and the whole split."""
    files = split_files(descriptor, data_dir, split)
    dataset = _training_stream(
        files, None, seed=seed, epoch=epoch, stream=_STREAM_RETRAIN, batch_size=batch_size,
        crop_size=crop_size, min_scale=min_scale, max_scale=max_scale,
        ignore_label=descriptor.ignore_label, shuffle_buffer=shuffle_buffer)
    return _with_options(dataset.prefetch(AUTOTUNE))


def eval_dataset(descriptor: DatasetDescriptor, data_dir: str, *, split: str = "val"
                 ) -> tf.data.Dataset:
    """Every example of `split` at its original size, in file order, batch 1, no augmentation.

    Yields dicts: 'image' float32 [1, H, W, 3] in [-1, 1], 'label' int32 [1, H, W] (train ids,
    ignore label as stored), 'filename' string [1] (e.g. 'frankfurt_000000_000294').
    """
    files = split_files(descriptor, data_dir, split)

    def prepare(features):
        image, label = _decode(features)
        return {"image": normalize_image(image),
                "label": tf.cast(tf.squeeze(label, axis=-1), tf.int32),
                "filename": features[keys.KEY_IMAGE_FILENAME]}

    dataset = tf.data.TFRecordDataset(files).map(tfrecord_io.parse_example)
    dataset = dataset.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=True)
    return _with_options(dataset.batch(1).prefetch(AUTOTUNE))
