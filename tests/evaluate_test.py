"""Evaluation: streaming confusion-matrix mIoU, multi-scale + flip inference, the CLI's JSON."""

import glob
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from auto_deeplab_tf import evaluation
from auto_deeplab_tf import trained_model
from tests import segmentation_helpers as sh


def numpy_miou(labels, predictions, num_classes, ignore=255):
    """Reference: per-class IoU over all pixels, ignored pixels excluded."""
    labels, predictions = np.concatenate(labels), np.concatenate(predictions)
    keep = labels != ignore
    labels, predictions = labels[keep], predictions[keep]
    ious = []
    for c in range(num_classes):
        union = np.sum((labels == c) | (predictions == c))
        if union:
            ious.append(np.sum((labels == c) & (predictions == c)) / union)
    return float(np.mean(ious)), float(np.mean(labels == predictions))


def test_streaming_miou_equals_numpy_reference():
    rng = np.random.default_rng(0)
    num_classes = 5
    labels, predictions, examples = [], [], []
    for shape in [(7, 9), (12, 5), (3, 3)]:
        label = rng.integers(0, num_classes - 1, size=shape)  # class 4 never in the truth
        label[rng.random(shape) < 0.2] = 255
        prediction = np.where(rng.random(shape) < 0.6, label, rng.integers(0, num_classes,
                                                                           shape))
        prediction = np.where(prediction == 255, 0, prediction)
        labels.append(label.ravel())
        predictions.append(prediction.ravel())
        examples.append({"image": tf.constant(prediction[None], tf.float32),
                         "label": tf.constant(label[None])})
    # The "network" returns the crafted prediction carried in the image.
    matrix, count = evaluation.confusion_matrix(
        lambda image: tf.cast(image, tf.int32), examples, num_classes)
    assert count == 3
    result = evaluation.summarize(matrix, [f"c{i}" for i in range(num_classes)])
    miou, accuracy = numpy_miou(labels, predictions, num_classes)
    assert result["miou"] == pytest.approx(miou, abs=1e-12)
    assert result["pixel_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert set(result) == {"miou", "per_class_iou", "pixel_accuracy"}
    assert matrix.sum() == sum(int(np.sum(lab != 255)) for lab in labels)
    table = evaluation.format_table(result)
    assert "mIoU" in table and "c4" in table


class _PixelModel(keras.Model):
    """Logits from the pixel values: a 1x1 'network' whose output follows the input size."""

    def call(self, images, training=None):
        return tf.concat([images[..., :1], -images[..., :1], images[..., 1:2]], axis=-1) * 5.0


def test_multiscale_flip_probabilities_are_full_size_and_normalised():
    images = tf.random.uniform((2, 13, 17, 3), -1, 1, seed=1)
    model = _PixelModel(name="pixel_model")
    probs = evaluation.predict_probabilities(model, images, (0.5, 0.75, 1.0, 1.25), True)
    assert probs.shape == (2, 13, 17, 3)
    np.testing.assert_allclose(tf.reduce_sum(probs, -1).numpy(), 1.0, atol=1e-5)
    # At scale 1 a flip of a per-pixel model is exact: same probabilities as without it.
    single = evaluation.predict_probabilities(model, images, (1.0,), False)
    flipped = evaluation.predict_probabilities(model, images, (1.0,), True)
    np.testing.assert_allclose(single.numpy(), flipped.numpy(), atol=1e-6)
    predict = evaluation.make_predict_fn(model, (0.5, 1.0, 1.5), True)
    assert predict(images).shape == (2, 13, 17)
    assert predict(images[:1, :9, :11]).shape == (1, 9, 11)  # one trace, any size


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("evaluate")
    data_dir = sh.make_tiny_cityscapes(str(base))
    model_dir = base / "run"
    sh.tiny_retrain(model_dir, data_dir, train_steps=2)
    return str(model_dir), data_dir


def test_cli_multiscale_flip_writes_json_and_summaries(trained):
    model_dir, _ = trained
    out = sh.run_module("train.evaluate", f"--model_dir={model_dir}",
                        "--eval_scales=0.5,1.0,1.5", "--add_flipped_images")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "mIoU" in out.stdout and "road" in out.stdout
    with open(os.path.join(model_dir, "eval_val.json")) as f:
        result = json.load(f)
    assert {"miou", "per_class_iou", "pixel_accuracy", "num_images", "eval_scales",
            "add_flipped_images", "global_step", "checkpoint"} <= set(result)
    assert result["num_images"] == 3 and result["global_step"] == 2
    assert result["eval_scales"] == [0.5, 1.0, 1.5] and result["add_flipped_images"]
    assert 0 <= result["miou"] <= 1 and len(result["per_class_iou"]) == 19
    # The JSON's mIoU is the mean of its per-class IoUs (classes never seen are null).
    present = [v for v in result["per_class_iou"].values() if v is not None]
    assert result["miou"] == pytest.approx(np.mean(present))
    assert glob.glob(os.path.join(model_dir, "eval", "events.out.tfevents.*"))


def test_cli_continuous_stops_after_final_checkpoint(trained, tmp_path):
    model_dir, _ = trained
    out = sh.run_module("train.evaluate", f"--model_dir={model_dir}", "--continuous",
                        "--eval_timeout_secs=30", f"--output_json={tmp_path / 'e.json'}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "evaluated the final checkpoint" in out.stdout
    assert os.path.exists(tmp_path / "e.json")


def test_cli_errors_name_the_flag(tmp_path):
    out = sh.run_module("train.evaluate", f"--model_dir={tmp_path}")
    assert out.returncode == 1 and "--model_dir" in out.stderr
    out = sh.run_module("train.evaluate", f"--model_dir={tmp_path}", "--eval_scales=a,b")
    assert out.returncode == 1 and "--eval_scales" in out.stderr


def test_model_dir_without_checkpoints_says_so_and_what_to_run(tmp_path):
    """Without --checkpoint_path, the message must not name that flag as if it were given."""
    model_dir = str(tmp_path / "run")
    os.makedirs(model_dir)
    with pytest.raises(ValueError) as e:
        trained_model.resolve_checkpoint(model_dir)
    message = str(e.value)
    assert message == (f"--model_dir={model_dir} has no checkpoints yet (no "
                       f"{model_dir}/checkpoints); train it first with python -m "
                       f"train.retrain --model_dir={model_dir}, or pass --checkpoint_path")
    os.makedirs(os.path.join(model_dir, "checkpoints"))
    with pytest.raises(ValueError) as e:
        trained_model.resolve_checkpoint(model_dir)
    assert str(e.value) == (f"--model_dir={model_dir} has no checkpoints yet "
                            f"({model_dir}/checkpoints is empty); train it first with python "
                            f"-m train.retrain --model_dir={model_dir}, or pass "
                            "--checkpoint_path")
    # A --checkpoint_path the user gave is named as such.
    with pytest.raises(ValueError) as e:
        trained_model.resolve_checkpoint(model_dir, f"{model_dir}/checkpoints/ckpt-7")
    assert str(e.value) == (f"--checkpoint_path={model_dir}/checkpoints/ckpt-7: no such "
                            "checkpoint")
    with pytest.raises(ValueError) as e:
        trained_model.resolve_checkpoint(model_dir, f"{model_dir}/checkpoints")
    assert str(e.value) == (f"--checkpoint_path={model_dir}/checkpoints: no checkpoint in "
                            "this directory")


def test_cli_on_a_model_dir_without_checkpoints(trained, tmp_path):
    trained_dir, _ = trained
    model_dir = tmp_path / "fresh"
    os.makedirs(model_dir)
    with open(os.path.join(trained_dir, "retrain_config.json")) as f:
        (model_dir / "retrain_config.json").write_text(f.read())
    for module in ("train.evaluate", "train.export"):
        out = sh.run_module(module, f"--model_dir={model_dir}")
        assert out.returncode == 1, module
        assert out.stderr.strip().splitlines()[-1] == (
            f"error: --model_dir={model_dir} has no checkpoints yet (no {model_dir}/"
            f"checkpoints); train it first with python -m train.retrain "
            f"--model_dir={model_dir}, or pass --checkpoint_path"), module
        assert "--checkpoint_path=" not in out.stderr
