"""Choosing a tf.distribute strategy from a flag value."""

from __future__ import annotations

import tensorflow as tf

STRATEGIES = ("default", "one_device", "mirrored")


def make_strategy(name: str = "default") -> tf.distribute.Strategy:
    """default: mirrored over the visible GPUs, else the CPU; one_device: the first GPU or the
    CPU; mirrored: every visible GPU, else every (logical) CPU device."""
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    if name == "default":
        if gpus:
            return tf.distribute.MirroredStrategy([d.name for d in gpus])
        return tf.distribute.OneDeviceStrategy(cpus[0].name)
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy((gpus or cpus)[0].name)
    if name == "mirrored":
        devices = [d.name for d in (gpus or cpus)]
        if len(devices) == 1:
            return tf.distribute.OneDeviceStrategy(devices[0])
        return tf.distribute.MirroredStrategy(
            devices, cross_device_ops=None if gpus else tf.distribute.ReductionToOneDevice())
    raise ValueError(f"--strategy={name}: unknown strategy, expected one of "
                     f"{', '.join(STRATEGIES)}")
