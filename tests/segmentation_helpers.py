"""Tiny datasets, retraining runs and subprocess helpers for the retrain / evaluate / export /
predict tests."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import numpy as np

from tests import data_helpers as h

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A 4-layer path (OS 4, 4, 8, 4) keeps the tiny network fast; its decoder taps cell 1.
TINY_ARCH = {"cell": [[[1, "sep_conv_3x3"], [0, "skip_connect"]],
                      [[2, "sep_conv_3x3"], [0, "atrous_conv_3x3"]]],
             "path": [0, 0, 1, 0], "num_levels": 4}
TINY_MODEL = dict(filter_multiplier=2, stem_filters=(4, 4, 8), aspp_filters=8,
                  decoder_filters=8)


def label_of(image: np.ndarray) -> np.ndarray:
    """A learnable label: class from the red and green channels, the top row ignored."""
    label = ((image[..., 0] > 127) + 2 * (image[..., 1] > 127)).astype(np.uint8)
    label[0] = 255
    return label


def blocky_image(rng, height, width, block=8):
    small = rng.integers(0, 256, size=(-(-height // block), -(-width // block), 3),
                         dtype=np.uint8)
    return np.kron(small, np.ones((block, block, 1), np.uint8))[:height, :width]


def make_tiny_cityscapes(base: str, num_train: int = 6, num_val: int = 3,
                         size=(40, 48)) -> str:
    """Converts a tiny Cityscapes-layout tree (labelTrainIds) to TFRecords; returns their dir."""
    from auto_deeplab_datasets import cityscapes, cli, registry

    root, out = os.path.join(base, "cs"), os.path.join(base, "tfrecord")
    rng = np.random.default_rng(0)
    for split, count in (("train", num_train), ("val", num_val)):
        for i in range(count):
            paths = h.cityscapes_paths(root, split, "bonn", i)
            shape = size if split == "train" or i % 2 == 0 else (size[0] - 3, size[1] + 5)
            image = blocky_image(rng, *shape)
            h.write_png(paths["image"], image)
            h.write_png(paths["labelTrainIds"], label_of(image))
    cli.convert_splits(registry.get("cityscapes"), functools.partial(cityscapes.discover, root),
                       ["train", "val"], output_dir=out, num_shards=2, num_workers=1,
                       stream=None)
    return out


def tiny_config(model_dir, data_dir, **overrides):
    from auto_deeplab_tf import retrain as retrain_lib

    values = dict(model_dir=str(model_dir), architecture="", dataset="cityscapes",
                  data_dir=data_dir, crop_size=32, batch_size=2, min_scale=0.75,
                  max_scale=1.25, train_steps=4, base_learning_rate=0.02,
                  checkpoint_every_steps=2, log_every_steps=1, seed=1, num_summary_images=2,
                  **TINY_MODEL)
    values.update(overrides)
    return retrain_lib.RetrainConfig(**values)


def arch_file(directory) -> str:
    import json

    path = os.path.join(str(directory), "tiny_arch.json")
    with open(path, "w") as f:
        json.dump(TINY_ARCH, f)
    return path


def tiny_retrain(model_dir, data_dir, **overrides):
    """Runs a tiny retraining; returns (result, log lines)."""
    from auto_deeplab_tf import retrain as retrain_lib

    overrides.setdefault("architecture", arch_file(os.path.dirname(str(model_dir))))
    logs: list[str] = []
    result = retrain_lib.run_retrain(tiny_config(model_dir, data_dir, **overrides),
                                     log=logs.append)
    return result, logs


def run_module(module: str, *args: str, timeout: int = 240,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m module args` from the repository root, quietly (in `env`, default: this
    process's environment)."""
    env = dict(os.environ if env is None else env, TF_CPP_MIN_LOG_LEVEL="3",
               CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
