"""Retraining: checkpoints, resume, TensorBoard output, NaN guard, flag errors. Tiny, on CPU."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from auto_deeplab_tf import retrain as retrain_lib
from tests import segmentation_helpers as sh


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return sh.make_tiny_cityscapes(str(tmp_path_factory.mktemp("retrain_data")))


def _event_tags(directory):
    tags = set()
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.add(value.tag)
    return tags


def _saved_step(model_dir):
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
    return int(reader.get_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE"))


def test_checkpoint_resume_and_tensorboard(data_dir, tmp_path):
    model_dir = tmp_path / "run"
    first, logs = sh.tiny_retrain(model_dir, data_dir, max_steps=3)
    assert first.global_step == 3 and not first.completed
    assert first.checkpoint.endswith("ckpt-3")
    assert _saved_step(model_dir) == 3
    assert any("stopped at step 3 of 4" in line for line in logs)
    assert os.path.exists(model_dir / "retrain_config.json")
    tags = _event_tags(str(model_dir / "train"))
    assert {"train/loss", "train/learning_rate", "train/image", "train/ground_truth",
            "train/prediction"} <= tags

    second, logs = sh.tiny_retrain(model_dir, data_dir)
    assert any("resumed from" in line and "at step 3 of 4" in line for line in logs)
    assert second.completed and second.global_step == 4
    assert _saved_step(model_dir) == 4
    # The optimizer state came back too: it counted 4 updates in total, not 1.
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
    iterations = [k for k in reader.get_variable_to_shape_map()
                  if k.startswith("optimizer/") and "iteration" in k]
    assert iterations and int(reader.get_tensor(iterations[0])) == 4
    assert np.isfinite(second.last_loss)

    # Running again once finished does no more steps and keeps the checkpoint.
    third, logs = sh.tiny_retrain(model_dir, data_dir)
    assert third.global_step == 4 and third.checkpoint.endswith("ckpt-4")


def test_changed_setting_on_resume_names_the_flag(data_dir, tmp_path):
    sh.tiny_retrain(tmp_path / "run", data_dir, max_steps=1, train_steps=2)
    with pytest.raises(ValueError, match="--crop_size"):
        sh.tiny_retrain(tmp_path / "run", data_dir, train_steps=2, crop_size=24)


def _model_tensors(model_dir):
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.startswith(("model/", "optimizer/"))}


def test_stopped_and_resumed_run_equals_an_uninterrupted_one(data_dir, tmp_path):
    # With op determinism the data order, the dropout and drop-path draws and the optimizer
    # state all come back on resume, so the result is bit-identical (tolerance 0).
    settings = dict(train_steps=4, deterministic=True, drop_path_keep_prob=0.8)
    sh.tiny_retrain(tmp_path / "straight", data_dir, **settings)
    sh.tiny_retrain(tmp_path / "resumed", data_dir, max_steps=3, **settings)
    result, logs = sh.tiny_retrain(tmp_path / "resumed", data_dir, **settings)
    assert any("at step 3 of 4" in line for line in logs) and result.completed
    straight = _model_tensors(tmp_path / "straight")
    resumed = _model_tensors(tmp_path / "resumed")
    assert straight.keys() == resumed.keys() and len(straight) > 20
    for key, value in straight.items():
        np.testing.assert_array_equal(resumed[key], value, err_msg=key)


def test_adam_optimizer_is_checkpointed_and_pinned_on_resume(data_dir, tmp_path):
    result, _ = sh.tiny_retrain(tmp_path / "run", data_dir, optimizer="adam", max_steps=1,
                                train_steps=2)
    reader = tf.train.load_checkpoint(os.path.join(tmp_path / "run", "checkpoints"))
    names = list(reader.get_variable_to_shape_map())
    # Adam keeps two moments per weight; SGD with momentum only one.
    assert any("velocit" in k for k in names) and any("momentum" in k for k in names)
    with pytest.raises(ValueError, match="--optimizer=sgd but .* different optimizer"):
        sh.tiny_retrain(tmp_path / "run", data_dir, optimizer="sgd", train_steps=2)
    with pytest.raises(ValueError, match="^--optimizer=rmsprop: unknown optimizer, expected "
                                         "one of sgd, adam$"):
        sh.tiny_retrain(tmp_path / "other", data_dir, optimizer="rmsprop")


def test_demo_defaults_fill_only_the_flags_not_given(tmp_path):
    import json

    model_dir = tmp_path / "demo_run"
    out = sh.run_module("train.retrain", "--dataset=demo", f"--data_dir={tmp_path / 'cache'}",
                        f"--model_dir={model_dir}", f"--architecture={sh.arch_file(tmp_path)}",
                        "--filter_multiplier=2", "--crop_size=32", "--batch_size=2",
                        "--base_learning_rate=0.01", "--max_steps=1")
    assert out.returncode == 0, out.stderr[-3000:]
    saved = json.loads((model_dir / "retrain_config.json").read_text())
    # The demo values of the flags not given (train/retrain.py DEMO_DEFAULTS; importing that
    # module here would clash with the absl flags of other train modules in this process).
    assert (saved["optimizer"], saved["train_steps"], saved["min_scale"]) == ("adam", 2000, 0.75)
    assert (saved["base_learning_rate"], saved["crop_size"], saved["filter_multiplier"]) == \
        (0.01, 32, 2)
    # The checkpoint it wrote did not log TensorFlow's info lines.
    assert "Sharding callback duration" not in out.stderr + out.stdout
    assert not [line for line in out.stderr.splitlines() if line.startswith("I1")]


def test_nan_loss_keeps_the_last_good_checkpoint(tmp_path):
    def dataset_fn(epoch):
        images = np.zeros((8, 32, 32, 3), np.float32)
        if epoch >= 1:
            images[:] = np.nan
        labels = np.ones((8, 32, 32), np.int32)
        return tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)

    config = sh.tiny_config(tmp_path / "run", None, architecture=sh.arch_file(tmp_path),
                            train_steps=10, checkpoint_every_steps=2)
    logs = []
    with pytest.raises(retrain_lib.RetrainDiverged, match="last good checkpoint is .*ckpt-4"):
        retrain_lib.run_retrain(config, dataset_fn=dataset_fn, num_classes=3,
                                steps_per_epoch=4, log=logs.append)
    assert _saved_step(tmp_path / "run") == 4


def test_mirrored_strategy_runs(data_dir, tmp_path):
    result, _ = sh.tiny_retrain(tmp_path / "run", data_dir, strategy="mirrored", train_steps=2,
                                drop_path_keep_prob=0.8)
    assert result.completed and np.isfinite(result.last_loss)
    # The model's drop-path progress is the one the last step trained with (1 of 2 steps
    # done before it), set in the replicated step and checkpointed with the model.
    reader = tf.train.load_checkpoint(os.path.join(tmp_path / "run", "checkpoints"))
    names = [k for k in reader.get_variable_to_shape_map() if "drop_path_progress" in k]
    assert len(names) == 1 and reader.get_tensor(names[0]) == pytest.approx(0.5)


def test_bad_flags_name_the_flag_and_create_no_model_dir(tmp_path):
    bad = sh.run_module("train.retrain", "--dataset=cityscapes", f"--data_dir={tmp_path}",
                        f"--model_dir={tmp_path / 'a'}", "--batch_size=0")
    assert bad.returncode != 0 and "--batch_size" in bad.stderr
    bad = sh.run_module("train.retrain", "--dataset=demo", f"--model_dir={tmp_path / 'b'}",
                        "--architecture=/nonexistent/arch.json")
    assert bad.returncode != 0 and "--architecture" in bad.stderr
    bad = sh.run_module("train.retrain", "--dataset=cityscapes", f"--model_dir={tmp_path / 'c'}")
    assert bad.returncode != 0 and "--data_dir" in bad.stderr
    bad = sh.run_module("train.retrain", "--dataset=cityscapes", f"--model_dir={tmp_path / 'd'}",
                        f"--data_dir={tmp_path / 'no_such_dir'}")
    assert bad.returncode != 0 and "--data_dir" in bad.stderr
    bad = sh.run_module("train.retrain", "--dataset=kitti", f"--model_dir={tmp_path / 'e'}")
    assert bad.returncode != 0 and "kitti" in bad.stderr
    for name in "abcde":
        assert not (tmp_path / name).exists(), name


def test_failed_start_keeps_an_existing_model_dir(tmp_path):
    model_dir = tmp_path / "existing"
    model_dir.mkdir()
    with pytest.raises(ValueError, match="--data_dir"):
        retrain_lib.run_retrain(sh.tiny_config(model_dir, None,
                                               architecture=sh.arch_file(tmp_path)))
    assert model_dir.is_dir() and os.listdir(model_dir) == []


def test_architecture_errors_name_the_path_once(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(ValueError) as e:
        retrain_lib.load_architecture(str(empty))
    assert str(e.value) == (f"--architecture={empty}: the architecture file is empty "
                            "(expected the JSON that train.search or train.decode writes)")
    with pytest.raises(ValueError) as e:
        retrain_lib.load_architecture(str(tmp_path / "missing.json"))
    assert str(e.value) == (f"--architecture={tmp_path / 'missing.json'}: cannot read "
                            "architecture: No such file or directory")
    with pytest.raises(ValueError) as e:
        retrain_lib.load_architecture("nasnet")
    assert str(e.value).startswith("--architecture=nasnet: unknown architecture 'nasnet'")


def test_missing_data_dir_points_to_a_readme_section_that_exists(tmp_path):
    from auto_deeplab_datasets import input_pipeline

    with pytest.raises(ValueError) as e:
        input_pipeline.resolve_data_dir("cityscapes", None)
    assert str(e.value) == (
        "--dataset=cityscapes needs --data_dir=DIR, the folder of its TFRecord shards "
        "('{split}-*.tfrecord'); the README's 'Data' section, subsection 'Cityscapes', says "
        "how to convert a download. Only --dataset=demo runs without one.")
    with open(os.path.join(sh.REPO, "README.md"), encoding="utf-8") as f:
        headings = [line.strip() for line in f if line.startswith("#")]
    assert "## Data" in headings
    for section in input_pipeline.README_SECTIONS.values():
        assert f"### {section}" in headings
    assert not os.path.exists(os.path.join(sh.REPO, "datasets", "README.md"))
    with pytest.raises(FileNotFoundError, match="the README's 'Data' section, subsection "
                                                "'Cityscapes', says how to convert"):
        input_pipeline.split_files(input_pipeline.registry.get("cityscapes"), str(tmp_path),
                                   "train")


def test_multi_worker_retraining_needs_tf_config(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    bad = sh.run_module("train.retrain", "--dataset=demo", f"--model_dir={tmp_path / 'mw'}",
                        "--strategy=multi_worker", env=env)
    assert bad.returncode == 1
    assert ("error: --strategy=multi_worker needs the TF_CONFIG environment variable, "
            "describing the cluster and this worker's place in it") in bad.stderr
    assert not (tmp_path / "mw" / "checkpoints").exists()


def test_bad_collective_timeout_is_named(tmp_path):
    config = sh.tiny_config(tmp_path, None, collective_timeout_s=-1)
    with pytest.raises(ValueError) as e:
        config.validate()
    assert str(e.value) == "--collective_timeout_s must be >= 0, got -1"


def _uneven_batches(steps, batch=2, size=32, num_classes=4):
    """Different images per replica, with different numbers of valid pixels."""
    rng = np.random.default_rng(7)
    images = rng.uniform(-1, 1, size=(steps * batch, size, size, 3)).astype(np.float32)
    labels = ((images[..., 0] > 0).astype(np.int32) + 2 * (images[..., 1] > 0)) % num_classes
    labels[:, :2] = 255
    labels[1::2, :12] = 255
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch)


def test_two_replicas_with_different_images_make_the_one_device_step():
    """Issue #11, item 5, retraining: 2 replicas (one image each, different images with
    different numbers of valid pixels) make the single-device step on the global batch: the
    BNs take the global batch's statistics (synchronised BN) and the cross-entropy is
    normalised by the global count of valid pixels. SGD, 2 steps, no drop path or dropout.

    Tolerance: rtol 1e-4 on both losses of each step; every weight and BN moving statistic
    within 1e-3 of its largest value. Measured: losses 4e-7; weights 3e-4 at most (BN
    offsets of ~3e-4 that start at 0), 2e-6 in absolute value. With per-replica BN
    statistics and per-replica means (the code before) the first loss misses by 0.7%."""
    import keras

    from auto_deeplab_tf import distribute

    from auto_deeplab_tf.architecture import Architecture
    from auto_deeplab_tf.fixed_network import AutoDeepLab

    def build():  # no ASPP dropout: its masks are random, unlike anything compared here
        model = AutoDeepLab(Architecture.from_dict(sh.TINY_ARCH), num_classes=4,
                            aspp_dropout_rate=0.0, name="net", **sh.TINY_MODEL)
        model.build((None, None, None, 3))
        return model

    results = {}
    initial = None
    for name in ("one_device", "mirrored"):
        keras.utils.set_random_seed(0)
        strategy = distribute.make_strategy(name)
        assert strategy.num_replicas_in_sync == (1 if name == "one_device" else 2)
        with strategy.scope():
            model = build()
            optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
            optimizer.build(model.trainable_variables)
        if initial is None:
            initial = [v.numpy() for v in model.variables]
        else:
            for v, value in zip(model.variables, initial):
                v.assign(value)
        step = retrain_lib.make_train_step(model, optimizer, strategy, num_classes=4,
                                           ignore_label=255, weight_decay=1e-4,
                                           train_steps=2)
        data = strategy.experimental_distribute_dataset(_uneven_batches(2))
        losses = [[float(x) for x in step(batch)] for batch in data]
        results[name] = (losses, {v.path: v.numpy() for v in model.variables
                                  if "seed_generator" not in v.path})
    (l1, w1), (l2, w2) = results["one_device"], results["mirrored"]
    np.testing.assert_allclose(l2, l1, rtol=1e-4)
    assert w1.keys() == w2.keys()
    assert any("moving_mean" in path for path in w1)
    for path in w1:
        scale = max(np.abs(w1[path]).max(), 1e-6)
        np.testing.assert_allclose(w2[path], w1[path], atol=1e-3 * scale, err_msg=path)
