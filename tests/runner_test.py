"""The training loop of search and retraining (`runner.Controller`) on a trivial trainer.

The trainer adds each batch (one number) to a variable, so what was trained, saved and
restored can be read off exactly; each test takes a fraction of a second.
"""

import os
import types

import numpy as np
import pytest
import tensorflow as tf

from auto_deeplab_tf import runner


def _data(nan_at=None):
    """dataset_fn: epoch e gives the numbers 100 e + 1, 100 e + 2, ... (batches of one);
    `nan_at` (epoch, index) is NaN."""

    def dataset_fn(epoch):
        values = np.arange(1, 21, dtype=np.float32) + 100 * epoch
        if nan_at is not None and nan_at[0] == epoch:
            values[nan_at[1]] = np.nan
        return tf.data.Dataset.from_tensor_slices(values).batch(1)

    return dataset_fn


class _Sum(runner.Trainer):
    """Adds every batch to `total`; records what the controller asked of it."""

    divergence_hint = "--learning_rate"

    def __init__(self, rt):
        self.rt = rt
        with rt.strategy.scope():
            self.total = tf.Variable(0.0)
        self.seen, self.saved, self.reports, self.epoch_ends = [], [], [], []
        self.traced = False

        @tf.function
        def step(batch):
            def replica(x):
                self.total.assign_add(tf.reduce_sum(x))
                return tf.reduce_sum(x)

            return rt.strategy.reduce(tf.distribute.ReduceOp.SUM,
                                      rt.strategy.run(replica, args=(batch,)), axis=None)

        self.step = step

    def checkpoint_items(self):
        return {"total": self.total}

    def trace_message(self, batch):
        return None if self.traced else "tracing"

    def train_step(self, batch):
        value = float(self.step(batch))
        self.traced = True
        self.seen.append(value)
        return {"loss": value}

    def describe_losses(self, losses):
        return f"loss {losses['loss']}"

    def log_progress(self, at, losses, meter):
        self.reports.append((at.global_step, meter is not None))

    def checkpoint_saved(self, global_step):
        self.saved.append(global_step)

    def train_loop_end(self, epoch, global_step):
        self.epoch_ends.append((epoch, global_step))


def _run(model_dir, by_epoch, nan_at=None, **overrides):
    """(trainer, LoopResult, log lines) of one invocation."""
    logs = []
    config = types.SimpleNamespace(model_dir=str(model_dir), seed=0, deterministic=False,
                                   strategy="one_device", collective_communication="auto",
                                   collective_timeout_s=0.0)
    rt = runner.start(config, "test", logs.append)
    values = dict(model_dir=str(model_dir), name="test", steps_per_epoch=3, total_steps=6,
                  max_steps=None, checkpoint_every_steps=2, log_every_steps=1, max_to_keep=10,
                  by_epoch=by_epoch)
    values.update(overrides)
    trainer = _Sum(rt)
    result = runner.Controller(trainer, rt, runner.LoopSettings(**values), _data(nan_at)).run()
    return trainer, result, logs


def _checkpoints(model_dir):
    return sorted(int(f.split("-")[1].split(".")[0])
                  for f in os.listdir(os.path.join(model_dir, "checkpoints"))
                  if f.endswith(".index"))


@pytest.mark.parametrize("by_epoch", [True, False])
def test_max_steps_pauses_with_a_checkpoint_and_the_rerun_resumes(tmp_path, by_epoch):
    first, paused, _ = _run(tmp_path, by_epoch, max_steps=4)
    # Epoch 1 is 1, 2, 3; epoch 2 is 101, 102, 103: the pause is after 101.
    assert first.seen == [1, 2, 3, 101]
    assert (paused.global_step, paused.completed, paused.saved_at_end) == (4, False, True)
    assert paused.checkpoint.endswith("ckpt-4") and paused.steps_run == 4
    second, done, logs = _run(tmp_path, by_epoch)
    where = "epoch 2, step 1 of 3" if by_epoch else "step 4 of 6"
    assert f"resumed from {paused.checkpoint} at {where}" in logs
    assert second.seen == [102, 103]  # the finished batch of epoch 2 is skipped
    assert float(second.total) == 1 + 2 + 3 + 101 + 102 + 103
    assert (done.global_step, done.completed, done.steps_run, done.epoch) == (6, True, 2, 2)
    # Once finished, a rerun does nothing and saves nothing.
    third, again, _ = _run(tmp_path, by_epoch)
    assert third.seen == [] and third.saved == [] and again.completed
    assert again.checkpoint == done.checkpoint and not again.saved_at_end


def test_checkpoint_cadence_counts_global_steps(tmp_path):
    trainer, _, _ = _run(tmp_path, by_epoch=False, steps_per_epoch=5, total_steps=10,
                         checkpoint_every_steps=3)
    assert trainer.saved == [3, 6, 9, 10]  # the cadence, then the last step
    assert trainer.epoch_ends == [(0, 5), (1, 10)]
    assert _checkpoints(tmp_path) == [3, 6, 9, 10]


def test_by_epoch_cadence_counts_within_the_epoch_and_every_epoch_ends_saved(tmp_path):
    trainer, _, _ = _run(tmp_path, by_epoch=True, steps_per_epoch=5, total_steps=10,
                         checkpoint_every_steps=3)
    assert trainer.saved == [3, 5, 8, 10]
    assert trainer.epoch_ends == [(0, 5), (1, 10)]


def test_progress_reports_follow_the_meter_after_tracing(tmp_path):
    trainer, _, _ = _run(tmp_path, by_epoch=False, log_every_steps=4)
    # Step 1 traced (no rate yet); then every 4 steps from there, and the last step.
    assert trainer.reports == [(1, False), (5, True), (6, True)]
    trainer, _, _ = _run(tmp_path / "epochs", by_epoch=True, log_every_steps=4)
    # by_epoch also reports each epoch's last step (3).
    assert trainer.reports == [(1, False), (3, True), (5, True), (6, True)]


def test_nan_loss_stops_before_saving_and_names_the_last_good_checkpoint(tmp_path):
    with pytest.raises(runner.Diverged) as e:
        _run(tmp_path, by_epoch=False, nan_at=(1, 1))  # global step 5
    last = os.path.join(str(tmp_path), "checkpoints", "ckpt-4")
    assert str(e.value) == (
        f"loss became NaN or Inf at step 5 (loss nan); stopping. Nothing from this step was "
        f"saved; the last good checkpoint is {last}. Try a lower --learning_rate.")
    assert _checkpoints(tmp_path) == [2, 4]
    with pytest.raises(runner.Diverged, match="at epoch 1, step 1 .* is none \\(nothing was "
                                              "saved yet\\)"):
        _run(tmp_path / "first", by_epoch=True, nan_at=(0, 0))


def test_resume_config_refuses_changes_and_only_the_chief_writes(tmp_path):
    path = str(tmp_path / "config.json")
    current = {"seed": 1, "mixed_precision": "off"}

    def same_seed(saved):
        if saved["seed"] != current["seed"]:
            raise ValueError("seed changed")

    runner.check_resume_config(path, current, False, same_seed)
    assert not os.path.exists(path)
    runner.check_resume_config(path, current, True, same_seed)
    assert os.path.exists(path)
    current = {"seed": 2, "mixed_precision": "off"}
    with pytest.raises(ValueError, match="seed changed"):
        runner.check_resume_config(path, current, True, same_seed)
    with open(path) as f:
        assert '"seed": 1' in f.read()  # left as it was
