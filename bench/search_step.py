"""Benchmark: one bilevel search step (one w step + one alpha/beta step).

  python -m bench.search_step --filter_multiplier=8 --num_layers=12 --num_classes=19 \
      --batch_size=2 --crop_size=64 [--steps=5] [--device=cpu|gpu] [--jit_compile] \
      [--mixed_precision=off|bf16|fp16] [--recompute_layers] [--partial_channels=K] \
      [--replicas=N [--nosync_bn]]

Prints one JSON line: the median step time over --steps timed steps (after one warm-up
step that traces the graph), the trace+first-step time and the tracing alone in it
(`trace_s`; the rest is the runtime instantiating the functions and the step itself), the
process's peak RSS and, on a GPU, the peak GPU memory. Random data, so no dataset is needed.

`build_benchmark_step` (model, traced step and random batches from these flags) is shared
with `bench.profile_step`, which profiles the same step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Iterator

import numpy as np
from absl import app
from absl import flags

from bench import measure

_F = flags.DEFINE_integer("filter_multiplier", 8, "F.")
_L = flags.DEFINE_integer("num_layers", 12, "L.")
_B = flags.DEFINE_integer("num_blocks", 5, "B.")
_CLASSES = flags.DEFINE_integer("num_classes", 19, "Classes.")
_BATCH = flags.DEFINE_integer("batch_size", 2, "Global batch size (each of trainA, trainB).")
_CROP = flags.DEFINE_integer("crop_size", 64, "Square crop.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (after one warm-up step).")
_DEVICE = flags.DEFINE_enum("device", "cpu", ["cpu", "gpu"], "Where to run.")
_LOOP = flags.DEFINE_bool("loop_uniform_layers", True, "As train.search's flag.")
_RECOMPUTE = flags.DEFINE_bool("recompute_layers", False, "As train.search's flag.")
_JIT = flags.DEFINE_bool("jit_compile", False, "Compile the step with XLA.")
# The values of auto_deeplab_tf.precision.MODES (not imported here: TensorFlow is imported
# only once the malloc arenas are capped).
_MIXED = flags.DEFINE_enum("mixed_precision", "off", ["off", "bf16", "fp16"],
                           "As train.search's flag.")
_PARTIAL = flags.DEFINE_integer("partial_channels", 1, "As train.search's flag (PC-DARTS: "
                                "the mixed ops see 1/K of the channels).")
_GRAPPLER = flags.DEFINE_bool("grappler", True, "TensorFlow's graph optimizer (Grappler) on "
                              "the step's functions; --nograppler measures what it costs at "
                              "the first step and gains per step.")
_REPLICAS = flags.DEFINE_integer("replicas", 1, "Replicas of a MirroredStrategy: that many "
                                 "logical CPU devices (or GPUs, with --device=gpu); the "
                                 "global --batch_size is split among them.", lower_bound=1)
_SYNC_BN = flags.DEFINE_bool("sync_bn", True, "With --replicas > 1: the search BNs take the "
                             "global batch's statistics, as train.search does. --nosync_bn "
                             "keeps per-replica statistics, which the search never does: it "
                             "exists to measure what the synchronisation costs per step.")
_ARENAS = flags.DEFINE_integer("max_malloc_arenas", 1, "Cap on glibc malloc arenas, as the "
                               "train scripts set it (auto_deeplab_tf/allocator.py); 0 leaves "
                               "glibc's default. MALLOC_ARENA_MAX, when set, wins.",
                               lower_bound=0)


@dataclasses.dataclass
class BenchmarkStep:
    """The benchmark's traced bilevel step and what it runs on."""

    step: Callable  # step(pair) -> (loss A, loss B); traced on its first call
    batches: Iterator  # distributed ((images A, labels A), (images B, labels B)) pairs
    model: Any
    strategy: Any
    settings: dict  # the flags' values and the malloc arena cap, for the JSON report

    def run(self, batch=None) -> float:
        """Runs the step on `batch` (default: the next one), waits for its result; returns
        the seconds taken."""
        if batch is None:
            batch = next(self.batches)
        t0 = time.perf_counter()
        losses = self.step(batch)
        float(losses[0])  # blocks until the step has finished
        return time.perf_counter() - t0


def build_benchmark_step(num_batches: int) -> BenchmarkStep:
    """Caps malloc arenas, imports TF, builds the search model of the flags and its traced
    bilevel step, with `num_batches` batches of random data (the same pair each time)."""
    from auto_deeplab_tf import allocator

    # Before TensorFlow is imported: its threads create the arenas.
    arenas_capped = bool(_ARENAS.value) and allocator.limit_malloc_arenas(_ARENAS.value)
    import tensorflow as tf

    from auto_deeplab_tf import search as search_lib

    if _BATCH.value % _REPLICAS.value:
        raise app.UsageError(f"--batch_size={_BATCH.value} does not split among "
                             f"--replicas={_REPLICAS.value}")
    if _DEVICE.value == "cpu":
        tf.config.set_visible_devices([], "GPU")
        if _REPLICAS.value > 1:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * _REPLICAS.value)
    if not _GRAPPLER.value:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    kind = _DEVICE.value
    gpus = len(tf.config.list_physical_devices("GPU")) if kind == "gpu" else None
    if gpus is not None and gpus < _REPLICAS.value:
        raise app.UsageError(f"--replicas={_REPLICAS.value} with --device=gpu needs that many "
                             f"GPUs; {gpus} visible")
    if _REPLICAS.value > 1:
        strategy = tf.distribute.MirroredStrategy(
            [f"/{kind}:{i}" for i in range(_REPLICAS.value)])
    else:
        strategy = tf.distribute.OneDeviceStrategy(f"/{kind}:0")
    config = search_lib.SearchConfig(model_dir="/unused", filter_multiplier=_F.value,
                                     num_layers=_L.value, num_blocks=_B.value,
                                     batch_size=_BATCH.value, crop_size=_CROP.value,
                                     loop_uniform_layers=_LOOP.value,
                                     mixed_precision=_MIXED.value,
                                     recompute_layers=_RECOMPUTE.value,
                                     partial_channels=_PARTIAL.value)
    with strategy.scope():
        # --nosync_bn: each replica's own BN statistics (the loss is still normalised
        # over the global batch).
        model = search_lib.build_search_model(config, _CLASSES.value, total_steps=1000,
                                              sync_bn=_SYNC_BN.value)
    step = search_lib.make_step_function(model, strategy, update_arch=True,
                                         jit_compile=_JIT.value)
    rng = np.random.default_rng(0)
    shape = (_BATCH.value, _CROP.value, _CROP.value)

    def batch():
        images = rng.uniform(-1, 1, size=shape + (3,)).astype(np.float32)
        labels = rng.integers(0, _CLASSES.value, size=shape).astype(np.int32)
        return images, labels

    data = tf.data.Dataset.from_tensors((batch(), batch())).repeat(num_batches)
    settings = {
        "filter_multiplier": _F.value, "num_layers": _L.value, "num_blocks": _B.value,
        "num_classes": _CLASSES.value, "batch_size": _BATCH.value, "crop_size": _CROP.value,
        "device": _DEVICE.value, "jit_compile": _JIT.value,
        "mixed_precision": _MIXED.value,
        "loop_uniform_layers": _LOOP.value, "recompute_layers": _RECOMPUTE.value,
        "partial_channels": _PARTIAL.value, "grappler": _GRAPPLER.value,
        "replicas": _REPLICAS.value, "sync_bn": _SYNC_BN.value,
        "malloc_arenas": (_ARENAS.value if arenas_capped else
                          os.environ.get("MALLOC_ARENA_MAX") or "glibc default"),
    }
    return BenchmarkStep(step=step,
                         batches=iter(strategy.experimental_distribute_dataset(data)),
                         model=model, strategy=strategy, settings=settings)


def steps_flag() -> int:
    """--steps: the number of timed (or profiled) steps after the warm-up step."""
    return _STEPS.value


def main(argv):
    del argv
    bench = build_benchmark_step(num_batches=_STEPS.value + 1)
    batch = next(bench.batches)
    t0 = time.perf_counter()
    bench.step.get_concrete_function(batch)  # Python tracing only; nothing runs
    trace = time.perf_counter() - t0
    # The first call instantiates the traced functions (Grappler, kernels) and runs a step.
    first = trace + bench.run(batch)
    times = [bench.run() for _ in range(_STEPS.value)]
    result = dict(bench.settings)
    result.update({
        "median_step_s": round(float(np.median(times)), 4),
        "min_step_s": round(float(np.min(times)), 4),
        "trace_and_first_step_s": round(first, 2),
        "trace_s": round(trace, 2),
        "peak_rss_gb": measure.peak_rss_gb(),
        "machine": measure.machine(),
        "peak_gpu_memory_gb": measure.peak_gpu_memory_gb(_DEVICE.value),
    })
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
