"""Profile: where one bilevel search step spends its time, by op type and by coarse class.

  python -m bench.profile_step --filter_multiplier=8 --num_layers=12 --num_classes=19 \
      --batch_size=2 --crop_size=321 [--steps=3] [--output=profile.json] [--logdir=DIR]

Takes bench.search_step's flags and builds the same step (`build_benchmark_step`), runs one
warm-up step (which traces the graph), then --steps steps under the TF profiler
(`tf.profiler.experimental.start/stop`). The profiler writes an XSpace protobuf
(`LOGDIR/plugins/profile/<run>/<host>.xplane.pb`; TF 2.21 writes no trace.json.gz); this
reads it directly. On the host plane every executed op is one event named
"<op name>:<kernel type>" (e.g. "supernet_1/.../Conv2D_1:_MklNativeConv2D"), on the
executor thread that ran it; its self time is its duration less that of any op event
nested in it on the same thread. Kernel types are mapped back to op types
("_MklNativeConv2D" -> "Conv2D"), and each convolution is looked up by name in the traced
graph to tell dilated from undilated ones.

Percentages are of the summed op self time. With inter-op parallelism two ops can run at
once, so that sum can exceed the wall time (both are reported). The lowered while loop's
control-flow ops (Enter, Merge, Switch, ...) are not reported by the executor as op events;
their cost is in the wall time, not in the table. On a GPU the host events measure launches,
not kernels: this tool is meant for the CPU.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import re
import shutil
import tempfile
import time
from typing import Any, Iterable

from absl import app
from absl import flags

from bench import op_classes
from bench import search_step

_OUTPUT = flags.DEFINE_string("output", None, "Write the profile as JSON here.")
_LOGDIR = flags.DEFINE_string("logdir", None, "Keep the profiler's trace here (default: a "
                              "temporary directory, removed afterwards). TensorBoard's "
                              "profile plugin can open it.")
_TOP = flags.DEFINE_integer("top", 30, "Rows of the by-type table to print (the JSON has all).")

# "<op name>:<kernel type>"; other host events ("ExecutorState::Process",
# "EagerLocalExecute: __inference_step_1", ...) do not match.
_OP_EVENT = re.compile(r"^([^:\s][^:]*):(_?[A-Za-z][A-Za-z0-9_]*)$")
# Ops of a lowered while loop's body are reported as "<while op>/body/_<n>/<op in body>".
_LOWERED_BODY = re.compile(r"^.*/(?:body|cond)/_\d+/")


def op_events(xspace) -> Iterable[tuple[str, str, int]]:
    """(op name, kernel type, self time in ps) of every op event on the host plane of an
    XSpace (tsl.profiler.protobuf.xplane_pb2.XSpace)."""
    for plane in xspace.planes:
        if not plane.name.startswith("/host:"):
            continue
        for line in plane.lines:
            events = []
            for event in line.events:
                match = _OP_EVENT.match(plane.event_metadata[event.metadata_id].name)
                if match:
                    events.append((event.offset_ps, event.duration_ps, match.group(1),
                                   match.group(2)))
            events.sort(key=lambda e: (e[0], -e[1]))
            # Self time: less the op events directly nested in each one on this thread.
            self_ps = [duration for _, duration, _, _ in events]
            stack: list[int] = []
            for i, (start, duration, _, _) in enumerate(events):
                while stack and events[stack[-1]][0] + events[stack[-1]][1] <= start:
                    stack.pop()
                if stack:
                    self_ps[stack[-1]] -= duration
                stack.append(i)
            for (_, _, name, kernel), ps in zip(events, self_ps):
                yield name, kernel, max(ps, 0)


def read_xspace(logdir: str):
    """The XSpace of the newest profile run under `logdir` (one host)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))
    if not paths:
        raise FileNotFoundError(f"no profile (*.xplane.pb) under {logdir}/plugins/profile")
    xspace = xplane_pb2.XSpace()
    with open(paths[-1], "rb") as f:
        xspace.ParseFromString(f.read())
    return xspace


def dilated_op_names(graphs: Iterable[Any]) -> set[str]:
    """Names of the dilated convolutions (and their gradients) in traced graphs."""
    return {op.name for graph in graphs for op in graph.get_operations()
            if op_classes.is_dilated(op)}


def tabulate(events: Iterable[tuple[str, str, int]], dilated: set[str]) -> dict[str, Any]:
    """By-type and by-class rows (time, % of the summed self time, count), largest first.

    A convolution whose name (with a lowered loop body's prefix removed) is in `dilated`
    is its own row, "<type> (dilated)", in the dilated conv class."""
    time_ps: dict[str, int] = collections.Counter()
    count: dict[str, int] = collections.Counter()
    classes: dict[str, str] = {}
    for name, kernel, ps in events:
        op_type = op_classes.op_type_of_kernel(kernel)
        is_dilated = _LOWERED_BODY.sub("", name) in dilated or name in dilated
        key = f"{op_type} (dilated)" if is_dilated else op_type
        time_ps[key] += ps
        count[key] += 1
        classes[key] = op_classes.op_class(op_type, dilated=is_dilated)
    total = sum(time_ps.values())

    def rows(times, counts, label, extra=None):
        out = []
        for key, ps in sorted(times.items(), key=lambda kv: -kv[1]):
            row = {label: key, "time_s": ps / 1e12,
                   "percent": 100.0 * ps / total if total else 0.0, "count": counts[key]}
            if extra:
                row.update(extra(key))
            out.append(row)
        return out

    class_ps: dict[str, int] = collections.Counter()
    class_count: dict[str, int] = collections.Counter()
    for key, ps in time_ps.items():
        class_ps[classes[key]] += ps
        class_count[classes[key]] += count[key]
    return {"op_time_s": total / 1e12,
            "by_type": rows(time_ps, count, "op_type", lambda k: {"class": classes[k]}),
            "by_class": rows(class_ps, class_count, "class")}


def format_table(rows: list[dict], label: str, top: int | None = None) -> str:
    """The rows as an aligned text table."""
    shown = rows if top is None else rows[:top]
    width = max([len(label)] + [len(r[label]) for r in shown])
    lines = [f"{label:<{width}}  {'time s':>9}  {'%':>6}  {'count':>7}"]
    for r in shown:
        lines.append(f"{r[label]:<{width}}  {r['time_s']:>9.3f}  {r['percent']:>6.2f}  "
                     f"{r['count']:>7d}")
    if top is not None and len(rows) > top:
        rest = rows[top:]
        lines.append(f"{f'({len(rest)} more)':<{width}}  "
                     f"{sum(r['time_s'] for r in rest):>9.3f}  "
                     f"{sum(r['percent'] for r in rest):>6.2f}  "
                     f"{sum(r['count'] for r in rest):>7d}")
    return "\n".join(lines)


def main(argv):
    del argv
    steps = search_step.steps_flag()
    bench = search_step.build_benchmark_step(num_batches=steps + 1)
    import tensorflow as tf

    from auto_deeplab_tf import flops

    warmup_batch = next(bench.batches)
    first = bench.run(warmup_batch)
    concrete = bench.step.get_concrete_function(warmup_batch)
    dilated = dilated_op_names(flops.nested_graphs(concrete.graph))

    logdir = _LOGDIR.value or tempfile.mkdtemp(prefix="profile_step_")
    try:
        options = tf.profiler.experimental.ProfilerOptions(host_tracer_level=2,
                                                           python_tracer_level=0,
                                                           device_tracer_level=1)
        tf.profiler.experimental.start(logdir, options=options)
        t0 = time.perf_counter()
        step_times = [bench.run() for _ in range(steps)]
        wall = time.perf_counter() - t0
        tf.profiler.experimental.stop()
        table = tabulate(op_events(read_xspace(logdir)), dilated)
    finally:
        if not _LOGDIR.value:
            shutil.rmtree(logdir, ignore_errors=True)

    result: dict[str, Any] = dict(bench.settings)
    result.update({
        "profiled_steps": steps,
        "trace_and_first_step_s": round(first, 2),
        "profiled_step_s": [round(t, 4) for t in step_times],
        "profiled_wall_s": round(wall, 4),
        "note": "time_s is op self time summed over the profiled steps and the executor "
                "threads (ops can overlap, so op_time_s may exceed profiled_wall_s); "
                "percent is of op_time_s",
    })
    result.update(table)
    print(f"{steps} profiled step(s): wall {wall:.3f} s, summed op self time "
          f"{table['op_time_s']:.3f} s (trace + first step {first:.1f} s)\n")
    print(format_table(table["by_type"], "op_type", top=_TOP.value))
    print()
    print(format_table(table["by_class"], "class"))
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w") as f:
            json.dump(result, f, indent=1)
        print(f"\nwrote {_OUTPUT.value}")


if __name__ == "__main__":
    app.run(main)
