"""`python -m bench.profile_step`: the step's op time by type and class, from the profiler."""

import json
import os
import subprocess
import sys

from tensorflow.tsl.profiler.protobuf import xplane_pb2

from bench import op_classes
from bench import profile_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _xspace(events):
    """An XSpace with one host thread holding (name, offset_ps, duration_ps) events."""
    space = xplane_pb2.XSpace()
    plane = space.planes.add(name="/host:CPU")
    line = plane.lines.add(name="tf_Compute/1")
    for i, (name, offset, duration) in enumerate(events, start=1):
        plane.event_metadata[i].id = i
        plane.event_metadata[i].name = name
        line.events.add(metadata_id=i, offset_ps=offset, duration_ps=duration)
    return space


def test_self_time_excludes_nested_op_events_and_ignores_other_events():
    space = _xspace([("ExecutorState::Process", 0, 100),
                     ("outer/call:StatefulPartitionedCall", 0, 50),
                     ("outer/call/conv:_MklNativeConv2D", 10, 30),
                     ("net/atrous/Conv2D:_MklNativeConv2D", 60, 20)])
    events = list(profile_step.op_events(space))
    assert sorted(events) == [("net/atrous/Conv2D", "_MklNativeConv2D", 20),
                              ("outer/call", "StatefulPartitionedCall", 20),
                              ("outer/call/conv", "_MklNativeConv2D", 30)]
    table = profile_step.tabulate(events, dilated={"net/atrous/Conv2D"})
    types = {r["op_type"]: r for r in table["by_type"]}
    assert types["Conv2D"]["count"] == 1 and types["Conv2D (dilated)"]["count"] == 1
    assert types["Conv2D (dilated)"]["class"] == op_classes.DILATED
    assert abs(sum(r["percent"] for r in table["by_class"]) - 100) < 1e-9


def test_profile_at_a_tiny_config(tmp_path):
    out = tmp_path / "profile.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [sys.executable, "-m", "bench.profile_step", "--filter_multiplier=2", "--num_layers=2",
         "--crop_size=32", "--steps=1", f"--output={out}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    profile = json.loads(out.read_text())
    assert profile["profiled_steps"] == 1 and profile["crop_size"] == 32
    assert profile["by_type"] and profile["op_time_s"] > 0
    for table in ("by_type", "by_class"):
        assert abs(sum(r["percent"] for r in profile[table]) - 100) < 0.01
    types = {r["op_type"] for r in profile["by_type"]}
    assert {"Conv2D", "DepthwiseConv2dNative", "Conv2DBackpropFilter"} <= types
    assert "Conv2D (dilated)" in types  # the atrous candidates
    classes = {r["class"] for r in profile["by_class"]}
    assert {op_classes.CONV, op_classes.DEPTHWISE, op_classes.DILATED, op_classes.BN} <= classes
    assert "op_type" in result.stdout and "class" in result.stdout
