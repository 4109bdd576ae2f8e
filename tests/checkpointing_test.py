"""Checkpoint keys: stable per model, whatever else the process built."""

import numpy as np
import pytest
import tensorflow as tf

from auto_deeplab_tf import architecture as architecture_lib
from auto_deeplab_tf import checkpointing
from auto_deeplab_tf.fixed_network import AutoDeepLab


def _fixed_network():
    model = AutoDeepLab(architecture_lib.AUTODEEPLAB, num_classes=3, filter_multiplier=2,
                        stem_filters=(4, 4, 8), aspp_filters=8, decoder_filters=8,
                        low_level_filters=4, name="autodeeplab")
    model.build((None, None, None, 3))
    return model


def _randomize(model, seed):
    rng = np.random.default_rng(seed)
    for v in model.variables:
        dtype = np.dtype(str(v.dtype))
        if np.issubdtype(dtype, np.floating):
            v.assign(rng.normal(size=v.shape).astype(dtype))
        else:  # the seed generator state
            v.assign(rng.integers(0, 1000, size=v.shape).astype(dtype))


def test_model_bundle_keys_do_not_depend_on_other_models(tmp_path):
    _fixed_network()  # takes the first process-wide seed generator names
    saved = _fixed_network()
    _randomize(saved, 0)
    keys = set(checkpointing.VariableBundle.for_model(saved).variables_by_path)
    assert len(keys) == len(saved.variables)
    assert all(k.startswith("autodeeplab|") for k in keys), sorted(keys)[:5]
    # The dropout's seed generator state is present, keyed by its owner.
    assert any("|dropout|seed_generator_0|" in k for k in keys)
    path = tf.train.Checkpoint(
        model=checkpointing.VariableBundle.for_model(saved)).save(str(tmp_path / "ckpt"))

    _fixed_network()  # yet another model: shifts the process-wide names again
    restored = _fixed_network()
    assert set(checkpointing.VariableBundle.for_model(restored).variables_by_path) == keys
    status = tf.train.Checkpoint(
        model=checkpointing.VariableBundle.for_model(restored)).restore(path)
    status.assert_existing_objects_matched()
    assert len(saved.variables) == len(restored.variables)
    for a, b in zip(saved.variables, restored.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)


def test_plain_bundle_keeps_keras_paths():
    model = _fixed_network()
    bundle = checkpointing.VariableBundle(model.variables)
    assert set(bundle.variables_by_path) == {v.path.replace("/", "|") for v in model.variables}


def test_plain_bundle_rejects_duplicate_paths():
    a = tf.Variable(1.0, name="w")
    b = tf.Variable(2.0, name="w")
    with pytest.raises(ValueError, match="share the path"):
        checkpointing.VariableBundle([a, b])
