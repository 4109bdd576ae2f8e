"""The search model: the supernet plus its first-order bilevel training step.

One step (paper, SPEC section 2; first-order DARTS):
  1. w  <- SGD step on the trainA loss (momentum, cosine lr, L2 weight decay on w only);
  2. from `arch_start_epoch` on, (alpha, beta) <- Adam step on the trainB loss, its
     gradient taken at the current (just updated) weights; L2 decay on alpha/beta only.

Each optimizer owns only its own variables, so neither decay reaches the other's. Weight
decay is added to the gradients (L2, as the paper's PyTorch-era optimizers do), not
decoupled.

Under tf.distribute with several replicas the step is the single-device step on the global
batch: the supernet's BNs take the statistics of the global batch (synchronised BN,
`ops.group_batch_norm`), each replica's loss is its pixels' share of the global mean (the
sum of its cross-entropies divided by the global count of valid pixels) and the decay term
is scaled by 1 / num_replicas, and the optimizer sums the replicas' gradients. The
supernet then runs without the nested function and the loop that the single-device step
uses (TF cannot all-reduce inside them; see `_descend`).

Under --mixed_precision=fp16 both optimizers are `LossScaleOptimizer`s (`precision`), each
with its own dynamic scale: the gradients of alpha and beta flow back through the same
16-bit activations as those of the weights, so they can underflow alike, and a step that
overflows for one half of the bilevel step need not for the other. The shared forward and
backward pass takes the scale of the optimizer it serves.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from auto_deeplab_tf import ops
from auto_deeplab_tf import precision
from auto_deeplab_tf.losses import count_valid, global_count_valid, masked_cross_entropy
from auto_deeplab_tf.metrics import ConfusionMatrix
from auto_deeplab_tf.supernet import AutoDeepLabSupernet


class SearchModel(AutoDeepLabSupernet):
    """AutoDeepLabSupernet with the bilevel `train_step`.

    Call `configure_search` inside the strategy scope before training: it builds both
    optimizers on their own variables (Keras 3 would otherwise build the second one
    lazily inside the traced step, which fails under MirroredStrategy).

    Args (beyond the supernet's):
      ignore_label: the label value the loss and the metrics skip.
      sync_bn: under several replicas of one process, the search BNs take the global
        batch's statistics (the single-device step). False keeps each replica's own, which
        is not the paper's step: it exists to measure what the synchronisation costs.
    """

    def __init__(self, *args, ignore_label: int = 255, sync_bn: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.ignore_label = int(ignore_label)
        self.sync_bn = bool(sync_bn)
        # Both halves of the bilevel step run this one traced forward+backward function.
        # Kept as a call (not inlined), the supernet's graph exists once instead of twice,
        # which halves tracing time and graph memory; the price is that the trainB pass
        # also computes weight gradients it does not use.
        self._loss_and_gradients = tf.function(
            self._loss_and_gradients_eager, experimental_attributes={"_noinline": True})
        # Metrics are state: Keras wants them created before the model is built.
        self.loss_a = keras.metrics.Mean(name="loss_a")
        self.loss_b = keras.metrics.Mean(name="loss_b")
        self.confusion_a = ConfusionMatrix(self.num_classes, self.ignore_label,
                                           name="confusion_a")
        self.confusion_b = ConfusionMatrix(self.num_classes, self.ignore_label,
                                           name="confusion_b")

    def configure_search(self, weight_optimizer: keras.optimizers.Optimizer,
                         arch_optimizer: keras.optimizers.Optimizer, *,
                         weight_decay: float = 3e-4, arch_weight_decay: float = 1e-3) -> None:
        if not self.built:
            self.build((None, None, None, 3))
        self.weight_optimizer = weight_optimizer
        self.arch_optimizer = arch_optimizer
        self.weight_optimizer.build(self.weight_variables)
        self.arch_optimizer.build(self.arch_variables)
        self.weight_decay = float(weight_decay)
        self.arch_weight_decay = float(arch_weight_decay)

    @property
    def search_metrics(self) -> list:
        return [self.loss_a, self.loss_b, self.confusion_a, self.confusion_b]

    def _loss_and_gradients_eager(self, images, labels, num_valid, loss_scale=None):
        """(this replica's share of the loss, logits, gradients of every trainable
        variable); `num_valid`: the valid pixels of the global batch. With `loss_scale`
        (fp16) the gradients are those of the loss times it; the loss is unscaled."""
        with tf.GradientTape() as tape:
            logits = self(images, training=True)
            loss = masked_cross_entropy(labels, logits, self.ignore_label, num_valid)
            scaled = loss if loss_scale is None else loss * loss_scale
        return loss, logits, tape.gradient(scaled, self.trainable_variables)

    def _descend(self, images, labels, variables, optimizer, decay):
        """One optimizer step on (images, labels); returns (the loss of the global batch,
        this replica's logits)."""
        if self.sync_bn:
            return self._descend_in_scope(images, labels, variables, optimizer, decay)
        with ops.per_replica_search_statistics():
            return self._descend_in_scope(images, labels, variables, optimizer, decay)

    def _descend_in_scope(self, images, labels, variables, optimizer, decay):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        # All-reduced here, outside any nested function: TF's all-reduce in a replica
        # context (a merge_call) cannot run inside one, nor inside a loop.
        num_valid = global_count_valid(labels, self.ignore_label)
        # For the same reason the synchronised BNs make the supernet trace inline (and
        # unroll its loop) instead of calling the shared function.
        compute = (self._loss_and_gradients if ops.search_bn_context() is None
                   else self._loss_and_gradients_eager)
        scale = precision.loss_scale(optimizer)  # None but under fp16
        if scale is None:
            share, logits, all_grads = compute(images, labels, num_valid)
        else:
            scale = tf.convert_to_tensor(scale)
            share, logits, all_grads = compute(images, labels, num_valid, scale)
            # The optimizer divides by the scale what it applies, decay term included.
            decay = decay * scale
        context = ops.cross_replica_context()
        # stop_gradient: nothing to differentiate, and it spares the all-reduce's custom
        # gradient a walk through the whole graph (`ops.cross_replica_gather`).
        loss = share if context is None else context.all_reduce(
            tf.distribute.ReduceOp.SUM, tf.stop_gradient(share))
        # Dense already from the traced loop (stacked weights); a stacked weight read
        # outside a loop would give IndexedSlices, which cannot take the decay term.
        by_id = {id(v): tf.convert_to_tensor(g)
                 for v, g in zip(self.trainable_variables, all_grads)}
        # stop_gradient changes no value: under several replicas the optimizer all-reduces
        # the gradients with a custom gradient, whose tracing otherwise walks the whole
        # step graph back from them (`ops.cross_replica_gather`), slowly.
        grads = [tf.stop_gradient(by_id[id(v)] + (decay / replicas) * v) for v in variables]
        optimizer.apply_gradients(zip(grads, variables))
        return loss, logits

    def train_step(self, data, update_arch: bool = True):
        """One bilevel step on ((images_a, labels_a), (images_b, labels_b))."""
        (images_a, labels_a), (images_b, labels_b) = data
        loss_a, logits_a = self._descend(images_a, labels_a, self.weight_variables,
                                         self.weight_optimizer, self.weight_decay)
        self.loss_a.update_state(loss_a)
        self.confusion_a.update_state(labels_a, logits_a)
        if update_arch:
            loss_b, logits_b = self._descend(images_b, labels_b, self.arch_variables,
                                             self.arch_optimizer, self.arch_weight_decay)
            self.loss_b.update_state(loss_b)
            self.confusion_b.update_state(labels_b, logits_b)
        return {m.name: m.result() for m in (self.loss_a, self.loss_b)}
