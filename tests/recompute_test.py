"""--recompute_layers: the supernet's layers recomputed in the backward pass.

The same loss and gradients as without it, looped and unrolled; and the recomputation
really happens: the backward pass reruns the layers' convolutions, and the loop keeps
far fewer activations for its backward pass.
"""

import collections
import json

import numpy as np
import pytest
import tensorflow as tf

from auto_deeplab_tf import precision
from auto_deeplab_tf.recompute import recomputed
from auto_deeplab_tf.supernet import AutoDeepLabSupernet
from tests.search_test import LOOPED, run, tiny_config

# Two levels, five layers: layers 3..5 are uniform (a loop of 3 iterations when looped).
DIMS = dict(num_classes=3, filter_multiplier=2, num_blocks=2, num_layers=5, num_levels=2,
            head_filters=4, stem_filters=(4, 4, 8), seed=1)
SIZE = 24
IMAGES = tf.TensorSpec((2, SIZE, SIZE, 3), tf.float32)
LABELS = tf.TensorSpec((2, SIZE, SIZE), tf.int32)


def paired_models(loop: bool, **levers):
    """A supernet without and one with recompute_layers, with the same weights; `levers`
    (partial_channels, dtype) go to both."""
    plain = AutoDeepLabSupernet(loop_uniform_layers=loop, **DIMS, **levers)
    plain.build((None, None, None, 3))
    recomputing = AutoDeepLabSupernet(loop_uniform_layers=loop, recompute_layers=True, **DIMS,
                                      **levers)
    recomputing.build((None, None, None, 3))
    rng = np.random.default_rng(0)
    # Architecture logits of order 1, so that the alpha and beta mixes are far from uniform.
    for v in plain.arch_variables:
        v.assign(rng.normal(size=v.shape).astype(np.float32))
    recomputing.set_weights(plain.get_weights())
    return plain, recomputing


@pytest.fixture(scope="module", params=[True, False], ids=["looped", "unrolled"])
def models(request):
    return paired_models(request.param)


def loss_and_gradients(model, images, labels):
    with tf.GradientTape() as tape:
        logits = model(images)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    grads = tape.gradient(loss, model.trainable_variables)
    return loss, [tf.convert_to_tensor(g) for g in grads]


def batch(seed=1):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.normal(size=IMAGES.shape).astype(np.float32)),
            tf.constant(rng.integers(0, 3, size=LABELS.shape).astype(np.int32)))


def test_recomputed_equals_the_plain_function_with_nests_nones_and_variables():
    """The wrapper alone: nested arguments with None leaves, and a variable read inside
    (callers pass weights as tensors, but a variable must still get its gradient)."""
    v = tf.Variable([0.5, -2.0])

    def fn(pair, none, scale):
        assert none is None
        a, b = pair
        return [tf.nn.relu(a * b) * scale * v, tf.reduce_sum(tf.sin(a))]

    a, b, scale = tf.constant([1.0, 2.0]), tf.constant([3.0, -1.0]), tf.constant(1.5)

    def grads(wrap):
        with tf.GradientTape() as tape:
            tape.watch([a, b, scale])
            out = (recomputed(fn, (a, b), None, scale) if wrap
                   else fn((a, b), None, scale))
            loss = tf.reduce_sum(out[0] ** 2) + 3.0 * out[1]
        return tape.gradient(loss, [a, b, scale, v])

    for mode in (lambda f: f, tf.function):
        for got, want in zip(mode(lambda: grads(True))(), mode(lambda: grads(False))()):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_same_loss_and_gradients_as_without_recomputation(models, mode):
    """Loss and gradients w.r.t. every weight, alpha and beta. The recomputation reruns
    the same ops on the same inputs; only the order in which gradient contributions are
    summed may differ. Tolerance: loss to 1e-6 relative, gradients to 1e-5 relative plus
    1e-6 of the largest gradient (measured: losses bitwise equal, gradients within
    ~1e-6 absolute). Eagerly the loop runs as Python (unrolled), in a graph as while_v2."""
    plain, recomputing = models
    images, labels = batch()
    compute = loss_and_gradients if mode == "eager" else tf.function(loss_and_gradients)
    ref_loss, ref_grads = compute(plain, images, labels)
    loss, grads = compute(recomputing, images, labels)
    np.testing.assert_allclose(loss.numpy(), ref_loss.numpy(), rtol=1e-6)
    ref_names = [v.path for v in plain.trainable_variables]
    assert [v.path.split("/", 1)[1] for v in recomputing.trainable_variables] == \
        [p.split("/", 1)[1] for p in ref_names]
    scale = max(float(np.abs(g.numpy()).max()) for g in ref_grads)
    for name, got, want in zip(ref_names, grads, ref_grads):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6 * scale,
                                   err_msg=name)
    by_name = dict(zip(ref_names, grads))
    for v in plain.arch_variables:  # alpha and beta are among them, and moved
        assert np.abs(by_name[v.path].numpy()).max() > 0


@pytest.mark.parametrize("loop", [True, False], ids=["looped", "unrolled"])
def test_recomputation_composes_with_partial_channels_and_bf16(loop):
    """The three memory and speed levers together: with partial channels (K = 2) under
    the bf16 policy, recomputing gives the loss and gradients of not recomputing. Both
    models run the same bf16 ops on the same inputs, so the tolerance is bf16's summation
    order only: loss 1e-3 relative, gradients 2e-2 of the largest gradient."""
    plain, recomputing = paired_models(loop, partial_channels=2,
                                       dtype=precision.dtype_policy("bf16"))
    images, labels = batch()
    compute = tf.function(loss_and_gradients)
    ref_loss, ref_grads = compute(plain, images, labels)
    loss, grads = compute(recomputing, images, labels)
    assert np.isfinite(ref_loss.numpy())
    np.testing.assert_allclose(loss.numpy(), ref_loss.numpy(), rtol=1e-3)
    scale = max(float(np.abs(g.numpy()).max()) for g in ref_grads)
    names = [v.path for v in plain.trainable_variables]
    for name, got, want in zip(names, grads, ref_grads):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=2e-2 * scale,
                                   err_msg=name)


def _op_counts(graph) -> collections.Counter:
    return collections.Counter(op.type for op in graph.get_operations())


def _loops(graph) -> tuple:
    """(forward, backward) body graphs of the one loop of the traced step."""
    bodies = [graph._functions[op.get_attr("body").name].graph  # noqa: SLF001
              for op in graph.get_operations() if op.type in ("While", "StatelessWhile")]
    assert len(bodies) == 2, "expected the loop and its gradient loop"
    forward = [b for b in bodies if not any(o.type == "TensorListPopBack"
                                            for o in b.get_operations())]
    backward = [b for b in bodies if b not in forward]
    assert len(forward) == len(backward) == 1
    return forward[0], backward[0]


def _saved_floats_per_iteration(body) -> int:
    """Elements the forward loop body pushes onto its accumulators for the backward."""
    return sum(int(np.prod(op.inputs[1].shape.as_list())) for op in body.get_operations()
               if op.type == "TensorListPushBack")


def test_the_backward_pass_really_recomputes_the_layers(models):
    """Counted in the traced graphs, so that the flag cannot silently do nothing:
    * the gradient of the plain supernet runs no forward convolution (Conv2D) of its own;
      with recompute_layers, every Conv2D of layers 1..L (all but the stem's and the
      heads') runs once more in it;
    * looped: the backward loop's body runs the forward body's convolutions, and the
      forward loop saves far fewer values per iteration for the backward (only the
      layer's inputs: two layers' levels, this copy's kernels and beta row; measured 5.5x
      fewer here)."""
    plain, recomputing = models
    trace = tf.function(loss_and_gradients)
    graphs = [trace.get_concrete_function(m, IMAGES, LABELS).graph
              for m in (plain, recomputing)]
    forward = tf.function(lambda x: plain(x)).get_concrete_function(IMAGES).graph
    outer_layer_convs = sum(1 for op in forward.get_operations() if op.type == "Conv2D"
                            and "/stem" not in op.name and "/aspp_level" not in op.name)
    assert outer_layer_convs > 0
    counts = [_op_counts(g) for g in graphs]
    forward_counts = _op_counts(forward)
    assert counts[0]["Conv2D"] == forward_counts["Conv2D"]
    assert counts[1]["Conv2D"] == forward_counts["Conv2D"] + outer_layer_convs
    if plain.uniform is None:
        return
    (plain_fw, plain_bw), (fw, bw) = (_loops(g) for g in graphs)
    body_counts = _op_counts(fw)
    assert body_counts["Conv2D"] > 0 and body_counts["DepthwiseConv2dNative"] > 0
    assert _op_counts(plain_bw)["Conv2D"] == 0
    bw_counts = _op_counts(bw)
    for op_type in ("Conv2D", "DepthwiseConv2dNative"):
        assert bw_counts[op_type] == body_counts[op_type], op_type
    saved, plain_saved = _saved_floats_per_iteration(fw), _saved_floats_per_iteration(plain_fw)
    assert saved < plain_saved / 3, (saved, plain_saved)


def test_search_steps_match_and_a_run_resumes_with_the_other_setting(tmp_path):
    """A few bilevel search steps (looped supernet) give the same losses and alpha/beta
    with and without recomputation; search_config.json records the flag; and since the
    flag changes no value, a search stopped without it resumes with it (and ends where
    the uninterrupted run does). Tolerance: losses to 1e-5 relative (logged at 4
    decimals); alpha and beta (order 0.01 to 0.1) to 2e-4 absolute: the gradients differ
    in the last bits (summation order; tight in the test above), and Adam's normalised
    step (arch_lr 0.05) amplifies that where a gradient is near Adam's epsilon (measured
    up to 5.3e-5 on beta entries after the resume, 2e-6 without)."""
    full, full_logs = run(tiny_config(tmp_path / "plain", **LOOPED))
    on, on_logs = run(tiny_config(tmp_path / "recompute", recompute_layers=True, **LOOPED))
    saved = json.loads((tmp_path / "recompute" / "search_config.json").read_text())
    assert saved["recompute_layers"] is True

    def losses(logs):
        # The progress lines (not every step has one: the first steps after tracing
        # are skipped); 4 of the 6 steps, at 4 decimals.
        lines = [line for line in logs if "| loss A" in line]
        assert len(lines) >= 3
        return [float(x) for line in lines
                for x in line.split("| loss A ")[1].split(" |")[0].split(" B ")]

    np.testing.assert_allclose(losses(on_logs), losses(full_logs), rtol=1e-5)
    assert on.architecture == full.architecture
    for a, b in ((on.alpha, full.alpha), (on.beta, full.beta)):
        np.testing.assert_allclose(a, b, atol=2e-4)

    first, _ = run(tiny_config(tmp_path / "resumed", max_steps=4, **LOOPED))
    assert not first.completed
    second, logs = run(tiny_config(tmp_path / "resumed", recompute_layers=True, **LOOPED))
    assert any("resumed from" in line for line in logs)
    assert second.completed and second.global_step == full.global_step
    for a, b in ((second.alpha, full.alpha), (second.beta, full.beta)):
        np.testing.assert_allclose(a, b, atol=2e-4)
    saved = json.loads((tmp_path / "resumed" / "search_config.json").read_text())
    assert saved["recompute_layers"] is True
