"""SavedModel export of a retrained network, deeplab2 style: a tf.Module with signatures.

Signatures:

* `serving_default(images)`: uint8 images [N, H, W, 3] of any size -> {'semantic': int32
  [N, H, W]} (+ 'probabilities': float32 [N, H, W, num_classes] when exported with
  `with_probabilities`). Normalisation to [-1, 1] (datasets.input_pipeline.normalize_image)
  happens inside the graph.
* `serving_encoded(encoded_images)`: a batch [N] of PNG or JPEG bytes (all of one size; grey
  and RGBA images are converted to RGB) -> the same outputs.

A wrong dtype is refused when the signature binds its input ("expected to be a uint8
tensor"); a wrong rank or channel count, an empty batch or image, undecodable bytes and mixed
sizes fail with an InvalidArgumentError whose message says what was expected. (The images
input is declared with unknown rank so that these checks run in the graph.)

Keras 3 keeps list-held sublayers out of TensorFlow's object graph, so the module tracks
every variable explicitly (`checkpointing.VariableBundle`); `verify_export` reloads the
SavedModel and compares its labels with the Keras model's.

assets/metadata.json holds the dataset name, class names, palette, ignore label, the
Cityscapes trainId -> labelId table (or null) and the model settings, for train.predict.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from auto_deeplab_tf import checkpointing
from auto_deeplab_tf import evaluation
from auto_deeplab_tf import retrain as retrain_lib

METADATA_FILENAME = "metadata.json"
# Any rank at binding time: a wrong rank or channel count must reach the in-graph checks
# (a placeholder declared [?, ?, ?, 3] lets a rank-3 tensor through to the convolutions,
# which abort the process), so the signature shows the shape as unknown_rank.
IMAGE_SPEC = tf.TensorSpec(None, tf.uint8, name="images")
ENCODED_SPEC = tf.TensorSpec([None], tf.string, name="encoded_images")


def normalize_image(image: tf.Tensor) -> tf.Tensor:
    """Exactly datasets.input_pipeline.normalize_image (kept here so that the library does not
    depend on the data layer): 0..255 -> float32 [-1, 1]."""
    return tf.cast(image, tf.float32) / 127.5 - 1.0


class SegmentationModule(tf.Module):
    """The servable: the model's variables plus tf.function signatures.

    Args:
      model: the Keras network (images normalised to [-1, 1] -> logits at the input size).
      metadata: JSON-serialisable dict written to assets/metadata.json.
      with_probabilities: also return the class probabilities.
      scales, add_flipped_images: multi-scale / flipped inference inside the graph.
    """

    def __init__(self, model: keras.Model, metadata: dict[str, Any],
                 with_probabilities: bool = False, scales: Sequence[float] = (1.0,),
                 add_flipped_images: bool = False):
        super().__init__(name="auto_deeplab")
        # Every weight, by path: tracking `model` itself would miss list-held sublayers.
        self.model_variables = checkpointing.VariableBundle.for_model(model)
        self._metadata_dir = tempfile.mkdtemp(prefix="auto_deeplab_export_")
        path = os.path.join(self._metadata_dir, METADATA_FILENAME)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=2)
        self.metadata_file = tf.saved_model.Asset(path)
        scales = tuple(float(s) for s in scales)
        single = scales == (1.0,) and not add_flipped_images

        def outputs(images):
            images = normalize_image(images)
            if single:
                probabilities = tf.nn.softmax(
                    tf.cast(model(images, training=False), tf.float32), axis=-1)
            else:
                probabilities = evaluation.predict_probabilities(model, images, scales,
                                                                 add_flipped_images)
            result = {"semantic": tf.argmax(probabilities, axis=-1, output_type=tf.int32)}
            if with_probabilities:
                result["probabilities"] = probabilities
            return result

        def check_size(images):
            shape = tf.shape(images)
            return [tf.debugging.assert_positive(
                shape[:3], message="images must be a non-empty uint8 batch [N, H, W, 3] "
                "with N, H, W >= 1")]

        def check_images(images):
            rank = tf.debugging.assert_equal(
                tf.rank(images), 4, message="images must be a uint8 batch of rank 4, "
                "[N, H, W, 3]; for one image [H, W, 3] add a batch dimension")
            with tf.control_dependencies([rank]):
                channels = tf.debugging.assert_equal(
                    tf.shape(images)[-1], 3, message="images must have 3 channels (RGB), "
                    "shape [N, H, W, 3]; convert grey or RGBA images to RGB")
            with tf.control_dependencies([rank, channels]):
                with tf.control_dependencies(check_size(images)):
                    images = tf.identity(images)
            # set_shape, not ensure_shape: an EnsureShape op fails before the asserts run
            # and its message is less clear.
            images.set_shape([None, None, None, 3])
            return images

        @tf.function(input_signature=[IMAGE_SPEC])
        def serving_default(images):
            """uint8 images [N, H, W, 3] -> {'semantic': int32 [N, H, W]}."""
            return outputs(check_images(images))

        def decode(encoded):
            image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
            image.set_shape([None, None, 3])
            return image

        @tf.function(input_signature=[ENCODED_SPEC])
        def serving_encoded(encoded_images):
            checks = [tf.debugging.assert_positive(
                tf.size(encoded_images), message="encoded_images must hold at least one "
                "PNG or JPEG image")]
            with tf.control_dependencies(checks):
                sizes = tf.map_fn(lambda e: tf.shape(decode(e))[:2], encoded_images,
                                  fn_output_signature=tf.TensorSpec([2], tf.int32))
            same = tf.debugging.assert_equal(
                sizes, tf.broadcast_to(sizes[:1], tf.shape(sizes)),
                message="every image of one serving_encoded batch must have the same height "
                "and width; send images of different sizes in separate requests")
            with tf.control_dependencies([same]):
                images = tf.map_fn(decode, encoded_images,
                                   fn_output_signature=tf.TensorSpec([None, None, 3],
                                                                     tf.uint8))
            with tf.control_dependencies(check_size(images)):
                images = tf.identity(images)
            return outputs(images)

        self.serving_default = serving_default
        self.serving_encoded = serving_encoded

    def signatures(self) -> dict:
        return {"serving_default": self.serving_default.get_concrete_function(),
                "serving_encoded": self.serving_encoded.get_concrete_function()}


def export_saved_model(model: keras.Model, export_dir: str, metadata: dict[str, Any],
                       with_probabilities: bool = False, scales: Sequence[float] = (1.0,),
                       add_flipped_images: bool = False) -> SegmentationModule:
    """Writes the SavedModel to `export_dir` (replacing what is there)."""
    module = SegmentationModule(model, metadata, with_probabilities, scales,
                                add_flipped_images)
    if tf.io.gfile.exists(export_dir):
        tf.io.gfile.rmtree(export_dir)
    tf.saved_model.save(module, export_dir, signatures=module.signatures())
    return module


def read_metadata(export_dir: str) -> dict[str, Any]:
    """assets/metadata.json of an export ({} when absent, e.g. another tool's SavedModel)."""
    path = os.path.join(export_dir, "assets", METADATA_FILENAME)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def verify_export(export_dir: str, model: keras.Model, size: tuple[int, int] = (37, 53),
                  seed: int = 0) -> float:
    """Reloads the SavedModel and compares its labels with the Keras model's on a random
    image; returns the fraction of pixels that agree (raises if the weights are missing)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(1, *size, 3), dtype=np.uint8)
    loaded = tf.saved_model.load(export_dir)
    served = loaded.signatures["serving_default"](images=tf.constant(image))["semantic"]
    expected = tf.argmax(model(normalize_image(image), training=False), axis=-1,
                         output_type=tf.int32)
    agreement = float(np.mean(served.numpy() == expected.numpy()))
    num_saved = len(loaded.model_variables.variables_by_path)
    if num_saved != len(model.variables):
        raise ValueError(f"the SavedModel holds {num_saved} variables, the model "
                         f"{len(model.variables)}")
    return agreement
