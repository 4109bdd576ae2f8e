"""Architectures compared under one retraining budget: what `train.compare_architectures` runs.

A search is worth running only if what it finds beats architectures drawn at random from the
same space and trained the same way (Yang et al., "NAS evaluation is frustratingly hard",
ICLR 2020). `run_comparison` retrains every architecture with the same settings once per
retrain seed (`retrain.run_retrain`), evaluates each run on the dataset's evaluation split,
and reports:

* per architecture: the mIoU of each seed, their mean, params and multiply-adds (of the
  retrained network at one crop-size image), where it came from (its metadata's `origin`:
  `search`, `random`, else `other`), its rank by mean mIoU (1 = best) and, with a trained
  search supernet, its inherited mIoU (`inherited`);
* the searched architectures' rank and their relative improvement over the mean of the
  random ones, RI = 100 * (mIoU_searched - mean mIoU_random) / mean mIoU_random (Yang et al.);
* Kendall's tau between the inherited and the standalone (mean retrained) mIoU.

Layout of OUT (`--model_dir`):

    OUT/comparison.json, OUT/comparison.png, OUT/events.* (the same image in TensorBoard)
    OUT/runs/KEY/architecture.json     KEY: a hash of the architecture (cell, path, levels)
    OUT/runs/KEY/stats.json            params and multiply-adds
    OUT/runs/KEY/inherited_SPLIT.json  the sub-network's mIoU inside the supernet
    OUT/runs/KEY/seed_S/               a train.retrain --model_dir (checkpoints, eval_SPLIT.json)

Runs are keyed by the architecture's content, not its file name, so a file renamed or
listed again maps to the same runs. Rerunning the same command resumes: a run that finished
(and was evaluated) is not retrained, an unfinished one resumes from its last checkpoint
(`run_retrain`'s own resume, which also refuses changed settings), and comparison.json is
rewritten after every run. A finished run needs only its small files, not its checkpoints
(too big to carry between the machines a long comparison spans): with no checkpoint, a
retrain_config.json of the same settings and an eval_SPLIT.json of the final step mean
finished (`reusable_result`). stats.json is recomputed when missing; inherited_SPLIT.json
is reused for the same supernet, named by the search run's small files rather than its path
(`inherited.supernet_identity`), without its checkpoint when nothing else is missing.
"""

from __future__ import annotations

import dataclasses
import gc
import glob
import hashlib
import json
import math
import os
import statistics
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from auto_deeplab_datasets import atomic_write
from auto_deeplab_tf import architecture as architecture_lib
from auto_deeplab_tf import common
from auto_deeplab_tf.architecture import Architecture

COMPARISON_JSON = "comparison.json"
COMPARISON_PNG = "comparison.png"
RUNS_SUBDIR = "runs"
STATS_FILENAME = "stats.json"
ORIGIN_OTHER = "other"
ORIGINS = (common.ORIGIN_SEARCH, common.ORIGIN_RANDOM, ORIGIN_OTHER)
TENSORBOARD_TAG = "comparison/miou"


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One architecture to compare: its display name, where it was read from, its origin."""

    name: str
    source: str  # the path (or built-in name) it was read from
    architecture: Architecture
    origin: str  # common.ORIGIN_SEARCH, common.ORIGIN_RANDOM or ORIGIN_OTHER
    origin_seed: int | None = None

    @property
    def key(self) -> str:
        return architecture_key(self.architecture)


def architecture_key(arch: Architecture) -> str:
    """A short hash of the architecture's content (cell, path, levels; not its metadata)."""
    text = json.dumps(arch.to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _origin(metadata: dict) -> tuple[str, int | None]:
    origin = metadata.get(common.ARCH_ORIGIN)
    if origin not in (common.ORIGIN_SEARCH, common.ORIGIN_RANDOM):
        return ORIGIN_OTHER, None
    seed = metadata.get(common.ARCH_ORIGIN_SEED)
    return origin, (int(seed) if isinstance(seed, (int, float)) else None)


def expand_architectures(specs: Sequence[str]) -> list[Candidate]:
    """The architectures named by --architectures: built-in names, JSON files or glob
    patterns (their matches in sorted order). A file named twice counts once. Display names
    are the file names without '.json', prefixed by as many directories as it takes to tell
    them apart; an `architecture.json` (what a search writes) always gets its directory."""
    sources: list[str] = []
    for spec in specs:
        spec = spec.strip()
        if not spec:
            continue
        if spec in architecture_lib.BUILTIN:
            matches = [spec]
        elif glob.has_magic(spec):
            matches = sorted(glob.glob(spec))
            if not matches:
                raise ValueError(f"--architectures: '{spec}' matches no file")
        else:
            matches = [spec]
        for match in matches:
            if match not in architecture_lib.BUILTIN:
                match = os.path.normpath(match)
            if match not in sources:
                sources.append(match)
    if not sources:
        raise ValueError("--architectures is required: architecture JSON files, globs or "
                         f"built-in names ({', '.join(sorted(architecture_lib.BUILTIN))})")
    loaded = []
    for source in sources:
        if source in architecture_lib.BUILTIN:
            loaded.append((source, architecture_lib.BUILTIN[source], {}))
            continue
        try:
            arch = Architecture.load(source)
            metadata = architecture_lib.read_metadata(source)
        except ValueError as e:
            raise ValueError(f"--architectures: {e}") from e
        loaded.append((source, arch, metadata))
    names = _display_names([source for source, _, _ in loaded])
    candidates = []
    for name, (source, arch, metadata) in zip(names, loaded):
        origin, seed = _origin(metadata)
        candidates.append(Candidate(name, source, arch, origin, seed))
    return candidates


def _display_names(sources: Sequence[str]) -> list[str]:
    def stem(source, parents):
        parts = os.path.normpath(source).split(os.sep)
        parts[-1] = parts[-1][:-5] if parts[-1].endswith(".json") else parts[-1]
        return "/".join(parts[-1 - parents:])

    # A search's file is always architecture.json: its run directory names it.
    generic = os.path.splitext(common.ARCHITECTURE_FILENAME)[0]
    names = []
    for source in sources:
        depth = len(os.path.normpath(source).split(os.sep))
        name = stem(source, depth - 1)  # the whole path, if nothing shorter is unique
        for parents in range(min(int(stem(source, 0) == generic), depth - 1), depth):
            if sum(stem(other, parents) == stem(source, parents) for other in sources) == 1:
                name = stem(source, parents)
                break
        names.append(name)
    return names


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b of two paired sequences (ties allowed): sum over pairs of
    sign(dx) * sign(dy), divided by sqrt(pairs not tied in x * pairs not tied in y).
    None when fewer than 2 pairs or either sequence is constant."""
    if len(x) != len(y):
        raise ValueError(f"kendall_tau needs paired values, got {len(x)} and {len(y)}")
    x, y = [float(v) for v in x], [float(v) for v in y]
    score = untied_x = untied_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx = (x[i] > x[j]) - (x[i] < x[j])
            dy = (y[i] > y[j]) - (y[i] < y[j])
            score += dx * dy
            untied_x += dx != 0
            untied_y += dy != 0
    if not untied_x or not untied_y:
        return None
    return score / math.sqrt(untied_x * untied_y)


def ranks(values: Sequence[float]) -> list[int]:
    """Competition ranks, highest first: 1 for the best; ties share the best rank."""
    return [1 + sum(other > v for other in values) for v in values]


def relative_improvement(miou: float, random_mean: float) -> float:
    """Yang et al.'s RI in percent: 100 * (miou - random_mean) / random_mean."""
    return 100.0 * (miou - random_mean) / random_mean


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Ranks, random mean/median, the searched architectures' rank and RI, and Kendall's tau
    (inherited vs standalone mIoU) from the per-architecture rows; fills each row's 'rank'."""
    complete = [row for row in rows if row.get("mean_miou") is not None]
    for row, rank in zip(complete, ranks([row["mean_miou"] for row in complete])):
        row["rank"] = rank
    for row in rows:
        row.setdefault("rank", None)
    random_means = [row["mean_miou"] for row in complete
                    if row["origin"] == common.ORIGIN_RANDOM]
    summary: dict[str, Any] = {
        "num_architectures": len(rows),
        "num_complete": len(complete),
        "random": {
            "count": len(random_means),
            "mean_miou": statistics.fmean(random_means) if random_means else None,
            "median_miou": statistics.median(random_means) if random_means else None,
        },
    }
    random_mean = summary["random"]["mean_miou"]
    summary["searched"] = [
        {"name": row["name"], "mean_miou": row["mean_miou"], "rank": row["rank"],
         "relative_improvement": (relative_improvement(row["mean_miou"], random_mean)
                                  if random_mean and row["mean_miou"] is not None else None),
         "params": row.get("params"), "multiply_adds": row.get("multiply_adds")}
        for row in rows if row["origin"] == common.ORIGIN_SEARCH]
    paired = [(row["inherited_miou"], row["mean_miou"]) for row in complete
              if row.get("inherited_miou") is not None]
    summary["kendall_tau"] = (kendall_tau([p[0] for p in paired], [p[1] for p in paired])
                              if len(paired) >= 2 else None)
    summary["kendall_tau_count"] = len(paired)
    return summary


def format_report(rows: list[dict[str, Any]], summary: dict[str, Any],
                  seeds: Sequence[int]) -> str:
    """The table of every architecture (best first) and the verdict lines."""
    inherited = any(row.get("inherited_miou") is not None for row in rows)
    width = max([len(row["name"]) for row in rows] + [12])
    head = (f"{'rank':>4}  {'architecture':<{width}}  {'origin':<7}  "
            + "  ".join(f"{'seed ' + str(s):>7}" for s in seeds)
            + f"  {'mean':>7}  {'params':>8}  {'mult-adds':>9}"
            + ("  inherited" if inherited else ""))
    lines = [head, "-" * len(head)]
    order = sorted(rows, key=lambda r: (r["mean_miou"] is None, -(r["mean_miou"] or 0)))

    def pct(v):
        return f"{100 * v:7.2f}" if v is not None else f"{'-':>7}"

    for row in order:
        per_seed = "  ".join(pct(row["miou"].get(str(s))) for s in seeds)
        params = f"{row['params'] / 1e6:7.3f}M" if row.get("params") is not None else f"{'-':>8}"
        madds = (f"{row['multiply_adds'] / 1e9:8.3f}G" if row.get("multiply_adds") is not None
                 else f"{'-':>9}")
        rank = f"{row['rank']:>4}" if row["rank"] is not None else f"{'-':>4}"
        lines.append(f"{rank}  {row['name']:<{width}}  {row['origin']:<7}  {per_seed}  "
                     f"{pct(row['mean_miou'])}  {params}  {madds}"
                     + (f"  {pct(row.get('inherited_miou'))}" if inherited else ""))
    lines.append("(mIoU in %; params and multiply-adds of the retrained network)")
    random = summary["random"]
    if random["count"]:
        lines.append(f"random architectures: {random['count']}, mean mIoU "
                     f"{100 * random['mean_miou']:.2f}%, median {100 * random['median_miou']:.2f}%")
    else:
        lines.append("no random architecture has finished: no relative improvement")
    for s in summary["searched"]:
        if s["rank"] is None:
            lines.append(f"searched {s['name']}: not finished")
            continue
        ri = (f"; relative improvement over the random mean {s['relative_improvement']:+.1f}% "
              "(Yang et al.)" if s["relative_improvement"] is not None else "")
        lines.append(f"searched {s['name']}: rank {s['rank']} of {summary['num_complete']}, "
                     f"mean mIoU {100 * s['mean_miou']:.2f}%{ri}")
    if summary["kendall_tau"] is not None:
        lines.append(f"Kendall's tau, inherited vs retrained mIoU: {summary['kendall_tau']:.3f} "
                     f"over {summary['kendall_tau_count']} architectures")
    return "\n".join(lines)


# -- the figure ----------------------------------------------------------------------------
_COLOURS = {common.ORIGIN_SEARCH: (214, 39, 40), common.ORIGIN_RANDOM: (31, 119, 180),
            ORIGIN_OTHER: (110, 110, 110)}


def _marker(draw, origin: str, x: float, y: float, r: int, fill=True) -> None:
    colour = _COLOURS[origin]
    kwargs = {"fill": colour} if fill else {"outline": colour, "width": 1}
    if origin == common.ORIGIN_SEARCH:  # a diamond
        draw.polygon([(x, y - r - 2), (x + r + 2, y), (x, y + r + 2), (x - r - 2, y)], **kwargs)
    elif origin == common.ORIGIN_RANDOM:
        draw.ellipse([x - r, y - r, x + r, y + r], **kwargs)
    else:
        draw.rectangle([x - r, y - r, x + r, y + r], **kwargs)


def comparison_image(rows: list[dict[str, Any]], summary: dict[str, Any],
                     title: str = "") -> np.ndarray:
    """Every architecture's mIoU (one column each, worst to best; a small hollow marker per
    seed, a large one for the mean), searched ones as red diamonds, random ones as blue
    dots, others as grey squares, and the random median as a dashed line. RGB uint8."""
    font = ImageFont.load_default()
    shown = sorted([r for r in rows if r["miou"]],
                   key=lambda r: (r["mean_miou"] is None, r["mean_miou"] or 0))
    values = [v for r in shown for v in r["miou"].values()]
    median = summary["random"]["median_miou"]
    if median is not None:
        values.append(median)
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    span = max(high - low, 0.02)
    low, high = max(0.0, low - 0.1 * span), min(1.0, high + 0.1 * span)
    if high <= low:
        low, high = max(0.0, high - 0.05), min(1.0, low + 0.05)
    column = 34
    left, right, top = 60, 20, 40
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max([probe.textlength(r["name"], font=font) for r in shown] + [40])
    plot_height = 300
    bottom = int(label_width) + 20
    width = max(left + right + column * max(len(shown), 1), 560)
    height = top + plot_height + bottom + 30
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)

    def y_of(v):
        return top + plot_height * (high - v) / (high - low)

    # Axis, grid and tick labels every 'step' of mIoU.
    step = next(s for s in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5) if (high - low) / s <= 8)
    tick = math.ceil(low / step) * step
    while tick <= high + 1e-9:
        y = y_of(tick)
        draw.line([left, y, width - right, y], fill=(230, 230, 230))
        draw.text((4, y - 5), f"{100 * tick:.1f}", fill="black", font=font)
        tick += step
    draw.line([left, top, left, top + plot_height], fill="black")
    draw.line([left, top + plot_height, width - right, top + plot_height], fill="black")
    draw.text((4, top - 30), "mIoU (%)", fill="black", font=font)
    if title:
        draw.text((left, 6), title, fill="black", font=font)
    if median is not None:
        y = y_of(median)
        for x in range(left, width - right, 10):
            draw.line([x, y, min(x + 5, width - right), y], fill=_COLOURS[common.ORIGIN_RANDOM],
                      width=2)
        draw.text((width - right - 150, y - 13), f"random median {100 * median:.2f}",
                  fill=_COLOURS[common.ORIGIN_RANDOM], font=font)
    for i, row in enumerate(shown):
        x = left + column * i + column // 2
        for v in row["miou"].values():
            _marker(draw, row["origin"], x, y_of(v), 3, fill=False)
        if row["mean_miou"] is not None:
            _marker(draw, row["origin"], x, y_of(row["mean_miou"]), 5)
        # The name, written downwards under its column.
        text = Image.new("RGB", (int(label_width) + 4, 12), "white")
        ImageDraw.Draw(text).text((0, 0), row["name"], fill=_COLOURS[row["origin"]], font=font)
        text = text.rotate(90, expand=True)
        img.paste(text, (x - 6, top + plot_height + 6 + int(label_width) + 4 - text.height))
    legend_y = height - 22
    x = left
    for origin, label in ((common.ORIGIN_SEARCH, "searched"), (common.ORIGIN_RANDOM, "random"),
                          (ORIGIN_OTHER, "other")):
        _marker(draw, origin, x, legend_y + 6, 5)
        draw.text((x + 10, legend_y), label, fill="black", font=font)
        x += 80
    draw.text((x, legend_y), "large: mean over seeds, small: each seed", fill="black",
              font=font)
    return np.asarray(img)


def write_image(path: str, image: np.ndarray) -> None:
    """PNG, atomically."""
    tmp = f"{path}.tmp.png"
    Image.fromarray(image).save(tmp)
    os.replace(tmp, path)


def write_tensorboard_image(writer, image: np.ndarray, step: int) -> None:
    """The figure as a TensorBoard image (`tf.summary` writer), at `step` finished runs."""
    import tensorflow as tf

    with writer.as_default(step=step):
        tf.summary.image(TENSORBOARD_TAG, image[None])
    writer.flush()


# -- running -------------------------------------------------------------------------------
def _read_json(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _model_config(template, arch: Architecture, num_classes: int) -> dict[str, Any]:
    """What `trained_model.build_model` reads (as retrain_config.json holds it)."""
    config = dataclasses.asdict(template)
    config.update(architecture_spec=arch.to_dict(), num_classes=int(num_classes),
                  stem_filters=list(template.stem_filters))
    return config


def architecture_stats(template, arch: Architecture, num_classes: int, arch_dir: str
                       ) -> dict[str, Any]:
    """Params and multiply-adds of the retrained network at one crop-size image, cached in
    ARCH_DIR/stats.json (recomputed when the network settings change)."""
    from auto_deeplab_tf import evaluation
    from auto_deeplab_tf import model_stats
    from auto_deeplab_tf import trained_model

    settings = {"num_classes": int(num_classes), "filter_multiplier": template.filter_multiplier,
                "stem_filters": list(template.stem_filters),
                "aspp_filters": template.aspp_filters,
                "decoder_filters": template.decoder_filters,
                "image_size": [template.crop_size, template.crop_size]}
    path = os.path.join(arch_dir, STATS_FILENAME)
    cached = _read_json(path)
    if cached and cached.get("settings") == settings:
        return cached
    model = trained_model.build_model(_model_config(template, arch, num_classes))
    stats = model_stats.fixed_network_stats(arch, num_classes, template.filter_multiplier,
                                            settings["image_size"], model=model)
    result = {"settings": settings, "params": stats["params"],
              "multiply_adds": stats["multiply_adds"]}
    atomic_write.write_json(path, result)
    return result


def reusable_result(config, arch: Architecture, num_classes: int, eval_path: str
                    ) -> dict[str, Any] | None:
    """The evaluation (`eval_path`, an eval_SPLIT.json) of a run that finished with these
    settings but whose checkpoints are gone, else None.

    `config` is the run's `retrain.RetrainConfig` (model_dir = the run directory). Only
    small files can be carried between the machines a long comparison spans: a run counts as
    finished when its retrain_config.json agrees with `config` on every setting a retraining
    must not resume with changed (`retrain.resume_config_differences`) and the evaluation is
    of the final step. With checkpoints present, or any of this missing or different, None:
    `retrain.run_retrain` then decides, as for any run (it resumes, or refuses changed
    settings with its message).
    """
    import tensorflow as tf

    from auto_deeplab_tf import checkpointing
    from auto_deeplab_tf import retrain as retrain_lib
    from auto_deeplab_tf import trained_model

    checkpoint_dir = os.path.join(config.model_dir, checkpointing.CHECKPOINT_SUBDIR)
    if tf.io.gfile.isdir(checkpoint_dir) and tf.train.latest_checkpoint(checkpoint_dir):
        return None
    saved = _read_json(os.path.join(config.model_dir, trained_model.CONFIG_FILENAME))
    if saved is None or retrain_lib.resume_config_differences(
            saved, _model_config(config, arch, num_classes)):
        return None
    evaluated = _read_json(eval_path)
    if evaluated is None or evaluated.get("global_step") != config.train_steps:
        return None
    return evaluated


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("--retrain_seeds needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--retrain_seeds has a repeated seed: {seeds}")
    if min(seeds) < 0:
        raise ValueError(f"--retrain_seeds must be >= 0, got {seeds}")
    return seeds


def run_comparison(template, candidates: Sequence[Candidate], seeds: Sequence[int],
                   out_dir: str, supernet_dir: str | None = None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Retrains and evaluates every candidate once per seed (or resumes), writes
    OUT/comparison.json, OUT/comparison.png and the image to TensorBoard; returns the
    comparison.json dict.

    `template` is a `retrain.RetrainConfig` whose architecture, seed and model_dir are
    replaced per run; everything else (budget, model size, optimizer, data) is shared.
    With `supernet_dir` (a train.search --model_dir), each candidate also gets its
    inherited mIoU (`inherited.evaluate_candidates`).
    """
    import keras
    import tensorflow as tf

    from auto_deeplab_tf import checkpointing
    from auto_deeplab_tf import evaluation
    from auto_deeplab_tf import retrain as retrain_lib
    from auto_deeplab_datasets import input_pipeline, registry

    seeds = _check_seeds(seeds)
    if not candidates:
        raise ValueError("--architectures named no architecture")
    if template.strategy == "multi_worker":
        raise ValueError("--strategy=multi_worker: a comparison runs its retrainings one "
                         "after another in one process; use default or mirrored")
    template.validate()
    descriptor = registry.get(template.dataset)
    data_dir = input_pipeline.resolve_data_dir(template.dataset, template.data_dir)
    split = descriptor.eval_split
    num_classes = descriptor.num_classes
    os.makedirs(out_dir, exist_ok=True)
    writer = tf.summary.create_file_writer(out_dir)

    unique: dict[str, Candidate] = {}
    for candidate in candidates:
        unique.setdefault(candidate.key, candidate)
    arch_dirs = {key: os.path.join(out_dir, RUNS_SUBDIR, key) for key in unique}
    for key, candidate in unique.items():
        arch_path = os.path.join(arch_dirs[key], common.ARCHITECTURE_FILENAME)
        if not os.path.exists(arch_path):
            candidate.architecture.save(arch_path, {"name": candidate.name,
                                                    "source": candidate.source})

    def report(runs_done: int) -> dict[str, Any]:
        rows = []
        for candidate in candidates:
            arch_dir = arch_dirs[candidate.key]
            miou = {}
            for seed in seeds:
                result = _read_json(os.path.join(arch_dir, f"seed_{seed}",
                                                 f"eval_{split}.json"))
                if result is not None:
                    miou[str(seed)] = result["miou"]
            stats = _read_json(os.path.join(arch_dir, STATS_FILENAME)) or {}
            row = {"name": candidate.name, "source": candidate.source, "key": candidate.key,
                   "origin": candidate.origin, "origin_seed": candidate.origin_seed,
                   "architecture": candidate.architecture.to_dict(), "miou": miou,
                   "mean_miou": (statistics.fmean(miou.values()) if len(miou) == len(seeds)
                                 else None),
                   "params": stats.get("params"), "multiply_adds": stats.get("multiply_adds")}
            if supernet_dir:
                from auto_deeplab_tf import inherited

                cached = _read_json(inherited.result_path(arch_dir, split)) or {}
                row["inherited_miou"] = cached.get("miou")
            rows.append(row)
        summary = summarize(rows)
        settings = dataclasses.asdict(template)
        for per_run in ("model_dir", "architecture", "seed", "num_classes"):
            settings.pop(per_run, None)
        payload = {"dataset": template.dataset, "split": split, "retrain_seeds": seeds,
                   "retrain_settings": settings,
                   "multiply_adds_image_size": [template.crop_size, template.crop_size],
                   "supernet_dir": supernet_dir, "architectures": rows, "summary": summary}
        atomic_write.write_json(os.path.join(out_dir, COMPARISON_JSON), payload)
        title = (f"{template.dataset} {split}: {len(rows)} architectures, retrain seeds "
                 f"{','.join(map(str, seeds))}, {template.train_steps} steps")
        image = comparison_image(rows, summary, title)
        write_image(os.path.join(out_dir, COMPARISON_PNG), image)
        write_tensorboard_image(writer, image, runs_done)
        return payload

    if supernet_dir:
        from auto_deeplab_tf import inherited

        inherited.evaluate_candidates(supernet_dir, list(unique.values()), arch_dirs,
                                      descriptor, data_dir, split, log=log)
    for key, candidate in unique.items():
        architecture_stats(template, candidate.architecture, num_classes, arch_dirs[key])
        keras.backend.clear_session()

    # Written before any retraining, so that params, multiply-adds and inherited mIoU show
    # at once, and after every run.
    payload = report(0)
    total = len(unique) * len(seeds)
    done = 0
    pending = []
    for seed in seeds:
        for key, candidate in unique.items():
            done += 1
            run_dir = os.path.join(arch_dirs[key], f"seed_{seed}")
            eval_path = os.path.join(run_dir, f"eval_{split}.json")
            prefix = f"[{done}/{total} {candidate.name} seed {seed}]"
            config = dataclasses.replace(
                template, model_dir=run_dir, seed=seed,
                architecture=os.path.join(arch_dirs[key], common.ARCHITECTURE_FILENAME))
            log(f"{prefix} run directory {run_dir}")
            reused = reusable_result(config, candidate.architecture, num_classes, eval_path)
            if reused is not None:
                log(f"{prefix} finished at step {config.train_steps} with these settings "
                    f"(retrain_config.json), no checkpoints: result reused from {eval_path}")
                log(f"{prefix} {split} mIoU {100 * reused['miou']:.2f}%")
                payload = report(done)
                continue
            result = retrain_lib.run_retrain(config, log=lambda line: log(f"{prefix} {line}"))
            if not result.completed:
                pending.append((candidate.name, seed))
            else:
                evaluated = _read_json(eval_path)
                step = checkpointing.checkpoint_step(result.checkpoint)
                if evaluated is None or evaluated.get("global_step") != step:
                    predict_fn = evaluation.make_predict_fn(result.model)
                    evaluated = evaluation.evaluate_split(predict_fn, descriptor, data_dir,
                                                          split)
                    evaluated.update(eval_scales=[1.0], add_flipped_images=False,
                                     checkpoint=result.checkpoint, global_step=step)
                    atomic_write.write_json(eval_path, evaluated)
                    evaluation.write_summaries(os.path.join(run_dir, common.EVAL_SUMMARY_SUBDIR),
                                               step, evaluated, split)
                log(f"{prefix} {split} mIoU {100 * evaluated['miou']:.2f}%")
            del result
            keras.backend.clear_session()
            gc.collect()
            payload = report(done)
    writer.close()
    log(format_report(payload["architectures"], payload["summary"], seeds))
    if pending:
        log(f"{len(pending)} of {total} retrainings stopped early (--max_steps); rerun the "
            "same command to continue them")
    log(f"wrote {os.path.join(out_dir, COMPARISON_JSON)} and "
        f"{os.path.join(out_dir, COMPARISON_PNG)}; TensorBoard: tensorboard --logdir {out_dir}")
    return payload
