"""What every bench tool reports beside its timings: peak memory and the machine.

Flag-free, so that any bench module (and the tests, which import all of them into one
process) can use it.
"""

from __future__ import annotations

import os
import platform
import resource


def peak_rss_gb() -> float:
    """This process's maximum resident memory so far, in GB (2**30 bytes; Linux reports
    ru_maxrss in KiB), tracing and runtime included."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def peak_gpu_memory_gb(device: str) -> float | None:
    """The peak of TF's allocator on GPU:0 in GB when `device` is "gpu"; None on the CPU,
    whose allocator keeps no such statistics for `get_memory_info`."""
    if device != "gpu":
        return None
    import tensorflow as tf

    return round(tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**30, 3)


def machine() -> str:
    """The architecture and CPU count, e.g. "x86_64, 2 cpus"."""
    return f"{platform.machine()}, {os.cpu_count()} cpus"
