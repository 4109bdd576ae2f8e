"""Every train/ script refuses positional arguments the same way, before doing anything."""

import os
import subprocess
import sys

import pytest


# train.search and train.decode used to ignore them, train.model_stats raised a UsageError;
# the scripts built on cli.main_from (evaluate, export, predict, ...) already refused them.
@pytest.mark.parametrize("module", ["train.search", "train.decode", "train.model_stats"])
def test_a_stray_argument_is_named_and_refused(module, tmp_path):
    result = subprocess.run([sys.executable, "-m", module, "oops"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=240,
                            env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: unexpected arguments ['oops']"
    assert os.listdir(tmp_path) == []  # nothing written, no run folder started
