"""The loop over the supernet's uniform layers computes the function of the unrolled layers."""

import numpy as np
import pytest
import tensorflow as tf

from auto_deeplab_tf import search_space as ss
from auto_deeplab_tf.supernet import AutoDeepLabSupernet
from auto_deeplab_tf.uniform_layers import UniformLayers, first_uniform_layer, num_uniform_layers

# L = 7 over 4 levels: layers 5, 6, 7 are uniform (3 loop iterations).
DIMS = dict(num_classes=3, filter_multiplier=2, num_blocks=3, num_layers=7, num_levels=4,
            head_filters=4, stem_filters=(4, 4, 8))
SIZE = 48


def _relative(path):
    return path.split("/", 1)[1]


def weight_pairs(unrolled, looped):
    """(variable of `unrolled`, variable of `looped`, copy index or None) for every
    variable: the looped model's stacked copy k is layer first + k of the unrolled one."""
    by_path = {_relative(v.path): v for v in unrolled.weights}
    pairs = [(by_path[_relative(v.path)], v, None) for v in looped.weights
             if "/uniform_layers/" not in v.path]
    uniform = looped.uniform
    first = looped.num_layers - looped.num_looped_layers + 1
    plan = {(layer, level): (k, sources)
            for k, (layer, level, sources, *_) in enumerate(unrolled._plan)}
    for copy in range(looped.num_looped_layers):
        for level in range(looped.num_levels):
            k, sources = plan[(first + copy, level)]
            ref_transition = {source: t for source, t, _ in sources}
            layers = [(unrolled.prev_prev[k], uniform.prev_prev[level]),
                      (unrolled.cells[k], uniform.cells[level])]
            layers += [(unrolled.transitions[ref_transition[source]], uniform.transitions[t])
                       for source, _, t in uniform._sources[level]]
            for ref_layer, layer in layers:
                assert len(ref_layer.weights) == len(layer.weights)
                for a, b in zip(ref_layer.weights, layer.weights):
                    assert tuple(b.shape) == (looped.num_looped_layers, *a.shape), b.path
                    pairs.append((a, b, copy))
    assert len({id(b) for _, b, _ in pairs}) == len(looped.weights)
    assert len({id(a) for a, _, _ in pairs}) == len(unrolled.weights)
    return pairs


def paired_models(dims):
    """An unrolled and a looped supernet of `dims` with the same weights."""
    unrolled = AutoDeepLabSupernet(loop_uniform_layers=False, **dims)
    unrolled.build((None, None, None, 3))
    looped = AutoDeepLabSupernet(**dims)
    looped.build((None, None, None, 3))
    rng = np.random.default_rng(0)
    # Architecture logits of order 1, so that beta and alpha mixes are far from uniform.
    for v in unrolled.arch_variables:
        v.assign(rng.normal(size=v.shape).astype(np.float32))
    pairs = weight_pairs(unrolled, looped)
    for a, b, copy in pairs:
        if copy is None:
            b.assign(a)
        else:
            b[copy].assign(a)
    return unrolled, looped, pairs


@pytest.fixture(scope="module")
def models():
    return paired_models(DIMS)


def test_only_the_uniform_layers_are_looped(models):
    unrolled, looped = models[:2]
    assert num_uniform_layers(7, 4) == 3 and looped.num_looped_layers == 3
    assert unrolled.uniform is None and unrolled.num_looped_layers == 0
    assert len(looped.cells) == len(ss.trellis_nodes(4, 4))  # layers 1..4 unrolled
    assert looped.nodes == unrolled.nodes == ss.trellis_nodes(7, 4)
    assert looped.incoming(6, 3) == unrolled.incoming(6, 3) == [2, 3]
    # Equal parameter counts: the loop only regroups the same weights.
    count = lambda m: sum(int(np.prod(v.shape)) for v in m.weights)  # noqa: E731
    assert count(looped) == count(unrolled)
    config = looped.get_config()
    assert config["loop_uniform_layers"] is True
    assert AutoDeepLabSupernet.from_config(config).get_config() == config


def _loss_and_grads(model, images, labels):
    with tf.GradientTape() as tape:
        logits = model(images)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    grads = tape.gradient(loss, model.trainable_variables)
    return logits, [tf.convert_to_tensor(g) for g in grads]


def check_looped_equals_unrolled(models, mode):
    unrolled, looped, pairs = models
    rng = np.random.default_rng(1)
    images = tf.constant(rng.normal(size=(2, SIZE, SIZE, 3)).astype(np.float32))
    labels = tf.constant(rng.integers(0, 3, size=(2, SIZE, SIZE)).astype(np.int32))
    run = _loss_and_grads if mode == "eager" else tf.function(_loss_and_grads)
    ref_logits, ref_grads = run(unrolled, images, labels)
    logits, grads = run(looped, images, labels)
    np.testing.assert_allclose(logits.numpy(), ref_logits.numpy(), atol=1e-5, rtol=1e-5)
    ref_by_id = {id(v): g.numpy() for v, g in zip(unrolled.trainable_variables, ref_grads)}
    by_id = {id(v): g.numpy() for v, g in zip(looped.trainable_variables, grads)}
    scale = max(np.abs(g).max() for g in ref_by_id.values())
    for a, b, copy in pairs:
        got = by_id[id(b)] if copy is None else by_id[id(b)][copy]
        np.testing.assert_allclose(got, ref_by_id[id(a)], atol=1e-5 * scale, rtol=1e-4,
                                   err_msg=b.path)


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_looped_supernet_equals_the_unrolled_one_with_the_same_weights(models, mode):
    """Same logits and gradients (w.r.t. alpha, beta and every weight, each stacked copy
    against its layer's weight). Eager runs the loop as Python; "graph" traces it, so
    the forward and backward go through while_v2. Tolerance: float32 reduction order;
    measured differences are ~1e-7."""
    check_looped_equals_unrolled(models, mode)


@pytest.mark.parametrize("num_levels", [1, 2, 3])
def test_looped_equals_unrolled_for_every_number_of_levels(num_levels):
    """Issue #11, item 4: the loop starts where the trellis is really uniform. With one
    level, layer 2 is not: its H^{l-2} is the stem (other channels), so the loop must
    start at layer 3; otherwise at num_levels + 1. Two looped layers each; 4 levels is
    the test above, and more levels follow the same rule as 2..4 (not run: a 5-level
    trellis takes ~50 s to trace here). Same tolerance as above."""
    first = first_uniform_layer(num_levels)
    assert first == max(3, num_levels + 1)
    dims = dict(DIMS, num_levels=num_levels, num_layers=first + 1, num_blocks=1)
    models = paired_models(dims)
    assert models[1].num_looped_layers == 2
    assert len(models[1].cells) == len(ss.trellis_nodes(first - 1, num_levels))
    check_looped_equals_unrolled(models, "graph")


def test_every_stacked_copy_alpha_and_legal_beta_get_gradients(models):
    looped = models[1]
    rng = np.random.default_rng(2)
    images = tf.constant(rng.normal(size=(2, SIZE, SIZE, 3)).astype(np.float32))
    labels = tf.constant(rng.integers(0, 3, size=(2, SIZE, SIZE)).astype(np.int32))
    _, grads = tf.function(_loss_and_grads)(looped, images, labels)
    stacked = {id(v) for v in looped.uniform.weights}
    for v, g in zip(looped.trainable_variables, grads):
        g = g.numpy()
        if v is looped.beta:
            assert np.all(g[looped.beta_mask] != 0), "a legal beta entry got no gradient"
            assert np.all(g[~looped.beta_mask] == 0), "a masked beta entry got a gradient"
        elif id(v) in stacked:
            for copy in range(looped.num_looped_layers):
                assert np.any(g[copy] != 0), f"{v.path}[{copy}]"
        else:
            assert np.any(g != 0), v.path


def test_the_loop_body_is_traced_once(models, monkeypatch):
    looped = models[1]
    calls = []
    original = UniformLayers.layer

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(UniformLayers, "layer", counting)
    concrete = tf.function(lambda x: looped(x)).get_concrete_function(
        tf.TensorSpec((1, SIZE, SIZE, 3), tf.float32))
    assert len(calls) == 1
    assert any(op.type in ("While", "StatelessWhile")
               for op in concrete.graph.get_operations())


def test_unroll_flag_equals_the_loop(models):
    looped = models[1]
    uniform = looped.uniform
    rng = np.random.default_rng(3)
    n, size = 2, 16

    def level_tensor(level):
        s = size // 2**level
        return tf.constant(rng.normal(size=(n, s, s, uniform.node_channels(level)))
                           .astype(np.float32))

    states = ([level_tensor(i) for i in range(4)], [level_tensor(i) for i in range(4)])
    beta_w = looped.beta_weights()[-uniform.num_copies:]
    mixing = looped.cells[0].mixing_weights(looped.alpha_weights())
    looped_out = tf.function(lambda: uniform(states, beta_weights=beta_w, mixing=mixing))()
    unrolled_out = uniform(states, beta_weights=beta_w, mixing=mixing, unroll=True)
    for a, b in zip(looped_out, unrolled_out):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_looped_equals_unrolled_with_partial_channels():
    """PC-DARTS partial channels (K = 2) in the stacked mixed ops of the loop: the same
    logits and gradients as the unrolled supernet, traced. Same tolerance as above."""
    dims = dict(DIMS, num_levels=2, num_layers=4, num_blocks=2, partial_channels=2)
    models = paired_models(dims)
    assert models[1].num_looped_layers == 2
    assert models[1].uniform.cells[0].mixed_ops[0].op_filters == 1  # F = 2 at level 0
    check_looped_equals_unrolled(models, "graph")
