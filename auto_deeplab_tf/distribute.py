"""Choosing a tf.distribute strategy from a flag value.

`multi_worker` is tf.distribute.MultiWorkerMirroredStrategy over the cluster that the
standard TF_CONFIG environment variable describes (README, "Running on several machines").
Every wait on other workers is bounded: the start-up wait for the cluster (a watchdog ends
the process: TF cannot interrupt that wait), every collective op
(CommunicationOptions.timeout_seconds), and TF's coordination service notices a dead peer by
its heartbeats, so a dead or hung worker makes the others fail instead of hanging; the job is
then relaunched and resumes from the chief's latest checkpoint.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
from typing import Callable

import tensorflow as tf

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker")
COLLECTIVE_COMMUNICATIONS = ("auto", "ring", "nccl")
# Bound on any one collective op and on the start-up wait for the cluster (a dead peer is
# noticed sooner, by the heartbeats of TF's coordination service; this bound catches a peer
# that is alive but stuck). Generous: it must cover the skew between workers, e.g. the chief
# writing a checkpoint while the others already wait in the next step, or one worker
# tracing a step more slowly. Cost: TensorFlow holds a sleeping thread per timed collective
# for the whole timeout (measured with bench/multi_worker.py: ~14 threads per search step,
# ~6 per retraining step), so fast steps want a shorter bound.
DEFAULT_COLLECTIVE_TIMEOUT_S = 300.0

_TF_CONFIG_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                      '"task": {"type": "worker", "index": 0}}\'')


def parse_tf_config(raw: str | None = None) -> dict:
    """The validated TF_CONFIG (from the environment when `raw` is None).

    Raises:
      ValueError: TF_CONFIG is missing, not JSON, or does not name this task in its cluster.
    """
    if raw is None:
        raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable, "
                         "describing the cluster and this worker's place in it, e.g. "
                         f"{_TF_CONFIG_EXAMPLE} (see the README, 'Running on several machines')")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e}): {raw!r}; expected e.g. "
                         f"{_TF_CONFIG_EXAMPLE}") from None
    if not isinstance(config, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object, got {raw!r}")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError(f"TF_CONFIG has no 'cluster' (a dict of job name to host:port list): "
                         f"{raw!r}")
    for job, hosts in cluster.items():
        if job not in ("chief", "worker"):
            raise ValueError(f"TF_CONFIG: job '{job}' is not supported by --strategy=multi_"
                             "worker (use 'worker', optionally plus one 'chief')")
        if not isinstance(hosts, list) or not hosts or not all(
                isinstance(h, str) and ":" in h for h in hosts):
            raise ValueError(f"TF_CONFIG: cluster['{job}'] must be a non-empty list of "
                             f"'host:port' strings, got {hosts!r}")
    if len(cluster.get("chief", [])) > 1:
        raise ValueError("TF_CONFIG: at most one 'chief' task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError(f"TF_CONFIG has no 'task' with 'type' and 'index' (which worker this "
                         f"process is): {raw!r}")
    if task["type"] not in cluster:
        raise ValueError(f"TF_CONFIG: task type '{task['type']}' is not a job of the cluster "
                         f"({', '.join(cluster)})")
    if not isinstance(task["index"], int) or not 0 <= task["index"] < len(cluster[task["type"]]):
        raise ValueError(f"TF_CONFIG: task index {task['index']!r} is out of range for the "
                         f"{len(cluster[task['type']])} '{task['type']}' task(s)")
    return config


# The private class attributes of TF's multi-worker strategy that hold its Python peer
# health-check timings (TF 2.21), and how each follows from --collective_timeout_s.
PEER_HEALTH_CHECK_SETTINGS = {
    "_check_health_initial_timeout": lambda t: int(max(1, t)),
    "_check_health_interval": lambda t: max(1, min(30, int(t / 4))),
    "_check_health_timeout": lambda t: max(1, min(10, int(t / 8))),
}


def set_peer_health_check_timeouts(timeout_s: float) -> bool:
    """Scales the peer health checks of TF's MultiWorkerMirroredStrategy to `timeout_s`.

    TF exposes these timings only as private class attributes of
    `CollectiveAllReduceExtended`, so setting them changes them for every strategy the
    process creates afterwards: this is the one place that does it, and only
    `make_strategy(..., collective_timeout_s=...)` calls it. The checks run only where TF's
    coordination service is off; it is on by default (TF 2.21) and notices a dead peer by
    its own heartbeats, so this matters for older set-ups. Returns False, changing nothing,
    when this TF lacks the attributes (a test pins that TF 2.21 has them)."""
    from tensorflow.python.distribute import collective_all_reduce_strategy as cars

    extended = getattr(cars, "CollectiveAllReduceExtended", None)
    if extended is None or not all(hasattr(extended, a) for a in PEER_HEALTH_CHECK_SETTINGS):
        return False
    for attribute, value in PEER_HEALTH_CHECK_SETTINGS.items():
        setattr(extended, attribute, value(timeout_s))
    return True


def _multi_worker(collective_communication: str, timeout_s: float | None
                  ) -> tf.distribute.Strategy:
    parse_tf_config()
    if collective_communication == "nccl" and not tf.config.list_physical_devices("GPU"):
        raise ValueError("--collective_communication=nccl needs GPUs; use auto or ring on CPUs")
    implementation = {
        "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
        "ring": tf.distribute.experimental.CommunicationImplementation.RING,
        "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
    }[collective_communication]
    timeout = float(timeout_s) if timeout_s else None
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=implementation, timeout_seconds=timeout)
    if timeout:
        set_peer_health_check_timeouts(timeout)
    if not timeout:
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    # Creating the strategy waits in TF's C++ start-up of the cluster until every worker has
    # joined, with no deadline, holding the GIL and deaf to SIGTERM. faulthandler's watchdog
    # thread needs no GIL: past the timeout it prints the stacks and exits with status 1.
    hosts = [h for hosts in parse_tf_config()["cluster"].values() for h in hosts]
    print(f"waiting up to {timeout:g} s (--collective_timeout_s) for every worker of the "
          f"cluster ({', '.join(hosts)}) to start; past that this process prints its stack and "
          "exits with status 1", file=sys.stderr, flush=True)
    faulthandler.dump_traceback_later(timeout, exit=True)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    finally:
        faulthandler.cancel_dump_traceback_later()


def make_strategy(name: str = "default", collective_communication: str = "auto",
                  collective_timeout_s: float | None = DEFAULT_COLLECTIVE_TIMEOUT_S
                  ) -> tf.distribute.Strategy:
    """default: mirrored over the visible GPUs, else the CPU; one_device: the first GPU or the
    CPU; mirrored: every visible GPU, else every (logical) CPU device; multi_worker:
    MultiWorkerMirroredStrategy over the TF_CONFIG cluster (all local GPUs, else the CPU,
    of every worker), with `collective_communication` (auto, ring or nccl) and every
    collective op bounded by `collective_timeout_s` (None or 0: unbounded).

    multi_worker must be created before TensorFlow runs any op in the process.
    """
    if collective_communication not in COLLECTIVE_COMMUNICATIONS:
        raise ValueError(f"--collective_communication={collective_communication}: expected one "
                         f"of {', '.join(COLLECTIVE_COMMUNICATIONS)}")
    if name == "multi_worker":
        return _multi_worker(collective_communication, collective_timeout_s)
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


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
        strategy.extended._in_multi_worker_mode()  # noqa: SLF001 (no public accessor)


def worker_role(strategy: tf.distribute.Strategy) -> tuple[bool, str, int]:
    """(is_chief, task type, task index); single-process strategies are the chief."""
    if not is_multi_worker(strategy):
        return True, "chief", 0
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, int(resolver.task_id)
    jobs = resolver.cluster_spec().as_dict()
    chief = task_type == "chief" or (task_type == "worker" and task_id == 0
                                     and "chief" not in jobs)
    return chief, task_type, task_id


def validate_options(strategy: str, collective_communication: str,
                     collective_timeout_s: float) -> None:
    """Checks the --strategy, --collective_communication and --collective_timeout_s values."""
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy={strategy}: unknown strategy, expected one of "
                         f"{', '.join(STRATEGIES)}")
    if collective_communication not in COLLECTIVE_COMMUNICATIONS:
        raise ValueError(f"--collective_communication={collective_communication}: expected one "
                         f"of {', '.join(COLLECTIVE_COMMUNICATIONS)}")
    if collective_timeout_s < 0:
        raise ValueError(f"--collective_timeout_s must be >= 0, got {collective_timeout_s}")


def worker_log(strategy: tf.distribute.Strategy, log: Callable[[str], None], job: str,
               model_dir: str) -> Callable[[str], None]:
    """`log` itself for one process; under multi_worker, `log` with every line prefixed by
    the worker ('[worker 1] ...'), after a line saying which worker writes `model_dir`."""
    if not is_multi_worker(strategy):
        return log
    is_chief, task_type, task_id = worker_role(strategy)

    def prefixed(line: str) -> None:
        log(f"[{task_type} {task_id}] {line}")

    prefixed(f"multi-worker {job}: {strategy.num_replicas_in_sync} replicas in all, "
             f"{'chief: writes' if is_chief else 'not the chief: reads'} {model_dir}")
    return prefixed


def agreed_step(strategy: tf.distribute.Strategy, value: int) -> tuple[int, int]:
    """(min, max) of `value` over the replicas (a collective: every worker must call it)."""
    per_replica = strategy.run(lambda: tf.constant([float(value)], tf.float32))
    values = strategy.gather(per_replica, axis=0).numpy()
    return int(values.min()), int(values.max())

