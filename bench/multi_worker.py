"""Benchmark: search (or retrain) steps/s with 2 local MultiWorkerMirroredStrategy workers vs
1 process.

  python -m bench.multi_worker [--job=search|retrain] [--steps=20] [--batch_size=4] \
      [--crop_size=64] [--filter_multiplier=4] [--num_layers=6] [--collective_communication=auto]

Runs the same bilevel search step (--job=retrain: the retraining step of the paper's
Auto-DeepLab network with F=--filter_multiplier, stem 2F,2F,4F, ASPP and decoder 8F) on the
same global batch (random data) twice, on the CPU:
once in one process (OneDeviceStrategy) and once as 2 worker processes on 127.0.0.1 (TF_CONFIG,
each worker takes half of every global batch). Prints one JSON line: steps/s of each, and
their ratio (2 workers / 1 process). Both workers share this machine's cores, so this checks
the distributed path and measures its overhead; it is not a cluster speed-up (see
README, "Running on several machines" / "What speed-up to expect").
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from absl import app
from absl import flags

_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (after 2 warm-up steps).")
_BATCH = flags.DEFINE_integer("batch_size", 4, "Global batch size (each of trainA, trainB).")
_CROP = flags.DEFINE_integer("crop_size", 64, "Square crop.")
_F = flags.DEFINE_integer("filter_multiplier", 4, "F.")
_L = flags.DEFINE_integer("num_layers", 6, "L.")
_COMM = flags.DEFINE_enum("collective_communication", "auto", ["auto", "ring", "nccl"],
                          "All-reduce implementation of the 2-worker run.")
_TIMEOUT = flags.DEFINE_integer("timeout_s", 600, "Bound on each run.")
_COLLECTIVE_TIMEOUT = flags.DEFINE_float("collective_timeout_s", 300, "Bound on each "
                                         "collective op of the 2-worker run (0: unbounded).")
_ROLE = flags.DEFINE_string("role", None, "Internal: 'single' or 'worker' (a child process).")
_JOB = flags.DEFINE_enum("job", "search", ["search", "retrain"], "Which training step to time.")


def _child() -> None:
    """One process of a run: times the step and prints {'steps_per_s': ...} (chief only)."""
    import numpy as np
    import tensorflow as tf

    from auto_deeplab_tf import architecture
    from auto_deeplab_tf import distribute
    from auto_deeplab_tf import optimizers
    from auto_deeplab_tf import retrain as retrain_lib
    from auto_deeplab_tf import trained_model
    from auto_deeplab_tf import search as search_lib

    name = "one_device" if _ROLE.value == "single" else "multi_worker"
    strategy = distribute.make_strategy(name, _COMM.value, _COLLECTIVE_TIMEOUT.value)
    is_chief = distribute.worker_role(strategy)[0]
    steps = _STEPS.value + 2
    rng = np.random.default_rng(0)
    n, c, f = _BATCH.value, _CROP.value, _F.value
    half = (rng.uniform(-1, 1, (n, c, c, 3)).astype(np.float32),
            rng.integers(0, 19, (n, c, c)).astype(np.int32))
    if _JOB.value == "search":
        config = search_lib.SearchConfig(model_dir="/unused", batch_size=n, crop_size=c,
                                         filter_multiplier=f, num_layers=_L.value)
        with strategy.scope():
            model = search_lib.build_search_model(config, 19, total_steps=steps)
        step = search_lib.make_step_function(model, strategy, update_arch=True)
        data = tf.data.Dataset.from_tensors((half, half)).repeat(steps)
    else:
        with strategy.scope():
            model = trained_model.build_model({
                "architecture_spec": architecture.get_architecture("autodeeplab").to_dict(),
                "num_classes": 19, "filter_multiplier": f, "stem_filters": [2 * f, 2 * f, 4 * f],
                "aspp_filters": 8 * f, "decoder_filters": 8 * f})
            optimizer = optimizers.MomentumSGD(0.01, momentum=0.9)
            optimizer.build(model.trainable_variables)
        step = retrain_lib.make_train_step(model, optimizer, strategy, 19, 255,
                                           weight_decay=4e-5, train_steps=steps)
        data = tf.data.Dataset.from_tensors(half).repeat(steps)
    batches = iter(strategy.experimental_distribute_dataset(data))
    for _ in range(2):  # tracing, then one more warm-up step
        float(step(next(batches))[0])
    start = time.perf_counter()
    for _ in range(_STEPS.value):
        loss = step(next(batches))
    float(loss[0])
    rate = _STEPS.value / (time.perf_counter() - start)
    if is_chief:
        with open("/proc/self/status") as f:  # threads: each timed collective holds one
            threads = [int(line.split()[1]) for line in f if line.startswith("Threads:")]
        print(json.dumps({"steps_per_s": rate, "replicas": strategy.num_replicas_in_sync,
                          "threads": threads[0] if threads else None}), flush=True)
    sys.stdout.flush()
    os._exit(0)


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _launch(role: str, workers: int) -> dict:
    args = [sys.executable, "-m", "bench.multi_worker", f"--role={role}"] + [
        f"--{f}={flags.FLAGS[f].value}" for f in (
            "steps", "batch_size", "crop_size", "filter_multiplier", "num_layers",
            "collective_communication", "job", "collective_timeout_s")]
    ports = _free_ports(workers)
    procs = []
    try:
        for i in range(workers):
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
            env.pop("TF_CONFIG", None)
            if role == "worker":
                env["TF_CONFIG"] = json.dumps({
                    "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                    "task": {"type": "worker", "index": i}})
            procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, text=True))
        outputs = [p.communicate(timeout=_TIMEOUT.value)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for line in outputs[0].splitlines():
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"the {role} run printed no result: {outputs[0][-2000:]}")


def main(argv):
    del argv
    if _ROLE.value:
        _child()
        return
    single = _launch("single", 1)
    multi = _launch("worker", 2)
    print(json.dumps({
        "job": _JOB.value, "global_batch": _BATCH.value, "crop": _CROP.value, "F": _F.value, "L": _L.value,
        "steps": _STEPS.value, "cpus": os.cpu_count(),
        "one_process_steps_per_s": round(single["steps_per_s"], 3),
        "two_workers_steps_per_s": round(multi["steps_per_s"], 3),
        "ratio_two_workers_over_one": round(multi["steps_per_s"] / single["steps_per_s"], 3),
        "chief_threads_after": {"one_process": single["threads"],
                                "two_workers": multi["threads"]}}))


if __name__ == "__main__":
    app.run(main)
