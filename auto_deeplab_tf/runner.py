"""One training loop for the search and the retraining.

In the spirit of orbit's Controller and deeplab2's trainer: a `Controller` owns the loop's
machinery, and a job (`search.py`, `retrain.py`) supplies a `Trainer` with only what
differs: its model and optimizers to checkpoint, its step function (`train_step`), what
happens when an epoch begins (`train_loop_begin`) and ends (`train_loop_end`) and when a
checkpoint is saved, and the wording of its lines.

The controller

* restores the chief's latest checkpoint (on every worker) and checks that every worker
  resumed from the same step;
* feeds each epoch's data, a function of (seed, epoch): a resumed epoch is rebuilt and its
  finished batches skipped;
* stops on a NaN/Inf loss before saving anything from that step;
* prints progress lines (steps/s over the last interval, ETA) and keeps the run's
  TensorBoard writer (the chief's; none elsewhere);
* pauses at `max_steps` (checkpoint, then return; running again resumes);
* checkpoints every `checkpoint_every_steps` steps and at the end.

Before the loop both jobs share the set-up here too: `start` (seeding, op determinism, the
strategy and this worker's role), `registered_data` / `custom_data` (the dataset of a run)
and `check_resume_config` (the settings a run must not resume with changed).
"""

from __future__ import annotations

import abc
import dataclasses
import json
import os
import time
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import keras
import numpy as np
import tensorflow as tf

from auto_deeplab_datasets import atomic_write
from auto_deeplab_tf import checkpointing
from auto_deeplab_tf import common
from auto_deeplab_tf import distribute
from auto_deeplab_tf import precision
from auto_deeplab_tf import progress
from auto_deeplab_tf import summaries

DatasetFn = Callable[[int], tf.data.Dataset]


class Diverged(RuntimeError):
    """A loss became NaN or Inf."""


class RunSettings(Protocol):
    """The fields `start` reads; `SearchConfig` and `RetrainConfig` both have them."""

    model_dir: str
    seed: int
    deterministic: bool
    strategy: str
    collective_communication: str
    collective_timeout_s: float


@dataclasses.dataclass(frozen=True)
class Runtime:
    """The strategy of a run and this process's place in it."""

    strategy: tf.distribute.Strategy
    is_chief: bool  # writes MODEL_DIR (every single-process run is the chief)
    task_type: str
    task_id: int
    log: Callable[[str], None]  # every line prefixed with the worker under multi_worker


def start(config: RunSettings, job: str, log: Callable[[str], None]) -> Runtime:
    """Seeds every generator, turns op determinism on if asked, and creates the strategy.

    `job` names the run in the multi-worker start line ('multi-worker search: ...').
    """
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = distribute.make_strategy(config.strategy, config.collective_communication,
                                        config.collective_timeout_s)
    is_chief, task_type, task_id = distribute.worker_role(strategy)
    return Runtime(strategy, is_chief, task_type, task_id,
                   distribute.worker_log(strategy, log, job, config.model_dir))


@dataclasses.dataclass(frozen=True)
class Data:
    """What the loop reads: `dataset_fn(epoch)` gives that epoch's batches, the same ones
    whenever it is called (a resumed epoch skips those already done)."""

    dataset_fn: DatasetFn
    steps_per_epoch: int  # batches available in an epoch
    num_classes: int
    ignore_label: int = 255
    palette: Sequence[Sequence[int]] | None = None


def registered_data(dataset: str, data_dir: str | None,
                    make: Callable[[Any, str], tuple[DatasetFn, int]],
                    too_few_batches: str) -> Data:
    """The data of a registered dataset.

    `make(descriptor, data_dir)` gives the job's (dataset_fn, batches an epoch); with none
    ValueError(too_few_batches). The data layer is imported here only, so that tests can run
    the loops without it.
    """
    from auto_deeplab_datasets import input_pipeline, registry

    descriptor = registry.get(dataset)
    dataset_fn, steps = make(descriptor, input_pipeline.resolve_data_dir(dataset, data_dir))
    if steps < 1:
        raise ValueError(too_few_batches)
    return Data(dataset_fn, steps, descriptor.num_classes, descriptor.ignore_label,
                descriptor.palette)


def custom_data(dataset_fn: DatasetFn, num_classes: int | None, steps_per_epoch: int | None,
                ignore_label: int = 255, palette: Sequence[Sequence[int]] | None = None
                ) -> Data:
    """Data given by the caller instead of a registered dataset (tests)."""
    if num_classes is None or steps_per_epoch is None:
        raise ValueError("a custom dataset_fn needs num_classes and steps_per_epoch")
    return Data(dataset_fn, steps_per_epoch, num_classes, ignore_label, palette)


def check_resume_config(path: str, current: dict[str, Any], write: bool,
                        check_settings: Callable[[dict[str, Any]], None],
                        check_run: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Refuses to resume a run with settings it must not change, then records `current`.

    When `path` exists (a run to resume), `check_settings(saved)` raises on a setting that
    changed, then the mixed-precision mode is checked (`precision.check_resume`), then
    `check_run(saved)` may refuse for another reason. With `write` (the chief), `current`
    is then written to `path`.
    """
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            saved = json.load(f)
        check_settings(saved)
        # Runs written before the flag existed ran in float32.
        precision.check_resume(saved.get("mixed_precision", "off"), current["mixed_precision"],
                               path)
        if check_run is not None:
            check_run(saved)
    if write:
        atomic_write.write_json(path, current)


class At(NamedTuple):
    """Where a loop is, just after a step."""

    epoch: int  # 0-based, the epoch the step belongs to
    step_in_epoch: int  # steps done in that epoch, this one included
    global_step: int  # steps done in all


class Trainer(abc.ABC):
    """What a job supplies to the `Controller`: its model, its step and its wording.

    The hooks run in this order: `train_begin` once (after restoring), then per epoch
    `train_loop_begin`, per batch `trace_message`, `train_step` and `log_progress`, after
    each save `checkpoint_saved`, and at the end of each epoch `train_loop_end`.
    """

    #: What the NaN/Inf guard raises.
    diverged_error: type[Exception] = Diverged
    #: The flags the NaN/Inf message suggests lowering, e.g. '--base_learning_rate'.
    divergence_hint: str = "learning rate"

    @abc.abstractmethod
    def checkpoint_items(self) -> dict[str, Any]:
        """The trackables to checkpoint (model, optimizers), by name in the checkpoint."""

    def restore_mismatch_message(self, path: str) -> str | None:
        """The error for a checkpoint `path` that lacks some of these weights (None: the
        AssertionError of `assert_existing_objects_matched` as it is)."""
        return None

    def train_begin(self, writer: summaries.SummaryWriter) -> None:
        """Called once, after the restore, with the run's TensorBoard writer."""

    def train_loop_begin(self, epoch: int) -> None:
        """Called before the batches of `epoch` (0-based)."""

    @abc.abstractmethod
    def trace_message(self, batch: Any) -> str | None:
        """A line to print before `train_step(batch)` when that call traces a step function
        (its first call builds the graph and takes longer), else None."""

    @abc.abstractmethod
    def train_step(self, batch: Any) -> dict[str, float]:
        """Runs one step on a distributed batch; returns its losses by name (the NaN/Inf
        guard checks every value)."""

    @abc.abstractmethod
    def describe_losses(self, losses: dict[str, float]) -> str:
        """The losses of a step as the NaN/Inf message shows them."""

    @abc.abstractmethod
    def log_progress(self, at: At, losses: dict[str, float],
                     meter: progress.ProgressMeter | None) -> None:
        """A progress report after the step `at`: a line, and its TensorBoard scalars.

        `meter` is None right after a step that traced, which has no rate yet: a trainer may
        print its loss, or nothing."""

    def checkpoint_saved(self, global_step: int) -> None:
        """Called after every checkpoint save (on every worker)."""

    def train_loop_end(self, epoch: int, global_step: int) -> None:
        """Called at the end of `epoch` (after its checkpoint when `by_epoch`)."""


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """The loop of one run.

    `by_epoch` True (the search, whose epochs end by decoding the architecture): the
    position is checkpointed as (epoch, step_in_epoch), every epoch ends with a checkpoint
    and a progress line, and `checkpoint_every_steps` counts the steps of the epoch. False
    (the retraining): the position is checkpointed as global_step, the cadence counts
    global steps, and epochs only order the data.
    """

    model_dir: str
    name: str  # names a non-chief worker's temporary checkpoint directory
    steps_per_epoch: int
    total_steps: int  # where the run ends
    max_steps: int | None  # where this invocation pauses (None: at the end)
    checkpoint_every_steps: int
    log_every_steps: int
    max_to_keep: int
    by_epoch: bool


@dataclasses.dataclass(frozen=True)
class LoopResult:
    global_step: int
    epoch: int  # epochs completed
    completed: bool  # global_step reached total_steps
    steps_run: int  # in this invocation
    elapsed_s: float
    checkpoint: str | None  # the chief's latest (on every worker)
    saved_at_end: bool  # the last step was saved when the loop stopped, not before


class _EpochPosition:
    """(epoch, step in epoch), checkpointed as 'epoch' and 'step_in_epoch'."""

    def __init__(self, steps_per_epoch: int):
        self.steps_per_epoch = steps_per_epoch
        # Host-side counters, outside the strategy scope: plain variables that int() can read
        # (the same value on every worker; a mirrored one has no __int__).
        self.epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")

    def checkpoint_items(self) -> dict[str, tf.Variable]:
        return {"epoch": self.epoch_var, "step_in_epoch": self.step_var}

    @property
    def epoch(self) -> int:
        return int(self.epoch_var)

    @property
    def step_in_epoch(self) -> int:
        return int(self.step_var)

    @property
    def global_step(self) -> int:
        return self.epoch * self.steps_per_epoch + self.step_in_epoch

    def advance(self) -> None:
        self.step_var.assign_add(1)

    def end_epoch(self) -> None:
        self.epoch_var.assign_add(1)
        self.step_var.assign(0)

    def resumed_at(self, total_steps: int) -> str:
        return f"epoch {self.epoch + 1}, step {self.step_in_epoch} of {self.steps_per_epoch}"

    def next_step(self) -> str:
        return f"epoch {self.epoch + 1}, step {self.step_in_epoch + 1}"


class _GlobalPosition:
    """The global step, checkpointed as 'global_step'; epochs follow from it."""

    def __init__(self, steps_per_epoch: int):
        self.steps_per_epoch = steps_per_epoch
        # Read and written only from Python, between steps: a plain variable, not a mirrored
        # one.
        self.step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")

    def checkpoint_items(self) -> dict[str, tf.Variable]:
        return {"global_step": self.step_var}

    @property
    def epoch(self) -> int:
        return self.global_step // self.steps_per_epoch

    @property
    def step_in_epoch(self) -> int:
        return self.global_step % self.steps_per_epoch

    @property
    def global_step(self) -> int:
        return int(self.step_var)

    def advance(self) -> None:
        self.step_var.assign_add(1)

    def end_epoch(self) -> None:
        pass  # the next epoch follows from the global step

    def resumed_at(self, total_steps: int) -> str:
        return f"step {self.global_step} of {total_steps}"

    def next_step(self) -> str:
        return f"step {self.global_step + 1}"


_Position = _EpochPosition | _GlobalPosition


class Controller:
    """Runs (or resumes) a `Trainer`'s loop under `runtime.strategy`; see the module
    docstring for what it does. One `run()` per controller."""

    def __init__(self, trainer: Trainer, runtime: Runtime, settings: LoopSettings,
                 dataset_fn: DatasetFn):
        self.trainer, self.runtime, self.settings = trainer, runtime, settings
        self.dataset_fn = dataset_fn
        s = settings
        self.stop_at = min(s.total_steps, s.max_steps or s.total_steps)
        self.position: _Position = (_EpochPosition if s.by_epoch else _GlobalPosition)(
            s.steps_per_epoch)
        self.checkpoint = tf.train.Checkpoint(**trainer.checkpoint_items(),
                                              **self.position.checkpoint_items())
        self.checkpoints: checkpointing.ChiefCheckpoints | None = None
        self.meter: progress.ProgressMeter | None = None
        self.saved_step: int | None = None  # of the latest checkpoint, None: none yet

    def run(self) -> LoopResult:
        """Restores, trains until `max_steps` or the end, checkpoints; returns where it
        stopped."""
        s, rt = self.settings, self.runtime
        self.checkpoints = checkpointing.ChiefCheckpoints(
            self.checkpoint, os.path.join(s.model_dir, checkpointing.CHECKPOINT_SUBDIR),
            rt.is_chief, temp_prefix=f"{s.name}_{rt.task_type}{rt.task_id}_ckpt_",
            max_to_keep=s.max_to_keep)
        try:
            return self._run()
        finally:
            self.checkpoints.close()

    def _restore(self) -> None:
        position, checkpoints = self.position, self.checkpoints
        latest = checkpoints.latest  # every worker resumes from the chief's
        if latest:
            status = self.checkpoint.restore(latest)
            try:
                status.assert_existing_objects_matched()
            except AssertionError:
                message = self.trainer.restore_mismatch_message(latest)
                if message is None:
                    raise
                status.expect_partial()  # the error below says it all; no per-variable warnings
                raise ValueError(message) from None
            self.runtime.log(f"resumed from {latest} at "
                             f"{position.resumed_at(self.settings.total_steps)}")
            self.saved_step = position.global_step
        checkpoints.check_resumed_together(self.runtime.strategy, position.global_step, latest)

    def _save(self) -> str:
        """Checkpoints the current step; returns the chief's path."""
        with self.meter.paused():  # the rate counts steps, not saving
            self.saved_step = self.position.global_step
            path = self.checkpoints.save(self.saved_step)
            self.trainer.checkpoint_saved(self.saved_step)
        return path

    def _run(self) -> LoopResult:
        s, position, trainer = self.settings, self.position, self.trainer
        self._restore()
        writer = summaries.SummaryWriter(
            os.path.join(s.model_dir, common.TRAIN_SUMMARY_SUBDIR) if self.runtime.is_chief
            else None)
        trainer.train_begin(writer)
        self.meter = progress.ProgressMeter(self.stop_at, s.log_every_steps,
                                            done=position.global_step)
        start = time.perf_counter()
        steps_run = 0
        while position.global_step < self.stop_at:
            epoch, in_epoch = position.epoch, position.step_in_epoch
            trainer.train_loop_begin(epoch)
            data = self.dataset_fn(epoch).take(s.steps_per_epoch).skip(in_epoch)
            data = data.take(self.stop_at - position.global_step)
            for batch in self.runtime.strategy.experimental_distribute_dataset(data):
                in_epoch += 1
                self._step(batch, epoch, in_epoch)
                steps_run += 1
            if position.global_step >= self.stop_at and in_epoch < s.steps_per_epoch:
                break  # paused within the epoch
            position.end_epoch()
            if s.by_epoch:
                self._save()
            with self.meter.paused():
                trainer.train_loop_end(epoch, position.global_step)
        saved_at_end = self.saved_step != position.global_step
        path = self._save() if saved_at_end else self.checkpoints.latest
        writer.flush()
        return LoopResult(global_step=position.global_step, epoch=position.epoch,
                          completed=position.global_step >= s.total_steps,
                          steps_run=steps_run, elapsed_s=time.perf_counter() - start,
                          checkpoint=path, saved_at_end=saved_at_end)

    def _step(self, batch: Any, epoch: int, in_epoch: int) -> None:
        """One step, the `in_epoch`-th of `epoch`: guard, count, report, checkpoint."""
        s, position, trainer, meter = self.settings, self.position, self.trainer, self.meter
        trace = trainer.trace_message(batch)
        if trace is not None:
            self.runtime.log(trace)
        losses = trainer.train_step(batch)
        if not all(np.isfinite(v) for v in losses.values()):
            last = self.checkpoints.latest or "none (nothing was saved yet)"
            raise trainer.diverged_error(
                f"loss became NaN or Inf at {position.next_step()} "
                f"({trainer.describe_losses(losses)}); stopping. Nothing from this step was "
                f"saved; the last good checkpoint is {last}. Try a lower "
                f"{trainer.divergence_hint}.")
        position.advance()
        step = position.global_step
        at = At(epoch, in_epoch, step)
        epoch_end = in_epoch == s.steps_per_epoch
        if trace is not None:
            meter.restart_clock(step)  # the rate should not include tracing
        if meter.step(step) or (s.by_epoch and epoch_end):
            trainer.log_progress(at, losses, meter)
        elif trace is not None:
            trainer.log_progress(at, losses, None)
        # The last step is saved after the loop, and with by_epoch so is an epoch's last.
        if step < self.stop_at and not (s.by_epoch and epoch_end) and \
                (in_epoch if s.by_epoch else step) % s.checkpoint_every_steps == 0:
            self._save()
