"""Decoding: learned alpha/beta values -> an `Architecture` (pure numpy functions).

Cell: for each block keep the 2 strongest predecessors, the strength of an edge being the
largest softmax(alpha) weight among its non-zero ops, and give each kept edge its
strongest non-zero op. Network: Viterbi over normalised beta (`viterbi`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from auto_deeplab_tf import search_space
from auto_deeplab_tf.architecture import INPUTS_PER_BLOCK, Architecture
from auto_deeplab_tf.viterbi import path_probability, viterbi


def num_blocks_for_edges(num_edges: int) -> int:
    """Inverse of `search_space.num_edges`."""
    blocks = 0
    while search_space.num_edges(blocks) < num_edges:
        blocks += 1
    if search_space.num_edges(blocks) != num_edges:
        raise ValueError(f"{num_edges} edges match no number of blocks "
                         "(B blocks have 2 + 3 + ... + (B+1) edges)")
    return blocks


def decode_cell(alpha: np.ndarray, op_names=search_space.OPS) -> tuple:
    """alpha logits [num_edges, num_ops] -> cell genotype (blocks of (state, op) pairs).

    The pairs of a block are ordered strongest first.
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    if alpha.ndim != 2 or alpha.shape[1] != len(op_names):
        raise ValueError(f"alpha must be [num_edges, {len(op_names)}], got {list(alpha.shape)}")
    weights = search_space.softmax(alpha, axis=-1)
    non_zero = [k for k, name in enumerate(op_names) if name != search_space.ZERO]
    blocks = []
    for block in range(num_blocks_for_edges(alpha.shape[0])):
        candidates = []
        for state in range(block + 2):
            row = weights[search_space.edge_index(block, state), non_zero]
            k = int(np.argmax(row))
            candidates.append((-row[k], state, op_names[non_zero[k]]))
        candidates.sort()  # strongest first; ties go to the lower state index
        blocks.append(tuple((state, op) for _, state, op in candidates[:INPUTS_PER_BLOCK]))
    return tuple(blocks)


def decode_path(beta: np.ndarray) -> tuple[list[int], float]:
    """beta logits [L, num_levels, 3] -> (Viterbi path, its probability)."""
    beta = np.asarray(beta, dtype=np.float64)
    return viterbi(search_space.normalize_beta(beta))


def decode_architecture(alpha: np.ndarray, beta: np.ndarray) -> tuple[Architecture, dict[str, Any]]:
    """alpha and beta logits -> (Architecture, metadata).

    The metadata holds the decoded path's probability under beta, and under a uniform beta
    (all logits 0): their ratio says how far beta has moved from its start.
    """
    path, probability = decode_path(beta)
    arch = Architecture(cell=decode_cell(alpha), path=path, num_levels=np.shape(beta)[1])
    uniform = path_probability(search_space.normalize_beta(np.zeros(np.shape(beta))), path)
    return arch, {"path_probability": probability, "uniform_path_probability": uniform}
