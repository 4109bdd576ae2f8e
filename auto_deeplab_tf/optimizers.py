"""The weight optimizers of the search and of retraining.

`MomentumSGD` is Keras' SGD with one fused kernel per weight for its momentum update (what
tf.keras 2 ran), where Keras 3 builds about eleven ops per weight: with a few hundred to a
thousand weights, those ops were a quarter of the retraining step's graph, and tracing and
optimising the graph is most of the time before the first step.
"""

from __future__ import annotations

import keras
import tensorflow as tf

WEIGHT_OPTIMIZERS = ("sgd", "adam")


def _handle(variable):
    """The resource handle of a Keras or TF variable (inside `Strategy.extended.update`,
    the current device's copy of a mirrored one); None for anything else."""
    if isinstance(variable, keras.Variable):
        variable = variable.value
    return getattr(variable, "handle", None)


@keras.saving.register_keras_serializable(package="auto_deeplab_tf")
class MomentumSGD(keras.optimizers.SGD):
    """`keras.optimizers.SGD` whose (non-Nesterov) momentum update of a dense gradient is
    one `ResourceApplyKerasMomentum` op: m = momentum * m - lr * g; w = w + m, the same
    update, variables and checkpoint layout as Keras' SGD. Other cases (no momentum,
    Nesterov, sparse gradients) are Keras' own."""

    def update_step(self, gradient, variable, learning_rate):
        m = self.momentums[self._get_variable_index(variable)] if self.momentum else None
        handles = (_handle(variable), _handle(m))
        if (m is None or self.nesterov or isinstance(gradient, tf.IndexedSlices)
                or None in handles):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=handles[0], accum=handles[1], lr=tf.cast(learning_rate, dtype),
            grad=tf.cast(gradient, dtype), momentum=tf.constant(self.momentum, dtype),
            use_locking=False, use_nesterov=False)


def weight_optimizer(kind: str, learning_rate, momentum: float, name: str
                     ) -> keras.optimizers.Optimizer:
    """The optimizer of the network's weights: "sgd" (with `momentum`) or "adam"."""
    if kind == "adam":
        return keras.optimizers.Adam(learning_rate, name=name)
    if kind == "sgd":
        return MomentumSGD(learning_rate, momentum=momentum, name=name)
    raise ValueError(f"unknown optimizer '{kind}', expected one of {', '.join(WEIGHT_OPTIMIZERS)}")
