"""The search loop: resume, distribution, NaN guard, outputs. Tiny configs on CPU."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from auto_deeplab_tf import distribute
from auto_deeplab_tf import search as search_lib
from auto_deeplab_tf.architecture import Architecture

NUM_CLASSES = 3
CROP = 32


def tiny_config(model_dir, **overrides):
    # Two layers of two-block cells: tracing the steps dominates these tests' time, and it
    # grows with the supernet's size, which no assertion here depends on.
    values = dict(model_dir=str(model_dir), epochs=2, arch_start_epoch=1, batch_size=2,
                  crop_size=CROP, filter_multiplier=2, num_layers=2, num_blocks=2,
                  steps_per_epoch=3, checkpoint_every_steps=2, log_every_steps=1, seed=3,
                  deterministic=True, weight_lr=0.05, arch_lr=0.05)
    values.update(overrides)
    return search_lib.SearchConfig(**values)


def synthetic_pairs(epoch, steps=3, batch=2, nan_from_epoch=None, duplicate=False,
                    uneven_ignore=False):
    """Deterministic (per epoch) pairs of batches whose labels depend on the image.

    `uneven_ignore`: every other image ignores 8 more rows, so the images of a batch have
    different numbers of valid pixels."""
    rng = np.random.default_rng(100 + epoch)
    n = steps * batch

    def half():
        images = rng.uniform(-1, 1, size=(n, CROP, CROP, 3)).astype(np.float32)
        if duplicate:  # both samples of a batch identical (see the distribution test)
            images[1::2] = images[0::2]
        labels = (images[..., 0] > 0).astype(np.int32) + (images[..., 1] > 0.5)
        labels[:, :2] = 255  # an ignored border
        if uneven_ignore:
            labels[1::2, :10] = 255
        if nan_from_epoch is not None and epoch >= nan_from_epoch:
            images[:] = np.nan
        return images, labels

    (ia, la), (ib, lb) = half(), half()
    ds = tf.data.Dataset.from_tensor_slices(((ia, la), (ib, lb)))
    return ds.batch(batch, drop_remainder=True)


def run(config, **kwargs):
    logs = []
    result = search_lib.run_search(config, dataset_fn=kwargs.pop("dataset_fn", synthetic_pairs),
                                   num_classes=NUM_CLASSES, log=logs.append, **kwargs)
    return result, logs


def final_arch_values(model_dir):
    from auto_deeplab_tf import checkpointing
    return checkpointing.arch_values_from_checkpoint(os.path.join(model_dir, "checkpoints"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One uninterrupted tiny search, shared (tracing dominates these tests' time)."""
    model_dir = tmp_path_factory.mktemp("full")
    result, logs = run(tiny_config(model_dir))
    return model_dir, result, logs


# Two levels and four layers: layers 3 and 4 are uniform and run as the supernet's loop
# over stacked weights (auto_deeplab_tf/uniform_layers.py). One block per cell keeps the
# 4-layer graph quick to trace.
LOOPED = dict(num_levels=2, num_layers=4, num_blocks=1)


def test_stopped_and_resumed_search_equals_an_uninterrupted_one(tmp_path, full_run):
    # Tolerance: exact up to 1e-6 (op determinism on, same data order, restored optimizer
    # state); in practice the values are bitwise equal.
    full_dir, full, _ = full_run
    assert full.completed and full.global_step == 6

    first, logs = run(tiny_config(tmp_path / "resumed", max_steps=4))
    assert not first.completed and first.global_step == 4
    assert any("stopped after 4 steps" in line for line in logs)
    second, logs = run(tiny_config(tmp_path / "resumed"))
    assert any("resumed from" in line and "at epoch 2, step 1 of 3" in line for line in logs)
    assert second.completed and second.global_step == 6

    alpha_full, beta_full = final_arch_values(full_dir)
    alpha_res, beta_res = final_arch_values(tmp_path / "resumed")
    np.testing.assert_allclose(alpha_res, alpha_full, atol=1e-6)
    np.testing.assert_allclose(beta_res, beta_full, atol=1e-6)
    assert second.architecture == full.architecture
    for key in ("unchanged_since_epoch", "path_unchanged_since_epoch"):
        assert second.metadata[key] == full.metadata[key]
    # alpha/beta moved only in epoch 2 (arch_start_epoch=1), and they did move.
    assert np.abs(alpha_full).max() > 1e-2


def test_looped_supernet_search_resumes_exactly_from_stacked_weights(tmp_path):
    """The resume test above on a supernet whose last layers run as one loop: its stacked
    weights and their optimizer slots go through the checkpoint and come back."""
    full, _ = run(tiny_config(tmp_path / "full", **LOOPED))
    first, _ = run(tiny_config(tmp_path / "resumed", max_steps=4, **LOOPED))
    assert not first.completed and first.global_step == 4
    reader = tf.train.load_checkpoint(str(tmp_path / "resumed" / "checkpoints"))
    stacked = [k for k in reader.get_variable_to_shape_map()
               if k.startswith("model/") and "|uniform_layers|" in k]
    assert stacked and all(reader.get_variable_to_shape_map()[k][0] == 2 for k in stacked)
    second, logs = run(tiny_config(tmp_path / "resumed", **LOOPED))
    assert any("resumed from" in line for line in logs)
    assert second.completed and second.global_step == full.global_step == 6
    for a, b in zip(final_arch_values(tmp_path / "resumed"),
                    final_arch_values(tmp_path / "full")):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert second.architecture == full.architecture


def test_search_writes_architectures_checkpoints_and_tensorboard(full_run):
    tmp_path, result, logs = full_run
    saved = Architecture.load(str(tmp_path / "architecture.json"))
    assert saved == result.architecture
    epochs = sorted(os.listdir(tmp_path / "architectures"))
    assert epochs == ["epoch_001.json", "epoch_002.json"]
    meta = json.loads((tmp_path / "architectures" / "epoch_002.json").read_text())["metadata"]
    assert meta["epoch"] == 2 and meta["global_step"] == 6
    # Where it came from, for train.compare_architectures: a search, with its seed.
    assert meta["origin"] == "search" and meta["seed"] == 3
    assert any("architecture first decoded" in line for line in logs)
    assert any("steps/s" in line and "ETA" in line for line in logs)
    # unchanged_since_epoch: the first epoch of the final run of identical architectures.
    archs = [Architecture.load(str(tmp_path / "architectures" / name)) for name in epochs]
    since = 2 if archs[1] != archs[0] else 1
    path_since = 2 if archs[1].path != archs[0].path else 1
    assert meta["unchanged_since_epoch"] == since == result.metadata["unchanged_since_epoch"]
    assert meta["path_unchanged_since_epoch"] == path_since \
        == result.metadata["path_unchanged_since_epoch"]
    ratio = meta["path_probability"] / meta["uniform_path_probability"]
    assert (f"decoded path probability {meta['path_probability']:.3g}, {ratio:.2f}x its "
            f"{meta['uniform_path_probability']:.3g} under a uniform beta; unchanged over the "
            f"last {3 - path_since} of 2 epochs: the path; the whole architecture (cell "
            f"included): the last {3 - since}") in logs
    # deeplab2's layout: the training loop's summaries in MODEL_DIR/train, none at the top.
    assert not [f for f in os.listdir(tmp_path) if f.startswith("events.out")]
    events = [f for f in os.listdir(tmp_path / "train") if f.startswith("events.out.tfevents")]
    assert events
    steps_of = {}
    for event in tf.compat.v1.train.summary_iterator(str(tmp_path / "train" / events[0])):
        for value in event.summary.value:
            steps_of.setdefault(value.tag, set()).add(event.step)
    assert {"train/loss_a", "epoch/miou_a", "epoch/miou_b", "architecture/softmax_alpha",
            "architecture/beta_trellis", "architecture/genotype"} <= steps_of.keys()
    # trainB is used from epoch 2 on (arch_start_epoch=1, global steps 4-6): nothing is
    # logged about it before, where a 0 would draw a false curve (issue #11).
    assert min(steps_of["train/loss_a"]) <= 3 and min(steps_of["epoch/loss_a"]) == 3
    for tag in ("train/loss_b", "epoch/loss_b", "epoch/miou_b", "epoch/pixel_accuracy_b"):
        assert min(steps_of[tag]) > 3, tag
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("-6")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny_config(tmp_path, arch_start_epoch=5)  # weight steps only: one trace
    with pytest.raises(search_lib.SearchDiverged) as e:
        run(config, dataset_fn=lambda epoch: synthetic_pairs(epoch, nan_from_epoch=1))
    last = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    assert last.endswith("-3")  # the end of epoch 1; nothing from the NaN step
    assert (f"loss became NaN or Inf at epoch 2, step 1 (loss A nan, loss B 0.0); stopping. "
            f"Nothing from this step was saved; the last good checkpoint is {last}.") \
        in str(e.value)


def test_resume_with_other_model_settings_is_refused(tmp_path):
    run(tiny_config(tmp_path, max_steps=1, arch_start_epoch=5))
    with pytest.raises(ValueError) as e:
        run(tiny_config(tmp_path, num_layers=4))
    assert (f"this run has --num_layers=4 but {tmp_path} holds a search with --num_layers=2"
            in str(e.value))


def test_resume_with_the_other_weight_optimizer_is_refused(tmp_path):
    run(tiny_config(tmp_path, max_steps=1, arch_start_epoch=5))
    with pytest.raises(ValueError) as e:
        run(tiny_config(tmp_path, weight_optimizer="adam"))
    assert (f"this run has --weight_optimizer=adam but {tmp_path} holds a search with "
            "--weight_optimizer=sgd" in str(e.value))


def test_adam_weights_resume_exactly_with_their_moments(tmp_path):
    """--weight_optimizer=adam: the weights' Adam moments go through the checkpoint, so a
    stopped and resumed search equals an uninterrupted one; and it is not the SGD run."""
    adam = dict(weight_optimizer="adam", weight_lr=0.01, weight_lr_min=0.001)
    full, _ = run(tiny_config(tmp_path / "full", **adam))
    reader = tf.train.load_checkpoint(str(tmp_path / "full" / "checkpoints"))
    names = list(reader.get_variable_to_shape_map())
    assert any("weight_adam" in k for k in names), names
    assert not any("weight_sgd" in k for k in names)
    run(tiny_config(tmp_path / "resumed", max_steps=4, **adam))
    second, logs = run(tiny_config(tmp_path / "resumed", **adam))
    assert any("resumed from" in line for line in logs)
    assert second.global_step == full.global_step == 6
    for a, b in zip(final_arch_values(tmp_path / "resumed"),
                    final_arch_values(tmp_path / "full")):
        np.testing.assert_allclose(a, b, atol=1e-6)
    sgd, _ = run(tiny_config(tmp_path / "sgd", weight_lr=0.01, weight_lr_min=0.001))
    assert not np.allclose(final_arch_values(tmp_path / "sgd")[0],
                           final_arch_values(tmp_path / "full")[0], atol=1e-6)


@pytest.mark.parametrize("field,value,message", [
    ("epochs", 0, "--epochs must be >= 1, got 0"),
    ("crop_size", -5, "--crop_size must be >= 1, got -5"),
    ("scale", 0.0, "--scale must be in (0, 4], got 0.0"),
    ("max_steps", 0, "--max_steps must be >= 1, got 0"),
    ("strategy", "tpu", "--strategy=tpu: unknown strategy, expected one of default, "
                        "one_device, mirrored, multi_worker"),
    ("weight_optimizer", "rmsprop", "--weight_optimizer must be one of sgd, adam, "
                                    "got 'rmsprop'"),
])
def test_bad_settings_name_the_flag(tmp_path, field, value, message):
    with pytest.raises(ValueError) as e:
        tiny_config(tmp_path, **{field: value}).validate()
    assert str(e.value) == message


def _one_device_and_mirrored(config, data_fn, steps):
    """(losses, alpha, beta, weights) after `steps` bilevel steps on one device and on 2
    replicas (conftest's two logical CPUs), from the same initial values."""
    assert len(tf.config.list_logical_devices("CPU")) >= 2, "conftest sets 2 logical CPUs"
    results = {}
    initial = None
    # The initial weights come from Keras' global generator: seeded here, as run_search
    # seeds it, so that they do not depend on what other tests in this process drew.
    keras.utils.set_random_seed(config.seed)
    for name in ("one_device", "mirrored"):
        strategy = distribute.make_strategy(name)
        assert strategy.num_replicas_in_sync == (1 if name == "one_device" else 2)
        with strategy.scope():
            model = search_lib.build_search_model(config, NUM_CLASSES, total_steps=6)
        if initial is None:
            initial = [v.numpy() for v in model.variables]
        else:
            for v, value in zip(model.variables, initial):
                v.assign(value)
        step = search_lib.make_step_function(model, strategy, update_arch=True)
        data = strategy.experimental_distribute_dataset(data_fn(steps))
        losses = [[float(x) for x in step(batch)] for batch in data]
        weights = {v.path: v.numpy() for v in model.weight_variables}
        results[name] = (losses, model.alpha.numpy(), model.beta.numpy(), weights)
    return results["one_device"], results["mirrored"]


def test_mirrored_over_two_cpus_matches_one_device():
    """Issue #11, item 5: 2 replicas (one image each, *different* images with different
    numbers of valid pixels) make the single-device step on the global batch: the search
    BNs take cross-replica batch statistics and the loss is normalised by the global count
    of valid pixels. On the looped supernet (LOOPED: layers 1-2 unrolled, 3-4 the uniform
    layers, which run unrolled under several replicas).

    Tolerance: rtol 1e-3 on the losses of 2 bilevel steps, atol 1e-3 on alpha/beta and on
    every weight after them (relative to the weight's largest value). Measured: losses
    1e-7, alpha/beta 1e-6, weights 3e-6 (a 3-level unrolled supernet: 3e-6, 4e-5, 3e-4);
    with per-replica BN statistics and means (the code before) the losses miss by 6%.
    Not at 4 levels: their coarsest level is 1x1 at these crops, a BN over 2 values whose
    gradient is so ill-conditioned that float rounding alone makes two exact
    implementations part within 2 steps. More or faster steps let float-order noise flip
    ReLUs and the runs drift apart chaotically too.
    """
    # One block per cell (LOOPED): the replicated step traces the supernet inline (see
    # search_model), a graph several times larger than the single-device step's.
    config = tiny_config("/unused", steps_per_epoch=2, weight_lr=0.01, arch_lr=3e-3,
                         **LOOPED)
    (l1, a1, b1, w1), (l2, a2, b2, w2) = _one_device_and_mirrored(
        config, lambda steps: synthetic_pairs(0, steps=steps, uneven_ignore=True), steps=2)
    np.testing.assert_allclose(l2, l1, rtol=1e-3)
    np.testing.assert_allclose(a2, a1, atol=1e-3)
    np.testing.assert_allclose(b2, b1, atol=1e-3)
    assert np.abs(a1).max() > 5e-3  # alpha did move (Adam steps of ~3e-3 each)
    assert w1.keys() == w2.keys()
    assert any("/uniform_layers/" in path for path in w1)
    for path in w1:  # every weight: stem, unrolled and looped layers, heads
        scale = max(np.abs(w1[path]).max(), 1e-6)
        np.testing.assert_allclose(w2[path], w1[path], atol=1e-3 * scale, err_msg=path)


def test_a_checkpoint_of_another_weight_layout_is_refused_with_its_path(tmp_path):
    """Same recorded settings, different weight layout, as after an upgrade that changed
    it: the first run unrolls every layer, then its saved config loses the key (as configs
    written before the flag existed) and the second run loops the uniform layers."""
    first, _ = run(tiny_config(tmp_path, max_steps=2, loop_uniform_layers=False, **LOOPED))
    assert first.global_step == 2
    config_path = tmp_path / search_lib.CONFIG_FILENAME
    saved = json.loads(config_path.read_text())
    del saved["loop_uniform_layers"]
    config_path.write_text(json.dumps(saved))
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    with pytest.raises(ValueError) as e:
        run(tiny_config(tmp_path, **LOOPED))
    assert str(e.value) == (
        f"{latest}: the checkpoint does not hold the weights of the supernet these settings "
        "build (it was written by another version of the code, whose weight layout "
        "differs); start a new --model_dir")
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")) == latest


def test_an_unfinished_search_of_an_earlier_version_is_refused(tmp_path):
    """Issue #11: a checkpoint written before the fidelity fixes (its search_config.json has
    no search_version) must not resume silently under the new semantics."""
    run(tiny_config(tmp_path, max_steps=2, arch_start_epoch=5))
    config_path = tmp_path / search_lib.CONFIG_FILENAME
    saved = json.loads(config_path.read_text())
    assert saved["search_version"] == search_lib.SEARCH_VERSION == 2
    del saved["search_version"]
    config_path.write_text(json.dumps(saved))
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    with pytest.raises(ValueError) as e:
        run(tiny_config(tmp_path, arch_start_epoch=5))
    assert str(e.value) == (
        f"{latest}: this unfinished search was started by another version of the search "
        f"(search_version 1 in {config_path}, this code is 2), whose steps differ from this "
        "one's; resuming would mix the two. Start a new --model_dir, or finish it with the "
        "version that started it")
    assert json.loads(config_path.read_text()) == saved  # left as it was


def test_resume_with_the_other_loop_setting_is_refused(tmp_path):
    run(tiny_config(tmp_path, max_steps=1, arch_start_epoch=5, **LOOPED))
    with pytest.raises(ValueError) as e:
        run(tiny_config(tmp_path, loop_uniform_layers=False, **LOOPED))
    assert (f"this run has --loop_uniform_layers=False but {tmp_path} holds a search with "
            "--loop_uniform_layers=True" in str(e.value))


def test_demo_defaults_fill_only_the_flags_not_given(tmp_path):
    from tests import segmentation_helpers as sh

    model_dir = tmp_path / "demo_search"
    out = sh.run_module("train.search", "--dataset=demo", f"--data_dir={tmp_path / 'cache'}",
                        f"--model_dir={model_dir}", "--filter_multiplier=2", "--num_layers=2",
                        "--num_blocks=1", "--crop_size=32", "--batch_size=2", "--arch_lr=0.02",
                        "--max_steps=1")
    assert out.returncode == 0, out.stderr[-3000:]
    saved = json.loads((model_dir / "search_config.json").read_text())
    # The demo values of the flags not given (train/search.py DEMO_DEFAULTS; importing that
    # module here would clash with the absl flags of other train modules in this process).
    assert (saved["weight_optimizer"], saved["weight_lr"], saved["epochs"],
            saved["arch_start_epoch"], saved["scale"]) == ("adam", 5e-3, 65, 50, 0.5)
    assert (saved["arch_lr"], saved["crop_size"], saved["filter_multiplier"],
            saved["num_layers"], saved["batch_size"]) == (0.02, 32, 2, 2, 2)


def test_alpha_and_beta_initial_values_come_from_seed():
    """Issue #11, item 2: --seed alone fixes alpha and beta's initial draws."""
    import keras

    def initial(seed, global_seed):
        keras.utils.set_random_seed(global_seed)
        model = search_lib.build_search_model(tiny_config("/unused", seed=seed), NUM_CLASSES,
                                              total_steps=1)
        return model.alpha.numpy(), model.beta.numpy()

    alpha, beta = initial(3, 0)
    assert not np.isin(beta.ravel(), alpha.ravel()).any()
    for a, b in zip(initial(3, 1), (alpha, beta)):
        np.testing.assert_array_equal(a, b)
    assert not np.isin(initial(4, 0)[0].ravel(), alpha.ravel()).any()


def test_unchanged_since_tracks_the_architecture_and_its_path_apart():
    from auto_deeplab_tf.architecture import AUTODEEPLAB

    cell = AUTODEEPLAB.cell
    other_cell = (((1, "skip_connect"), (0, "sep_conv_3x3")),) + tuple(cell[1:])
    a = Architecture(cell=cell, path=(0, 0, 1, 1), num_levels=4)
    a_other_cell = Architecture(cell=other_cell, path=(0, 0, 1, 1), num_levels=4)
    b = Architecture(cell=cell, path=(0, 1, 1, 1), num_levels=4)
    since = search_lib.unchanged_since({}, None, a, 1)
    assert since == {"unchanged_since_epoch": 1, "path_unchanged_since_epoch": 1}
    since = search_lib.unchanged_since(since, a, a, 2)
    assert since == {"unchanged_since_epoch": 1, "path_unchanged_since_epoch": 1}
    since = search_lib.unchanged_since(since, a, a_other_cell, 3)  # only the cell changed
    assert since == {"unchanged_since_epoch": 3, "path_unchanged_since_epoch": 1}
    since = search_lib.unchanged_since(since, a_other_cell, b, 4)
    assert since == {"unchanged_since_epoch": 4, "path_unchanged_since_epoch": 4}
    # Resumed from an architecture.json written before these keys existed.
    assert search_lib.unchanged_since({"unchanged_since_epoch": None}, b, b, 5) == \
        {"unchanged_since_epoch": 5, "path_unchanged_since_epoch": 5}


@pytest.mark.parametrize("dropped", [("path_unchanged_since_epoch",),
                                     ("unchanged_since_epoch", "path_unchanged_since_epoch")])
def test_a_finished_search_from_before_the_settling_record_reruns_cleanly(tmp_path, full_run,
                                                                         dropped):
    """Re-running a finished search whose architecture.json has no settling record (written
    by an older version) runs no step and reports what it knows instead of crashing."""
    import shutil

    full_dir, full, _ = full_run
    model_dir = tmp_path / "old"
    shutil.copytree(full_dir, model_dir)
    arch_file = model_dir / "architecture.json"
    saved = json.loads(arch_file.read_text())
    for key in dropped:
        del saved["metadata"][key]
    arch_file.write_text(json.dumps(saved))
    # Older still: no search_version either. Finished, so it reports rather than resumes.
    config_path = model_dir / search_lib.CONFIG_FILENAME
    config = json.loads(config_path.read_text())
    del config["search_version"]
    config_path.write_text(json.dumps(config))
    result, logs = run(tiny_config(model_dir))
    assert result.completed and result.global_step == full.global_step
    assert result.architecture == full.architecture
    line = [line for line in logs if line.startswith("decoded path probability")]
    assert len(line) == 1 and line[0].endswith(
        "under a uniform beta; since when the architecture is unchanged is not recorded "
        "(its architecture.json predates that record)"), line


@pytest.mark.parametrize("loop", [True, False])
def test_partial_channel_search_runs_decodes_and_evaluates_sub_networks(tmp_path, loop):
    """--partial_channels=2 (PC-DARTS): bilevel steps with the looped and the unrolled
    supernet, the recorded setting, the decoded architecture, decoding the checkpoint, and
    its sub-network evaluated with the search's weights (inherited accuracy)."""
    from auto_deeplab_tf import checkpointing
    from auto_deeplab_tf import decoding
    from auto_deeplab_tf import inherited

    config = tiny_config(tmp_path, epochs=1, arch_start_epoch=0, steps_per_epoch=2,
                         partial_channels=2, loop_uniform_layers=loop, **LOOPED)
    result, _ = run(config)
    assert result.completed and result.global_step == 2
    assert np.abs(result.alpha).max() > 1e-2  # alpha was trained
    saved = json.loads((tmp_path / search_lib.CONFIG_FILENAME).read_text())
    assert saved["partial_channels"] == 2
    assert Architecture.load(str(tmp_path / "architecture.json")) == result.architecture
    alpha, beta = checkpointing.arch_values_from_checkpoint(str(tmp_path / "checkpoints"))
    assert decoding.decode_architecture(alpha, beta)[0] == result.architecture

    search_run = inherited.read_search_run(str(tmp_path))
    assert search_run.config.partial_channels == 2
    assert search_run.identity["search_settings"]["partial_channels"] == 2
    model = inherited.load_supernet(search_run.config, search_run.checkpoint, NUM_CLASSES, 255)
    assert model.partial_channels == 2 and (model.uniform is not None) == loop
    nets = inherited.Subnetworks(model)
    nets.select(result.architecture)
    logits = tf.function(nets)(tf.random.stateless_uniform((1, CROP, CROP, 3), (1, 2), -1, 1))
    assert tuple(logits.shape) == (1, CROP, CROP, NUM_CLASSES)
    assert np.all(np.isfinite(logits.numpy()))


def test_resume_with_other_partial_channels_is_refused(tmp_path):
    run(tiny_config(tmp_path, max_steps=1, arch_start_epoch=5, partial_channels=2))
    with pytest.raises(ValueError) as e:
        run(tiny_config(tmp_path, arch_start_epoch=5))
    assert (f"this run has --partial_channels=1 but {tmp_path} holds a search with "
            "--partial_channels=2" in str(e.value))
    # A config written before the flag existed was a search with K = 1.
    config_path = tmp_path / search_lib.CONFIG_FILENAME
    saved = json.loads(config_path.read_text())
    del saved["partial_channels"]
    config_path.write_text(json.dumps(saved))
    with pytest.raises(ValueError) as e:
        run(tiny_config(tmp_path, arch_start_epoch=5, partial_channels=2))
    assert (f"this run has --partial_channels=2 but {tmp_path} holds a search with "
            "--partial_channels=1" in str(e.value))


def test_supernet_identity_of_earlier_runs_is_unchanged_by_partial_channels():
    """Inherited results saved before --partial_channels existed name their supernet by
    the resume settings then; a K = 1 run (recorded or not) still names it the same way."""
    from auto_deeplab_tf import inherited

    old = {k: 1 for k in search_lib._RESUME_KEYS if k != "partial_channels"}
    identity = inherited.supernet_identity(old, 5, {})
    assert "partial_channels" not in identity["search_settings"]
    assert inherited.supernet_identity(dict(old, partial_channels=1), 5, {}) == identity
    assert inherited.supernet_identity(dict(old, partial_channels=4), 5, {})[
        "search_settings"]["partial_channels"] == 4


def test_partial_channels_not_dividing_f_is_refused_by_the_script(tmp_path):
    from tests import segmentation_helpers as sh

    out = sh.run_module("train.search", "--dataset=demo", f"--data_dir={tmp_path / 'cache'}",
                        f"--model_dir={tmp_path / 'run'}", "--filter_multiplier=6",
                        "--partial_channels=4", "--max_steps=1")
    assert out.returncode == 1
    assert ("error: --partial_channels=4 must divide the channels of every mixed op, but "
            "level 0 has 6 (F * 1 with --filter_multiplier=6)" in out.stderr)
