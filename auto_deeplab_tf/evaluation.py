"""Evaluation of a retrained network: mIoU over a whole split, single- or multi-scale.

Every image is scored at its label's full resolution. Multi-scale inference resizes the image
by each scale, runs the network, resizes the softmax probabilities back to full resolution
and averages them (over scales, and over left-right flips with `add_flipped_images`); the
prediction is their argmax. A streaming confusion matrix (ignored pixels excluded) gives the
per-class IoU, the mIoU and the pixel accuracy.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from auto_deeplab_tf import metrics as metrics_lib


def parse_eval_scales(values: Sequence[str]) -> list[float]:
    """The --eval_scales flag's strings as positive floats (train.evaluate, train.export).

    Raises:
      ValueError: a value is not a number, none is given, or one is not positive; the message
        names the flag.
    """
    try:
        scales = [float(s) for s in values]
    except ValueError:
        raise ValueError(f"--eval_scales must be numbers, got {','.join(values)}") from None
    if not scales or min(scales) <= 0:
        raise ValueError(f"--eval_scales must be positive, got {','.join(values)}")
    return scales


def predict_probabilities(model: keras.Model, images: tf.Tensor,
                          scales: Sequence[float] = (1.0,), add_flipped_images: bool = False
                          ) -> tf.Tensor:
    """Mean softmax probabilities [N, H, W, C] at the input size over scales (and flips).

    `images` are normalised float32 [N, H, W, 3]; works inside a tf.function with unknown H, W.
    """
    size = tf.shape(images)[1:3]
    total = None
    count = 0
    for scale in scales:
        if scale == 1.0:
            scaled = images
        else:
            new_size = tf.maximum(
                tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32), 1)
            scaled = tf.image.resize(images, new_size, method="bilinear")
        variants = [(scaled, False)] + ([(tf.reverse(scaled, axis=[2]), True)]
                                        if add_flipped_images else [])
        for batch, flipped in variants:
            probs = tf.nn.softmax(tf.cast(model(batch, training=False), tf.float32), axis=-1)
            if flipped:
                probs = tf.reverse(probs, axis=[2])
            if scale != 1.0:
                probs = tf.image.resize(probs, size, method="bilinear")
            total = probs if total is None else total + probs
            count += 1
    return total / count


def make_predict_fn(model: keras.Model, scales: Sequence[float] = (1.0,),
                    add_flipped_images: bool = False) -> Callable[[tf.Tensor], tf.Tensor]:
    """A traced function: normalised images [N, H, W, 3] -> class ids [N, H, W] (int32).
    One trace serves every image size."""
    scales = tuple(float(s) for s in scales)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def predict(images):
        if scales == (1.0,) and not add_flipped_images:
            logits = model(images, training=False)
            return tf.argmax(logits, axis=-1, output_type=tf.int32)
        probs = predict_probabilities(model, images, scales, add_flipped_images)
        return tf.argmax(probs, axis=-1, output_type=tf.int32)

    return predict


def confusion_matrix(predict_fn: Callable[[tf.Tensor], tf.Tensor],
                     examples: Iterable[dict], num_classes: int, ignore_label: int = 255,
                     log: Callable[[str], None] | None = None, log_every: int = 50
                     ) -> tuple[np.ndarray, int]:
    """(confusion matrix [C, C] float64, rows = truth, number of images) over `examples`
    (dicts with 'image' [N, H, W, 3] normalised and 'label' [N, H, W])."""
    metric = metrics_lib.ConfusionMatrix(num_classes, ignore_label=ignore_label)
    count = 0
    start = time.perf_counter()
    for example in examples:
        predictions = predict_fn(example["image"])
        metric.update_state(example["label"], predictions)
        count += int(example["image"].shape[0])
        if log is not None and count % log_every == 0:
            rate = count / max(time.perf_counter() - start, 1e-9)
            log(f"  {count} images, {rate:.2f} images/s, running mIoU "
                f"{float(metrics_lib.mean_iou(metric.matrix)):.4f}")
    return metric.matrix.numpy(), count


def evaluate_split(predict_fn: Callable[[tf.Tensor], tf.Tensor], descriptor, data_dir: str,
                   split: str, max_images: int | None = None,
                   log: Callable[[str], None] | None = None) -> dict:
    """`predict_fn` (normalised images -> class ids) over a split of a registered dataset
    (`descriptor`, a `datasets.registry.DatasetDescriptor`): `summarize`'s keys plus dataset,
    split, num_images and confusion_matrix. `max_images` stops after that many images."""
    from auto_deeplab_datasets import input_pipeline  # only evaluate_split reads TFRecords

    examples = input_pipeline.eval_dataset(descriptor, data_dir, split=split)
    if max_images:
        examples = examples.take(max_images)
    matrix, count = confusion_matrix(predict_fn, examples, descriptor.num_classes,
                                     descriptor.ignore_label, log=log)
    if count == 0:
        raise ValueError(f"split '{split}' in {data_dir} has no examples")
    result = summarize(matrix, descriptor.class_names)
    result.update(dataset=descriptor.name, split=split, num_images=count,
                  confusion_matrix=matrix.astype(int).tolist())
    return result


def summarize(matrix: np.ndarray, class_names: Sequence[str]) -> dict:
    """The JSON-ready result: miou, per_class_iou {name: iou or null}, pixel_accuracy."""
    iou = metrics_lib.per_class_iou(matrix).numpy()
    return {
        "miou": float(metrics_lib.mean_iou(matrix).numpy()),
        "per_class_iou": {name: (None if np.isnan(v) else float(v))
                          for name, v in zip(class_names, iou)},
        "pixel_accuracy": float(metrics_lib.pixel_accuracy(matrix).numpy()),
    }


def format_table(result: dict) -> str:
    """A per-class IoU table with the mIoU and pixel accuracy at the bottom."""
    names = list(result["per_class_iou"])
    width = max([len(n) for n in names] + [len("pixel accuracy")])
    lines = [f"{'class':<{width}}  IoU (%)", "-" * (width + 9)]
    for name, value in result["per_class_iou"].items():
        shown = "    n/a" if value is None else f"{100 * value:7.2f}"
        lines.append(f"{name:<{width}}  {shown}")
    lines.append("-" * (width + 9))
    lines.append(f"{'mIoU':<{width}}  {100 * result['miou']:7.2f}")
    lines.append(f"{'pixel accuracy':<{width}}  {100 * result['pixel_accuracy']:7.2f}")
    return "\n".join(lines)


def write_summaries(log_dir: str, step: int, result: dict, split: str) -> None:
    """Eval scalars for TensorBoard (MODEL_DIR/eval)."""
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default(step=step):
        tf.summary.scalar(f"eval/{split}/miou", result["miou"])
        tf.summary.scalar(f"eval/{split}/pixel_accuracy", result["pixel_accuracy"])
        for name, value in result["per_class_iou"].items():
            if value is not None:
                tf.summary.scalar(f"eval/{split}/iou/{name}", value)
    writer.flush()
    writer.close()
