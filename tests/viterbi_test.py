import itertools

import numpy as np
import pytest

from auto_deeplab_tf import search_space as ss
from auto_deeplab_tf.viterbi import path_probability, viterbi


def legal_paths(num_layers, num_levels):
    for steps in itertools.product((-1, 0, 1), repeat=num_layers):
        level, path = 0, []
        for step in steps:
            level += step
            if not 0 <= level < num_levels:
                break
            path.append(level)
        else:
            yield path


@pytest.mark.parametrize("num_layers", [3, 4, 5, 6])
@pytest.mark.parametrize("num_levels", [4, 3])
def test_viterbi_equals_exhaustive_search(num_layers, num_levels):
    rng = np.random.default_rng(num_layers * 10 + num_levels)
    for trial in range(20):
        probs = ss.normalize_beta(rng.normal(scale=2.0, size=(num_layers, num_levels, 3)))
        paths = list(legal_paths(num_layers, num_levels))
        scores = [path_probability(probs, p) for p in paths]
        best = int(np.argmax(scores))
        path, p = viterbi(probs)
        assert path in paths
        assert p == pytest.approx(scores[best], rel=1e-9)
        assert path_probability(probs, path) == pytest.approx(p, rel=1e-9)
        assert p >= max(scores) * (1 - 1e-9)


def test_exhaustive_enumeration_counts_only_legal_paths():
    # From level 0, L=3 over 4 levels: every walk of -1/0/+1 steps that stays >= 0.
    paths = list(legal_paths(3, 4))
    assert [0, 1, 2] in paths and [1, 0, 0] in paths
    assert all(p[0] in (0, 1) for p in paths)
    # 5 walks start 0 -> 0/1, 8 start 0 -> 1 (level 3 is reachable at layer 3).
    assert len(paths) == 13
    assert [1, 2, 3] in paths and [0, 0, -1] not in paths


def test_viterbi_follows_a_forced_path_including_borders():
    # Make one path (touching both borders and the short first layers) near-certain.
    target = [1, 2, 3, 3, 2, 1, 0, 0]
    logits = np.full((len(target), 4, 3), -10.0)
    previous = 0
    for layer, level in enumerate(target):
        logits[layer, previous, ss.direction(previous, level)] = 10.0
        previous = level
    path, p = viterbi(ss.normalize_beta(logits))
    assert path == target
    assert p > 0.99


def test_viterbi_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"beta must be \[L, num_levels, 3\], got shape \[4, 4\]"):
        viterbi(np.zeros((4, 4)))
