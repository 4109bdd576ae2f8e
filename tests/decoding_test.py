import numpy as np
import pytest

from auto_deeplab_tf import decoding
from auto_deeplab_tf import search_space as ss
from auto_deeplab_tf.architecture import AUTODEEPLAB, Architecture


def alpha_for(cell, num_blocks=5, strong=5.0, rng=None):
    """alpha logits under which `cell` is the decoded genotype."""
    rng = rng or np.random.default_rng(0)
    alpha = rng.normal(scale=0.1, size=(ss.num_edges(num_blocks), ss.NUM_OPS))
    for block, pairs in enumerate(cell):
        for rank, (state, op) in enumerate(pairs):
            alpha[ss.edge_index(block, state), ss.OPS.index(op)] = strong - rank
    return alpha


def test_hand_set_alpha_decodes_to_the_expected_cell():
    alpha = alpha_for(AUTODEEPLAB.cell)
    assert decoding.decode_cell(alpha) == AUTODEEPLAB.cell


def test_zero_is_never_chosen_even_when_it_dominates():
    alpha = alpha_for(AUTODEEPLAB.cell)
    alpha[:, ss.OPS.index("zero")] = 100.0  # zero is the strongest op on every edge
    cell = decoding.decode_cell(alpha)
    assert all(op != "zero" for block in cell for _, op in block)
    # Strength ignores zero, so the same inputs and ops come out.
    assert cell == AUTODEEPLAB.cell


def test_strength_picks_the_two_strongest_predecessors():
    num_blocks = 3
    alpha = np.zeros((ss.num_edges(num_blocks), ss.NUM_OPS))
    # Block 2 reads states 0..3; make states 3 and 0 strongest, with distinct ops.
    alpha[ss.edge_index(2, 3), ss.OPS.index("max_pool_3x3")] = 4.0
    alpha[ss.edge_index(2, 0), ss.OPS.index("skip_connect")] = 3.0
    alpha[ss.edge_index(2, 1), ss.OPS.index("sep_conv_5x5")] = 2.0
    cell = decoding.decode_cell(alpha)
    assert cell[2] == ((3, "max_pool_3x3"), (0, "skip_connect"))


def test_decode_architecture_combines_cell_and_viterbi_path():
    rng = np.random.default_rng(3)
    beta = rng.normal(size=(12, 4, 3))
    arch, meta = decoding.decode_architecture(alpha_for(AUTODEEPLAB.cell), beta)
    assert isinstance(arch, Architecture)
    path, p = decoding.decode_path(beta)
    assert list(arch.path) == path
    assert meta["path_probability"] == pytest.approx(p)


def test_uniform_path_probability_counts_the_choices_along_the_path():
    # Under a uniform beta a node at level 0 has 2 outgoing transitions (stay, down), one at
    # the top level 2 (up, stay), and a middle one 3; the first layer leaves level 0.
    beta = np.zeros((4, 3, 3))
    beta[:, :, 1] = 5.0  # every node prefers to stay: the path keeps level 0
    arch, meta = decoding.decode_architecture(alpha_for(AUTODEEPLAB.cell), beta)
    assert list(arch.path) == [0, 0, 0, 0]
    assert meta["uniform_path_probability"] == pytest.approx(0.5 ** 4)
    assert meta["path_probability"] > 15 * meta["uniform_path_probability"]  # at most 16x
    _, uniform = decoding.decode_architecture(alpha_for(AUTODEEPLAB.cell), np.zeros((4, 3, 3)))
    assert uniform["path_probability"] == pytest.approx(uniform["uniform_path_probability"])


def test_alpha_with_a_non_triangular_edge_count_is_rejected():
    with pytest.raises(ValueError, match="7 edges match no number of blocks"):
        decoding.decode_cell(np.zeros((7, ss.NUM_OPS)))
