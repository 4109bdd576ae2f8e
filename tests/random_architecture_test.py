"""Random architectures: valid, deterministic, exactly uniform (chi-square), paths counted right.

The uniformity tests draw a fixed-seed sample, so they are deterministic. Their bound is the
99.9% quantile of the chi-square distribution with (categories - 1) degrees of freedom: a
sampler that is exactly uniform exceeds it for one seed in a thousand, and the seed used
here does not. A random walk over the trellis (the obvious, non-uniform sampler) exceeds the
same bound many times over, which shows the test can tell.
"""

import collections
import itertools
import json
import os

import numpy as np
import pytest
from scipy import stats

from auto_deeplab_tf import random_architecture as ra
from auto_deeplab_tf import search_space
from auto_deeplab_tf.architecture import Architecture, read_metadata
from tests import segmentation_helpers as sh

CHI2_QUANTILE = 0.999


def chi_square(counts: collections.Counter, categories: list) -> float:
    """Pearson's statistic of `counts` against the uniform distribution over `categories`
    (every draw must be one of them)."""
    n = sum(counts.values())
    assert set(counts) <= set(categories), "a draw outside the space"
    expected = n / len(categories)
    return sum((counts.get(c, 0) - expected) ** 2 / expected for c in categories)


def chi_square_bound(categories: list) -> float:
    return float(stats.chi2.ppf(CHI2_QUANTILE, len(categories) - 1))


def enumerate_paths(num_layers, num_levels):
    """Every level sequence the architecture validator accepts: an enumeration independent
    of the dynamic programme (it knows nothing of the trellis, only what is legal)."""
    cell = (((0, "skip_connect"), (1, "skip_connect")),)
    legal = []
    for path in itertools.product(range(num_levels), repeat=num_layers):
        try:
            Architecture(cell=cell, path=path, num_levels=num_levels)
        except ValueError:
            continue
        legal.append(path)
    return legal


@pytest.mark.parametrize("num_layers,num_levels",
                         [(1, 1), (1, 4), (3, 2), (4, 3), (6, 4), (7, 5), (8, 4)])
def test_path_count_equals_an_enumeration(num_layers, num_levels):
    legal = enumerate_paths(num_layers, num_levels)
    assert ra.count_paths(num_layers, num_levels) == len(legal)
    # Indexing is a bijection onto exactly those paths, in lexicographic order.
    indexed = [ra.path_from_index(i, num_layers, num_levels) for i in range(len(legal))]
    assert indexed == sorted(legal)
    with pytest.raises(ValueError, match=f"path index {len(legal)} is outside"):
        ra.path_from_index(len(legal), num_layers, num_levels)


def test_path_counts_of_the_papers_trellis():
    # L=12 with 4 levels (the paper's): 75025 paths; with 2 levels every binary sequence is
    # legal.
    assert ra.count_paths(12, 4) == 75025
    assert ra.count_paths(10, 2) == 2**10
    assert ra.count_paths(5, 1) == 1
    # Large trellises need Python ints (3**L grows past int64) and still sample.
    big = ra.count_paths(60, 40)
    assert big > 2**63
    arch = ra.sample_architecture(2, 60, 40, seed=1)
    assert arch.num_layers == 60


def test_cell_count():
    # Block b: C(b+2, 2) pairs of states times 7 * 7 ops.
    assert ra.num_cells(1) == 49
    assert ra.num_cells(2) == 49 * 3 * 49
    assert ra.num_cells(5) == (1 * 3 * 6 * 10 * 15) * 49**5
    assert ra.CELL_OPS == tuple(op for op in search_space.OPS if op != "zero")


@pytest.mark.parametrize("num_blocks,num_layers,num_levels",
                         [(1, 1, 1), (5, 12, 4), (3, 6, 4), (4, 9, 5), (2, 3, 2)])
def test_every_sample_validates_and_is_a_function_of_seed_and_index(num_blocks, num_layers,
                                                                   num_levels):
    for index in range(50):
        arch = ra.sample_architecture(num_blocks, num_layers, num_levels, seed=7, index=index)
        # Round trip through the validating constructor of a plain dict.
        assert Architecture.from_dict(arch.to_dict()) == arch
        assert (arch.num_blocks, arch.num_layers, arch.num_levels) == (num_blocks, num_layers,
                                                                       num_levels)
        for block in arch.cell:
            assert block[0][0] < block[1][0]  # written lower state first
        assert arch == ra.sample_architecture(num_blocks, num_layers, num_levels, seed=7,
                                              index=index)
    samples = {ra.sample_architecture(5, 12, 4, seed=s, index=i) for s in range(3)
               for i in range(10)}
    assert len(samples) == 30  # the space is huge: 30 draws all differ


def test_full_joint_distribution_is_uniform_on_a_tiny_space():
    # B=1, L=2, 2 levels: 49 cells x 4 paths = 196 architectures, each drawn ~40 times.
    num_blocks, num_layers, num_levels = 1, 2, 2
    space = [Architecture(cell=(((0, a), (1, b)),), path=path, num_levels=num_levels)
             for a in ra.CELL_OPS for b in ra.CELL_OPS
             for path in enumerate_paths(num_layers, num_levels)]
    assert len(space) == ra.num_cells(num_blocks) * ra.count_paths(num_layers, num_levels)
    draws = collections.Counter(
        ra.sample_architecture(num_blocks, num_layers, num_levels, seed=0, index=i)
        for i in range(40 * len(space)))
    statistic = chi_square(draws, space)
    assert statistic < chi_square_bound(space), statistic
    assert len(draws) == len(space)  # every architecture came up


def _random_walk_path(rng, num_layers, num_levels):
    """The sampler one might write first: each next level uniform among the legal ones."""
    path, level = [], 0
    for layer in range(1, num_layers + 1):
        legal = [k for k in (level - 1, level, level + 1)
                 if k in search_space.levels_at_layer(layer, num_levels)]
        level = legal[int(rng.integers(len(legal)))]
        path.append(level)
    return tuple(path)


def test_cell_structure_ops_and_path_are_uniform_on_a_small_space():
    # B=2, L=4, 3 levels, one fixed-seed run of 30000 draws, checked three ways:
    # (predecessor pairs, path) jointly (block 0 has one pair, block 1 three: 3 x 29 = 87
    # categories), and the four ops jointly (7**4 = 2401 categories, ~12 draws each).
    num_blocks, num_layers, num_levels = 2, 4, 3
    n = 30000
    samples = [ra.sample_architecture(num_blocks, num_layers, num_levels, seed=0, index=i)
               for i in range(n)]
    structures = [((0, 1), p) for p in itertools.combinations(range(3), 2)]
    paths = enumerate_paths(num_layers, num_levels)
    assert len(paths) == 29
    joint = [(s, p) for s in structures for p in paths]
    counts = collections.Counter(
        (tuple(tuple(s for s, _ in block) for block in a.cell), a.path) for a in samples)
    statistic = chi_square(counts, joint)
    assert statistic < chi_square_bound(joint), statistic

    op_space = list(itertools.product(ra.CELL_OPS, repeat=4))
    op_counts = collections.Counter(
        tuple(op for block in a.cell for _, op in block) for a in samples)
    statistic = chi_square(op_counts, op_space)
    assert statistic < chi_square_bound(op_space), statistic

    # The same bound rejects a random walk over the trellis, by far.
    rng = np.random.default_rng(0)
    walk = collections.Counter(_random_walk_path(rng, num_layers, num_levels)
                               for _ in range(n))
    statistic = chi_square(walk, paths)
    assert statistic > 10 * chi_square_bound(paths), statistic


def test_bad_space_is_refused():
    with pytest.raises(ValueError, match="--num_layers must be >= 1, got 0"):
        ra.sample_architecture(5, 0, 4, seed=0)
    with pytest.raises(ValueError, match="seed and index must be >= 0"):
        ra.sample_architecture(5, 12, 4, seed=-1)


def test_cli_writes_one_valid_json_per_sample_with_its_origin(tmp_path):
    out = tmp_path / "random"
    args = ("--num=8", "--seed=3", f"--output_dir={out}", "--num_layers=5", "--num_levels=3",
            "--num_blocks=2")
    result = sh.run_module("train.sample_architectures", *args)
    assert result.returncode == 0, result.stderr
    names = sorted(os.listdir(out))
    assert names == [f"random_seed3_{i:03d}.json" for i in range(8)]
    for i, name in enumerate(names):
        path = str(out / name)
        assert Architecture.load(path) == ra.sample_architecture(2, 5, 3, seed=3, index=i)
        assert read_metadata(path) == {"origin": "random", "seed": 3, "index": i}
    first = (out / names[0]).read_text()
    # The same command writes the same files.
    assert sh.run_module("train.sample_architectures", *args).returncode == 0
    assert (out / names[0]).read_text() == first
    assert "wrote 8 architectures" in result.stdout

    defaults = sh.run_module("train.sample_architectures", "--num=1",
                             f"--output_dir={tmp_path / 'paper'}")
    assert defaults.returncode == 0, defaults.stderr
    arch = Architecture.load(str(tmp_path / "paper" / "random_seed0_000.json"))
    # train.search's defaults: L=12, B=5, 4 levels.
    assert (arch.num_layers, arch.num_blocks, arch.num_levels) == (12, 5, 4)
    assert json.loads((tmp_path / "paper" / "random_seed0_000.json").read_text())[
        "metadata"]["origin"] == "random"


def test_cli_errors_name_the_flag(tmp_path):
    missing = sh.run_module("train.sample_architectures", "--num=2")
    assert missing.returncode == 1
    assert "error: --output_dir is required" in missing.stderr
    bad = sh.run_module("train.sample_architectures", "--num=0", f"--output_dir={tmp_path}")
    assert bad.returncode == 1 and "error: --num must be >= 1, got 0" in bad.stderr
