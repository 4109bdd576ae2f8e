"""The Auto-DeepLab search space as plain data: candidate ops, cell edges, trellis nodes.

Everything here is pure Python so that the supernet, the decoders, the architecture
validator and the tests agree on one definition of what is legal.

Conventions
-----------
* Cell states (the official "hnasnet" numbering): 0 = H^{l-1}, 1 = H^{l-2}, 2 + b = block b.
  Block b may read states 0 .. b+1, so a cell of B blocks has 2 + 3 + ... + (B+1) edges
  (20 for B = 5). Edges are numbered block by block, and by state within a block.
* Levels: 0 .. num_levels-1 stand for output strides 4, 8, 16, 32 (OS = 4 * 2**level).
* Layers: layer 0 is the stem (level 0 only); searchable layers are 1 .. L. Layer l has
  levels 0 .. min(l, num_levels - 1): {4, 8} at layer 1, {4, 8, 16} at layer 2, ...
* beta has shape [L, num_levels, 3]: beta[l, j, d] weighs the transition from node
  (layer l, level j) to node (layer l+1, level j + d - 1), so d = 0 goes one level up
  (to a finer resolution), d = 1 stays and d = 2 goes one level down (coarser). It is
  normalised over the outgoing transitions of each node; entries outside the trellis are
  masked and never used.
"""

from __future__ import annotations

import numpy as np

ZERO = "zero"
SKIP = "skip_connect"

# Index order of the last axis of alpha.
OPS: tuple[str, ...] = (
    ZERO,
    "max_pool_3x3",
    "avg_pool_3x3",
    SKIP,
    "sep_conv_3x3",
    "sep_conv_5x5",
    "atrous_conv_3x3",
    "atrous_conv_5x5",
)
NUM_OPS = len(OPS)

# Names of the architecture weights (the supernet's variables; search checkpoints are read
# back by them, `checkpointing.arch_values_from_checkpoint`).
ALPHA_NAME = "alpha"
BETA_NAME = "beta"

# beta's last axis: level change of each direction.
DIRECTION_DELTAS: tuple[int, ...] = (-1, 0, 1)
NUM_DIRECTIONS = len(DIRECTION_DELTAS)


def num_edges(num_blocks: int) -> int:
    """Edges of a cell of `num_blocks` blocks (20 for the paper's B = 5)."""
    return sum(b + 2 for b in range(num_blocks))


def edge_index(block: int, state: int) -> int:
    """Row of alpha for the edge from `state` into `block`."""
    if not 0 <= state <= block + 1:
        raise ValueError(f"block {block} cannot read state {state}")
    return sum(b + 2 for b in range(block)) + state


def cell_edges(num_blocks: int) -> list[tuple[int, int]]:
    """All (block, state) pairs in alpha row order."""
    return [(b, s) for b in range(num_blocks) for s in range(b + 2)]


def levels_at_layer(layer: int, num_levels: int) -> list[int]:
    """Levels that exist at `layer` (0 = stem, which is level 0 only)."""
    if layer < 0:
        raise ValueError(f"layer must be >= 0, got {layer}")
    return list(range(min(layer, num_levels - 1) + 1))


def trellis_nodes(num_layers: int, num_levels: int) -> list[tuple[int, int]]:
    """(layer, level) of every searchable node, layers 1..num_layers."""
    return [(l, i) for l in range(1, num_layers + 1) for i in levels_at_layer(l, num_levels)]


def incoming_levels(layer: int, level: int, num_levels: int) -> list[int]:
    """Levels of layer-1 that feed node (layer, level), finest first."""
    previous = set(levels_at_layer(layer - 1, num_levels))
    return [j for j in (level - 1, level, level + 1) if j in previous]


def direction(from_level: int, to_level: int) -> int:
    """beta's direction index for a transition between two levels."""
    delta = to_level - from_level
    if delta not in DIRECTION_DELTAS:
        raise ValueError(f"levels {from_level} -> {to_level} are not adjacent")
    return DIRECTION_DELTAS.index(delta)


def beta_mask(num_layers: int, num_levels: int) -> np.ndarray:
    """Boolean [L, num_levels, 3]: True where beta[l, j, d] is a real transition."""
    mask = np.zeros((num_layers, num_levels, NUM_DIRECTIONS), dtype=bool)
    for layer in range(1, num_layers + 1):
        for level in levels_at_layer(layer, num_levels):
            for source in incoming_levels(layer, level, num_levels):
                mask[layer - 1, source, direction(source, level)] = True
    return mask


def normalize_beta(beta: np.ndarray, num_levels: int | None = None) -> np.ndarray:
    """Softmax of beta logits over each node's outgoing transitions (numpy).

    Masked entries come back as 0, so the result reads as transition probabilities.
    """
    beta = np.asarray(beta, dtype=np.float64)
    num_layers, levels, _ = beta.shape
    mask = beta_mask(num_layers, num_levels or levels)
    logits = np.where(mask, beta, -np.inf)
    row_max = np.max(np.where(mask, beta, -np.inf), axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    exp = np.where(mask, np.exp(logits - row_max), 0.0)
    total = exp.sum(axis=-1, keepdims=True)
    return np.divide(exp, total, out=np.zeros_like(exp), where=total > 0)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (numpy)."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def cell_filters(filter_multiplier: int, level: int) -> int:
    """Channels of each op of a cell at `level` (F * 2**level); the cell emits B times that."""
    return filter_multiplier * 2**level
