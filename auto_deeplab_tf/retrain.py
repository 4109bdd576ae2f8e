"""Retraining a found architecture from scratch: what `python -m train.retrain` runs.

`run_retrain(RetrainConfig(...))`

* builds `AutoDeepLab` and its optimizer (the paper's SGD with momentum, or Adam for short
  runs; poly learning rate from `base_learning_rate` with power 0.9 to 0 at `train_steps`)
  inside the strategy scope;
* minimises pixel cross-entropy (the ignore label excluded) plus L2 weight decay
  (`weight_decay` * sum(w^2) / 2 over every convolution kernel, as slim's l2_regularizer);
  both are divided by the number of replicas because the replicas' gradients are summed;
* ramps scheduled drop path in linearly from step 0 to `train_steps`;
* writes MODEL_DIR/retrain_config.json (with the architecture, so evaluate and export need only
  MODEL_DIR), checkpoints to MODEL_DIR/checkpoints every `checkpoint_every_steps` and at the
  end, and resumes from the latest one (model, optimizer, step; the data order is a function of
  (seed, epoch), so the resumed epoch is rebuilt and its finished batches skipped);
* stops on a NaN/Inf loss before saving anything from that step;
* logs loss / learning rate / steps per second to TensorBoard (MODEL_DIR) and, at each
  checkpoint, the input, ground truth and prediction of a few training crops in the dataset's
  palette.

The loop itself (resume, checkpoint cadence, NaN guard, progress, --max_steps) is
`runner.Controller`'s; this module supplies the training step and the network, which
`trained_model.build_model` builds from the same retrain_config.json that evaluate, export
and predict load it from.

With --strategy=multi_worker (MultiWorkerMirroredStrategy; README, "Running on several
machines") every worker runs this same loop on its shard of each global batch. Only the chief
writes MODEL_DIR (retrain_config.json, checkpoints, TensorBoard); the others save their
checkpoints, which involves collectives, to a temporary local directory deleted right after,
and every worker resumes from the chief's MODEL_DIR/checkpoints, so MODEL_DIR must be storage
every worker can read (NFS, GCS).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from auto_deeplab_tf import architecture as architecture_lib
from auto_deeplab_tf import checkpointing
from auto_deeplab_tf import distribute
from auto_deeplab_tf import losses as losses_lib
from auto_deeplab_tf import optimizers
from auto_deeplab_tf import palette as palette_lib
from auto_deeplab_tf import precision
from auto_deeplab_tf import progress as progress_lib
from auto_deeplab_tf import runner
from auto_deeplab_tf import summaries
from auto_deeplab_tf import trained_model
from auto_deeplab_tf.fixed_network import MODEL_SIZES

# sgd: the paper's (with --momentum). adam: for short runs such as the demo, where SGD stays
# on the background-only plateau for thousands of steps.
OPTIMIZERS = optimizers.WEIGHT_OPTIMIZERS
LEARNING_POWER = 0.9

# Settings that must not change when a run resumes: they define the model, the data order or
# the schedule. (mixed_precision may change between off and bf16: `precision.check_resume`.)
_RESUME_KEYS = ("dataset", "filter_multiplier", "stem_filters", "aspp_filters",
                "decoder_filters", "batch_size", "crop_size", "min_scale", "max_scale", "seed",
                "train_steps", "num_classes", "optimizer")


class RetrainDiverged(runner.Diverged):
    """The loss became NaN or Inf."""


@dataclasses.dataclass
class RetrainConfig:
    """Settings of one retraining run; defaults are the paper's (SPEC section 4)."""

    model_dir: str
    architecture: str = "autodeeplab"  # 'autodeeplab' or a JSON file from search / decode
    dataset: str = "cityscapes"
    data_dir: str | None = None
    filter_multiplier: int = MODEL_SIZES["S"]
    stem_filters: tuple[int, int, int] = (64, 64, 128)
    aspp_filters: int = 256
    decoder_filters: int = 256
    crop_size: int = 769
    batch_size: int = 8
    min_scale: float = 0.5
    max_scale: float = 2.0
    train_steps: int = 1_500_000
    base_learning_rate: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 4e-5
    drop_path_keep_prob: float = 1.0
    # BN moving-average decay; the paper's 0.9997 needs thousands of steps to settle, so
    # short runs (the demo) use a smaller one or their inference-mode outputs are garbage.
    bn_momentum: float = 0.9997
    seed: int = 0
    strategy: str = "default"
    checkpoint_every_steps: int = 1000
    log_every_steps: int = 100
    max_steps: int | None = None  # stop (after checkpointing) at this step; rerun to continue
    num_summary_images: int = 3
    deterministic: bool = False
    jit_compile: bool = False
    # off (float32), bf16 or fp16 (with loss scaling) for training: `precision`. Evaluation,
    # prediction and export build the network in float32 from the same float32 weights.
    mixed_precision: str = "off"
    collective_communication: str = "auto"  # multi_worker: auto, ring or nccl
    collective_timeout_s: float = distribute.DEFAULT_COLLECTIVE_TIMEOUT_S  # 0: unbounded
    num_classes: int | None = None  # filled in from the dataset

    def validate(self) -> None:
        precision.validate(self.mixed_precision)
        positive = ("filter_multiplier", "aspp_filters", "decoder_filters", "crop_size",
                    "batch_size", "train_steps", "checkpoint_every_steps", "log_every_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if len(self.stem_filters) != 3 or min(self.stem_filters) < 1:
            raise ValueError(f"--stem_filters must be three positive integers, got "
                             f"{list(self.stem_filters)}")
        if not 0 < self.min_scale <= self.max_scale:
            raise ValueError(f"--min_scale and --max_scale must satisfy 0 < min_scale <= "
                             f"max_scale, got {self.min_scale} and {self.max_scale}")
        if not self.base_learning_rate > 0:
            raise ValueError(f"--base_learning_rate must be > 0, got {self.base_learning_rate}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer={self.optimizer}: unknown optimizer, expected one of "
                             f"{', '.join(OPTIMIZERS)}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"--weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 < self.drop_path_keep_prob <= 1:
            raise ValueError(f"--drop_path_keep_prob must be in (0, 1], got "
                             f"{self.drop_path_keep_prob}")
        if not 0 <= self.bn_momentum < 1:
            raise ValueError(f"--bn_momentum must be in [0, 1), got {self.bn_momentum}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"--max_steps must be >= 1, got {self.max_steps}")
        distribute.validate_options(self.strategy, self.collective_communication,
                                    self.collective_timeout_s)


@dataclasses.dataclass
class RetrainResult:
    global_step: int
    completed: bool  # False when stopped early by max_steps
    checkpoint: str | None  # the chief's (on every worker)
    last_loss: float
    model: keras.Model | None = None  # the trained network (this worker's copy)


def load_architecture(spec: str) -> architecture_lib.Architecture:
    """The architecture named by --architecture, with a message naming the flag on error."""
    try:
        return architecture_lib.get_architecture(spec)
    except (ValueError, OSError, KeyError, TypeError) as e:
        message = str(e)
        # Errors of Architecture.load start with the path, which the flag already shows.
        if message.startswith(f"{spec}: "):
            message = message[len(spec) + 2:]
        raise ValueError(f"--architecture={spec}: {message}") from e


def decayed_variables(model: keras.Model) -> list:
    """The convolution kernels (every rank-4 trainable weight)."""
    return [v for v in model.trainable_variables if len(v.shape) == 4]


def resume_config_differences(saved: dict[str, Any], config_dict: dict[str, Any]
                              ) -> list[str]:
    """The keys of `_RESUME_KEYS` and 'architecture_spec' whose value in `saved` (a run's
    retrain_config.json) differs from `config_dict` (the same layout): a run resumes, or its
    results are reused, only when this is empty. A key the saved file lacks (written by an
    older version) is not held against it."""
    return [key for key in _RESUME_KEYS + ("architecture_spec",)
            if key in saved and saved[key] != config_dict[key]]


def _check_resume_config(config_dict: dict, model_dir: str, write: bool = True) -> None:
    path = os.path.join(model_dir, trained_model.CONFIG_FILENAME)

    def check_settings(saved: dict) -> None:
        changed = resume_config_differences(saved, config_dict)
        if changed:
            key = changed[0]
            flag = "architecture" if key == "architecture_spec" else key
            shown = config_dict["architecture"] if key == "architecture_spec" \
                else config_dict[key]
            raise ValueError(
                f"{path}: this run has --{flag}={shown} but {model_dir} holds a retraining "
                f"run with a different {flag} ({saved.get(flag, saved[key])}); resume with "
                "the same settings or use another --model_dir")

    runner.check_resume_config(path, config_dict, write, check_settings)


def make_train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                    strategy: tf.distribute.Strategy, num_classes: int, ignore_label: int,
                    weight_decay: float, train_steps: int, jit_compile: bool = False
                    ) -> Callable:
    """A traced function running one training step on a distributed (images, labels) batch;
    returns (cross-entropy, weight decay loss) of the global batch.

    With several replicas it is the single-device step on the global batch: the BNs take
    the global batch's statistics (`ops.SyncBatchNormalization`), and each replica's
    cross-entropy is its pixels' share of the global mean (divided by the global count of
    valid pixels), so the gradients the optimizer sums over replicas are the global ones."""
    num_replicas = strategy.num_replicas_in_sync
    decayed = decayed_variables(model)
    trainable = model.trainable_variables

    def replica_step(images, labels):
        progress = tf.minimum(1.0, tf.cast(optimizer.iterations, tf.float32) / train_steps)
        num_valid = losses_lib.global_count_valid(labels, ignore_label, num_classes)
        model.drop_path_progress.assign(progress)
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            ce = losses_lib.masked_cross_entropy(labels, logits, ignore_label, num_valid,
                                                 num_classes=num_classes)
            # The decay term is the same on every replica and summed with the gradients.
            l2 = weight_decay * tf.add_n([tf.nn.l2_loss(v) for v in decayed]) / num_replicas
            loss = ce + l2
            # Times the loss scale under fp16 (a LossScaleOptimizer, which divides it out
            # of the gradients it applies); the loss itself otherwise.
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, trainable)
        optimizer.apply_gradients(zip(grads, trainable))
        return tf.stack([ce, l2])

    @tf.function(jit_compile=jit_compile)
    def train_step(batch):
        images, labels = batch
        losses = strategy.run(replica_step, args=(images, labels))
        # One all-reduce for both: under multi_worker each timed collective op holds a
        # sleeping thread for --collective_timeout_s (distribute.py).
        losses = strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)
        return losses[0], losses[1]

    return train_step


def _write_images(writer: summaries.SummaryWriter, step: int, images, labels, predictions,
                  palette) -> None:
    """Training crops, their ground truth and the predictions, in the dataset's palette."""
    with writer.writer.as_default(step=step):
        tf.summary.image("train/image", palette_lib.denormalize_image(images),
                         max_outputs=images.shape[0])
        tf.summary.image("train/ground_truth", palette_lib.colorize_tf(labels, palette),
                         max_outputs=images.shape[0])
        tf.summary.image("train/prediction", palette_lib.colorize_tf(predictions, palette),
                         max_outputs=images.shape[0])
    writer.flush()


class _RetrainTrainer(runner.Trainer):
    """The retraining's part of the loop: the training step, and training crops with their
    predictions at every checkpoint."""

    diverged_error = RetrainDiverged
    divergence_hint = "--base_learning_rate"

    def __init__(self, config: RetrainConfig, model: keras.Model,
                 optimizer: keras.optimizers.Optimizer,
                 schedule: keras.optimizers.schedules.LearningRateSchedule,
                 rt: runner.Runtime, data: runner.Data):
        self.config, self.model, self.optimizer, self.schedule = config, model, optimizer, schedule
        self.rt, self.data = rt, data
        self.step_fn: Callable | None = None
        self.writer: summaries.SummaryWriter | None = None
        self.traced = False
        self.last_batch = None
        self.loss = float("nan")

    def checkpoint_items(self) -> dict:
        return dict(model=checkpointing.VariableBundle.for_model(self.model),
                    optimizer=checkpointing.VariableBundle(self.optimizer.variables))

    def train_begin(self, writer: summaries.SummaryWriter) -> None:
        config = self.config
        self.writer = writer
        self.step_fn = make_train_step(self.model, self.optimizer, self.rt.strategy,
                                       self.data.num_classes, self.data.ignore_label,
                                       config.weight_decay, config.train_steps,
                                       config.jit_compile)

    def trace_message(self, batch) -> str | None:
        if self.traced:
            return None
        strategy = self.rt.strategy
        local = strategy.experimental_local_results(batch[0])[0].shape[0]
        return (f"tracing the training step ({local} images a replica, "
                f"{strategy.num_replicas_in_sync} replicas; the first step builds the graph "
                "and takes longer)...")

    def train_step(self, batch) -> dict[str, float]:
        ce, l2 = self.step_fn(batch)
        self.traced = True
        ce, l2 = float(ce), float(l2)
        self.loss = ce + l2
        self.last_batch = batch
        return {"cross_entropy": ce, "weight_decay": l2, "loss": self.loss}

    def describe_losses(self, losses: dict[str, float]) -> str:
        return f"cross-entropy {losses['cross_entropy']}, weight decay {losses['weight_decay']}"

    def log_progress(self, at: runner.At, losses: dict[str, float],
                     meter: progress_lib.ProgressMeter | None) -> None:
        step, train_steps, loss = at.global_step, self.config.train_steps, losses["loss"]
        if meter is None:
            self.rt.log(f"step {step}/{train_steps} | loss {loss:.4f}")
            return
        ce, l2 = losses["cross_entropy"], losses["weight_decay"]
        lr = float(self.schedule(step - 1))
        epoch = step // self.data.steps_per_epoch + 1
        self.rt.log(f"step {step}/{train_steps} (epoch {epoch}) | "
                    f"loss {loss:.4f} (xent {ce:.4f}) | lr {lr:.5f} | {meter.summary()}")
        self.writer.scalars(step, {"train/loss": loss, "train/cross_entropy": ce,
                                   "train/weight_decay_loss": l2, "train/learning_rate": lr,
                                   "train/steps_per_second": meter.rate,
                                   "train/drop_path_progress": min(1.0, step / train_steps)})

    def checkpoint_saved(self, global_step: int) -> None:
        config = self.config
        if self.rt.is_chief and self.last_batch is not None and config.num_summary_images > 0:
            images, labels = (self.rt.strategy.experimental_local_results(t)[0]
                              for t in self.last_batch)
            images = images[:config.num_summary_images]
            labels = labels[:config.num_summary_images]
            predictions = tf.argmax(self.model(images, training=False), axis=-1)
            _write_images(self.writer, global_step, images, labels, predictions,
                          self.data.palette)


def run_retrain(config: RetrainConfig,
                dataset_fn: Callable[[int], tf.data.Dataset] | None = None,
                num_classes: int | None = None,
                steps_per_epoch: int | None = None,
                ignore_label: int = 255,
                palette=None,
                log: Callable[[str], None] = print) -> RetrainResult:
    """Runs (or resumes) a retraining.

    `dataset_fn(epoch)` (one epoch of (images, labels) batches, a function of the epoch only),
    `num_classes` and `steps_per_epoch` replace the registered dataset (used by tests).
    """
    config.validate()
    arch = load_architecture(config.architecture)
    model_dir = config.model_dir
    rt = runner.start(config, "retraining", log)
    log = rt.log

    if dataset_fn is None:
        def make(descriptor, data_dir):
            from auto_deeplab_datasets import input_pipeline

            def dataset_fn(epoch):
                return input_pipeline.retrain_dataset(
                    descriptor, data_dir, split=descriptor.train_split,
                    batch_size=config.batch_size, crop_size=config.crop_size,
                    min_scale=config.min_scale, max_scale=config.max_scale, seed=config.seed,
                    epoch=epoch)

            return dataset_fn, input_pipeline.retrain_steps_per_epoch(
                descriptor, data_dir, config.batch_size, split=descriptor.train_split)

        data = runner.registered_data(
            config.dataset, config.data_dir, make,
            f"--batch_size={config.batch_size} is larger than the {config.dataset} train "
            "split")
    else:
        data = runner.custom_data(dataset_fn, num_classes, steps_per_epoch, ignore_label,
                                  palette)
    if data.palette is None:
        rng = np.random.default_rng(0)
        data = dataclasses.replace(data, palette=[
            tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(data.num_classes)])
    strategy = rt.strategy
    if config.batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f"--batch_size={config.batch_size} must be a multiple of the "
                         f"{strategy.num_replicas_in_sync} replicas")
    config.num_classes = int(data.num_classes)
    config_dict = dataclasses.asdict(config)
    config_dict["stem_filters"] = list(config.stem_filters)
    config_dict["architecture_spec"] = arch.to_dict()
    config_dict["ignore_label"] = int(data.ignore_label)
    # Created only now, once the flags and the data have been checked: a run that fails
    # before this leaves no empty --model_dir behind.
    tf.io.gfile.makedirs(model_dir)
    _check_resume_config(config_dict, model_dir, write=rt.is_chief)

    with strategy.scope():
        model = trained_model.build_model(config_dict, config.mixed_precision)
        schedule = keras.optimizers.schedules.PolynomialDecay(
            config.base_learning_rate, decay_steps=config.train_steps,
            end_learning_rate=0.0, power=LEARNING_POWER)
        optimizer = optimizers.weight_optimizer(config.optimizer, schedule, config.momentum,
                                                name=config.optimizer)
        optimizer = precision.wrap_optimizer(optimizer, config.mixed_precision)
        optimizer.build(model.trainable_variables)
    trainer = _RetrainTrainer(config, model, optimizer, schedule, rt, data)
    settings = runner.LoopSettings(
        model_dir=model_dir, name="retrain", steps_per_epoch=data.steps_per_epoch,
        total_steps=config.train_steps, max_steps=config.max_steps,
        checkpoint_every_steps=config.checkpoint_every_steps,
        log_every_steps=config.log_every_steps, max_to_keep=5, by_epoch=False)
    loop = runner.Controller(trainer, rt, settings, data.dataset_fn).run()
    if loop.completed:
        log(f"retraining finished: {loop.global_step} steps ({loop.steps_run} in this run, "
            f"{loop.elapsed_s:.0f} s); checkpoint {loop.checkpoint}")
    else:
        log(f"stopped at step {loop.global_step} of {config.train_steps} (--max_steps) after "
            f"{loop.elapsed_s:.0f} s; checkpoint {loop.checkpoint}. Re-run the same command to "
            "resume.")
    return RetrainResult(global_step=loop.global_step, completed=loop.completed,
                         checkpoint=loop.checkpoint, last_loss=trainer.loss, model=model)
