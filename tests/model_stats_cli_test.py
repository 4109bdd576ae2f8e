"""`python -m train.model_stats`: one JSON line out, flag errors that name the flag."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-m", "train.model_stats", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


def json_line(stdout):
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, stdout
    return json.loads(lines[0])


def test_fixed_network_with_breakdown(tmp_path):
    arch_path = tmp_path / "arch.json"
    from auto_deeplab_tf import architecture
    architecture.AUTODEEPLAB.save(str(arch_path))
    result = run(f"--architecture={arch_path}", "--filter_multiplier=20",
                 "--image_size=64,128", "--num_classes=19", "--breakdown")
    assert result.returncode == 0, result.stderr
    stats = json_line(result.stdout)
    assert stats["params"] == 10_147_427
    assert stats["multiply_adds"] > 0
    for part in ("stem", "cells", "aspp", "decoder"):
        assert f"params_{part}" in stats and f"multiply_adds_{part}" in stats


def test_supernet_mode():
    result = run("--supernet", "--filter_multiplier=2", "--num_layers=2", "--num_blocks=2",
                 "--num_levels=3", "--image_size=33,33", "--num_classes=3")
    assert result.returncode == 0, result.stderr
    stats = json_line(result.stdout)
    assert stats["arch_params"] == 5 * 8 + 2 * 3 * 3
    assert stats["params"] > 0 and stats["multiply_adds"] > 0


@pytest.mark.parametrize("supernet", [False, True], ids=["fixed", "supernet"])
def test_summary_prints_keras_summary_before_the_json_line(supernet):
    """Keras' summary counts the same trainable weights as the JSON (the supernet's with
    alpha and beta)."""
    args = (["--supernet", "--filter_multiplier=2", "--num_layers=2", "--num_blocks=2",
             "--num_levels=3"] if supernet else ["--filter_multiplier=4"])
    result = run(*args, "--image_size=33,33", "--num_classes=3", "--summary")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    stats = json.loads(lines[-1])
    trainable = [line for line in lines if line.strip().startswith("Trainable params:")]
    assert len(trainable) == 1, result.stdout
    count = int(trainable[0].split(":")[1].split("(")[0].replace(",", ""))
    assert count == stats["params"] + stats.get("arch_params", 0)
    assert ("SearchCell" in result.stdout) == supernet


@pytest.mark.parametrize("flag", ["--image_size=abc", "--model_size=X",
                                  "--architecture=no_such_arch"])
def test_bad_values_name_the_flag(flag):
    result = run(flag)
    assert result.returncode != 0
    assert flag.split("=")[0] in result.stderr
