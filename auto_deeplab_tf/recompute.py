"""Recomputation (gradient checkpointing): a function whose backward pass reruns its forward.

`recomputed(fn, *args)` returns fn(*args), but the gradient keeps only fn's inputs: when the
gradient arrives, fn's forward runs again on those inputs under a tape and its intermediates
are differentiated and dropped. Memory for activations then scales with one layer, not with
the depth, for the price of one more forward pass of every recomputed layer.

The supernet uses it per trellis layer (`--recompute_layers`): the unrolled layers and the
body of the loop over the uniform layers (`uniform_layers`). In the loop, while_v2 keeps a
per-iteration accumulator for every forward tensor its backward reads; recomputed, that is
only the layer's inputs (the two previous layers' levels, this copy's kernels, the beta row),
instead of every intermediate of every cell.

Not `tf.recompute_grad`: that adds a zero derived from the gradient to every input, an
elementwise pass over every activation and kernel, to order the recomputation after the
gradient. A control dependency on the gradient orders it as well (`grad` below) at no cost,
outside XLA, which ignores control dependencies (and schedules on its own).
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf


def recomputed(fn: Callable, *args):
    """fn(*args), recomputed in the backward pass instead of keeping its intermediates.

    `args` are nests (lists, tuples) of tensors (None leaves are passed through). Every
    tensor fn depends on must come in through `args`: gradients reach `args` only (and any
    variable fn reads, though callers pass weights as tensors so that the forward reads no
    variable twice), and a tensor captured from outside would also make tf.custom_gradient
    search the graph beyond fn for variables. The result is a nest of tensors.
    """
    flat = tf.nest.flatten(args)
    positions = [i for i, x in enumerate(flat) if x is not None]
    inputs = [tf.convert_to_tensor(flat[i]) for i in positions]

    def call(tensors):
        full = list(flat)
        for i, t in zip(positions, tensors):
            full[i] = t
        return fn(*tf.nest.pack_sequence_as(args, full))

    @tf.custom_gradient
    def run(*tensors):
        # Behind stop_gradient an eager tape records none of the forward's ops (it would
        # hold their outputs); the gradient is the one below.
        result = call([tf.stop_gradient(t) for t in tensors])

        def grad(*dys, variables=None):
            outputs_like = tf.nest.flatten(result)
            dys = [tf.zeros_like(y) if dy is None else dy for y, dy in zip(outputs_like, dys)]
            # Rerun the forward only once the gradient is there: without this dependency
            # the recomputation could run as early as the forward (its inputs are ready
            # then) and keep its activations alive after all; and it keeps grappler from
            # merging the rerun ops with the forward's identical ones.
            with tf.control_dependencies(dys):
                replay = [tf.identity(t) for t in tensors]
            watched = list(variables or [])
            with tf.GradientTape() as tape:
                tape.watch(replay)
                tape.watch(watched)
                outputs = tf.nest.flatten(call(replay))
            grads = tape.gradient(outputs, replay + watched, output_gradients=dys,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            if variables is None:
                return grads
            return grads[:len(replay)], grads[len(replay):]

        return result, grad

    return run(*inputs)
