"""Multi-worker search and retraining: two local CPU workers (MultiWorkerMirroredStrategy
over 127.0.0.1).

Each worker is a subprocess (tests/multi_worker_entry.py) running `run_search` on the tiny
config and synthetic data of tests/search_test.py, or `run_retrain` on the tiny network of
tests/segmentation_helpers.py. Every wait is bounded and every process is killed in a
`finally`, so a hung collective fails the test instead of hanging CI.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import tensorflow as tf

from auto_deeplab_tf import distribute
from auto_deeplab_datasets import input_pipeline
from tests import segmentation_helpers as sh

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_TIMEOUT_S = 150  # one whole run of a worker (start-up and tracing included)
# Bound on collectives and the cluster start-up. A killed peer is noticed sooner (~10 s) by
# TF's coordination service heartbeats; this bound must cover the skew between the workers
# (one tracing or checkpointing more slowly): 30 s failed now and then on a loaded 2-core
# machine.
COLLECTIVE_TIMEOUT_S = 90


def free_ports(n):
    """n distinct free loopback ports (all bound at once, then released)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


class Cluster:
    """Worker subprocesses of one job; their logs go to files under `out`."""

    def __init__(self, out, ports):
        self.out, self.ports, self.procs, self.attempt = out, ports, {}, 0
        os.makedirs(out, exist_ok=True)

    def start(self, model_dir, overrides, *, duplicate=False, step_delay=0.0,
              multi_worker=True, job="search", no_dropout=False):
        """`model_dir`: one for all workers, or a list of one each."""
        self.attempt += 1
        indices = range(len(self.ports)) if multi_worker else [0]
        for i in indices:
            env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="",
                       TF_CPP_MIN_LOG_LEVEL="2", TMPDIR=self.tmpdir(i))
            env.pop("TF_CONFIG", None)
            if multi_worker:
                env["TF_CONFIG"] = tf_config(self.ports, i)
            os.makedirs(env["TMPDIR"], exist_ok=True)
            cmd = [sys.executable, "-m", "tests.multi_worker_entry",
                   f"--model_dir={model_dir if isinstance(model_dir, str) else model_dir[i]}",
                   f"--out={self.result_path(i)}",
                   f"--overrides={json.dumps(overrides)}", f"--step_delay={step_delay}",
                   f"--job={job}"]
            if duplicate:
                cmd.append("--duplicate")
            if no_dropout:
                cmd.append("--no_dropout")
            with open(self.log_path(i), "w") as log:
                self.procs[i] = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log,
                                                 stderr=subprocess.STDOUT)

    def tmpdir(self, i):
        return os.path.join(self.out, f"tmp{i}")

    def log_path(self, i):
        return os.path.join(self.out, f"worker{i}.attempt{self.attempt}.log")

    def result_path(self, i):
        return os.path.join(self.out, f"worker{i}.attempt{self.attempt}.npz")

    def log(self, i):
        with open(self.log_path(i)) as f:
            return f.read()

    def wait(self, indices=None, timeout=RUN_TIMEOUT_S):
        """Exit codes of the given workers; fails (with their logs) past `timeout`."""
        deadline = time.monotonic() + timeout
        codes = {}
        for i in (self.procs if indices is None else indices):
            try:
                codes[i] = self.procs[i].wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill_all()
                pytest.fail(f"worker {i} still running after {timeout} s (hung collective?)\n"
                            + self.logs())
        return codes

    def kill(self, i):
        p = self.procs.get(i)
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=30)

    def kill_all(self):
        for i in list(self.procs):
            self.kill(i)

    def logs(self):
        return "\n".join(f"--- worker {i}:\n{self.log(i)[-3000:]}" for i in self.procs)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(str(tmp_path / "workers"), free_ports(2))
    try:
        yield c
    finally:
        c.kill_all()


def final_losses(log):
    """(loss A, loss B) of the last epoch summary line of a worker's log."""
    found = re.findall(r"done: loss A ([0-9.]+), mIoU A [0-9.]+, loss B ([0-9.]+)", log)
    assert found, log[-3000:]
    return [float(x) for x in found[-1]]


def latest_step(checkpoint_dir):
    """The step of the chief's latest checkpoint (from the CheckpointManager state file)."""
    try:
        with open(os.path.join(checkpoint_dir, "checkpoint")) as f:
            match = re.search(r'^model_checkpoint_path: ".*ckpt-(\d+)"', f.read(), re.M)
    except FileNotFoundError:
        return None
    return int(match.group(1)) if match else None


def test_two_workers_agree_match_one_process_and_only_the_chief_writes(tmp_path, cluster):
    """Same global batch (2) on one process and on 2 workers (one sample each).

    As in search_test.test_mirrored_over_two_cpus_matches_one_device, each batch holds two
    copies of one image, so every worker's batch-norm statistics equal the single-process
    ones and the runs differ only by float reduction order. Tolerance: rtol 1e-3 on the
    epoch's mean losses (logged with 4 decimals) and atol 1e-3 on alpha/beta after 2
    bilevel steps (which moved alpha by ~7e-3); measured: losses equal to 4 decimals,
    alpha/beta within ~2e-4. The two workers' alpha/beta are mirrored: bitwise equal.
    """
    overrides = dict(epochs=1, arch_start_epoch=0, steps_per_epoch=2, weight_lr=0.01,
                     arch_lr=3e-3, collective_timeout_s=COLLECTIVE_TIMEOUT_S)
    model_dir = tmp_path / "multi"
    cluster.start(str(model_dir), dict(overrides, strategy="multi_worker"), duplicate=True)
    assert cluster.wait() == {0: 0, 1: 0}, cluster.logs()
    logs = [cluster.log(0), cluster.log(1)]
    workers = [np.load(cluster.result_path(i)) for i in (0, 1)]
    assert "[worker 0] multi-worker search: 2 replicas in all, chief" in logs[0]
    assert "[worker 1] multi-worker search: 2 replicas in all, not the chief" in logs[1]

    # Only the chief wrote MODEL_DIR; the other worker's temporary checkpoints are gone.
    assert latest_step(model_dir / "checkpoints") == 2
    assert (model_dir / "architecture.json").exists()
    assert os.listdir(model_dir / "architectures") == ["epoch_001.json"]
    assert len([f for f in os.listdir(model_dir / "train") if f.startswith("events.out")]) == 1
    assert not [f for f in os.listdir(model_dir / "checkpoints") if "worker" in f]
    assert not [f for f in os.listdir(cluster.tmpdir(1)) if f.startswith("search_worker")]

    for key in ("alpha", "beta"):
        np.testing.assert_array_equal(workers[0][key], workers[1][key])
    assert final_losses(logs[0]) == final_losses(logs[1])

    cluster.start(str(tmp_path / "single"), dict(overrides, strategy="one_device"),
                  duplicate=True, multi_worker=False)
    assert cluster.wait([0]) == {0: 0}, cluster.log(0)
    single = np.load(cluster.result_path(0))
    np.testing.assert_allclose(final_losses(logs[0]), final_losses(cluster.log(0)), rtol=1e-3)
    np.testing.assert_allclose(workers[0]["alpha"], single["alpha"], atol=1e-3)
    np.testing.assert_allclose(workers[0]["beta"], single["beta"], atol=1e-3)
    assert np.abs(single["alpha"]).max() > 3e-3  # alpha did move (2 Adam steps of 3e-3)


def test_a_killed_worker_fails_the_job_and_the_relaunch_resumes(tmp_path, cluster):
    overrides = dict(strategy="multi_worker", epochs=2, arch_start_epoch=1, steps_per_epoch=4,
                     checkpoint_every_steps=1, collective_timeout_s=COLLECTIVE_TIMEOUT_S)
    model_dir = tmp_path / "run"
    checkpoints = model_dir / "checkpoints"
    # Slowed to ~0.5 s a step after tracing so that the kill lands mid-run.
    cluster.start(str(model_dir), overrides, step_delay=0.5)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while (latest_step(checkpoints) or 0) < 2:
        if time.monotonic() > deadline or any(p.poll() is not None
                                              for p in cluster.procs.values()):
            pytest.fail("no checkpoint at step >= 2 while both workers ran\n" + cluster.logs())
        time.sleep(0.1)
    cluster.kill(1)
    killed_at = latest_step(checkpoints)
    assert killed_at < 8
    # The chief notices (peer health check or collective timeout) and fails: it must not
    # hang nor finish the search alone.
    codes = cluster.wait([0], timeout=4 * COLLECTIVE_TIMEOUT_S)
    assert codes[0] != 0, cluster.log(0)
    assert "distributed run failed" in cluster.log(0)
    assert not (model_dir / "architectures" / "epoch_002.json").exists()

    # Relaunch the whole job with the same command: both workers resume from the chief's
    # latest checkpoint (the non-chief reads the chief's directory) and finish.
    resumed_at = latest_step(checkpoints)
    cluster.start(str(model_dir), overrides)
    assert cluster.wait() == {0: 0, 1: 0}, cluster.logs()
    for i in (0, 1):
        log = cluster.log(i)
        assert re.search(rf"\[worker {i}\] resumed from {re.escape(str(checkpoints))}"
                         rf"/ckpt-{resumed_at} at epoch", log), log[-3000:]
    results = [np.load(cluster.result_path(i)) for i in (0, 1)]
    assert all(bool(r["completed"]) and int(r["global_step"]) == 8 for r in results)
    for key in ("alpha", "beta"):
        np.testing.assert_array_equal(results[0][key], results[1][key])
    assert latest_step(checkpoints) == 8
    assert (model_dir / "architectures" / "epoch_002.json").exists()


def test_a_worker_whose_peers_never_start_exits_after_the_timeout(tmp_path):
    # TensorFlow waits for the cluster without a deadline (and ignores SIGTERM meanwhile).
    env = dict(os.environ, TF_CONFIG=tf_config(free_ports(2), 0), CUDA_VISIBLE_DEVICES="",
               TF_CPP_MIN_LOG_LEVEL="3")
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "train.retrain", "--dataset=demo",
                          f"--model_dir={tmp_path / 'run'}", "--strategy=multi_worker",
                          "--collective_timeout_s=3"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert run.returncode == 1, run.stderr[-3000:]
    assert ("waiting up to 3 s (--collective_timeout_s) for every worker of the cluster (127.0."
            in run.stderr)
    assert "Timeout (0:00:03)!" in run.stderr
    assert time.monotonic() - start < 60
    assert not (tmp_path / "run" / "retrain_config.json").exists()


def test_non_chief_workers_use_the_same_split_without_writing_it(tmp_path, monkeypatch):
    names = [f"image_{i:02d}" for i in range(11)]
    monkeypatch.setattr(input_pipeline, "split_names", lambda *args, **kwargs: names)
    descriptor = types.SimpleNamespace(name="fake")
    path = tmp_path / "search_split.json"
    other = input_pipeline.search_split(descriptor, "data", str(tmp_path), 7, write=False)
    assert not path.exists()
    chief = input_pipeline.search_split(descriptor, "data", str(tmp_path), 7)
    assert path.exists() and chief == other
    assert input_pipeline.search_split(descriptor, "data", str(tmp_path), 7,
                                       write=False) == chief
    assert sorted(chief[0] + chief[1]) == names and not set(chief[0]) & set(chief[1])


@pytest.mark.parametrize("raw,message", [
    ("", "--strategy=multi_worker needs the TF_CONFIG environment variable"),
    ("{cluster", "TF_CONFIG is not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', "TF_CONFIG has no 'cluster'"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}}', "TF_CONFIG has no 'task'"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
     "TF_CONFIG: task index 1 is out of range for the 1 'worker' task(s)"),
    ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}',
     "TF_CONFIG: cluster['worker'] must be a non-empty list of 'host:port' strings"),
    ('{"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}',
     "TF_CONFIG: job 'ps' is not supported"),
])
def test_a_missing_or_malformed_tf_config_is_named(monkeypatch, raw, message):
    monkeypatch.setenv("TF_CONFIG", raw)
    with pytest.raises(ValueError) as e:
        distribute.make_strategy("multi_worker")
    assert message in str(e.value)


def test_bad_collective_communication_is_named():
    with pytest.raises(ValueError) as e:
        distribute.make_strategy("multi_worker", collective_communication="gloo")
    assert str(e.value) == ("--collective_communication=gloo: expected one of auto, ring, "
                            "nccl")


def retrain_losses(log):
    """{step: loss} of the progress lines of a retraining log."""
    found = re.findall(r"^(?:\[worker \d\] )?step (\d+)/\d+ (?:\(epoch \d+\) )?\| loss ([0-9.]+)",
                       log, re.M)
    return {int(step): float(loss) for step, loss in found}


def test_two_workers_retrain_resume_from_the_chief_match_one_process_only_the_chief_writes(
        tmp_path, cluster):
    """Retraining on 2 workers (one image each of a global batch of 2) for 2 steps, relaunched
    for 2 more, against one uninterrupted process with the same global batch.

    Each batch holds two copies of one image (as in the search test above) and dropout is
    off, so every worker's batch-norm statistics and outputs equal the single-process ones and
    the runs differ only by float reduction order. Tolerance: atol 1e-5 on every weight
    (batch-norm statistics included) after 4 SGD steps, of which the last 2 moved some weight
    by ~1.5e-2, and rtol 1e-4 on the logged losses (4 decimals); measured: weights within
    1.2e-7, losses equal to 4 decimals. The two workers' weights are bitwise equal.

    There is no killed-worker test for retraining: noticing a dead peer is the strategy's
    (test_a_killed_worker_fails_the_job_and_the_relaunch_resumes covers it, ~2 min on 2
    cores), and the relaunch resuming from the chief's checkpoint is checked here.
    """
    overrides = dict(architecture=sh.arch_file(tmp_path), train_steps=4,
                     checkpoint_every_steps=2, deterministic=True,
                     collective_timeout_s=COLLECTIVE_TIMEOUT_S)
    model_dir = tmp_path / "multi"
    checkpoints = model_dir / "checkpoints"
    multi = dict(overrides, strategy="multi_worker")
    cluster.start(str(model_dir), dict(multi, max_steps=2), duplicate=True, no_dropout=True,
                  job="retrain")
    assert cluster.wait() == {0: 0, 1: 0}, cluster.logs()
    first = [cluster.log(0), cluster.log(1)]
    assert "[worker 0] multi-worker retraining: 2 replicas in all, chief: writes" in first[0]
    assert "[worker 1] multi-worker retraining: 2 replicas in all, not the chief" in first[1]
    # The global batch is split: one image a replica.
    assert "[worker 1] tracing the training step (1 images a replica, 2 replicas;" in first[1]
    assert latest_step(checkpoints) == 2

    # Relaunched, both workers resume from the chief's checkpoint and finish.
    cluster.start(str(model_dir), multi, duplicate=True, no_dropout=True,
                  job="retrain")
    assert cluster.wait() == {0: 0, 1: 0}, cluster.logs()
    logs = [cluster.log(0), cluster.log(1)]
    for i in (0, 1):
        assert (f"[worker {i}] resumed from {checkpoints}/ckpt-2 at step 2 of 4"
                in logs[i]), logs[i][-3000:]
    workers = [dict(np.load(cluster.result_path(i))) for i in (0, 1)]
    assert all(int(w.pop("global_step")) == 4 and bool(w.pop("completed")) for w in workers)

    # Only the chief wrote MODEL_DIR (one event file a run); the other worker's temporary
    # checkpoints are gone.
    events = [f for f in os.listdir(model_dir / "train") if f.startswith("events.out")]
    assert len(events) == 2
    tags = {value.tag for name in events
            for event in tf.compat.v1.train.summary_iterator(str(model_dir / "train" / name))
            for value in event.summary.value}
    assert {"train/loss", "train/image", "train/prediction"} <= tags
    assert sorted(os.listdir(model_dir)) == ["checkpoints", "retrain_config.json", "train"]
    assert sorted(f for f in os.listdir(checkpoints) if f.endswith(".index")) == [
        "ckpt-2.index", "ckpt-4.index"]
    assert not [f for f in os.listdir(cluster.tmpdir(1)) if f.startswith("retrain_worker")]

    # The workers' weights are mirrored; the chief's checkpoint holds them.
    assert workers[0].keys() == workers[1].keys()
    for key in workers[0]:
        np.testing.assert_array_equal(workers[0][key], workers[1][key], err_msg=key)
    assert retrain_losses(logs[0]) == retrain_losses(logs[1])
    final, halfway = (tf.train.load_checkpoint(str(checkpoints / f"ckpt-{n}")) for n in (4, 2))
    moved = 0.0
    for key, value in workers[0].items():
        name = f"model/variables_by_path/{key}/.ATTRIBUTES/VARIABLE_VALUE"
        np.testing.assert_array_equal(final.get_tensor(name), value, err_msg=key)
        moved = max(moved, float(np.abs(value - halfway.get_tensor(name)).max()))

    cluster.start(str(tmp_path / "single"), dict(overrides, strategy="one_device"),
                  duplicate=True, no_dropout=True, multi_worker=False, job="retrain")
    assert cluster.wait([0]) == {0: 0}, cluster.log(0)
    single = dict(np.load(cluster.result_path(0)))
    assert int(single.pop("global_step")) == 4 and bool(single.pop("completed"))
    losses, single_losses = retrain_losses(first[0] + logs[0]), retrain_losses(cluster.log(0))
    assert sorted(losses) == sorted(single_losses) == [1, 2, 3, 4]
    np.testing.assert_allclose([losses[s] for s in range(1, 5)],
                               [single_losses[s] for s in range(1, 5)], rtol=1e-4)
    assert single.keys() == workers[0].keys()
    for key in workers[0]:
        np.testing.assert_allclose(workers[0][key], single[key], rtol=0, atol=1e-5,
                                   err_msg=key)
    assert moved > 1e-3  # the last 2 steps moved the weights far beyond the tolerance

    # A --model_dir that the workers do not share: they cannot resume together.
    other = tmp_path / "not_shared"
    cluster.start([str(model_dir), str(other)], multi, job="retrain")
    assert cluster.wait() == {0: 2, 1: 2}, cluster.logs()
    message = ("error: the workers resumed from different steps (0 to 4; this one from {}): "
               f"every worker must read the chief's {checkpoints}, so --model_dir must be "
               "shared storage (NFS, GCS)")
    assert message.format(checkpoints / "ckpt-4") in cluster.log(0), cluster.log(0)[-3000:]
    assert message.format("scratch").replace(str(model_dir), str(other)) in cluster.log(1)
    assert os.listdir(other) == []  # the non-chief wrote no retrain_config.json


def test_peer_health_check_timeouts_are_tfs_private_class_settings(monkeypatch):
    """Pins the one place that overwrites private TF attributes: TF 2.21 has them (so the
    setting is not silently a no-op after an upgrade), they follow --collective_timeout_s,
    and nothing else changes them."""
    from tensorflow.python.distribute import collective_all_reduce_strategy as cars

    extended = cars.CollectiveAllReduceExtended
    for attribute in distribute.PEER_HEALTH_CHECK_SETTINGS:
        assert hasattr(extended, attribute), attribute
        monkeypatch.setattr(extended, attribute, getattr(extended, attribute))  # restored
    assert distribute.set_peer_health_check_timeouts(300)
    assert (extended._check_health_initial_timeout, extended._check_health_interval,
            extended._check_health_timeout) == (300, 30, 10)
    assert distribute.set_peer_health_check_timeouts(8)
    assert (extended._check_health_initial_timeout, extended._check_health_interval,
            extended._check_health_timeout) == (8, 2, 1)
