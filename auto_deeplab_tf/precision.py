"""Mixed precision: the `--mixed_precision=off|bf16|fp16` flag of search and retraining.

A mode names a Keras dtype policy, which the models pass to every layer they build (no
process-global policy): "off" is float32 throughout, "bf16" is 'mixed_bfloat16' and
"fp16" 'mixed_float16'. Under a mixed policy the variables stay float32 (so checkpoints
have the same layout and values under every mode) and the convolutions, pooling, resizes
and activations run in the compute dtype: each layer casts its kernels where it uses them.
What stays float32:

* alpha, beta and their softmax (cast to the compute dtype only where they multiply
  features; their gradients come back through the cast as float32);
* batch-normalisation statistics (`ops.group_batch_norm`: the fused kernel computes its
  moments in float32 for 16-bit inputs; the synchronised paths cast to float32);
* the loss (`losses.masked_cross_entropy` casts the logits to float32).

fp16 has a narrow exponent range, so gradients can underflow: it goes with dynamic loss
scaling, `keras.optimizers.LossScaleOptimizer` (`wrap_optimizer`). bfloat16 has float32's
range and needs none.
"""

from __future__ import annotations

import keras

MODES = ("off", "bf16", "fp16")
_POLICY_NAMES = {"off": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
# Modes between which a run may resume: the same variables in the checkpoint. fp16 adds
# the loss scale's state to each optimizer (`wrap_optimizer`).
_SAME_CHECKPOINT_LAYOUT = ("off", "bf16")


def validate(mode: str) -> None:
    """Raises ValueError naming the flag unless `mode` is one of MODES."""
    if mode not in MODES:
        raise ValueError(f"--mixed_precision must be one of {', '.join(MODES)}, got {mode!r}")


def dtype_policy(mode: str) -> keras.DTypePolicy:
    """The Keras dtype policy of a mode: float32, mixed_bfloat16 or mixed_float16."""
    validate(mode)
    return keras.DTypePolicy(_POLICY_NAMES[mode])


def wrap_optimizer(optimizer: keras.optimizers.Optimizer, mode: str
                   ) -> keras.optimizers.Optimizer:
    """`optimizer` under a dynamic loss scale for fp16; unchanged otherwise."""
    validate(mode)
    if mode == "fp16":
        return keras.optimizers.LossScaleOptimizer(optimizer, name=f"{optimizer.name}_scaled")
    return optimizer


def loss_scale(optimizer: keras.optimizers.Optimizer):
    """The current loss scale of a `LossScaleOptimizer` (a float32 variable), else None."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.dynamic_scale
    return None


def check_resume(saved_mode: str, mode: str, where: str) -> None:
    """Refuses to resume a run across modes whose checkpoints differ (to or from fp16).

    `where`: the file that recorded `saved_mode`, named in the message. off and bf16 share
    their checkpoint layout and values (float32 variables), so a run may switch between
    them; fp16's optimizers carry loss-scale state the others do not have.
    """
    if saved_mode == mode:
        return
    if saved_mode in _SAME_CHECKPOINT_LAYOUT and mode in _SAME_CHECKPOINT_LAYOUT:
        return
    raise ValueError(
        f"{where}: this run has --mixed_precision={mode} but the run in this --model_dir was "
        f"started with --mixed_precision={saved_mode}; fp16 keeps a loss scale in its "
        "optimizer checkpoints that the other modes do not, so it cannot be switched on or "
        "off on resume (off and bf16 can be swapped freely). Resume with "
        f"--mixed_precision={saved_mode} or use another --model_dir")
