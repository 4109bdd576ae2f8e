"""bench/gpu_check.sh --smoke: runs every part on the CPU at tiny sizes and writes a report
with the structure a GPU run writes (issue #14, part 6), so the script cannot rot."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_check.sh"), str(out),
                           "--smoke"], env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "gpu_check.json") as f:
        return json.load(f)


def test_every_part_finished_ok_with_positive_times(report):
    parts = report["parts"]
    assert report["smoke"] is True
    assert set(parts) == {"search_fp32", "search_mixed", "retrain", "projected_search"}
    for name in ("search_fp32", "search_mixed", "retrain"):
        assert parts[name]["status"] == "ok", parts[name]["output"]
        result = parts[name]["result"]
        assert result["median_step_s"] > 0 and result["trace_and_first_step_s"] > 0
        assert "peak_gpu_memory_gb" in result  # None on the CPU
    assert parts["search_fp32"]["result"]["crop_size"] == 33
    assert parts["retrain"]["result"]["images_per_s"] > 0
    mixed = parts["search_mixed"]
    assert "--mixed_precision=bf16" in mixed["command"]
    assert mixed["result"]["mixed_precision"] == "bf16"


def test_projection_counts_weight_only_and_bilevel_epochs(report):
    projected = report["parts"]["projected_search"]
    assert projected["status"] == "ok"
    assert projected["epochs"] == 40
    assert projected["weight_only_epochs"] == 20 and projected["bilevel_epochs"] == 20
    assert projected["steps_per_epoch"] == 743  # (2975 // 2) // 2
    step = report["parts"]["search_fp32"]["result"]["median_step_s"]
    expected = 743 * (20 * step / 2 + 20 * step) / 3600
    assert projected["hours"] == pytest.approx(expected, rel=1e-2)
    assert projected["assumptions"]
