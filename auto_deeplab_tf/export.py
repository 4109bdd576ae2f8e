"""SavedModel export of a retrained network, deeplab2 style: a tf.Module with signatures.

Signatures:

* `serving_default(images)`: uint8 images [N, H, W, 3] of any size -> {'semantic': int32
  [N, H, W]} (+ 'probabilities': float32 [N, H, W, num_classes] when exported with
  `with_probabilities`). Normalisation to [-1, 1] (the data layer's
  normalization.normalize_image, as in the input pipelines) happens inside the graph.
* `serving_encoded(encoded_images)`: a batch [N] of PNG or JPEG bytes (all of one size; grey
  and RGBA images are converted to RGB) -> the same outputs.

A wrong dtype is refused when the signature binds its input ("expected to be a uint8
tensor"); a wrong rank or channel count, an empty batch or image, undecodable bytes and mixed
sizes fail with an InvalidArgumentError whose message says what was expected. (The images
input is declared with unknown rank so that these checks run in the graph.)

Keras 3 keeps list-held sublayers out of TensorFlow's object graph, so the module tracks
every variable explicitly, as the `tf.Variable` behind each Keras variable
(`serving_variables`), which TF Serving's TF1 loader needs. `verify_export` reloads the
SavedModel, compares its labels with the Keras model's, and runs both signatures through that
TF1 loader (`run_with_tf1_loader`).

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

from auto_deeplab_datasets.normalization import normalize_image
from auto_deeplab_tf import checkpointing
from auto_deeplab_tf import evaluation

METADATA_FILENAME = "metadata.json"
# Any rank at binding time: a wrong rank or channel count must reach the in-graph checks
# (a placeholder declared [?, ?, ?, 3] lets a rank-3 tensor through to the convolutions,
# which abort the process), so the signature shows the shape as unknown_rank.
IMAGE_SPEC = tf.TensorSpec(None, tf.uint8, name="images")
ENCODED_SPEC = tf.TensorSpec([None], tf.string, name="encoded_images")


def serving_variables(model: keras.Model) -> checkpointing.VariableBundle:
    """Every variable of `model` as the `tf.Variable` that holds its value, keyed like
    `VariableBundle.for_model`.

    The SavedModel must track these, not the Keras 3 `Variable` wrappers around them: a
    wrapper saves a second, fresh `tf.Variable` as the object the checkpoint restores, while
    the signatures read the wrapped one. The TF2 Python loader reconnects the two, but the
    TF1 session loader (TF Serving's `SavedModelBundle`, `saved_model_cli run`) restores only
    the copy and then fails with "Could not find variable ..." (keras-team/keras#20095).
    """
    keras_bundle = checkpointing.VariableBundle.for_model(model)
    bundle = checkpointing.VariableBundle()
    for key, variable in keras_bundle.variables_by_path.items():
        # A Keras variable's `.value` is its backing tf.Variable outside an autocast scope
        # (none is open here).
        backing = variable if isinstance(variable, tf.Variable) else variable.value
        if not isinstance(backing, tf.Variable):
            raise TypeError(f"variable {key}: expected a tf.Variable behind it, got "
                            f"{type(backing).__name__}")
        bundle.variables_by_path[key] = backing
    return bundle


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
        self.model_variables = serving_variables(model)
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
            # The scope names the failing node in TensorFlow's error ("Detected at node
            # check_images/...").
            with tf.name_scope("check_images"):
                return checked_images(images)

        def checked_images(images):
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


def serving_error_message(error: tf.errors.OpError) -> str:
    """The message of a failed serving call without the lines TensorFlow's Python runtime
    puts before it ("Graph execution error:", "Detected at node ...", "<stack traces
    unavailable>"), so that the cause comes first: for the export's input checks, the
    sentence that says what was expected."""
    lines = [line for line in error.message.splitlines()
             if line.strip() and line.strip() != "Graph execution error:"
             and not line.startswith("Detected at node ")
             and line.strip() != "<stack traces unavailable>"]
    return "\n".join(lines) or error.message


def run_with_tf1_loader(export_dir: str, feeds: dict[str, dict[str, Any]],
                        tags: Sequence[str] = ("serve",)) -> dict[str, dict[str, np.ndarray]]:
    """Runs signatures of the SavedModel the way TF Serving's `SavedModelBundle` and
    `saved_model_cli run` do: loaded by the TF1 loader into a graph and session (variables
    restored by the MetaGraph's saver, not by the TF2 object graph), fed and fetched by the
    tensor names of each signature_def.

    Args:
      export_dir: the SavedModel directory.
      feeds: {signature name: {input name: value}}.
      tags: the MetaGraph's tag set.

    Returns:
      {signature name: {output name: numpy array}}.

    Raises:
      ValueError: the SavedModel does not load or run this way (the message says why), or a
        signature or input name is unknown.
    """
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        # The TF1 loader logs a deprecation warning on its first call: it is used on purpose.
        logger = tf.get_logger()
        level = logger.level
        logger.setLevel("ERROR")
        try:
            meta_graph = tf.compat.v1.saved_model.loader.load(session, list(tags), export_dir)
        except (tf.errors.OpError, RuntimeError, OSError) as e:
            raise ValueError(f"the SavedModel in {export_dir} does not load in the TF1 "
                             f"session loader that TF Serving and `saved_model_cli run` use: "
                             f"{type(e).__name__}: {e}") from e
        finally:
            logger.setLevel(level)
        results = {}
        for name, inputs in feeds.items():
            if name not in meta_graph.signature_def:
                raise ValueError(f"the SavedModel in {export_dir} has no signature '{name}'")
            signature = meta_graph.signature_def[name]
            unknown = set(inputs) - set(signature.inputs)
            if unknown:
                raise ValueError(f"signature '{name}' has no input(s) {sorted(unknown)}; it "
                                 f"takes {sorted(signature.inputs)}")
            try:
                results[name] = session.run(
                    {k: v.name for k, v in signature.outputs.items()},
                    {signature.inputs[k].name: v for k, v in inputs.items()})
            except tf.errors.OpError as e:
                raise ValueError(
                    f"the SavedModel in {export_dir} does not run in the TF1 session loader "
                    f"that TF Serving and `saved_model_cli run` use (signature '{name}'): "
                    f"{type(e).__name__}: {serving_error_message(e)}") from e
    return results


def verify_export(export_dir: str, model: keras.Model, size: tuple[int, int] = (37, 53),
                  seed: int = 0) -> float:
    """Reloads the SavedModel and compares its labels with the Keras model's on a random
    image; returns the fraction of pixels that agree.

    Also runs both signatures on that image through the TF1 session loader
    (`run_with_tf1_loader`, the path of TF Serving and `saved_model_cli run`) and requires
    the labels of the TF2 loader from each.

    Raises:
      ValueError: the SavedModel misses weights, does not load or run in the TF1 loader, or
        gives other labels there.
    """
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
    encoded = tf.io.encode_png(image[0]).numpy()
    tf1 = run_with_tf1_loader(export_dir, {
        "serving_default": {"images": image},
        "serving_encoded": {"encoded_images": np.array([encoded])}})
    for name, outputs in tf1.items():
        if not np.array_equal(outputs["semantic"], served.numpy()):
            raise ValueError(f"the SavedModel in {export_dir} gives other labels in the TF1 "
                             f"session loader (signature '{name}') than in the TF2 loader")
    return agreement
