"""Network-level decoding: the most probable path through the trellis (Viterbi).

beta, normalised over each node's outgoing transitions, reads as transition probabilities
of a Markov chain that starts at the stem (layer 0, level 0) and takes one step per layer.
The most probable path maximises the product of its L transition probabilities.
"""

from __future__ import annotations

import numpy as np

from auto_deeplab_tf import search_space


def viterbi(beta_probs: np.ndarray) -> tuple[list[int], float]:
    """Most probable path and its probability.

    Args:
      beta_probs: [L, num_levels, 3] normalised transition probabilities
        (`search_space.normalize_beta`); entries outside the trellis are ignored.

    Returns:
      (levels of layers 1..L, probability of that path).
    """
    probs = np.asarray(beta_probs, dtype=np.float64)
    if probs.ndim != 3 or probs.shape[-1] != search_space.NUM_DIRECTIONS:
        raise ValueError(f"beta must be [L, num_levels, {search_space.NUM_DIRECTIONS}], "
                         f"got shape {list(probs.shape)}")
    num_layers, num_levels, _ = probs.shape
    with np.errstate(divide="ignore"):
        log_probs = np.log(np.clip(probs, 0.0, None))
    score = {0: 0.0}  # log-probability of the best path to each level of the current layer
    back = []
    for layer in range(1, num_layers + 1):
        new_score, pointer = {}, {}
        for level in search_space.levels_at_layer(layer, num_levels):
            best, arg = -np.inf, None
            for source in search_space.incoming_levels(layer, level, num_levels):
                s = score[source] + log_probs[layer - 1, source,
                                              search_space.direction(source, level)]
                if arg is None or s > best:
                    best, arg = s, source
            new_score[level], pointer[level] = best, arg
        score = new_score
        back.append(pointer)
    last = max(score, key=lambda level: (score[level], -level))
    path = [last]
    for pointer in reversed(back[1:]):
        path.append(pointer[path[-1]])
    path.reverse()
    return path, float(np.exp(score[last]))


def path_probability(beta_probs: np.ndarray, path) -> float:
    """Probability of one path (levels of layers 1..L) under normalised beta."""
    probs = np.asarray(beta_probs, dtype=np.float64)
    p, previous = 1.0, 0
    for layer, level in enumerate(path):
        p *= probs[layer, previous, search_space.direction(previous, level)]
        previous = level
    return float(p)
