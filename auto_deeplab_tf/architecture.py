"""An architecture as a small, validated, JSON-serialisable value.

An architecture is the cell genotype (B blocks, each summing two (state, op) inputs) and the
network path (the level of each of the L layers). Search and decode write it; retrain, stats
and export read it. State numbering is the official one: 0 = H^{l-1}, 1 = H^{l-2},
2 + b = block b (see `search_space`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

from auto_deeplab_datasets import atomic_write
from auto_deeplab_tf import common
from auto_deeplab_tf import search_space

FORMAT = "auto-deeplab-tf/architecture/v1"
INPUTS_PER_BLOCK = 2

Block = tuple[tuple[int, str], ...]


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Cell genotype + network path. Validates itself on construction."""

    cell: tuple[Block, ...]
    path: tuple[int, ...]
    num_levels: int = 4

    def __post_init__(self):
        try:
            cell = tuple(tuple((int(s), str(op)) for s, op in block) for block in self.cell)
        except (TypeError, ValueError) as e:
            raise ValueError(
                "cell must be a list of blocks, each a list of [state, op] pairs") from e
        object.__setattr__(self, "cell", cell)
        object.__setattr__(self, "path", tuple(int(v) for v in self.path))
        _validate(self)

    @property
    def num_blocks(self) -> int:
        return len(self.cell)

    @property
    def num_layers(self) -> int:
        return len(self.path)

    def to_text(self) -> str:
        """A readable table (TensorBoard's genotype text): one row per block, such as
        `block 2 = sep_conv_3x3(block 1) + skip_connect(H^{l-2})` (blocks numbered from 1),
        then the path as the output stride of each layer."""
        def state(s: int) -> str:
            return {0: "H^{l-1}", 1: "H^{l-2}"}.get(s, f"block {s - 1}")

        rows = [f"block {b + 1} = " + " + ".join(f"{op}({state(s)})" for s, op in block)
                for b, block in enumerate(self.cell)]
        rows.append(f"path, output stride of layers 1..{self.num_layers}: "
                    + " ".join(str(4 * 2**level) for level in self.path))
        return "\n".join(rows)

    def to_dict(self, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Plain, label-keyed dict (what the JSON holds)."""
        d = {
            common.ARCH_FORMAT: FORMAT,
            common.ARCH_CELL: [[[s, op] for s, op in block] for block in self.cell],
            common.ARCH_PATH: list(self.path),
            common.ARCH_NUM_LEVELS: self.num_levels,
        }
        if metadata:
            d[common.ARCH_METADATA] = dict(metadata)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Architecture":
        if not isinstance(d, Mapping):
            raise ValueError(f"an architecture must be a JSON object, got {type(d).__name__}")
        for key in (common.ARCH_CELL, common.ARCH_PATH):
            if key not in d:
                raise ValueError(f"missing key '{key}'")
        fmt = d.get(common.ARCH_FORMAT, FORMAT)
        if fmt != FORMAT:
            raise ValueError(f"unknown format '{fmt}', expected '{FORMAT}'")
        return cls(cell=d[common.ARCH_CELL], path=d[common.ARCH_PATH],
                   num_levels=int(d.get(common.ARCH_NUM_LEVELS, 4)))

    def to_json(self, metadata: Mapping[str, Any] | None = None) -> str:
        return json.dumps(self.to_dict(metadata), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Architecture":
        if not text.strip():
            raise ValueError("the architecture file is empty (expected the JSON that "
                             "train.search or train.decode writes)")
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ValueError(f"not valid JSON ({e}); an architecture file is the JSON that "
                             "train.search or train.decode writes") from e

    def save(self, path: str, metadata: Mapping[str, Any] | None = None) -> None:
        """Writes JSON atomically, so a reader never sees a half-written file."""
        atomic_write.write_text(path, self.to_json(metadata) + "\n")

    @classmethod
    def load(cls, path: str) -> "Architecture":
        """Reads a JSON file; errors name the file."""
        try:
            with open(path) as f:
                text = f.read()
        except OSError as e:
            raise ValueError(f"{path}: cannot read architecture: {e.strerror}") from e
        try:
            return cls.from_json(text)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e


def origin_metadata(origin: str, seed: int | None, **extra: Any) -> dict[str, Any]:
    """Metadata saying where an architecture came from: `{"origin": origin, "seed": seed,
    ...extra}` (common.ORIGIN_SEARCH with the search's seed, common.ORIGIN_RANDOM with the
    sampler's); the comparison of architectures groups them by it."""
    return {common.ARCH_ORIGIN: origin, common.ARCH_ORIGIN_SEED: seed, **extra}


def read_metadata(path: str) -> dict[str, Any]:
    """The metadata of an architecture JSON file ({} if it has none); errors name the file."""
    Architecture.load(path)  # validates, with a message naming the file
    with open(path) as f:
        metadata = json.load(f).get(common.ARCH_METADATA) or {}
    if not isinstance(metadata, Mapping):
        raise ValueError(f"{path}: '{common.ARCH_METADATA}' must be a JSON object")
    return dict(metadata)


def _validate(arch: Architecture) -> None:
    if arch.num_levels < 1:
        raise ValueError(f"num_levels must be >= 1, got {arch.num_levels}")
    if not arch.cell:
        raise ValueError("cell must have at least one block")
    for b, block in enumerate(arch.cell):
        if len(block) != INPUTS_PER_BLOCK:
            raise ValueError(f"block {b} must have exactly {INPUTS_PER_BLOCK} inputs, "
                             f"got {len(block)}")
        for k, (state, op) in enumerate(block):
            if not 0 <= state <= b + 1:
                raise ValueError(
                    f"block {b} input {k}: state {state} is out of range; block {b} may read "
                    f"states 0..{b + 1} (0 = H^(l-1), 1 = H^(l-2), 2+j = block j)")
            if op not in search_space.OPS:
                raise ValueError(f"block {b} input {k}: unknown op '{op}'; known ops: "
                                 f"{', '.join(o for o in search_space.OPS if o != search_space.ZERO)}")
            if op == search_space.ZERO:
                raise ValueError(f"block {b} input {k}: op '{search_space.ZERO}' cannot be "
                                 "an input of a cell")
        if block[0][0] == block[1][0]:
            raise ValueError(f"block {b} reads state {block[0][0]} twice")
    if not arch.path:
        raise ValueError("path must have at least one layer")
    previous = 0  # the stem is at level 0
    for l, level in enumerate(arch.path):
        if not 0 <= level < arch.num_levels:
            raise ValueError(f"path[{l}] = {level} is outside levels 0..{arch.num_levels - 1}")
        if abs(level - previous) > 1:
            where = "the stem (level 0)" if l == 0 else f"path[{l - 1}] = {previous}"
            raise ValueError(f"path[{l}] = {level} jumps {level - previous:+d} levels from "
                             f"{where}; consecutive layers may differ by at most one level")
        previous = level


def _pairs(*pairs: Sequence[tuple[int, str]]) -> tuple[Block, ...]:
    return tuple(tuple(p) for p in pairs)


# The paper's searched network (official "hnasnet"; SPEC section 4).
AUTODEEPLAB = Architecture(
    cell=_pairs(
        [(1, "atrous_conv_5x5"), (0, "sep_conv_3x3")],
        [(1, "sep_conv_3x3"), (0, "atrous_conv_3x3")],
        [(3, "sep_conv_3x3"), (1, "sep_conv_3x3")],
        [(4, "sep_conv_5x5"), (2, "sep_conv_5x5")],
        [(3, "sep_conv_5x5"), (5, "atrous_conv_5x5")],
    ),
    path=(0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1),
    num_levels=4,
)

BUILTIN: dict[str, Architecture] = {"autodeeplab": AUTODEEPLAB}


def get_architecture(name_or_path: str) -> Architecture:
    """A built-in architecture by name, or one read from a JSON file."""
    if name_or_path in BUILTIN:
        return BUILTIN[name_or_path]
    if name_or_path.endswith(".json") or os.path.sep in name_or_path:
        return Architecture.load(name_or_path)
    raise ValueError(f"unknown architecture '{name_or_path}': expected one of "
                     f"{', '.join(sorted(BUILTIN))} or a path to a .json file")
