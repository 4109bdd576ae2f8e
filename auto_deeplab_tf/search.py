"""The architecture search loop: bilevel training, checkpoints, decoding, TensorBoard.

`run_search(SearchConfig(...))` is what `python -m train.search` runs. It

* builds the `SearchModel` and both optimizers inside the strategy scope;
* resumes from MODEL_DIR/checkpoints when one exists (weights, alpha, beta, both optimizer
  states, epoch and step within the epoch; the data order is a function of (seed, epoch),
  so the resumed epoch is rebuilt and its finished batches skipped);
* checkpoints every `checkpoint_every_steps` steps and at every epoch end;
* stops on a NaN/Inf loss before saving anything from that step;
* decodes alpha/beta after every epoch, writes MODEL_DIR/architecture.json and
  MODEL_DIR/architectures/epoch_NNN.json, and says when the architecture changed;
* logs scalars, softmax(alpha), the beta trellis and the genotype to TensorBoard.

The loop itself (resume, checkpoint cadence, NaN guard, progress, --max_steps) is
`runner.Controller`'s; this module supplies the bilevel step and what ends an epoch.

With --strategy=multi_worker (MultiWorkerMirroredStrategy; README, "Running on several
machines") every worker runs this same loop on its shard of each global batch. Only the chief writes
MODEL_DIR (checkpoints, search_config.json, search_split.json, TensorBoard, architecture
JSON); the others save their checkpoints, which involves collectives, to a temporary
local directory deleted right after, and every worker resumes from the chief's
MODEL_DIR/checkpoints, so MODEL_DIR must be storage every worker can read (NFS, GCS).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from auto_deeplab_tf import checkpointing
from auto_deeplab_tf import common
from auto_deeplab_tf import decoding
from auto_deeplab_tf import distribute
from auto_deeplab_tf import metrics as metrics_lib
from auto_deeplab_tf import mixed_op
from auto_deeplab_tf import optimizers
from auto_deeplab_tf import precision
from auto_deeplab_tf import progress
from auto_deeplab_tf import runner
from auto_deeplab_tf import search_space
from auto_deeplab_tf import summaries
from auto_deeplab_tf import visualize
from auto_deeplab_tf.architecture import Architecture, origin_metadata
from auto_deeplab_tf.search_model import SearchModel

CONFIG_FILENAME = "search_config.json"
EPOCH_ARCH_SUBDIR = "architectures"

# Settings that must not change when a run resumes: they define the model or the data.
# (mixed_precision may change between off and bf16: `precision.check_resume`.)
# (recompute_layers may: it changes what the backward pass keeps, not what it computes.)
_RESUME_KEYS = ("dataset", "filter_multiplier", "num_layers", "num_blocks", "num_levels",
                "loop_uniform_layers", "batch_size", "crop_size", "scale", "seed", "epochs",
                "steps_per_epoch", "weight_optimizer", "partial_channels")
# Resume keys added after search runs existed, with the value those runs had: a saved
# config without the key means that value.
RESUME_KEYS_ADDED_LATER = {"partial_channels": 1}

# Stamped into search_config.json. Raise it when a checkpoint written before a change would
# resume differently from a run started after it. 2: the fidelity fixes of issue #11 (the
# multi-replica step made the single-device step on the global batch; alpha, beta and the
# head's kernels drawn independently). Configs without it are version 1.
SEARCH_VERSION = 2
_VERSION_KEY = "search_version"

# The paper's SGD, or Adam: on small data SGD at the paper's rate can sit on the
# background-only plateau for longer than a short search lasts (README, "The demo search").
WEIGHT_OPTIMIZERS = optimizers.WEIGHT_OPTIMIZERS


class SearchDiverged(runner.Diverged):
    """A loss became NaN or Inf."""


@dataclasses.dataclass
class SearchConfig:
    """Settings of one search run; defaults are the paper's (SPEC section 2)."""

    model_dir: str
    dataset: str = "cityscapes"
    data_dir: str | None = None
    epochs: int = 40
    arch_start_epoch: int = 20
    batch_size: int = 2
    crop_size: int = 321
    scale: float = 0.5
    filter_multiplier: int = 8
    num_layers: int = 12
    num_blocks: int = 5
    num_levels: int = 4
    # Layers num_levels+1..L (3..L for one level) as one loop over stacked weights (README, Performance): less
    # memory and half the tracing time, for ~10% more step time on CPU than unrolled.
    loop_uniform_layers: bool = True
    # Recompute each layer of the supernet in the backward pass instead of keeping its
    # activations (README, Performance): less memory, one more forward pass of the layers.
    # The same maths, so a run may resume with the other setting.
    recompute_layers: bool = False
    # PC-DARTS's partial channels (README, "Partial-channel search"): the mixed ops see 1/K
    # of the channels. 1 is the paper's search.
    partial_channels: int = 1
    weight_optimizer: str = "sgd"
    weight_lr: float = 0.025
    weight_lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    arch_lr: float = 3e-3
    arch_weight_decay: float = 1e-3
    seed: int = 0
    strategy: str = "default"
    steps_per_epoch: int | None = None  # cap on batches per epoch (None: the whole half)
    checkpoint_every_steps: int = 100
    log_every_steps: int = 10
    max_steps: int | None = None  # stop (after checkpointing) once this many steps are done
    deterministic: bool = False
    jit_compile: bool = False
    # off (float32), bf16 or fp16 (with loss scaling): `precision`.
    mixed_precision: str = "off"
    collective_communication: str = "auto"  # multi_worker: auto, ring or nccl
    collective_timeout_s: float = distribute.DEFAULT_COLLECTIVE_TIMEOUT_S  # 0: unbounded

    def validate(self) -> None:
        precision.validate(self.mixed_precision)
        positive = ("epochs", "batch_size", "crop_size", "filter_multiplier", "num_layers",
                    "num_blocks", "num_levels", "checkpoint_every_steps", "log_every_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.weight_optimizer not in WEIGHT_OPTIMIZERS:
            raise ValueError(f"--weight_optimizer must be one of {', '.join(WEIGHT_OPTIMIZERS)}, "
                             f"got {self.weight_optimizer!r}")
        if not 0 <= self.arch_start_epoch:
            raise ValueError(f"--arch_start_epoch must be >= 0, got {self.arch_start_epoch}")
        if not 0 < self.scale <= 4:
            raise ValueError(f"--scale must be in (0, 4], got {self.scale}")
        for name in ("steps_per_epoch", "max_steps"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"--{name} must be >= 1, got {v}")
        distribute.validate_options(self.strategy, self.collective_communication,
                                    self.collective_timeout_s)
        mixed_op.check_partial_channels(self.partial_channels, self.filter_multiplier,
                                        self.num_levels)


@dataclasses.dataclass
class SearchResult:
    architecture: Architecture
    metadata: dict
    completed: bool  # False when stopped early by max_steps
    global_step: int
    alpha: np.ndarray | None = None  # the final architecture parameters
    beta: np.ndarray | None = None


def _unfinished_checkpoint(model_dir: str, epochs: int) -> str | None:
    """The latest checkpoint of MODEL_DIR if it stops before `epochs` epochs, else None."""
    latest = tf.train.latest_checkpoint(
        os.path.join(model_dir, checkpointing.CHECKPOINT_SUBDIR))
    if latest is None:
        return None
    reader = tf.train.load_checkpoint(latest)
    return latest if int(reader.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE")) < epochs \
        else None


def _check_resume_config(config: SearchConfig, model_dir: str, write: bool = True) -> None:
    path = os.path.join(model_dir, CONFIG_FILENAME)
    current = dataclasses.asdict(config)
    current[_VERSION_KEY] = SEARCH_VERSION

    def check_settings(saved: dict) -> None:
        for key in _RESUME_KEYS:
            if key not in saved and key not in RESUME_KEYS_ADDED_LATER:
                continue
            before = saved.get(key, RESUME_KEYS_ADDED_LATER.get(key))
            if before != current[key]:
                raise ValueError(
                    f"{path}: this run has --{key}={current[key]} but {model_dir} holds a "
                    f"search with --{key}={before}; resume with the same settings or use "
                    "another --model_dir")

    def check_version(saved: dict) -> None:
        version = saved.get(_VERSION_KEY, 1)
        # A finished search only reports its result again, which is safe to do.
        unfinished = _unfinished_checkpoint(model_dir, config.epochs) \
            if version != SEARCH_VERSION else None
        if unfinished is not None:
            raise ValueError(
                f"{unfinished}: this unfinished search was started by another version of "
                f"the search ({_VERSION_KEY} {version} in {path}, this code is "
                f"{SEARCH_VERSION}), whose steps differ from this one's; resuming would mix "
                "the two. Start a new --model_dir, or finish it with the version that "
                "started it")

    runner.check_resume_config(path, current, write, check_settings, check_version)


def build_search_model(config: SearchConfig, num_classes: int, total_steps: int,
                       ignore_label: int = 255, sync_bn: bool = True) -> SearchModel:
    """The search model with both optimizers built; call inside the strategy scope.
    `sync_bn`: as `SearchModel`'s (False only to measure what synchronised BN costs)."""
    model = SearchModel(num_classes=num_classes, filter_multiplier=config.filter_multiplier,
                        num_blocks=config.num_blocks, num_layers=config.num_layers,
                        num_levels=config.num_levels,
                        loop_uniform_layers=config.loop_uniform_layers,
                        recompute_layers=config.recompute_layers,
                        partial_channels=config.partial_channels,
                        seed=config.seed, ignore_label=ignore_label, sync_bn=sync_bn,
                        name="supernet",
                        dtype=precision.dtype_policy(config.mixed_precision))
    model.build((None, None, None, 3))
    schedule = keras.optimizers.schedules.CosineDecay(
        config.weight_lr, decay_steps=max(1, total_steps),
        alpha=config.weight_lr_min / config.weight_lr)
    weight_optimizer = optimizers.weight_optimizer(
        config.weight_optimizer, schedule, config.momentum,
        name=f"weight_{config.weight_optimizer}")
    arch_optimizer = keras.optimizers.Adam(config.arch_lr, name="arch_adam")
    # fp16: both under a loss scale of their own (search_model's docstring says why).
    weight_optimizer = precision.wrap_optimizer(weight_optimizer, config.mixed_precision)
    arch_optimizer = precision.wrap_optimizer(arch_optimizer, config.mixed_precision)
    model.configure_search(weight_optimizer, arch_optimizer,
                           weight_decay=config.weight_decay,
                           arch_weight_decay=config.arch_weight_decay)
    return model


def unchanged_since(since: dict, previous: Architecture | None, current: Architecture,
                    epoch: int) -> dict:
    """The first epochs since which the decoded architecture and its path are unchanged.

    `since` holds the values after the previous epoch (`unchanged_since_epoch`,
    `path_unchanged_since_epoch`; None when unknown), `previous` that epoch's architecture,
    `current` the one decoded at the end of `epoch` (1-based).
    """
    changed = {"unchanged_since_epoch": previous is None or current != previous,
               "path_unchanged_since_epoch": previous is None or current.path != previous.path}
    return {key: epoch if changed[key] or since.get(key) is None else since[key]
            for key in changed}


def make_step_function(model: SearchModel, strategy: tf.distribute.Strategy,
                       update_arch: bool, jit_compile: bool = False) -> Callable:
    """A traced function running one bilevel step on a distributed batch; returns the mean
    (loss A, loss B) over replicas (loss B is 0 when alpha/beta are not updated)."""

    def replica_step(batch):
        model.train_step(batch, update_arch=update_arch)

    @tf.function(jit_compile=jit_compile)
    def step(batch):
        strategy.run(replica_step, args=(batch,))
        # Running means over the epoch: a NaN in any step shows up here at once.
        return model.loss_a.result(), model.loss_b.result()

    return step


def _write_architecture(writer: summaries.SummaryWriter, step: int, alpha_w: np.ndarray,
                        beta_w: np.ndarray, arch: Architecture) -> None:
    """softmax(alpha), the beta trellis and the genotype, to TensorBoard."""
    with writer.writer.as_default(step=step):
        tf.summary.image("architecture/softmax_alpha", visualize.alpha_heatmap(alpha_w)[None])
        tf.summary.image("architecture/beta_trellis",
                         visualize.trellis_image(beta_w, arch.path)[None])
        tf.summary.text("architecture/genotype", "```\n" + arch.to_text() + "\n```")
    writer.flush()


class _SearchTrainer(runner.Trainer):
    """The search's part of the loop: the bilevel step, and decoding at every epoch end."""

    diverged_error = SearchDiverged
    divergence_hint = "--weight_lr or --arch_lr"

    def __init__(self, config: SearchConfig, model: SearchModel, rt: runner.Runtime,
                 steps_per_epoch: int):
        self.config, self.model, self.steps_per_epoch = config, model, steps_per_epoch
        self.strategy, self.is_chief, self.log = rt.strategy, rt.is_chief, rt.log
        self.step_fns: dict[bool, Callable] = {}  # by update_arch
        self.traced: set[bool] = set()
        self.update_arch = False
        self.writer: summaries.SummaryWriter | None = None
        self.arch_path = os.path.join(config.model_dir, common.ARCHITECTURE_FILENAME)
        self.previous_arch: Architecture | None = None
        # The first epoch of the current run of identical architectures (and of identical
        # paths: the path can settle while near-ties in alpha still flip an op of the cell).
        self.since = {"unchanged_since_epoch": None, "path_unchanged_since_epoch": None}

    def checkpoint_items(self) -> dict:
        model = self.model
        return dict(
            model=checkpointing.VariableBundle(model.variables),
            weight_optimizer=checkpointing.VariableBundle(model.weight_optimizer.variables),
            arch_optimizer=checkpointing.VariableBundle(model.arch_optimizer.variables))

    def restore_mismatch_message(self, path: str) -> str:
        return (f"{path}: the checkpoint does not hold the weights of the supernet these "
                "settings build (it was written by another version of the code, whose "
                "weight layout differs); start a new --model_dir")

    def train_begin(self, writer: summaries.SummaryWriter) -> None:
        self.writer = writer
        if tf.io.gfile.exists(self.arch_path):
            self.previous_arch = Architecture.load(self.arch_path)
            with tf.io.gfile.GFile(self.arch_path) as f:
                saved = json.load(f).get(common.ARCH_METADATA, {})
            self.since = {key: saved.get(key) for key in self.since}

    def train_loop_begin(self, epoch: int) -> None:
        self.update_arch = epoch >= self.config.arch_start_epoch
        if self.update_arch not in self.step_fns:
            self.step_fns[self.update_arch] = make_step_function(
                self.model, self.strategy, self.update_arch, self.config.jit_compile)
        for m in self.model.search_metrics:
            m.reset_state()

    def trace_message(self, batch) -> str | None:
        if self.update_arch in self.traced:
            return None
        return (f"tracing the {'bilevel' if self.update_arch else 'weight-only'} step "
                "(its first call builds the graph and takes longer)...")

    def train_step(self, batch) -> dict[str, float]:
        loss_a, loss_b = self.step_fns[self.update_arch](batch)
        self.traced.add(self.update_arch)
        return {"loss_a": float(loss_a), "loss_b": float(loss_b)}

    def describe_losses(self, losses: dict[str, float]) -> str:
        return f"loss A {losses['loss_a']}, loss B {losses['loss_b']}"

    def log_progress(self, at: runner.At, losses: dict[str, float],
                     meter: progress.ProgressMeter | None) -> None:
        if meter is None:
            return  # no line without a rate
        config, loss_a, loss_b = self.config, losses["loss_a"], losses["loss_b"]
        lr = float(self.model.weight_optimizer.learning_rate)
        self.log(f"epoch {at.epoch + 1}/{config.epochs} step {at.step_in_epoch}/"
                 f"{self.steps_per_epoch} | loss A {loss_a:.4f}"
                 + (f" B {loss_b:.4f}" if self.update_arch else "")
                 + f" | lr {lr:.5f} | {meter.summary()}")
        scalars = {"train/loss_a": loss_a, "train/weight_lr": lr,
                   "train/steps_per_second": meter.rate}
        if self.update_arch:
            scalars.update({"train/loss_b": loss_b, "train/arch_lr": config.arch_lr})
        self.writer.scalars(at.global_step, scalars)

    def train_loop_end(self, epoch: int, global_step: int) -> None:
        """Decodes the architecture, writes its JSON files and the epoch's summaries."""
        config, model = self.config, self.model
        alpha = model.alpha.numpy()
        beta = model.beta.numpy()
        arch, meta = decoding.decode_architecture(alpha, beta)
        self.since.update(unchanged_since(self.since, self.previous_arch, arch, epoch + 1))
        meta.update(origin_metadata(common.ORIGIN_SEARCH, config.seed), epoch=epoch + 1,
                    global_step=global_step, **self.since)
        if self.is_chief:
            arch.save(self.arch_path, meta)
            arch.save(os.path.join(config.model_dir, EPOCH_ARCH_SUBDIR,
                                   f"epoch_{epoch + 1:03d}.json"), meta)
        if self.previous_arch is None or arch != self.previous_arch:
            what = "first decoded" if self.previous_arch is None else "changed"
            self.log(f"epoch {epoch + 1}: architecture {what}: path {list(arch.path)}, cell "
                     f"{[list(map(list, b)) for b in arch.cell]} (path probability "
                     f"{meta['path_probability']:.3g})")
        self.previous_arch = arch
        values = {"epoch/loss_a": model.loss_a.result(),
                  "epoch/miou_a": metrics_lib.mean_iou(model.confusion_a.matrix),
                  "epoch/pixel_accuracy_a": metrics_lib.pixel_accuracy(model.confusion_a.matrix),
                  "epoch/path_probability": meta["path_probability"]}
        # Before arch_start_epoch trainB is not used: logging its zeros would draw a
        # false curve.
        if epoch >= config.arch_start_epoch:
            values["epoch/loss_b"] = model.loss_b.result()
            values["epoch/miou_b"] = metrics_lib.mean_iou(model.confusion_b.matrix)
            values["epoch/pixel_accuracy_b"] = metrics_lib.pixel_accuracy(
                model.confusion_b.matrix)
        self.writer.scalars(global_step, values)
        _write_architecture(self.writer, global_step, search_space.softmax(alpha),
                            search_space.normalize_beta(beta), arch)
        self.log(f"epoch {epoch + 1}/{config.epochs} done: loss A "
                 f"{float(values['epoch/loss_a']):.4f}, mIoU A "
                 f"{float(values['epoch/miou_a']):.3f}"
                 + (f", loss B {float(values['epoch/loss_b']):.4f}, mIoU B "
                    f"{float(values['epoch/miou_b']):.3f}" if 'epoch/miou_b' in values
                    else ""))


def run_search(config: SearchConfig,
               dataset_fn: Callable[[int], tf.data.Dataset] | None = None,
               num_classes: int | None = None,
               log: Callable[[str], None] = print) -> SearchResult:
    """Runs (or resumes) a search; returns the decoded architecture.

    `dataset_fn(epoch)` and `num_classes` replace the registered dataset (used by tests);
    by default both come from `config.dataset`.
    """
    config.validate()
    model_dir = config.model_dir
    tf.io.gfile.makedirs(model_dir)
    rt = runner.start(config, "search", log)
    log = rt.log

    if dataset_fn is None:
        def make(descriptor, data_dir):
            from auto_deeplab_datasets import input_pipeline

            def dataset_fn(epoch):
                return input_pipeline.search_datasets(
                    descriptor, data_dir, model_dir, batch_size=config.batch_size,
                    crop_size=config.crop_size, scale=config.scale, seed=config.seed,
                    epoch=epoch, write_split=rt.is_chief)

            return dataset_fn, input_pipeline.search_steps_per_epoch(
                descriptor, data_dir, model_dir, config.batch_size, config.seed,
                write=rt.is_chief)

        data = runner.registered_data(
            config.dataset, config.data_dir, make,
            f"--batch_size={config.batch_size} is larger than each half of the "
            f"{config.dataset} train split")
    else:
        data = runner.custom_data(dataset_fn, num_classes, config.steps_per_epoch)
    steps_per_epoch = min(data.steps_per_epoch, config.steps_per_epoch or data.steps_per_epoch)
    total_steps = config.epochs * steps_per_epoch
    _check_resume_config(config, model_dir, write=rt.is_chief)

    with rt.strategy.scope():
        model = build_search_model(config, data.num_classes, total_steps, data.ignore_label)
    trainer = _SearchTrainer(config, model, rt, steps_per_epoch)
    settings = runner.LoopSettings(
        model_dir=model_dir, name="search", steps_per_epoch=steps_per_epoch,
        total_steps=total_steps, max_steps=config.max_steps,
        checkpoint_every_steps=config.checkpoint_every_steps,
        log_every_steps=config.log_every_steps, max_to_keep=3, by_epoch=True)
    loop = runner.Controller(trainer, rt, settings, data.dataset_fn).run()
    if loop.saved_at_end:  # paused within an epoch
        log(f"stopped after {loop.global_step} steps (--max_steps); checkpoint "
            f"{loop.checkpoint}. Re-run the same command to resume.")
    alpha, beta = model.alpha.numpy(), model.beta.numpy()
    arch, meta = decoding.decode_architecture(alpha, beta)
    log(f"search {'finished' if loop.completed else 'paused'} after {loop.steps_run} steps in "
        f"{loop.elapsed_s:.0f} s")
    since = trainer.since
    if loop.epoch > 0:
        ratio = meta["path_probability"] / meta["uniform_path_probability"]
        epochs = loop.epoch
        line = (f"decoded path probability {meta['path_probability']:.3g}, {ratio:.2f}x its "
                f"{meta['uniform_path_probability']:.3g} under a uniform beta; ")
        if None in since.values():
            line += ("since when the architecture is unchanged is not recorded (its "
                     "architecture.json predates that record)")
        else:
            meta.update(since)
            line += (f"unchanged over the last {epochs - since['path_unchanged_since_epoch'] + 1}"
                     f" of {epochs} epochs: the path; the whole architecture (cell included): "
                     f"the last {epochs - since['unchanged_since_epoch'] + 1}")
        log(line)
    return SearchResult(arch, meta, completed=loop.completed, global_step=loop.global_step,
                        alpha=alpha, beta=beta)
