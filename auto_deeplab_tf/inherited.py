"""Inherited accuracy: an architecture's sub-network evaluated with a trained supernet's weights.

Weight-sharing NAS rests on the assumption that a sub-network's accuracy with the supernet's
weights ranks architectures as their accuracy after training from scratch would (Sciuto et
al., ICLR 2020, measure it with Kendall's tau). This module computes the first of the two.

The sub-network of an architecture is the supernet's forward pass with 0/1 masks in place of
softmax(alpha) and normalised beta (`AutoDeepLabSupernet.call(arch_weights=...)`):

* alpha: on the edges the cell keeps, weight 1 on its op; every other edge weight 1 on
  `zero` (nothing flows through it);
* beta: weight 1 on each transition of the path, 0 on every other, so every node off the
  path is 0;
* heads: only the ASPP head at the path's last level.

What the masks cannot change is the supernet's wiring: a cell's H^{l-2} input is the node
two layers back *at the cell's own level* (`supernet`), which is off the path, hence 0,
wherever the path changed level in between. That is the sub-network as the supernet trained
it. Its batch norms use batch statistics, as in the search; images are evaluated one at a
time at the search's `scale` and the probabilities resized back to the labels' size.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Sequence

import numpy as np

from auto_deeplab_datasets import atomic_write
from auto_deeplab_tf import search_space
from auto_deeplab_tf.architecture import Architecture

RESULT_PREFIX = "inherited_"


def result_path(arch_dir: str, split: str) -> str:
    """Where an architecture's inherited result for `split` is kept."""
    return os.path.join(arch_dir, f"{RESULT_PREFIX}{split}.json")


def check_space(arch: Architecture, num_blocks: int, num_layers: int, num_levels: int,
                where: str = "the architecture") -> None:
    """Refuses an architecture of another space than the supernet's, naming both."""
    have = (arch.num_blocks, arch.num_layers, arch.num_levels)
    want = (num_blocks, num_layers, num_levels)
    if have != want:
        raise ValueError(f"{where} has B={have[0]}, L={have[1]}, {have[2]} levels but the "
                         f"supernet has B={want[0]}, L={want[1]}, {want[2]} levels")


def subnetwork_weights(arch: Architecture, num_blocks: int, num_layers: int,
                       num_levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 0/1 masks (alpha [num_edges, num_ops], beta [L, num_levels, 3], heads [levels of
    layer L]) that make the supernet compute `arch`'s sub-network (module docstring)."""
    check_space(arch, num_blocks, num_layers, num_levels)
    alpha = np.zeros((search_space.num_edges(num_blocks), search_space.NUM_OPS), np.float32)
    alpha[:, search_space.OPS.index(search_space.ZERO)] = 1.0
    for b, block in enumerate(arch.cell):
        for state, op in block:
            row = search_space.edge_index(b, state)
            alpha[row] = 0.0
            alpha[row, search_space.OPS.index(op)] = 1.0
    beta = np.zeros((num_layers, num_levels, search_space.NUM_DIRECTIONS), np.float32)
    previous = 0
    for layer, level in enumerate(arch.path):
        beta[layer, previous, search_space.direction(previous, level)] = 1.0
        previous = level
    heads = np.zeros(len(search_space.levels_at_layer(num_layers, num_levels)), np.float32)
    heads[arch.path[-1]] = 1.0
    return alpha, beta, heads


class Subnetworks:
    """A trained supernet that evaluates one sub-network at a time.

    The masks live in variables, so one traced prediction function serves every
    architecture (`select` assigns them).
    """

    def __init__(self, supernet):
        import tensorflow as tf

        self.supernet = supernet
        shapes = [(search_space.num_edges(supernet.num_blocks), search_space.NUM_OPS),
                  (supernet.num_layers, supernet.num_levels, search_space.NUM_DIRECTIONS),
                  (len(search_space.levels_at_layer(supernet.num_layers,
                                                    supernet.num_levels)),)]
        self.masks = [tf.Variable(np.zeros(shape, np.float32), trainable=False)
                      for shape in shapes]

    def select(self, arch: Architecture) -> None:
        for variable, value in zip(self.masks, subnetwork_weights(
                arch, self.supernet.num_blocks, self.supernet.num_layers,
                self.supernet.num_levels)):
            variable.assign(value)

    def __call__(self, images, training=False):
        import tensorflow as tf

        return self.supernet(images, training=training,
                             arch_weights=tuple(tf.convert_to_tensor(m) for m in self.masks))


@dataclasses.dataclass
class SearchRun:
    """What inherited accuracy needs of a train.search --model_dir."""

    config: Any  # its search.SearchConfig
    checkpoint: str | None  # its latest checkpoint, absolute; None when checkpoints/ is gone
    identity: dict | None  # its supernet, portably (`supernet_identity`); None if unknown


def supernet_identity(saved_config: dict, step: int | None,
                      arch_metadata: dict) -> dict | None:
    """The supernet of a search run, by what its small files say rather than by path, so that
    a copy of the run elsewhere (checkpoints left out) names the same supernet.

    It is the settings a search refuses to resume with changed (search_config.json: space,
    data, budget, seed), the global step of the weights, and, when architecture.json was
    decoded at that step (the end of an epoch, as at the end of a search), its path
    probability: a number computed from the trained alpha and beta, which tells apart two
    runs of the same settings. `step` is None when unknown (then so is the supernet).
    """
    from auto_deeplab_tf import search as search_lib

    if step is None:
        return None
    decoded_here = arch_metadata.get("global_step") == step
    # A setting added later is left out at the value earlier runs had, so that results
    # saved before it existed still name the same supernet.
    later = search_lib.RESUME_KEYS_ADDED_LATER
    settings = {k: saved_config.get(k, later.get(k)) for k in search_lib._RESUME_KEYS}
    settings = {k: v for k, v in settings.items() if k not in later or v != later[k]}
    return {"search_settings": settings,
            "global_step": step,
            "path_probability": arch_metadata.get("path_probability") if decoded_here
            else None}


def read_search_run(supernet_dir: str) -> SearchRun:
    """The settings, latest checkpoint and supernet identity of a train.search --model_dir.

    Without checkpoints, the step is the one architecture.json was decoded at (the last
    epoch's end, where the final checkpoint is written), so a finished search's small files
    identify its final supernet.
    """
    import tensorflow as tf

    from auto_deeplab_tf import checkpointing
    from auto_deeplab_tf import common
    from auto_deeplab_tf import search as search_lib
    from auto_deeplab_tf.architecture import read_metadata

    config_path = os.path.join(supernet_dir, search_lib.CONFIG_FILENAME)
    if not os.path.exists(config_path):
        raise ValueError(f"--supernet_dir={supernet_dir} has no {search_lib.CONFIG_FILENAME}; "
                         "is it the --model_dir of a train.search run?")
    with open(config_path) as f:
        saved = json.load(f)
    fields = {f.name for f in dataclasses.fields(search_lib.SearchConfig)}
    config = search_lib.SearchConfig(**{k: v for k, v in saved.items() if k in fields})
    arch_path = os.path.join(supernet_dir, common.ARCHITECTURE_FILENAME)
    metadata = read_metadata(arch_path) if os.path.exists(arch_path) else {}
    checkpoint_path = tf.train.latest_checkpoint(
        os.path.join(supernet_dir, checkpointing.CHECKPOINT_SUBDIR))
    if checkpoint_path is not None:
        checkpoint_path = os.path.abspath(checkpoint_path)
        step = checkpointing.checkpoint_step(checkpoint_path)
    else:
        step = metadata.get("global_step")
    return SearchRun(config, checkpoint_path, supernet_identity(saved, step, metadata))


def load_supernet(config, checkpoint_path: str, num_classes: int, ignore_label: int):
    """The search model of `config` (a SearchConfig) with the weights of a search
    checkpoint, built as the search builds it (its optimizers are built, not restored)."""
    import tensorflow as tf

    from auto_deeplab_tf import checkpointing
    from auto_deeplab_tf import search as search_lib

    model = search_lib.build_search_model(config, num_classes, total_steps=1,
                                          ignore_label=ignore_label)
    checkpoint = tf.train.Checkpoint(model=checkpointing.VariableBundle(model.variables))
    status = checkpoint.restore(checkpoint_path)
    status.expect_partial()  # the optimizers and counters are not wanted
    try:
        status.assert_existing_objects_matched()
    except AssertionError:
        raise ValueError(f"{checkpoint_path} does not hold the supernet its "
                         "search_config.json describes (written by another version of the "
                         "code?)") from None
    return model


def evaluate_candidates(supernet_dir: str, candidates: Sequence, arch_dirs: dict,
                        descriptor, data_dir: str, split: str,
                        log: Callable[[str], None] = print) -> None:
    """Inherited mIoU of every candidate (`comparison.Candidate`) on `split` with the latest
    checkpoint of the search run `supernet_dir`, written to `result_path(arch_dirs[key],
    split)`.

    A saved result of the same supernet (`supernet_identity`, wherever the run was) is
    kept, not recomputed; when every candidate has one, the supernet is not loaded, so the
    run's checkpoints are needed only for the missing ones (ValueError naming them if gone).
    """
    from auto_deeplab_tf import checkpointing
    from auto_deeplab_tf import evaluation

    run = read_search_run(supernet_dir)
    config = run.config
    if config.dataset != descriptor.name:
        raise ValueError(f"--supernet_dir={supernet_dir} searched on {config.dataset}, not "
                         f"{descriptor.name}")
    for candidate in candidates:
        check_space(candidate.architecture, config.num_blocks, config.num_layers,
                    config.num_levels, where=f"--supernet_dir={supernet_dir}: {candidate.source}")
    todo = []
    for candidate in candidates:
        path = result_path(arch_dirs[candidate.key], split)
        saved = _read(path) or {}
        if run.identity is not None and saved.get("supernet") == run.identity:
            continue
        if "supernet" not in saved and run.checkpoint is not None and \
                saved.get("checkpoint") == run.checkpoint:
            # Written before results named their supernet: same checkpoint, same supernet.
            saved["supernet"] = run.identity
            atomic_write.write_json(path, saved)
            continue
        todo.append(candidate)
    if len(todo) < len(candidates):
        step = run.identity["global_step"]
        log(f"[inherited] {len(candidates) - len(todo)} of {len(candidates)} architectures: "
            f"inherited {split} mIoU reused (search run {supernet_dir}, step {step})")
    if not todo:
        return
    if run.checkpoint is None:
        checkpoint_dir = os.path.join(supernet_dir, checkpointing.CHECKPOINT_SUBDIR)
        step = "unknown" if run.identity is None else run.identity["global_step"]
        missing = ", ".join(f"{c.name} ({result_path(arch_dirs[c.key], split)})"
                            for c in todo)
        raise ValueError(f"--supernet_dir={supernet_dir} has no search checkpoint in "
                         f"{checkpoint_dir}, and {len(todo)} of {len(candidates)} "
                         f"architectures have no inherited {split} mIoU of this supernet "
                         f"(step {step}): {missing}; give --supernet_dir with its "
                         "checkpoints/ to compute it")
    model = load_supernet(config, run.checkpoint, descriptor.num_classes,
                          descriptor.ignore_label)
    subnetworks = Subnetworks(model)
    predict_fn = evaluation.make_predict_fn(subnetworks, scales=(config.scale,))
    for i, candidate in enumerate(todo):
        subnetworks.select(candidate.architecture)
        result = evaluation.evaluate_split(predict_fn, descriptor, data_dir, split)
        result.update(supernet_dir=os.path.abspath(supernet_dir), checkpoint=run.checkpoint,
                      supernet=run.identity, eval_scales=[config.scale])
        atomic_write.write_json(result_path(arch_dirs[candidate.key], split), result)
        log(f"[inherited {i + 1}/{len(todo)} {candidate.name}] {split} mIoU "
            f"{100 * result['miou']:.2f}% with the weights of {run.checkpoint}")


def _read(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)
