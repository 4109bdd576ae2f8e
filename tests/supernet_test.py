import numpy as np
import pytest
import tensorflow as tf

from auto_deeplab_tf import search_space as ss
from auto_deeplab_tf.supernet import AutoDeepLabSupernet

TINY = dict(num_classes=3, filter_multiplier=2, num_blocks=3, num_layers=3, head_filters=4,
            stem_filters=(4, 4, 8))


@pytest.fixture(scope="module")
def model():
    m = AutoDeepLabSupernet(**TINY)
    m.build((None, None, None, 3))
    return m


@pytest.mark.parametrize("num_layers,num_levels", [(3, 4), (5, 4), (4, 3)])
def test_every_legal_node_exists_and_no_other(num_layers, num_levels):
    m = AutoDeepLabSupernet(3, filter_multiplier=2, num_blocks=2, num_layers=num_layers,
                            num_levels=num_levels)
    assert m.nodes == ss.trellis_nodes(num_layers, num_levels)
    assert len(m.cells) == len(m.nodes) == len(m.prev_prev)
    for layer, level in m.nodes:
        assert level <= min(layer, num_levels - 1)
        assert m.incoming(layer, level) == [
            j for j in (level - 1, level, level + 1)
            if 0 <= j <= min(layer - 1, num_levels - 1)]
    assert len(m.transitions) == sum(len(m.incoming(*n)) for n in m.nodes)
    assert len(m.heads) == min(num_layers, num_levels - 1) + 1
    with pytest.raises(ValueError, match="is not in the trellis"):
        m.incoming(1, 2)


def test_arch_variables_have_the_paper_shapes_and_init(model):
    alpha, beta = model.arch_variables
    assert tuple(alpha.shape) == (ss.num_edges(3), ss.NUM_OPS)
    assert tuple(beta.shape) == (3, 4, 3)
    assert 0 < float(tf.math.reduce_std(alpha)) < 1e-2  # 1e-3 * N(0, 1)
    weight_ids = {id(v) for v in model.weight_variables}
    assert not weight_ids & {id(alpha), id(beta)}
    assert len(model.weight_variables) + 2 == len(model.trainable_variables)


def test_beta_weights_are_normalised_over_outgoing_transitions(model):
    probs = model.beta_weights().numpy()
    mask = model.beta_mask
    np.testing.assert_allclose(probs.sum(-1)[mask.any(-1)], 1.0, rtol=1e-6)
    assert np.all(probs[~mask] == 0)


@pytest.mark.parametrize("size", [(64, 64), (65, 65), (33, 47)])
def test_output_is_input_size_by_classes(model, size):
    y = model(tf.random.normal((2, *size, 3)))
    assert tuple(y.shape) == (2, *size, 3)


def test_gradients_reach_every_weight_alpha_and_beta(model):
    x = tf.random.normal((2, 32, 32, 3), seed=1)
    labels = tf.random.uniform((2, 32, 32), 0, 3, tf.int32, seed=2)
    with tf.GradientTape() as tape:
        logits = model(x)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    variables = model.trainable_variables
    grads = tape.gradient(loss, variables)
    for v, g in zip(variables, grads):
        assert g is not None, v.path
        g = g.numpy()
        if v is model.beta:
            mask = model.beta_mask
            assert np.all(g[mask] != 0), "a legal beta entry got no gradient"
            assert np.all(g[~mask] == 0), "a masked beta entry got a gradient"
        else:
            assert np.any(g != 0), v.path


def test_traced_once_per_input_shape(model):
    calls = []
    original = model.cells[0].call

    def counting_call(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    model.cells[0].call = counting_call
    try:
        fn = tf.function(lambda x: model(x))
        for _ in range(3):
            fn(tf.zeros((1, 32, 32, 3)))
        assert fn.experimental_get_tracing_count() == 1
        assert len(calls) == 1  # the Python loops ran at trace time only
        fn(tf.zeros((1, 40, 40, 3)))
        fn(tf.zeros((1, 40, 40, 3)))
        assert fn.experimental_get_tracing_count() == 2
        assert len(calls) == 2
    finally:
        del model.cells[0].call


def test_every_dimension_is_a_parameter():
    m = AutoDeepLabSupernet(num_classes=5, filter_multiplier=3, num_blocks=2, num_layers=2,
                            num_levels=2, head_filters=4, stem_filters=(4, 4, 6))
    y = m(tf.zeros((1, 32, 32, 3)))
    assert tuple(y.shape) == (1, 32, 32, 5)
    assert tuple(m.alpha.shape) == (ss.num_edges(2), ss.NUM_OPS)
    assert tuple(m.beta.shape) == (2, 2, 3)
    assert m.cells[-1].filters == 3 * 2  # level 1 at F = 3
    config = m.get_config()
    clone = AutoDeepLabSupernet.from_config(config)
    assert clone.get_config() == config


@pytest.mark.parametrize("flag,value", [("num_classes", 0), ("num_layers", 0),
                                        ("filter_multiplier", -1)])
def test_bad_dimensions_fail_with_the_argument_name(flag, value):
    kwargs = dict(TINY, **{flag: value})
    with pytest.raises(ValueError, match=f"{flag} must be >= 1, got {value}"):
        AutoDeepLabSupernet(**kwargs)


def _arch_init(seed, global_seed, **dims):
    """alpha and beta of a freshly built supernet (tiny: one level, two layers)."""
    import keras
    keras.utils.set_random_seed(global_seed)  # everything but alpha/beta may follow it
    m = AutoDeepLabSupernet(seed=seed, **dict(TINY, num_layers=2, num_levels=2, **dims))
    m.build((None, None, None, 3))
    return m.alpha.numpy(), m.beta.numpy()


def test_alpha_and_beta_are_independent_draws_from_the_seed():
    """Issue #11, item 2: alpha and beta are two independent 1e-3 * N(0, 1) draws (one
    initializer object used to draw both, so beta repeated alpha's first numbers), made
    from `seed` alone, whatever the global random state."""
    alpha, beta = _arch_init(3, global_seed=0)
    assert not np.isin(beta.ravel(), alpha.ravel()).any()
    values = np.concatenate([alpha.ravel(), beta.ravel()])
    assert 0.5e-3 < values.std() < 2e-3 and np.abs(values.mean()) < 5e-4
    same_alpha, same_beta = _arch_init(3, global_seed=1)
    np.testing.assert_array_equal(same_alpha, alpha)
    np.testing.assert_array_equal(same_beta, beta)
    other_alpha, other_beta = _arch_init(4, global_seed=0)
    assert not np.isin(other_alpha.ravel(), alpha.ravel()).any()
    assert not np.isin(other_beta.ravel(), beta.ravel()).any()
    # Unseeded (seed=None): still two independent draws.
    alpha, beta = _arch_init(None, global_seed=0)
    assert not np.isin(beta.ravel(), alpha.ravel()).any()


def test_search_head_weights_are_independent_draws():
    """Issue #11, item 3: each kernel of the search ASPP gets its own draw. With one
    initializer object the 1x1 and pooling kernels were equal, and the atrous and logits
    kernels scaled copies of one draw (each a prefix of the same random numbers)."""
    from auto_deeplab_tf.search_head import SearchASPP
    head = SearchASPP(num_classes=3, filters=4, rate=2)
    head.build((None, None, None, 8))
    kernels = {name: getattr(head, name).numpy().ravel()
               for name in ("k_1x1", "k_atrous", "k_pool", "k_logits")}
    names = sorted(kernels)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            x, y = kernels[a], kernels[b]
            n = min(x.size, y.size)
            # Not equal, and not proportional on their common prefix either.
            correlation = np.corrcoef(x[:n], y[:n])[0, 1]
            assert abs(correlation) < 0.9, (a, b, correlation)


def _count(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


def test_partial_channels_shrink_the_mixed_ops_and_keep_everything_else():
    dims = dict(TINY, num_levels=2, filter_multiplier=4)
    full = AutoDeepLabSupernet(**dims)
    partial = AutoDeepLabSupernet(partial_channels=2, **dims)
    for m in (full, partial):
        m.build((None, None, None, 3))
    y = partial(tf.random.normal((2, 32, 32, 3)))
    assert tuple(y.shape) == (2, 32, 32, 3)
    mixed = lambda m: [w for c in m.cells for op in c.mixed_ops  # noqa: E731
                       for w in op.weights]
    assert 2 * _count(mixed(partial)) <= _count(mixed(full))
    others = lambda m: [w for w in m.weights  # noqa: E731
                        if id(w) not in {id(v) for v in mixed(m)}]
    assert _count(others(partial)) == _count(others(full))
    config = partial.get_config()
    assert config["partial_channels"] == 2
    assert AutoDeepLabSupernet.from_config(config).get_config() == config


def test_partial_channels_must_divide_the_filter_multiplier():
    with pytest.raises(ValueError) as e:
        AutoDeepLabSupernet(partial_channels=4, **TINY)
    assert str(e.value).startswith("--partial_channels=4 must divide the channels of every "
                                   "mixed op, but level 0 has 2 (F * 1 with "
                                   "--filter_multiplier=2)")
