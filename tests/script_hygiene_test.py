"""A script's stderr starts with its own lines, not TensorFlow's C++ start-up log."""

import os
import subprocess
import sys

from auto_deeplab_datasets import script_hygiene

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_script_prints_no_tensorflow_start_up_lines(tmp_path):
    # The user's environment as a newcomer has it: no TF_CPP_MIN_LOG_LEVEL of their own.
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    # train.sample_architectures initialises TensorFlow's devices, where a machine without a
    # GPU logs "failed call to cuInit".
    result = subprocess.run(
        [sys.executable, "-m", "train.sample_architectures", "--num=1",
         f"--output_dir={tmp_path}"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=240)
    assert result.returncode == 0, result.stderr
    assert "wrote 1 architectures" in result.stdout
    for noise in ("absl::InitializeLog", "I0000", "E0000", "cuInit", "port.cc",
                  "cudart_stub", "cpu_feature_guard"):
        assert noise not in result.stderr, result.stderr


def test_only_the_known_load_time_lines_are_dropped():
    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796227657.097971   24431 port.cc:153] oneDNN custom operations are on.",
        "I0000 00:00:1796227657.098332   24431 cudart_stub.cc:31] Could not find cuda drivers "
        "on your machine, GPU will not be used.",
    ]
    kept = [
        "E0000 00:00:1796227660.547176   24431 cuda_platform.cc:52] failed call to cuInit",
        "W0000 00:00:1796227657.097971   24431 port.cc:153] a warning",
        "Traceback (most recent call last):",
        "ImportError: libfoo.so: cannot open shared object file",
    ]
    assert all(script_hygiene._LOAD_TIME_LINE.match(line) for line in noise)
    assert not any(script_hygiene._LOAD_TIME_LINE.match(line) for line in kept)
