"""Comparing architectures: ranks, relative improvement, Kendall's tau, the figure, inherited
accuracy (masked supernet), and the tool end to end on a tiny config, resumption included."""

import dataclasses
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from auto_deeplab_tf import comparison
from auto_deeplab_tf import inherited
from auto_deeplab_tf import random_architecture as ra
from auto_deeplab_tf import search_space
from auto_deeplab_tf.architecture import Architecture, origin_metadata
from auto_deeplab_tf.supernet import AutoDeepLabSupernet
from tests import segmentation_helpers as sh


# -- statistics ----------------------------------------------------------------------------
def test_kendall_tau_on_known_rankings():
    assert comparison.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert comparison.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # One swapped pair of six: (5 concordant - 1 discordant) / 6.
    assert comparison.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # Ties: tau-b, 2 / sqrt(5 * 6) here; scipy's kendalltau (tau-b) agrees.
    x, y = [1, 2, 2, 3], [1, 2, 3, 4]
    assert comparison.kendall_tau(x, y) == pytest.approx(5 / np.sqrt(5 * 6))
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.integers(0, 4, 9), rng.integers(0, 4, 9)
        assert comparison.kendall_tau(list(a), list(b)) == pytest.approx(
            stats.kendalltau(a, b).statistic)
    assert comparison.kendall_tau([1, 1, 1], [1, 2, 3]) is None
    assert comparison.kendall_tau([1], [2]) is None


def test_ranks_relative_improvement_and_summary():
    assert comparison.ranks([0.5, 0.7, 0.5, 0.9]) == [3, 2, 3, 1]
    # Yang et al.: RI = 100 * (acc - mean random) / mean random.
    assert comparison.relative_improvement(0.55, 0.5) == pytest.approx(10.0)

    def row(name, origin, miou, inherited_miou=None):
        mean = None if miou is None else float(np.mean(miou))
        return {"name": name, "origin": origin, "miou": {} if miou is None else
                {str(s): v for s, v in enumerate(miou)}, "mean_miou": mean,
                "inherited_miou": inherited_miou, "params": 10, "multiply_adds": 20}

    rows = [row("r0", "random", [0.40, 0.42], 0.1), row("r1", "random", [0.50, 0.52], 0.3),
            row("r2", "random", [0.30, 0.30], 0.2), row("s0", "search", [0.47, 0.49], 0.4),
            row("paper", "other", [0.6, 0.6]), row("s1", "search", None, 0.5)]
    summary = comparison.summarize(rows)
    assert [r["rank"] for r in rows] == [4, 2, 5, 3, 1, None]
    assert summary["random"] == {"count": 3, "mean_miou": pytest.approx(0.4067, abs=1e-4),
                                 "median_miou": pytest.approx(0.41)}
    s0, s1 = summary["searched"]
    assert (s0["name"], s0["rank"]) == ("s0", 3)
    assert s0["relative_improvement"] == pytest.approx(100 * (0.48 - 0.40666667) / 0.40666667)
    assert s1["rank"] is None and s1["relative_improvement"] is None
    # Tau over the 4 finished architectures with both numbers: r2 < r0 < s0 < r1 retrained,
    # r0 < r2 < r1 < s0 inherited: 4 concordant, 2 discordant pairs.
    assert summary["kendall_tau"] == pytest.approx(2 / 6)
    assert summary["kendall_tau_count"] == 4
    report = comparison.format_report(rows, summary, [0, 1])
    assert "searched s0: rank 3 of 5, mean mIoU 48.00%; relative improvement over the " \
           "random mean +18.0% (Yang et al.)" in report
    assert "searched s1: not finished" in report
    assert "Kendall's tau, inherited vs retrained mIoU: 0.333 over 4 architectures" in report

    image = comparison.comparison_image(rows, summary, "title")
    assert image.dtype == np.uint8 and image.shape[2] == 3
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    # Searched (red), random (blue) and other (grey) markers are all drawn.
    assert {(214, 39, 40), (31, 119, 180), (110, 110, 110)} <= colours


def test_expand_architectures_globs_names_and_origins(tmp_path):
    sampled = ra.write_samples(str(tmp_path / "random"), 3, 5, 1, 2, 2)
    for seed in (0, 1):
        Architecture.from_dict(sh.TINY_ARCH).save(
            str(tmp_path / f"search{seed}" / "architecture.json"),
            origin_metadata("search", seed))
    plain = str(tmp_path / "plain.json")
    Architecture.from_dict(sh.TINY_ARCH).save(plain)
    candidates = comparison.expand_architectures(
        [str(tmp_path / "search*" / "architecture.json"), str(tmp_path / "random" / "*.json"),
         sampled[0], plain, "autodeeplab"])
    assert [c.name for c in candidates] == [
        "search0/architecture", "search1/architecture", "random_seed5_000",
        "random_seed5_001", "random_seed5_002", "plain", "autodeeplab"]
    assert [(c.origin, c.origin_seed) for c in candidates] == [
        ("search", 0), ("search", 1), ("random", 5), ("random", 5), ("random", 5),
        ("other", None), ("other", None)]
    # Same content, same key: the two searches found the same network and share its runs.
    assert candidates[0].key == candidates[1].key == candidates[5].key
    assert len({c.key for c in candidates}) == 5
    with pytest.raises(ValueError, match="--architectures: '.*nothing.*' matches no file"):
        comparison.expand_architectures([str(tmp_path / "nothing*.json")])
    (tmp_path / "bad.json").write_text('{"cell": [], "path": [0]}')
    with pytest.raises(ValueError, match="--architectures: .*bad.json: cell must have"):
        comparison.expand_architectures([str(tmp_path / "bad.json")])


# -- inherited accuracy --------------------------------------------------------------------
SUPERNET = dict(filter_multiplier=2, num_blocks=2, num_layers=4, num_levels=3,
                stem_filters=(4, 4, 8), head_filters=4)
# Uses sep_conv_3x3, skip and max pool only; the path changes level, so a cell's H^{l-2}
# input is sometimes an off-path node.
MASKED_ARCH = Architecture(cell=[[(0, "sep_conv_3x3"), (1, "skip_connect")],
                                 [(0, "max_pool_3x3"), (2, "sep_conv_3x3")]],
                           path=[1, 1, 0, 1], num_levels=3)


def test_subnetwork_masks():
    alpha, beta, heads = inherited.subnetwork_weights(MASKED_ARCH, 2, 4, 3)
    zero = search_space.OPS.index("zero")
    assert np.all(alpha.sum(axis=1) == 1)
    kept = {(search_space.edge_index(b, s), op) for b, block in enumerate(MASKED_ARCH.cell)
            for s, op in block}
    for row in range(alpha.shape[0]):
        ops = {search_space.OPS[k] for k in np.flatnonzero(alpha[row])}
        expected = {op for r, op in kept if r == row} or {"zero"}
        assert ops == expected
    assert alpha[:, zero].sum() == alpha.shape[0] - 4
    # One transition per layer, along the path from the stem (level 0).
    assert beta.sum() == 4
    assert [tuple(np.argwhere(beta[l])[0]) for l in range(4)] == [(0, 2), (1, 1), (1, 0),
                                                                  (0, 2)]
    assert list(heads) == [0, 1, 0]
    with pytest.raises(ValueError, match="has B=2, L=4, 3 levels but the supernet has B=2, "
                                         "L=6, 3 levels"):
        inherited.subnetwork_weights(MASKED_ARCH, 2, 6, 3)


def _perturb(variables, rng):
    for v in variables:
        v.assign(v + tf.constant(rng.normal(0, 0.5, v.shape), v.dtype))


def _unused_parts_of_mixed_ops(cell, used_ops, rng):
    """Perturbs, in every mixed op of `cell`, the kernels of the ops `used_ops` lacks."""
    for op in cell.mixed_ops:
        flat = op.flat_kernels.numpy()
        offset = 0
        for name, size in zip(op._part_names, op._part_sizes):
            if not any(name.startswith(used) for used in used_ops):
                flat[offset:offset + size] += rng.normal(0, 0.5, size)
            offset += size
        op.flat_kernels.assign(flat)


@pytest.mark.parametrize("partial_channels", [1, 2])
def test_masked_supernet_ignores_every_weight_off_the_subnetwork(partial_channels):
    # With partial channels (PC-DARTS) the masks also switch off the bypass of the edges
    # off the cell, so the same holds.
    tf.keras.utils.set_random_seed(0)
    model = AutoDeepLabSupernet(3, loop_uniform_layers=False,
                                partial_channels=partial_channels, **SUPERNET)
    model.build((None, None, None, 3))
    subnetworks = inherited.Subnetworks(model)
    subnetworks.select(MASKED_ARCH)
    images = tf.random.stateless_uniform((2, 32, 32, 3), (1, 2), -1, 1)
    before = subnetworks(images).numpy()
    softmax_before = model(images).numpy()

    rng = np.random.default_rng(0)
    path = MASKED_ARCH.path
    used_ops = {op for block in MASKED_ARCH.cell for _, op in block}
    for k, (layer, level, sources, _, _) in enumerate(model._plan):
        on_path = path[layer - 1] == level
        for source, t, _ in sources:
            feeding = on_path and source == (path[layer - 2] if layer > 1 else 0)
            if not feeding:
                _perturb(model.transitions[t].weights, rng)
        if on_path:
            _unused_parts_of_mixed_ops(model.cells[k], used_ops, rng)
        else:
            _perturb(model.cells[k].weights + model.prev_prev[k].weights, rng)
    for level, head in enumerate(model.heads):
        if level != path[-1]:
            _perturb(head.weights, rng)
    _perturb([model.alpha, model.beta], rng)  # the masks replace them entirely

    after = subnetworks(images).numpy()
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    # The same perturbation changes the supernet's own (softmax-weighted) output...
    assert np.max(np.abs(model(images).numpy() - softmax_before)) > 1e-2
    # ...and perturbing a weight the sub-network uses changes the masked one.
    last = [k for k, (layer, level, *_) in enumerate(model._plan)
            if layer == 4 and level == path[-1]][0]
    _perturb(model.cells[last].weights, rng)
    assert np.max(np.abs(subnetworks(images).numpy() - before)) > 1e-2


def test_looped_supernet_gives_the_same_subnetwork_output():
    # The search runs the uniform layers as a loop: the masks reach it through beta.
    # Traced, the loop is a tf.while_loop; eagerly it runs layer by layer (UniformLayers).
    arch = Architecture(cell=MASKED_ARCH.cell, path=[1, 2, 2, 1, 0, 1], num_levels=3)
    settings = dict(SUPERNET, num_layers=6)
    tf.keras.utils.set_random_seed(0)
    looped = AutoDeepLabSupernet(3, loop_uniform_layers=True, **settings)
    looped.build((None, None, None, 3))
    assert looped.num_looped_layers == 3
    images = tf.random.stateless_uniform((2, 32, 32, 3), (3, 4), -1, 1)
    nets = inherited.Subnetworks(looped)
    nets.select(arch)
    traced = tf.function(nets)
    np.testing.assert_allclose(traced(images).numpy(), nets(images).numpy(), rtol=1e-4,
                               atol=1e-5)


# -- end to end ----------------------------------------------------------------------------
TINY_CELL = [[(0, "sep_conv_3x3"), (1, "skip_connect")]]


def _setup(base):
    """Tiny TFRecords, a searched architecture (B=1, L=2, 2 levels), a random one, and a
    'search run' directory holding a supernet of that space (untrained weights)."""
    from auto_deeplab_tf import checkpointing
    from auto_deeplab_tf import search as search_lib

    data_dir = sh.make_tiny_cityscapes(str(base / "data"))
    # The metadata a search writes after its last epoch (here step 1, the checkpoint's).
    Architecture(cell=TINY_CELL, path=[1, 1], num_levels=2).save(
        str(base / "search" / "architecture.json"),
        origin_metadata("search", 0, path_probability=0.25, epoch=1, global_step=1))
    ra.write_samples(str(base / "random"), 1, 0, num_blocks=1, num_layers=2, num_levels=2)
    config = search_lib.SearchConfig(model_dir=str(base / "search"), dataset="cityscapes",
                                     filter_multiplier=2, num_layers=2, num_blocks=1,
                                     num_levels=2, crop_size=32, scale=1.0)
    model = search_lib.build_search_model(config, 19, total_steps=1)
    tf.train.Checkpoint(model=checkpointing.VariableBundle(model.variables)).save(
        str(base / "search" / "checkpoints" / "ckpt"))
    (base / "search" / "search_config.json").write_text(json.dumps(dataclasses.asdict(config)))
    return data_dir


RETRAIN_FLAGS = ("--filter_multiplier=2", "--stem_filters=4,4,8", "--aspp_filters=8",
                 "--decoder_filters=8", "--crop_size=32", "--batch_size=2",
                 "--train_steps=2", "--checkpoint_every_steps=1", "--log_every_steps=1",
                 "--optimizer=adam", "--base_learning_rate=0.01")


def test_cli_compares_with_inherited_accuracy_and_refuses_single_run_flags(tmp_path):
    data_dir = _setup(tmp_path)
    out = tmp_path / "out"
    archs = f"--architectures={tmp_path / 'search' / 'architecture.json'}," \
            f"{tmp_path / 'random' / '*.json'}"
    common = (f"--model_dir={out}", "--dataset=cityscapes", f"--data_dir={data_dir}", archs)
    bad = sh.run_module("train.compare_architectures", *common, "--seed=3")
    assert bad.returncode == 1
    assert "error: --seed is not used by train.compare_architectures; give --retrain_seeds " \
           "instead" in bad.stderr

    result = sh.run_module("train.compare_architectures", *common, *RETRAIN_FLAGS,
                           "--retrain_seeds=4", f"--supernet_dir={tmp_path / 'search'}",
                           timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads((out / "comparison.json").read_text())
    assert written["retrain_seeds"] == [4]
    assert written["retrain_settings"]["train_steps"] == 2  # the retrain flags passed through
    rows = {row["name"]: row for row in written["architectures"]}
    assert set(rows) == {"search/architecture", "random_seed0_000"}
    for row in rows.values():
        assert set(row["miou"]) == {"4"} and row["mean_miou"] == row["miou"]["4"]
        assert 0 <= row["mean_miou"] <= 1 and 0 <= row["inherited_miou"] <= 1
        assert row["params"] > 0 and row["multiply_adds"] > 0
        run_dir = out / "runs" / row["key"] / "seed_4"
        config = json.loads((run_dir / "retrain_config.json").read_text())
        assert (config["seed"], config["train_steps"], config["filter_multiplier"]) == (4, 2, 2)
        assert config["architecture_spec"]["path"] == row["architecture"]["path"]
    assert rows["search/architecture"]["origin"] == "search"
    assert rows["random_seed0_000"]["origin"] == "random"
    summary = written["summary"]
    assert summary["kendall_tau_count"] == 2
    assert summary["searched"][0]["rank"] == rows["search/architecture"]["rank"]
    assert "searched search/architecture: rank" in result.stdout
    assert "Kendall's tau, inherited vs retrained mIoU" in result.stdout
    assert (out / "comparison.png").stat().st_size > 0
    tags = set()
    for path in glob.glob(str(out / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    assert comparison.TENSORBOARD_TAG in tags


def test_resumes_and_never_retrains_a_finished_run(tmp_path):
    from auto_deeplab_tf import checkpointing

    data_dir = sh.make_tiny_cityscapes(str(tmp_path / "data"))
    Architecture(cell=TINY_CELL, path=[1, 1], num_levels=2).save(
        str(tmp_path / "a.json"), origin_metadata("search", 0))
    ra.write_samples(str(tmp_path / "random"), 1, 0, num_blocks=1, num_layers=2, num_levels=2)
    candidates = comparison.expand_architectures(
        [str(tmp_path / "a.json"), str(tmp_path / "random" / "*.json")])
    template = sh.tiny_config(tmp_path / "out", data_dir, train_steps=2,
                              checkpoint_every_steps=1)
    out = str(tmp_path / "out")

    def run(**changes):
        logs = []
        payload = comparison.run_comparison(dataclasses.replace(template, **changes),
                                            candidates, [0], out, log=logs.append)
        return payload, logs

    # Paused after one step: nothing to evaluate yet.
    payload, logs = run(max_steps=1)
    assert all(row["miou"] == {} and row["rank"] is None for row in payload["architectures"])
    assert all(row["params"] > 0 for row in payload["architectures"])
    assert any("2 of 2 retrainings stopped early (--max_steps)" in line for line in logs)

    # Rerun: each retraining resumes from its step 1 and finishes.
    payload, logs = run()
    assert sum("resumed from" in line and "at step 1 of 2" in line for line in logs) == 2
    assert all(set(row["miou"]) == {"0"} for row in payload["architectures"])
    evals = sorted(glob.glob(os.path.join(out, "runs", "*", "seed_0", "eval_val.json")))
    stamps = [os.stat(p).st_mtime_ns for p in evals]

    # And again: no training step, no re-evaluation, the same numbers.
    again, logs = run()
    assert not any("tracing the training step" in line for line in logs)
    assert sum("0 in this run" in line for line in logs) == 2
    assert [os.stat(p).st_mtime_ns for p in evals] == stamps
    assert [r["miou"] for r in again["architectures"]] == \
        [r["miou"] for r in payload["architectures"]]
    for path in evals:
        assert checkpointing.checkpoint_step(json.load(open(path))["checkpoint"]) == 2

    # A changed budget on the same directory is refused, naming the flag.
    with pytest.raises(ValueError, match="--train_steps"):
        run(train_steps=3)


def test_reuses_a_finished_run_whose_checkpoints_are_gone(tmp_path):
    """A long comparison spans machines that carry only small files: a run with a matching
    retrain_config.json and an eval_val.json of the final step counts as finished."""
    import shutil

    data_dir = sh.make_tiny_cityscapes(str(tmp_path / "data"))
    Architecture(cell=TINY_CELL, path=[1, 1], num_levels=2).save(
        str(tmp_path / "a.json"), origin_metadata("search", 0))
    ra.write_samples(str(tmp_path / "random"), 1, 0, num_blocks=1, num_layers=2, num_levels=2)
    candidates = comparison.expand_architectures(
        [str(tmp_path / "a.json"), str(tmp_path / "random" / "*.json")])
    template = sh.tiny_config(tmp_path / "out", data_dir, train_steps=2,
                              checkpoint_every_steps=1)
    out = str(tmp_path / "out")

    def run(**changes):
        logs = []
        payload = comparison.run_comparison(dataclasses.replace(template, **changes),
                                            candidates, [0], out, log=logs.append)
        return payload, logs

    first, _ = run()
    run_dirs = sorted(glob.glob(os.path.join(out, "runs", "*", "seed_0")))
    assert len(run_dirs) == 2
    evals = [os.path.join(d, "eval_val.json") for d in run_dirs]
    stamps = [os.stat(p).st_mtime_ns for p in evals]
    for run_dir in run_dirs:
        shutil.rmtree(os.path.join(run_dir, "checkpoints"))

    # Carried elsewhere without checkpoints: nothing is retrained or re-evaluated.
    again, logs = run()
    assert not any("tracing the training step" in line for line in logs)
    for run_dir, path in zip(run_dirs, evals):
        assert sum(line.endswith(f"no checkpoints: result reused from {path}")
                   for line in logs) == 1
        assert not os.path.exists(os.path.join(run_dir, "checkpoints"))
    assert [os.stat(p).st_mtime_ns for p in evals] == stamps
    written = json.loads(open(os.path.join(out, "comparison.json")).read())
    for payload in (again, written):
        assert [r["miou"] for r in payload["architectures"]] == \
            [r["miou"] for r in first["architectures"]]
        assert [r["mean_miou"] for r in payload["architectures"]] == \
            [r["mean_miou"] for r in first["architectures"]]

    # Other settings are still refused, as train.retrain refuses them.
    with pytest.raises(ValueError, match="--batch_size=1 but .* different batch_size"):
        run(batch_size=1)

    # An evaluation of an earlier step is not a finished run: that one is retrained (from
    # scratch, its checkpoints being gone) and evaluated again; the other is still reused.
    with open(evals[0]) as f:
        early = json.load(f)
    early["global_step"] = 1
    with open(evals[0], "w") as f:
        json.dump(early, f)
    _, logs = run()
    assert sum("tracing the training step" in line for line in logs) == 1
    assert sum("retraining finished: 2 steps (2 in this run" in line for line in logs) == 1
    assert sum("result reused from" in line for line in logs) == 1
    assert any(line.endswith(f"result reused from {evals[1]}") for line in logs)
    with open(evals[0]) as f:
        assert json.load(f)["global_step"] == 2
    assert os.path.isdir(os.path.join(run_dirs[0], "checkpoints"))
    assert not os.path.exists(os.path.join(run_dirs[1], "checkpoints"))


def test_inherited_results_carry_to_a_copy_of_the_search_run_without_checkpoints(
        tmp_path, monkeypatch):
    """The search run's small files identify its supernet: inherited results computed with
    the run in one place are reused when it is given from another, checkpoints left out."""
    import shutil

    data_dir = _setup(tmp_path)
    search_dir = tmp_path / "search"
    candidates = comparison.expand_architectures(
        [str(search_dir / "architecture.json"), str(tmp_path / "random" / "*.json")])
    template = sh.tiny_config(tmp_path / "out", data_dir, train_steps=1,
                              checkpoint_every_steps=1)
    out = str(tmp_path / "out")

    def run(supernet_dir):
        logs = []
        payload = comparison.run_comparison(template, candidates, [0], out,
                                            supernet_dir=str(supernet_dir), log=logs.append)
        return payload, logs

    first, logs = run(search_dir)
    assert sum("[inherited " in line for line in logs) == 2
    saved = sorted(glob.glob(os.path.join(out, "runs", "*", "inherited_val.json")))
    assert len(saved) == 2
    stamps = [os.stat(p).st_mtime_ns for p in saved]
    for path in saved:
        assert json.load(open(path))["supernet"]["global_step"] == 1

    # Another machine: the search run's small files only, at another path.
    carried = tmp_path / "elsewhere" / "search"
    carried.mkdir(parents=True)
    for name in ("search_config.json", "architecture.json"):
        shutil.copy(search_dir / name, carried / name)

    def no_supernet(*args, **kwargs):
        raise AssertionError("the supernet was loaded")

    monkeypatch.setattr(inherited, "load_supernet", no_supernet)
    again, logs = run(carried)
    assert [r["inherited_miou"] for r in again["architectures"]] == \
        [r["inherited_miou"] for r in first["architectures"]]
    assert all(r["inherited_miou"] is not None for r in again["architectures"])
    assert [os.stat(p).st_mtime_ns for p in saved] == stamps
    assert any(f"2 of 2 architectures: inherited val mIoU reused (search run {carried}, "
               "step 1)" in line for line in logs)
    # The original place, checkpoint and all, reuses them too.
    run(search_dir)
    assert [os.stat(p).st_mtime_ns for p in saved] == stamps
    # A result written before results named their supernet is kept when its checkpoint path
    # is this one, and gains the name.
    legacy = json.load(open(saved[1]))
    identity = legacy.pop("supernet")
    with open(saved[1], "w") as f:
        json.dump(legacy, f)
    run(search_dir)
    assert json.load(open(saved[1])) == dict(legacy, supernet=identity)

    # One result missing and no checkpoint to compute it: refused, naming what is missing.
    os.remove(saved[0])
    key = os.path.basename(os.path.dirname(saved[0]))
    name = [c.name for c in candidates if c.key == key][0]
    with pytest.raises(ValueError) as error:
        run(carried)
    assert str(error.value) == (
        f"--supernet_dir={carried} has no search checkpoint in {carried / 'checkpoints'}, "
        f"and 1 of 2 architectures have no inherited val mIoU of this supernet (step 1): "
        f"{name} ({saved[0]}); give --supernet_dir with its checkpoints/ to compute it")
