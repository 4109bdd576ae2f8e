"""What the converter scripts share: common flags, the per-split loop and the final summary."""

from __future__ import annotations

import sys
from typing import Callable, Sequence

from absl import flags

from . import conversion, script_hygiene
from .registry import DatasetDescriptor

Discover = Callable[[str], "tuple[list[conversion.Sample], list[str]]"]


def define_common_flags(default_splits: Sequence[str]) -> None:
    """Defines --output_dir, --splits, --num_shards, --skip_bad and --num_workers."""
    flags.DEFINE_string("output_dir", None, "Directory for the TFRecord shards.", required=True)
    flags.DEFINE_list("splits", list(default_splits), "Splits to convert.")
    flags.DEFINE_integer("num_shards", 10, "Shards per split (fewer if the split is smaller).")
    flags.DEFINE_boolean(
        "skip_bad", False,
        "Convert every good example and list the bad ones, instead of stopping at the first.")
    flags.DEFINE_integer("num_workers", None, "Decoding threads (default: number of CPUs).")


def convert_splits(
    descriptor: DatasetDescriptor,
    discover: Discover,
    splits: Sequence[str],
    *,
    output_dir: str,
    num_shards: int,
    skip_bad: bool = False,
    num_workers: int | None = None,
    stream=sys.stdout,
) -> list[conversion.SplitResult]:
    """Converts `splits`, then prints per-split counts, skipped files and count warnings.

    Every split is paired before any is written, so a missing label surfaces in seconds
    rather than after converting the splits before it.

    Raises:
      ConversionError: bad input (without `skip_bad`).
    """
    found = {split: discover(split) for split in splits}
    results = [
        conversion.convert_split(
            samples, problems, output_dir=output_dir, split=split, num_shards=num_shards,
            skip_bad=skip_bad, num_workers=num_workers, progress_stream=stream)
        for split, (samples, problems) in found.items()
    ]
    if stream is not None:
        for line in summary_lines(descriptor, results):
            print(line, file=stream, flush=True)
    return results


def summary_lines(descriptor: DatasetDescriptor,
                  results: Sequence[conversion.SplitResult]) -> list[str]:
    """Counts per split, then what was skipped, then splits whose size is not the official one."""
    lines = [f"{descriptor.name}: converted"]
    for r in results:
        lines.append(f"  {r.split}: {r.count} examples in {len(r.shards)} shards "
                     f"({r.seconds:.1f} s)")
    for r in results:
        if r.skipped:
            lines.append(f"  {r.split}: skipped {len(r.skipped)} bad input(s):")
            lines.extend(f"    {problem}" for problem in r.skipped)
    for r in results:
        official = descriptor.splits.get(r.split)
        if official is not None and r.count != official:
            lines.append(f"WARNING: {descriptor.name} split '{r.split}' has {r.count} examples, "
                         f"the official split has {official} (incomplete download or subset?)")
    return lines


def run(convert: Callable[[], object]) -> int:
    """Runs `convert` (TensorFlow's and TFDS's info log lines hidden); bad input becomes a
    one-paragraph error and exit status 1."""
    script_hygiene.quiet_info_logs()
    try:
        convert()
    except conversion.ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        print("No shard was written for the failing split. Fix the input, or pass --skip_bad "
              "to convert everything else and list what was skipped.", file=sys.stderr)
        return 1
    return 0
