"""Architectures drawn uniformly at random from the search space (the baseline of a search).

A NAS method is worth its cost only if it beats architectures picked at random from the
same space (Li & Talwalkar 2019; Sciuto et al. 2020; Yang et al. 2020). This module draws
them, exactly uniformly, as a deterministic function of (seed, index):

* **Cell**: block b picks 2 distinct predecessors among its states 0 .. b+1, every pair
  equally likely, and a non-zero op for each, every op equally likely. The pair is an
  unordered choice (a block sums its two inputs), written with the lower state first.
* **Path**: every legal path of the trellis is equally likely. A random walk that picks
  each next level uniformly among the legal ones is *not* uniform over paths (a node near
  the coarsest level has fewer continuations, so the paths through it are over-drawn), so
  the paths are counted by dynamic programming (`count_paths`) and one is drawn by its
  index (`path_from_index`).

Every sample's metadata says where it came from: `{"origin": "random", "seed": S,
"index": I}` (`architecture.origin_metadata`).
"""

from __future__ import annotations

import math
import os

import numpy as np

from auto_deeplab_tf import architecture as architecture_lib
from auto_deeplab_tf import common
from auto_deeplab_tf import search_space
from auto_deeplab_tf.architecture import INPUTS_PER_BLOCK, Architecture

# The ops a cell may use: every candidate op but `zero`, in search-space order.
CELL_OPS: tuple[str, ...] = tuple(op for op in search_space.OPS if op != search_space.ZERO)


def _check_space(num_blocks: int, num_layers: int, num_levels: int) -> None:
    for name, value in (("num_blocks", num_blocks), ("num_layers", num_layers),
                        ("num_levels", num_levels)):
        if int(value) < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")


def path_completions(num_layers: int, num_levels: int) -> list[dict[int, int]]:
    """completions[l][j]: how many ways a path at level j of layer l (0 = the stem) can go
    on to layer `num_layers`; 1 at the last layer."""
    _check_space(1, num_layers, num_levels)
    completions: list[dict[int, int]] = [{} for _ in range(num_layers + 1)]
    completions[num_layers] = {j: 1 for j in search_space.levels_at_layer(num_layers,
                                                                          num_levels)}
    for layer in range(num_layers - 1, -1, -1):
        following = completions[layer + 1]
        completions[layer] = {
            j: sum(following.get(k, 0) for k in (j - 1, j, j + 1))
            for j in search_space.levels_at_layer(layer, num_levels)}
    return completions


def count_paths(num_layers: int, num_levels: int) -> int:
    """Number of legal paths through the trellis (levels of layers 1..L, from the stem)."""
    return path_completions(num_layers, num_levels)[0][0]


def path_from_index(index: int, num_layers: int, num_levels: int) -> tuple[int, ...]:
    """The `index`-th legal path (0 <= index < count_paths), in lexicographic order of the
    level sequences; a bijection, so a uniform index gives a uniform path."""
    completions = path_completions(num_layers, num_levels)
    total = completions[0][0]
    if not 0 <= index < total:
        raise ValueError(f"path index {index} is outside 0..{total - 1}")
    path, level = [], 0
    for layer in range(1, num_layers + 1):
        for candidate in (level - 1, level, level + 1):
            ways = completions[layer].get(candidate, 0)
            if index < ways:
                level = candidate
                break
            index -= ways
        path.append(level)
    return tuple(path)


def num_cells(num_blocks: int) -> int:
    """Number of distinct cells: per block, C(b+2, 2) predecessor pairs times len(CELL_OPS)**2
    op choices."""
    _check_space(num_blocks, 1, 1)
    return math.prod(math.comb(b + 2, INPUTS_PER_BLOCK) * len(CELL_OPS) ** INPUTS_PER_BLOCK
                     for b in range(num_blocks))


def _uniform_below(rng: np.random.Generator, n: int) -> int:
    """A uniform integer in [0, n) for any Python int n (beyond int64 too, by rejection)."""
    if n < 2**62:
        return int(rng.integers(n))
    bits = n.bit_length()
    words = -(-bits // 32)
    while True:
        value = 0
        for _ in range(words):
            value = (value << 32) | int(rng.integers(2**32))
        value >>= 32 * words - bits
        if value < n:
            return value


def sample_cell(rng: np.random.Generator, num_blocks: int) -> tuple:
    """A uniform cell: per block, a uniform pair of distinct states and a uniform op each."""
    blocks = []
    for b in range(num_blocks):
        states = sorted(int(s) for s in rng.choice(b + 2, size=INPUTS_PER_BLOCK,
                                                   replace=False))
        blocks.append(tuple((s, CELL_OPS[int(rng.integers(len(CELL_OPS)))]) for s in states))
    return tuple(blocks)


def sample_path(rng: np.random.Generator, num_layers: int, num_levels: int
                ) -> tuple[int, ...]:
    """A path drawn uniformly from all legal paths of the trellis."""
    return path_from_index(_uniform_below(rng, count_paths(num_layers, num_levels)),
                           num_layers, num_levels)


def sample_architecture(num_blocks: int, num_layers: int, num_levels: int, seed: int,
                        index: int = 0) -> Architecture:
    """Sample `index` of the stream of `seed`: a uniform cell and an independent uniform
    path. A deterministic function of (seed, index) and the space."""
    _check_space(num_blocks, num_layers, num_levels)
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got {seed} and {index}")
    rng = np.random.default_rng([int(seed), int(index)])
    cell = sample_cell(rng, num_blocks)
    path = sample_path(rng, num_layers, num_levels)
    return Architecture(cell=cell, path=path, num_levels=num_levels)


def sample_filename(seed: int, index: int) -> str:
    """The file `write_samples` gives sample `index` of `seed`."""
    return f"random_seed{seed}_{index:03d}.json"


def write_samples(output_dir: str, num: int, seed: int, num_blocks: int, num_layers: int,
                  num_levels: int) -> list[str]:
    """Writes samples 0 .. num-1 of `seed` as architecture JSON files (atomically); returns
    their paths. Each file's metadata records origin `random`, the seed and the index."""
    if num < 1:
        raise ValueError(f"--num must be >= 1, got {num}")
    paths = []
    for index in range(num):
        arch = sample_architecture(num_blocks, num_layers, num_levels, seed, index)
        path = os.path.join(output_dir, sample_filename(seed, index))
        arch.save(path, architecture_lib.origin_metadata(
            common.ORIGIN_RANDOM, seed, **{common.ARCH_SAMPLE_INDEX: index}))
        paths.append(path)
    return paths
