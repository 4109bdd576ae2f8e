"""Benchmark: retraining throughput of a fixed Auto-DeepLab network (images per second).

  python -m bench.retrain_step [--filter_multiplier=20] [--crop_size=769] [--batch_size=2] \
      [--steps=5] [--device=cpu|gpu]

Same style as bench/search_step.py: random data, one warm-up step that traces the graph,
then the median of --steps timed steps of `retrain.make_train_step` (SGD, weight decay,
drop path schedule) on the paper's architecture (Auto-DeepLab-S at F = 20 by default).
Prints one JSON line: median step time, images/s, trace+first-step time, peak RSS and,
on a GPU, the peak GPU memory.
"""

from __future__ import annotations

import json
import time

import numpy as np
from absl import app
from absl import flags

from bench import measure

_F = flags.DEFINE_integer("filter_multiplier", 20, "F (20: Auto-DeepLab-S).")
_CLASSES = flags.DEFINE_integer("num_classes", 19, "Classes.")
_BATCH = flags.DEFINE_integer("batch_size", 2, "Batch size.")
_CROP = flags.DEFINE_integer("crop_size", 769, "Square crop.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (after one warm-up step).")
_DEVICE = flags.DEFINE_enum("device", "cpu", ["cpu", "gpu"], "Where to run.")


def main(argv):
    del argv
    import tensorflow as tf

    from auto_deeplab_tf import optimizers
    from auto_deeplab_tf import retrain as retrain_lib
    from auto_deeplab_tf import trained_model
    from auto_deeplab_tf.architecture import get_architecture

    if _DEVICE.value == "cpu":
        tf.config.set_visible_devices([], "GPU")
    strategy = tf.distribute.OneDeviceStrategy("/gpu:0" if _DEVICE.value == "gpu" else "/cpu:0")
    model_config = {"architecture_spec": get_architecture("autodeeplab").to_dict(),
                    "num_classes": _CLASSES.value, "filter_multiplier": _F.value,
                    "stem_filters": [64, 64, 128], "aspp_filters": 256,
                    "decoder_filters": 256, "drop_path_keep_prob": 1.0}
    with strategy.scope():
        model = trained_model.build_model(model_config)
        optimizer = optimizers.MomentumSGD(0.05, momentum=0.9)
        optimizer.build(model.trainable_variables)
    step = retrain_lib.make_train_step(model, optimizer, strategy, _CLASSES.value, 255,
                                       weight_decay=4e-5, train_steps=1000)
    rng = np.random.default_rng(0)
    shape = (_BATCH.value, _CROP.value, _CROP.value)
    images = rng.uniform(-1, 1, size=shape + (3,)).astype(np.float32)
    labels = rng.integers(0, _CLASSES.value, size=shape).astype(np.int32)
    data = tf.data.Dataset.from_tensors((images, labels)).repeat(_STEPS.value + 1)
    times, first = [], None
    for batch in strategy.experimental_distribute_dataset(data):
        t0 = time.perf_counter()
        float(step(batch)[0])
        elapsed = time.perf_counter() - t0
        if first is None:
            first = elapsed
        else:
            times.append(elapsed)
    median = float(np.median(times))
    result = {"filter_multiplier": _F.value, "num_classes": _CLASSES.value,
              "batch_size": _BATCH.value, "crop_size": _CROP.value, "device": _DEVICE.value,
              "median_step_s": round(median, 4),
              "images_per_s": round(_BATCH.value / median, 3),
              "trace_and_first_step_s": round(first, 2),
              "peak_rss_gb": measure.peak_rss_gb(),
              "peak_gpu_memory_gb": measure.peak_gpu_memory_gb(_DEVICE.value)}
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
