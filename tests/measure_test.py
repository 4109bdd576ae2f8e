"""bench.measure: what the bench tools report beside their timings."""

from bench import measure


def _vm_hwm_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    raise AssertionError("no VmHWM in /proc/self/status")


def test_peak_rss_is_the_kernels_high_water_mark_in_gb():
    # A fresh allocation need not raise the peak (an earlier test may have set it higher),
    # so compare with the kernel's own high-water mark of this process.
    assert abs(measure.peak_rss_gb() - _vm_hwm_gb()) < 0.01


def test_no_gpu_memory_on_the_cpu_and_the_machine_string():
    assert measure.peak_gpu_memory_gb("cpu") is None
    assert measure.machine().endswith(" cpus")
