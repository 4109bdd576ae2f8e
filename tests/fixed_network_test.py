"""The fixed network: shapes at odd sizes, serialisation, drop path, non-paper architectures."""

import json
import random

import numpy as np
import pytest
import tensorflow as tf

from auto_deeplab_tf import architecture as architecture_lib
from auto_deeplab_tf import model_stats, search_space
from auto_deeplab_tf.drop_path import DropPath, cell_keep_prob
from auto_deeplab_tf.fixed_cell import FixedCell
from auto_deeplab_tf.fixed_network import AutoDeepLab, low_level_cell_index

# Tiny widths keep every test well under a second of compute.
TINY = dict(filter_multiplier=2, stem_filters=(4, 4, 8), aspp_filters=8,
            low_level_filters=4, decoder_filters=8)


def _images(n, h, w, seed=0):
    return tf.random.stateless_uniform((n, h, w, 3), seed=(seed, 1))


def random_architecture(seed: int, num_layers: int = 6) -> architecture_lib.Architecture:
    rng = random.Random(seed)
    ops = [op for op in search_space.OPS if op != search_space.ZERO]
    cell = []
    for b in range(5):
        states = rng.sample(range(b + 2), 2)
        cell.append([(s, rng.choice(ops)) for s in states])
    path, level = [], 0
    for _ in range(num_layers):
        level = min(3, max(0, level + rng.choice((-1, 0, 1))))
        path.append(level)
    return architecture_lib.Architecture(cell=cell, path=path)


@pytest.fixture(scope="module")
def paper_model():
    model = AutoDeepLab(architecture_lib.AUTODEEPLAB, 5, **TINY)
    model.build((None, None, None, 3))
    return model


@pytest.mark.parametrize("size", [(65, 65), (33, 47), (1, 1)])
def test_output_shape_at_odd_sizes(paper_model, size):
    logits = paper_model(_images(2, *size), training=False)
    assert logits.shape == (2, *size, 5)
    assert np.all(np.isfinite(logits.numpy()))


def test_dynamic_input_shape_in_tf_function(paper_model):
    fn = tf.function(lambda x: paper_model(x, training=False),
                     input_signature=[tf.TensorSpec((None, None, None, 3))])
    assert fn(_images(1, 35, 21)).shape == (1, 35, 21, 5)


def test_low_level_features_come_from_cell_2(paper_model):
    assert low_level_cell_index(architecture_lib.AUTODEEPLAB.path) == 2
    assert paper_model.low_level_index == 2
    assert low_level_cell_index([1, 0, 0]) is None  # leaves OS 4 at once: stem features
    assert low_level_cell_index([0, 1, 0, 0]) == 0  # only the initial run counts


def test_get_config_round_trip(paper_model):
    config = paper_model.get_config()
    json.dumps(config)  # the architecture travels as a plain dict
    clone = AutoDeepLab.from_config(config)
    clone.build((None, None, None, 3))
    clone.set_weights(paper_model.get_weights())
    x = _images(2, 37, 29)
    np.testing.assert_allclose(clone(x, training=False).numpy(),
                               paper_model(x, training=False).numpy(), rtol=1e-5, atol=1e-5)
    assert clone.architecture == paper_model.architecture


def test_keras_file_round_trip(paper_model, tmp_path):
    import keras
    path = str(tmp_path / "model.keras")
    paper_model.save(path)
    loaded = keras.models.load_model(path)
    x = _images(1, 33, 47)
    np.testing.assert_allclose(loaded(x, training=False).numpy(),
                               paper_model(x, training=False).numpy(), rtol=1e-5, atol=1e-5)


def test_fixed_cell_config_round_trip():
    cell = FixedCell(architecture_lib.AUTODEEPLAB.cell, 4, transition="down", name="c")
    clone = FixedCell.from_config(cell.get_config())
    assert clone.get_config() == cell.get_config()
    y = cell(_images(1, 9, 9)[..., :2], _images(1, 17, 17)[..., :1])
    assert y.shape == (1, 5, 5, 20)


def test_cell_keep_prob_schedule():
    assert cell_keep_prob(0.7, 11, 12, 1.0) == pytest.approx(0.7)
    assert cell_keep_prob(0.7, 0, 12, 1.0) == pytest.approx(1 - 0.3 / 12)
    assert cell_keep_prob(0.7, 11, 12, 0.0) == pytest.approx(1.0)
    assert cell_keep_prob(0.7, 11, 12, 0.5) == pytest.approx(0.85)
    with pytest.raises(ValueError):
        cell_keep_prob(0.0, 0, 12)


def test_drop_path_is_per_sample():
    tf.random.set_seed(3)
    x = tf.ones((64, 3, 3, 2))
    y = DropPath()(x, keep_prob=0.5, training=True).numpy()
    per_sample = y.reshape(64, -1)
    # Every sample is either dropped entirely or kept entirely and scaled by 1/keep.
    assert np.all((per_sample == 0).all(axis=1) | (per_sample == 2).all(axis=1))
    kept = (per_sample == 2).all(axis=1).sum()
    assert 10 < kept < 54
    np.testing.assert_array_equal(DropPath()(x, keep_prob=0.5, training=False).numpy(),
                                  x.numpy())


def test_drop_path_off_at_inference_and_ramped_in_training():
    # No ASPP dropout: only drop path may make training mode random here.
    model = AutoDeepLab(architecture_lib.AUTODEEPLAB, 3, drop_path_keep_prob=0.2,
                        aspp_dropout_rate=0.0, **TINY)
    model.build((None, None, None, 3))
    x = _images(4, 33, 33)
    model.set_drop_path_progress(1.0)
    a = model(x, training=False).numpy()
    b = model(x, training=False).numpy()
    np.testing.assert_array_equal(a, b)  # deterministic at inference
    # Start of training: keep = 1 everywhere, so training mode is deterministic too.
    model.set_drop_path_progress(0.0)
    a = model(x, training=True).numpy()
    b = model(x, training=True).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # Fully ramped: blocks are dropped at random.
    tf.random.set_seed(0)
    a = model(x, training=True, drop_path_progress=1.0).numpy()
    b = model(x, training=True, drop_path_progress=1.0).numpy()
    assert not np.allclose(a, b)


@pytest.mark.parametrize("seed", [1, 7])
def test_random_non_paper_architecture(seed):
    arch = random_architecture(seed)
    assert arch != architecture_lib.AUTODEEPLAB
    model = AutoDeepLab(arch.to_dict(), 4, **TINY)
    model.build((None, None, None, 3))
    assert model(_images(1, 37, 23), training=False).shape == (1, 37, 23, 4)
    expected = model_stats.analytic_params(
        arch, 4, TINY["filter_multiplier"], stem_filters=TINY["stem_filters"],
        aspp_filters=TINY["aspp_filters"], low_level_filters=TINY["low_level_filters"],
        decoder_filters=TINY["decoder_filters"])
    assert model_stats.count_params(model.trainable_variables) == expected["total"]


def test_architecture_with_all_levels_and_stem_low_level():
    arch = architecture_lib.Architecture(
        cell=[[(0, "skip_connect"), (1, "max_pool_3x3")], [(2, "avg_pool_3x3"), (0, "sep_conv_5x5")]],
        path=[1, 2, 3, 3, 2, 1, 0])
    model = AutoDeepLab(arch, 2, **TINY)
    model.build((None, None, None, 3))
    assert model.low_level_index is None
    assert model.aspp_rates == (24, 48, 72)  # DeepLab's rates scaled to OS 4
    assert model(_images(1, 31, 45), training=False).shape == (1, 31, 45, 2)
    expected = model_stats.analytic_params(
        arch, 2, TINY["filter_multiplier"], stem_filters=TINY["stem_filters"],
        aspp_filters=TINY["aspp_filters"], low_level_filters=TINY["low_level_filters"],
        decoder_filters=TINY["decoder_filters"])
    assert model_stats.count_params(model.trainable_variables) == expected["total"]


def _bn_momenta(model) -> set:
    import keras
    return {layer.momentum for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)}


def test_bn_momentum_is_a_constructor_argument_of_every_bn():
    """Every BN of the network (stem, cells, ASPP, decoder) takes the model's bn_momentum at
    construction, it survives get_config, and a training step moves the moving mean by
    exactly 1 - momentum of the way to the batch mean."""
    default = AutoDeepLab(architecture_lib.AUTODEEPLAB, 3, **TINY)
    default.build((None, None, None, 3))
    assert _bn_momenta(default) == {0.9997}
    model = AutoDeepLab(architecture_lib.AUTODEEPLAB, 3, bn_momentum=0.5, **TINY)
    model.build((None, None, None, 3))
    assert _bn_momenta(model) == {0.5}
    clone = AutoDeepLab.from_config(model.get_config())
    clone.build((None, None, None, 3))
    assert _bn_momenta(clone) == {0.5}
    stem_bn = model.stem.norms[0]
    before = stem_bn.moving_mean.numpy().copy()
    x = _images(2, 17, 17)
    model(x, training=True)
    y = tf.nn.conv2d(x, model.stem.kernels[0], 2, "SAME")
    batch_mean = tf.reduce_mean(y, axis=[0, 1, 2]).numpy()
    np.testing.assert_allclose(stem_bn.moving_mean.numpy(), 0.5 * before + 0.5 * batch_mean,
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="bn_momentum must be in"):
        AutoDeepLab(architecture_lib.AUTODEEPLAB, 3, bn_momentum=1.0)


def test_bad_arguments():
    with pytest.raises(ValueError):
        AutoDeepLab(architecture_lib.AUTODEEPLAB, 0)
    with pytest.raises(ValueError):
        AutoDeepLab(architecture_lib.AUTODEEPLAB, 3, drop_path_keep_prob=0.0)
    with pytest.raises(ValueError):
        FixedCell(architecture_lib.AUTODEEPLAB.cell, 4, transition="sideways")


def _drop_outcomes(keep: float, n: int = 2000, seed: int = 5):
    """Per sample, which of block 0's two ops survived drop path in one training call of a
    fixed cell: a [n, 2] bool array (left kept, right kept).

    Block 0 = sep_conv_3x3(state 0) + atrous_conv_3x3(state 1); both ops end in a BN, so
    a surviving op's output is never zero. Each op is rerun alone on the same inputs
    (training BN: deterministic batch statistics) and every sample's block output is
    matched against the four possible sums."""
    import keras
    keras.utils.set_random_seed(seed)
    genotype = [[(0, "sep_conv_3x3"), (1, "atrous_conv_3x3")],
                [(2, "skip_connect"), (0, "avg_pool_3x3")]]
    cell = FixedCell(genotype, 4, name="cell")
    h_prev = tf.random.stateless_normal((n, 4, 4, 6), seed=(seed, 2))
    h_prev_prev = tf.random.stateless_normal((n, 4, 4, 4), seed=(seed, 3))
    y = cell(h_prev, h_prev_prev, keep_prob=keep, training=True).numpy()
    state0 = cell.preprocess(h_prev, training=True)
    left = cell.block_ops[0][0](state0, training=True).numpy() / keep
    right = cell.block_ops[0][1](h_prev_prev, training=True).numpy() / keep
    block = y[..., :4]
    candidates = [(kept_left, kept_right) for kept_left in (False, True)
                  for kept_right in (False, True)]
    matches = np.stack([np.all(np.abs(block - (kl * left + kr * right)) < 1e-4,
                               axis=(1, 2, 3)) for kl, kr in candidates], axis=1)
    assert np.all(matches.sum(axis=1) == 1), "not exactly one drop-path outcome per sample"
    outcomes = np.array(candidates)[np.argmax(matches, axis=1)]
    return outcomes


def test_drop_path_drops_each_op_independently_before_the_block_sum():
    """Issue #11, item 1: as Google's nas_cell.py, drop path masks each op's output (every
    op but none), not each block's sum. With keep probability k a block is zeroed only when
    both of its ops are dropped: probability (1 - k)^2 = 0.16 for k = 0.6 (per block it
    would be 0.4). The four outcomes have the frequencies of two independent draws.
    Tolerance: 2000 samples, a frequency's standard deviation is at most 0.011; +-0.035."""
    keep = 0.6
    outcomes = _drop_outcomes(keep)
    left, right = outcomes[:, 0], outcomes[:, 1]
    frequencies = {
        "both dropped (block zeroed)": (np.mean(~left & ~right), (1 - keep) ** 2),
        "only left kept": (np.mean(left & ~right), keep * (1 - keep)),
        "only right kept": (np.mean(~left & right), keep * (1 - keep)),
        "both kept": (np.mean(left & right), keep ** 2),
    }
    for what, (measured, expected) in frequencies.items():
        assert abs(measured - expected) < 0.035, (what, measured, expected)


def test_fixed_cell_drops_nothing_at_inference():
    genotype = [[(0, "sep_conv_3x3"), (1, "skip_connect")]]
    cell = FixedCell(genotype, 4, name="cell")
    h_prev, h_prev_prev = _images(64, 5, 5)[..., :2], _images(64, 5, 5, seed=1)[..., :1]
    h_prev_prev = tf.concat([h_prev_prev] * 4, axis=-1)
    a = cell(h_prev, h_prev_prev, keep_prob=0.3, training=False).numpy()
    b = cell(h_prev, h_prev_prev, keep_prob=1.0, training=False).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.any(np.all(a == 0, axis=(1, 2, 3)))
