"""The search model: the supernet plus its first-order bilevel training step.

One step (paper, SPEC section 2; first-order DARTS):
  1. w  <- SGD step on the trainA loss (momentum, cosine lr, L2 weight decay on w only);
  2. from `arch_start_epoch` on, (alpha, beta) <- Adam step on the trainB loss, its
     gradient taken at the current (just updated) weights; L2 decay on alpha/beta only.

Each optimizer owns only its own variables, so neither decay reaches the other's. Weight
decay is added to the gradients (L2, as the paper's PyTorch-era optimizers do), not
decoupled.

Under tf.distribute every replica computes the mean loss over its own valid pixels and
scales it (and the decay term) by 1 / num_replicas before the optimizer sums gradients
across replicas, so the update equals the single-device one on the global batch.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from auto_deeplab_tf.metrics import ConfusionMatrix
from auto_deeplab_tf.supernet import AutoDeepLabSupernet


def masked_cross_entropy(labels, logits, ignore_label: int = 255):
    """Mean softmax cross-entropy over pixels whose label is not `ignore_label`."""
    labels = tf.cast(labels, tf.int32)
    valid = tf.not_equal(labels, ignore_label)
    safe = tf.where(valid, labels, tf.zeros_like(labels))
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(safe, tf.cast(logits, tf.float32))
    valid = tf.cast(valid, ce.dtype)
    return tf.reduce_sum(ce * valid) / tf.maximum(tf.reduce_sum(valid), 1.0)


class SearchModel(AutoDeepLabSupernet):
    """AutoDeepLabSupernet with the bilevel `train_step`.

    Call `configure_search` inside the strategy scope before training: it builds both
    optimizers on their own variables (Keras 3 would otherwise build the second one
    lazily inside the traced step, which fails under MirroredStrategy).
    """

    def __init__(self, *args, ignore_label: int = 255, **kwargs):
        super().__init__(*args, **kwargs)
        self.ignore_label = int(ignore_label)
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

    def _loss_and_gradients_eager(self, images, labels):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            logits = self(images, training=True)
            loss = masked_cross_entropy(labels, logits, self.ignore_label)
            scaled = loss / replicas
        return loss, logits, tape.gradient(scaled, self.trainable_variables)

    def _descend(self, images, labels, variables, optimizer, decay):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        loss, logits, all_grads = self._loss_and_gradients(images, labels)
        # Dense already from the traced loop (stacked weights); a stacked weight read
        # outside a loop would give IndexedSlices, which cannot take the decay term.
        by_id = {id(v): tf.convert_to_tensor(g)
                 for v, g in zip(self.trainable_variables, all_grads)}
        grads = [by_id[id(v)] + (decay / replicas) * v for v in variables]
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
