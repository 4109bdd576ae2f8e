import numpy as np
import pytest

from auto_deeplab_tf import search_space as ss


def test_paper_cell_has_20_edges_in_block_order():
    assert ss.num_edges(5) == 20
    edges = ss.cell_edges(5)
    assert len(edges) == 20
    assert [ss.edge_index(b, s) for b, s in edges] == list(range(20))
    assert edges[:5] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]


def test_edge_index_rejects_unreadable_state():
    with pytest.raises(ValueError, match="block 0 cannot read state 2"):
        ss.edge_index(0, 2)


def test_levels_follow_the_paper():
    assert ss.levels_at_layer(0, 4) == [0]
    assert ss.levels_at_layer(1, 4) == [0, 1]
    assert ss.levels_at_layer(2, 4) == [0, 1, 2]
    for layer in range(3, 13):
        assert ss.levels_at_layer(layer, 4) == [0, 1, 2, 3]
    nodes = ss.trellis_nodes(12, 4)
    assert len(nodes) == 2 + 3 + 10 * 4


@pytest.mark.parametrize("num_layers,num_levels", [(12, 4), (5, 3), (3, 4), (4, 2)])
def test_beta_mask_matches_outgoing_transitions(num_layers, num_levels):
    mask = ss.beta_mask(num_layers, num_levels)
    for layer in range(num_layers):
        existing = ss.levels_at_layer(layer, num_levels)
        for level in range(num_levels):
            for d, delta in enumerate(ss.DIRECTION_DELTAS):
                target = level + delta
                legal = level in existing and 0 <= target < num_levels
                assert mask[layer, level, d] == legal, (layer, level, d)
    # Border nodes have 2 options, inner nodes 3.
    if num_layers >= 4 and num_levels == 4:
        assert mask[3].sum(axis=-1).tolist() == [2, 3, 3, 2]
        assert mask[2].sum(axis=-1).tolist() == [2, 3, 3, 0]  # layer 2 has no OS 32


def test_normalize_beta_is_a_distribution_over_outgoing_transitions():
    rng = np.random.default_rng(0)
    beta = rng.normal(size=(6, 4, 3))
    probs = ss.normalize_beta(beta)
    mask = ss.beta_mask(6, 4)
    assert np.all(probs[~mask] == 0)
    rows = mask.any(axis=-1)
    np.testing.assert_allclose(probs.sum(axis=-1)[rows], 1.0)
    # The stem node goes to level 0 or 1 only.
    assert probs[0, 0, 0] == 0 and probs[0, 0, 1] > 0 and probs[0, 0, 2] > 0
