"""SavedModel export: loads in a fresh process, in the TF1 session loader that TF Serving and
`saved_model_cli run` use, same labels as the Keras model and train.predict, both signatures,
clear errors for bad inputs."""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from auto_deeplab_tf import checkpointing
from auto_deeplab_tf import export as export_lib
from auto_deeplab_tf import trained_model
from tests import data_helpers as h
from tests import segmentation_helpers as sh

_FRESH_PROCESS = """
import sys, numpy as np, tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
images = np.load(sys.argv[2])
out = loaded.signatures["serving_default"](images=tf.constant(images))
np.savez(sys.argv[3], **{k: v.numpy() for k, v in out.items()})
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    data_dir = sh.make_tiny_cityscapes(str(base))
    model_dir = str(base / "run")
    sh.tiny_retrain(model_dir, data_dir, train_steps=2)
    export_dir = str(base / "export")
    out = sh.run_module("train.export", f"--model_dir={model_dir}", f"--export_dir={export_dir}",
                        "--with_probabilities")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "agrees with the Keras model on 100.00% of pixels" in out.stdout
    assert "serves the same labels in the TF1 session loader" in out.stdout
    # Only its own lines: none of TensorFlow's info lines ("Assets written", "Sharding
    # callback duration", "Writing fingerprint", renamed signature inputs).
    assert out.stdout.splitlines()[0].startswith("exported ")
    for noise in ("Assets written", "Sharding callback", "fingerprint", "unsupported characters",
                  "deprecated"):
        assert noise not in out.stdout + out.stderr, noise
    return model_dir, export_dir, base


def test_fresh_process_gives_the_keras_labels(exported):
    model_dir, export_dir, base = exported
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(2, 29, 45, 3), dtype=np.uint8)  # any size, odd too
    np.save(base / "images.npy", images)
    script = base / "load.py"
    script.write_text(_FRESH_PROCESS)
    subprocess.run([sys.executable, str(script), export_dir, str(base / "images.npy"),
                    str(base / "out.npz")], check=True, capture_output=True,
                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    served = np.load(base / "out.npz")
    model, _, _ = trained_model.load_trained_model(model_dir)
    logits = model(export_lib.normalize_image(images), training=False)
    expected = tf.argmax(logits, -1, output_type=tf.int32).numpy()
    probs = tf.nn.softmax(logits).numpy()
    assert served["semantic"].dtype == np.int32 and served["semantic"].shape == (2, 29, 45)
    np.testing.assert_allclose(served["probabilities"], probs, atol=1e-5)
    # Labels agree except where two classes tie to within float noise (graph and eager
    # kernels may sum in another order).
    differ = served["semantic"] != expected
    assert differ.mean() < 0.01
    chosen = np.take_along_axis(probs, served["semantic"][..., None], -1)[..., 0]
    np.testing.assert_allclose(chosen[differ], probs.max(-1)[differ], atol=1e-5)


def test_saved_model_cli_shows_both_signatures(exported):
    _, export_dir, _ = exported
    cli = shutil.which("saved_model_cli", path=os.path.dirname(sys.executable))
    assert cli, "saved_model_cli is not on the venv's bin"
    out = subprocess.run([cli, "show", "--dir", export_dir, "--all"], capture_output=True,
                         text=True, check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    text = out.stdout
    assert "signature_def['serving_default']" in text
    assert "signature_def['serving_encoded']" in text
    assert "DT_UINT8" in text and "unknown_rank" in text
    assert "outputs['semantic']" in text and "outputs['probabilities']" in text
    assert "DT_INT32" in text and "DT_STRING" in text


def test_metadata_asset(exported):
    _, export_dir, _ = exported
    metadata = export_lib.read_metadata(export_dir)
    assert metadata["dataset"] == "cityscapes" and metadata["num_classes"] == 19
    assert metadata["train_id_to_label_id"][0] == 7 and len(metadata["palette"]) == 19
    with open(os.path.join(export_dir, "assets", "metadata.json")) as f:
        assert json.load(f)["global_step"] == 2


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_encoded_signature_matches_and_bad_inputs_fail_clearly(exported):
    _, export_dir, _ = exported
    loaded = tf.saved_model.load(export_dir)
    serve = loaded.signatures["serving_default"]
    encoded = loaded.signatures["serving_encoded"]
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(2, 24, 31, 3), dtype=np.uint8)
    direct = serve(images=tf.constant(images))["semantic"].numpy()
    from_png = encoded(encoded_images=tf.constant([_png(i) for i in images]))
    np.testing.assert_array_equal(from_png["semantic"].numpy(), direct)

    errors = (TypeError, ValueError, tf.errors.InvalidArgumentError)
    with pytest.raises(errors, match="uint8"):
        serve(images=tf.constant(images.astype(np.float32)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="rank 4"):
        serve(images=tf.constant(images[0]))  # one image without the batch dimension
    with pytest.raises(tf.errors.InvalidArgumentError, match="3 channels"):
        serve(images=tf.constant(np.zeros((1, 8, 8, 4), np.uint8)))  # RGBA
    with pytest.raises(tf.errors.InvalidArgumentError, match="non-empty uint8 batch"):
        serve(images=tf.constant(np.zeros((1, 0, 8, 3), np.uint8)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="same height and width"):
        encoded(encoded_images=tf.constant([_png(images[0]), _png(images[0][:20])]))
    with pytest.raises(tf.errors.InvalidArgumentError):
        encoded(encoded_images=tf.constant([b"not an image"]))


def test_serving_error_message_puts_the_input_check_first(exported):
    """TensorFlow's Python runtime puts "Graph execution error:" and the failing node before
    the export's own sentence; serving_error_message restores the sentence to the first line,
    and the failing node's name says which check it was."""
    _, export_dir, _ = exported
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError) as e:
        serve(images=tf.zeros([8, 8, 3], tf.uint8))
    assert "check_images" in str(e.value)
    first = export_lib.serving_error_message(e.value).splitlines()[0]
    assert first.startswith("assertion failed: [images must be a uint8 batch of rank 4, "
                            "[N, H, W, 3]; for one image [H, W, 3] add a batch dimension]")
    with pytest.raises(ValueError) as e:
        export_lib.run_with_tf1_loader(
            export_dir, {"serving_default": {"images": np.zeros((1, 8, 8, 4), np.uint8)}})
    assert ("(signature 'serving_default'): InvalidArgumentError: assertion failed: [images "
            "must have 3 channels (RGB), shape [N, H, W, 3]; convert grey or RGBA images to "
            "RGB]") in str(e.value).splitlines()[0]
    # The runtime's own status, before the Python session rewrites it (the session raises
    # the rewritten error while handling the original): what a C++ client such as TF
    # Serving reports. It starts with the check's sentence.
    raw = e.value.__cause__.__context__
    assert isinstance(raw, tf.errors.InvalidArgumentError)
    assert raw.message.startswith("assertion failed: [images must have 3 channels (RGB)")


def _predict_train_ids(export_dir, image_path, output_dir):
    """train.predict's labels for one image (its trainIds PNG)."""
    out = sh.run_module("train.predict", f"--export_dir={export_dir}",
                        f"--images={image_path}", f"--output_dir={output_dir}",
                        "--write_train_ids")
    assert out.returncode == 0, out.stderr[-3000:]
    name = os.path.splitext(os.path.basename(image_path))[0] + ".png"
    return np.asarray(Image.open(os.path.join(output_dir, "trainIds", name)))


def test_tf1_session_loader_serves_both_signatures_like_predict(exported):
    """The path TF Serving's SavedModelBundle and `saved_model_cli run` take: a TF1 graph and
    session, variables restored by the MetaGraph's saver, signatures run by tensor name."""
    _, export_dir, base = exported
    rng = np.random.default_rng(7)
    image = sh.blocky_image(rng, 27, 38)
    image_path = h.write_png(str(base / "tf1" / "street.png"), image)
    expected = _predict_train_ids(export_dir, image_path, str(base / "tf1_predictions"))
    with open(image_path, "rb") as f:
        encoded = f.read()
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
        served = {}
        for name, feed in (("serving_default", {"images": image[None]}),
                           ("serving_encoded", {"encoded_images": np.array([encoded])})):
            signature = meta_graph.signature_def[name]
            assert set(signature.inputs) == set(feed)
            assert set(signature.outputs) == {"semantic", "probabilities"}
            served[name] = session.run(
                {k: v.name for k, v in signature.outputs.items()},
                {signature.inputs[k].name: v for k, v in feed.items()})
    for name, outputs in served.items():
        assert outputs["semantic"].dtype == np.int32, name
        np.testing.assert_array_equal(outputs["semantic"][0], expected, err_msg=name)
        assert outputs["probabilities"].shape == (1, 27, 38, 19), name


def test_saved_model_cli_run_as_in_the_readme(exported):
    """`saved_model_cli run --dir EXPORT --tag_set serve --signature_def serving_default
    --inputs images=img.npy` (the README's example) gives train.predict's labels."""
    _, export_dir, base = exported
    rng = np.random.default_rng(8)
    image = sh.blocky_image(rng, 21, 30)
    image_path = h.write_png(str(base / "cli" / "img.png"), image)
    expected = _predict_train_ids(export_dir, image_path, str(base / "cli_predictions"))
    np.save(base / "cli" / "img.npy", image[None])
    cli = shutil.which("saved_model_cli", path=os.path.dirname(sys.executable))
    out = subprocess.run([cli, "run", "--dir", export_dir, "--tag_set", "serve",
                          "--signature_def", "serving_default",
                          "--inputs", f"images={base / 'cli' / 'img.npy'}",
                          "--outdir", str(base / "cli" / "out")],
                         capture_output=True, text=True,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert out.returncode == 0, out.stderr[-3000:]
    np.testing.assert_array_equal(np.load(base / "cli" / "out" / "semantic.npy")[0], expected)


def test_verify_refuses_an_export_the_tf1_loader_cannot_run(exported, tmp_path):
    """An export that tracks the Keras 3 variable wrappers (the old export) loads in TF2 but
    not in TF Serving; verify_export must catch that."""
    model_dir, _, _ = exported
    model, _, _ = trained_model.load_trained_model(model_dir)
    module = export_lib.SegmentationModule(model, {"dataset": "cityscapes"})
    module.model_variables = checkpointing.VariableBundle.for_model(model)
    broken = str(tmp_path / "broken")
    tf.saved_model.save(module, broken, signatures=module.signatures())
    with pytest.raises(ValueError, match="(?s)does not run in the TF1 session loader .*"
                       "Could not find variable"):
        export_lib.verify_export(broken, model)
