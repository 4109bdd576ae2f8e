"""--mixed_precision (auto_deeplab_tf/precision.py): off is today's float32 step bit for bit,
bf16 tracks it, fp16 runs under loss scaling, checkpoints cross policies. Tiny, on CPU."""

import json
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from auto_deeplab_tf import ops
from auto_deeplab_tf import precision
from auto_deeplab_tf import retrain as retrain_lib
from auto_deeplab_tf import trained_model
from auto_deeplab_tf import search as search_lib
from auto_deeplab_tf.losses import count_valid
from tests import segmentation_helpers as sh
from tests.search_test import NUM_CLASSES, run, synthetic_pairs, tiny_config

# Two levels, four layers: layers 3 and 4 run as the supernet's loop over stacked weights.
LOOPED = dict(num_levels=2, num_layers=4)
# How far a bf16 loss may be from the float32 one after a few steps of the tiny search or
# retraining (measured: about 0.01 on losses of about 1.1 after 3 steps; bfloat16 keeps 8
# bits of mantissa, ~0.4% per rounding).
BF16_LOSS_TOLERANCE = 0.05


def _search_steps(mixed_precision=None, steps=3, **overrides):
    """(per-step (loss A, loss B), model) of a tiny bilevel search on one device; without
    `mixed_precision` the config and model are built as before the flag existed."""
    keras.utils.set_random_seed(3)
    extra = {} if mixed_precision is None else {"mixed_precision": mixed_precision}
    config = tiny_config("/unused", **LOOPED, **extra, **overrides)
    model = search_lib.build_search_model(config, NUM_CLASSES, total_steps=2 * steps)
    step = search_lib.make_step_function(model, tf.distribute.get_strategy(),
                                         update_arch=True)
    losses = []
    for pair in synthetic_pairs(0, steps=steps):
        for metric in model.search_metrics:
            metric.reset_state()  # per-step losses, not running means
        loss_a, loss_b = step(pair)
        losses.append((float(loss_a), float(loss_b)))
    return np.array(losses), model


@pytest.fixture(scope="module")
def float32_search():
    return _search_steps("off")


def test_modes_and_policies():
    assert precision.MODES == ("off", "bf16", "fp16")
    assert precision.dtype_policy("off").name == "float32"
    assert precision.dtype_policy("bf16").name == "mixed_bfloat16"
    assert precision.dtype_policy("fp16").name == "mixed_float16"
    with pytest.raises(ValueError, match="--mixed_precision"):
        precision.validate("fp8")
    with pytest.raises(ValueError, match="--mixed_precision"):
        tiny_config("/unused", mixed_precision="half").validate()


def test_off_is_the_float32_step_bitwise(float32_search):
    before_flag, _ = _search_steps(None)
    off, model = float32_search
    np.testing.assert_array_equal(off, before_flag)
    assert model.compute_dtype == "float32"
    assert not isinstance(model.weight_optimizer, keras.optimizers.LossScaleOptimizer)


def test_bf16_search_tracks_float32(float32_search):
    reference, _ = float32_search
    losses, model = _search_steps("bf16")
    np.testing.assert_allclose(losses, reference, atol=BF16_LOSS_TOLERANCE)
    assert np.all(np.isfinite(losses))
    # Variables, alpha and beta stay float32; the supernet computes in bfloat16.
    assert model.compute_dtype == "bfloat16"
    assert all(v.dtype == "float32" for v in model.variables if "float" in str(v.dtype))
    assert model.alpha_weights().dtype == tf.float32
    assert model(tf.zeros((1, 16, 16, 3))).dtype == tf.bfloat16


def _arch_gradient(mixed_precision):
    keras.utils.set_random_seed(3)
    config = tiny_config("/unused", mixed_precision=mixed_precision, **LOOPED)
    model = search_lib.build_search_model(config, NUM_CLASSES, total_steps=6)
    (images, labels), _ = next(iter(synthetic_pairs(0)))
    _, _, grads = model._loss_and_gradients(images, labels, count_valid(labels))
    by_id = {id(v): g for v, g in zip(model.trainable_variables, grads)}
    return np.concatenate([np.ravel(by_id[id(v)]) for v in model.arch_variables])


def test_bf16_and_fp16_keep_the_direction_of_the_architecture_gradient():
    """What decides the architecture: the gradient of alpha and beta, at the same weights
    and batch, points the same way as float32's (measured cosine 0.98 for bf16, 0.99 for
    fp16). The decoded architecture of a 3-step tiny search is not compared: there alpha
    and beta sit at their 1e-3 initial draws and Adam's first steps follow each gradient
    entry's sign, which bf16 flips for ~10% of the near-zero entries, so near-ties flip."""
    reference = _arch_gradient("off")
    for mode in ("bf16", "fp16"):
        gradient = _arch_gradient(mode)
        cosine = gradient @ reference / np.linalg.norm(gradient) / np.linalg.norm(reference)
        assert cosine > 0.95, (mode, cosine)


def test_fp16_search_steps_are_finite_under_loss_scaling(float32_search):
    reference, _ = float32_search
    losses, model = _search_steps("fp16")
    assert np.all(np.isfinite(losses))
    np.testing.assert_allclose(losses, reference, atol=BF16_LOSS_TOLERANCE)
    assert model.compute_dtype == "float16"
    for optimizer in (model.weight_optimizer, model.arch_optimizer):
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        # Counted by the inner optimizer only for steps applied (finite gradients).
        assert int(optimizer.iterations) >= 1
        assert np.isfinite(float(optimizer.dynamic_scale))


def test_fp16_fallback_convolutions_equal_the_float32_ones():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 7, 6)).astype(np.float32)
    grouped = rng.normal(size=(1, 1, 2, 9)).astype(np.float32)  # 3 groups of 2 -> 3
    dilated = rng.normal(size=(3, 3, 6, 4)).astype(np.float32)
    half = lambda a: tf.constant(a, tf.float16)  # noqa: E731
    for fallback, reference in (
            (ops.pointwise_conv2d(half(x), half(grouped)),
             tf.nn.conv2d(x, grouped, 1, "SAME")),
            (ops.atrous_conv2d(half(x), half(dilated), 2),
             tf.nn.conv2d(x, dilated, 1, "SAME", dilations=2))):
        assert fallback.dtype == tf.float16
        np.testing.assert_allclose(tf.cast(fallback, tf.float32), reference, atol=0.05,
                                   rtol=0.01)


def test_search_bn_computes_statistics_in_float32():
    x = tf.random.stateless_normal((2, 8, 8, 4), seed=(1, 2)) * 3.0 + 5.0
    reference = ops.group_batch_norm(x, groups=2)
    for dtype in (tf.bfloat16, tf.float16):
        y = ops.group_batch_norm(tf.cast(x, dtype), groups=2)
        assert y.dtype == dtype
        np.testing.assert_allclose(tf.cast(y, tf.float32), reference, atol=0.05)


def test_a_search_checkpoint_resumes_across_off_and_bf16_and_refuses_fp16(tmp_path):
    model_dir = tmp_path / "run"
    first, _ = run(tiny_config(model_dir, max_steps=3))  # epoch 1 of 2, float32
    assert not first.completed
    with pytest.raises(ValueError, match=r"--mixed_precision=fp16.*--mixed_precision=off"):
        run(tiny_config(model_dir, mixed_precision="fp16"))
    # The checkpoint's float32 variables restore into the bf16 model (the search refuses a
    # checkpoint whose variables do not all match); it goes on from step 3.
    second, logs = run(tiny_config(model_dir, mixed_precision="bf16"))
    assert any(re.search(r"resumed from .* at epoch 2, step 0", line) for line in logs)
    assert second.completed and second.global_step == 6
    with open(model_dir / "search_config.json") as f:
        assert json.load(f)["mixed_precision"] == "bf16"


def _retrain(model_dir, mixed_precision, **overrides):
    rng = np.random.default_rng(5)
    images = rng.uniform(-1, 1, size=(6, 32, 32, 3)).astype(np.float32)
    labels = ((images[..., 0] > 0).astype(np.int32) + 2 * (images[..., 1] > 0)) % 4
    labels[:, :2] = 255

    def dataset_fn(epoch):
        return tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)

    values = dict(model_dir=str(model_dir), architecture=sh.arch_file(model_dir.parent),
                  crop_size=32, batch_size=2, train_steps=4, max_steps=3, base_learning_rate=0.02,
                  checkpoint_every_steps=10, log_every_steps=1, seed=1, num_summary_images=0,
                  deterministic=True, mixed_precision=mixed_precision, **sh.TINY_MODEL)
    values.update(overrides)
    logs = []
    result = retrain_lib.run_retrain(retrain_lib.RetrainConfig(**values), dataset_fn=dataset_fn,
                                     num_classes=4, steps_per_epoch=3, log=logs.append)
    losses = [float(m.group(1)) for m in map(re.compile(r"\| loss ([0-9.]+)").search, logs)
              if m]
    return result, np.array(losses), logs


def test_bf16_retraining_tracks_float32_and_checkpoints_cross_policies(tmp_path):
    reference, reference_losses, _ = _retrain(tmp_path / "off", "off")
    result, losses, _ = _retrain(tmp_path / "bf16", "bf16")
    assert len(losses) == len(reference_losses) == 3
    np.testing.assert_allclose(losses, reference_losses, atol=BF16_LOSS_TOLERANCE)
    assert result.model.compute_dtype == "bfloat16"
    # Evaluation builds the network in float32 from the bf16 run's float32 weights.
    model, _, _ = trained_model.load_trained_model(str(tmp_path / "bf16"))
    assert model.compute_dtype == "float32"
    for restored, trained in zip(model.trainable_variables, result.model.trainable_variables):
        np.testing.assert_array_equal(restored.numpy(), trained.numpy())
    # A float32 run resumes under bf16 (one more step), not under fp16.
    resumed, _, logs = _retrain(tmp_path / "off", "bf16", max_steps=None)
    assert any("resumed from" in line and "at step 3 of 4" in line for line in logs)
    assert resumed.completed and resumed.global_step == 4
    with pytest.raises(ValueError, match="--mixed_precision=fp16"):
        _retrain(tmp_path / "off", "fp16")


def test_fp16_retraining_runs_finite(tmp_path):
    result, losses, _ = _retrain(tmp_path / "fp16", "fp16")
    assert len(losses) == 3 and np.all(np.isfinite(losses)) and result.global_step == 3
    assert isinstance(result.model, keras.Model) and result.model.compute_dtype == "float16"
