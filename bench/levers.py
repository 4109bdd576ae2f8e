"""Benchmark: each speed or memory lever of the search step alone, against the same build
with every lever off, in one run.

  python -m bench.levers --crops=64,321 --output=levers.jsonl

For every crop, runs `bench.search_step` (F = 8, L = 12, B = 5, 19 classes, batch 2 by
default: the paper's search) once per lever in `LEVERS`, each in its own process so that
peak RSS is that configuration's alone. Appends one JSON line per run to --output and
skips runs already there, so an interrupted benchmark resumes. Prints a Markdown table
with each lever's step time and peak RSS as ratios to the baseline of the same crop.

Run it on an otherwise idle machine: the runs are compared with each other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app
from absl import flags

# Lever name -> bench.search_step flags. "baseline" has every lever off.
LEVERS = {
    "baseline": [],
    "bf16": ["--mixed_precision=bf16"],
    "recompute": ["--recompute_layers"],
    "partial_channels=2": ["--partial_channels=2"],
    "partial_channels=4": ["--partial_channels=4"],
    # The paper's search with both of its levers.
    "bf16+recompute": ["--mixed_precision=bf16", "--recompute_layers"],
    # Not a lever of train.search: what Grappler costs at the first step and gains per step.
    "no_grappler": ["--nograppler"],
}

# Defined when the command runs, not on import: its test imports this module beside modules
# that define flags of the same names (bench.search_step, bench.profile_step).
_FLAGS: dict[str, flags.FlagHolder] = {}


def _define_flags() -> dict[str, flags.FlagHolder]:
    holders = [
        flags.DEFINE_list("crops", ["64", "321"], "Square crop sizes."),
        flags.DEFINE_list("levers", list(LEVERS)[:5], f"Which of {list(LEVERS)}."),
        flags.DEFINE_string("output", "levers.jsonl", "JSON lines, appended; runs found "
                            "there are not repeated."),
        flags.DEFINE_integer("steps", 3, "Timed steps per run (bench.search_step --steps)."),
        flags.DEFINE_string("space_flags", "--filter_multiplier=8 --num_layers=12 "
                            "--num_blocks=5 --num_classes=19 --batch_size=2",
                            "bench.search_step flags shared by every run."),
        flags.DEFINE_integer("timeout_s", 1800, "Per run."),
    ]
    return {holder.name: holder for holder in holders}


def _key(crop: int, lever: str) -> str:
    return f"{crop}:{lever}"


def _load(path: str) -> dict:
    done = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    done[_key(row["crop_size"], row["lever"])] = row
    return done


def table(rows: dict, crops: list[int], levers: list[str]) -> str:
    """Markdown: per crop and lever, step time and peak RSS, and their ratios to the
    baseline of that crop."""
    lines = ["| crop | lever | median step | vs baseline | trace + first step | peak RSS "
             "| vs baseline |", "|---|---|---|---|---|---|---|"]
    for crop in crops:
        base = rows.get(_key(crop, "baseline"))
        for lever in levers:
            row = rows.get(_key(crop, lever))
            if row is None:
                continue
            if "error" in row:
                lines.append(f"| {crop} | {lever} | {row['error']} | | | | |")
                continue
            speed = mem = ""
            if base and "error" not in base:
                speed = f"{row['median_step_s'] / base['median_step_s']:.2f}x"
                mem = f"{row['peak_rss_gb'] / base['peak_rss_gb']:.2f}x"
            first = f"{row['trace_and_first_step_s']:.0f} s"
            if "trace_s" in row:  # benchmarks of before the split lack it
                first += f" (trace {row['trace_s']:.0f} s)"
            lines.append(f"| {crop} | {lever} | {row['median_step_s']:.2f} s | {speed} | "
                         f"{first} | {row['peak_rss_gb']:.2f} GB | {mem} |")
    return "\n".join(lines)


def main(argv):
    del argv
    flag = {name: holder.value for name, holder in _FLAGS.items()}
    unknown = sorted(set(flag["levers"]) - set(LEVERS))
    if unknown:
        raise app.UsageError(f"--levers: unknown {unknown}; known: {list(LEVERS)}")
    crops = [int(c) for c in flag["crops"]]
    rows = _load(flag["output"])
    for crop in crops:
        for lever in flag["levers"]:
            if _key(crop, lever) in rows:
                continue
            command = [sys.executable, "-m", "bench.search_step", *flag["space_flags"].split(),
                       f"--crop_size={crop}", f"--steps={flag['steps']}", *LEVERS[lever]]
            print(f"levers: crop {crop}, {lever}: {' '.join(command[1:])}", flush=True)
            try:
                done = subprocess.run(command, capture_output=True, text=True,
                                      timeout=flag["timeout_s"])
                if done.returncode != 0:
                    row = {"error": f"exit {done.returncode}: {done.stderr.strip()[-300:]}"}
                else:
                    row = json.loads(done.stdout.strip().splitlines()[-1])
            except subprocess.TimeoutExpired:
                row = {"error": f"timeout after {flag['timeout_s']} s"}
            row.update(lever=lever, crop_size=crop)
            rows[_key(crop, lever)] = row
            with open(flag["output"], "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"levers: {json.dumps(row)}", flush=True)
    print(table(rows, crops, flag["levers"]))


if __name__ == "__main__":
    _FLAGS.update(_define_flags())
    app.run(main)
