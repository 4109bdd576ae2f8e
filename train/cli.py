"""What every train/ script's absl `main` does around its own `run()`."""

from __future__ import annotations

import os
import sys
from typing import Callable, NoReturn

from absl import app
from absl import flags

from auto_deeplab_datasets import script_hygiene
from auto_deeplab_tf import distribute
from auto_deeplab_tf import precision


# The exit status for a command line with positional arguments (a usage error, as argparse's).
STRAY_ARGUMENTS_EXIT_CODE = 2


def refuses_stray_arguments(argv: list) -> bool:
    """Whether absl left positional arguments in `argv[1:]`, which no script takes (a
    forgotten `--flag=` or a stray word would otherwise be ignored silently); if so, names
    them on stderr as `error: unexpected arguments [...]`. Every script's main starts with
    `if cli.refuses_stray_arguments(argv): return cli.STRAY_ARGUMENTS_EXIT_CODE`."""
    if len(argv) <= 1:
        return False
    print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
    return True


def main_from(run: Callable[[], int]) -> Callable[[list], int]:
    """An absl `main` that rejects stray arguments (refuses_stray_arguments), hides TensorFlow's info log lines
    (`script_hygiene.quiet_info_logs`) and turns the library's ValueError /
    FileNotFoundError (whose messages name the flag or file) into `error: ...`, exit 1."""

    def main(argv: list) -> int:
        if refuses_stray_arguments(argv):
            return STRAY_ARGUMENTS_EXIT_CODE
        script_hygiene.quiet_info_logs()
        try:
            return run()
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1

    return main


def run_command(main: Callable[[list], int], module_name: str) -> NoReturn:
    """Runs a script's absl `main` (parsing the command line), from `python -m train.<name>`
    or from its installed command (`auto-deeplab-<name>`, setup.cfg's console_scripts).

    absl's --help shows the docstring of `__main__` and the flags of the module named by
    sys.argv[0]. For an installed command both are the launcher pip wrote, which has neither,
    so the script module's docstring and key flags are lent to it first.
    """
    script = sys.modules[module_name]
    launcher = sys.modules["__main__"]
    if launcher is not script:
        if not launcher.__doc__:
            launcher.__doc__ = script.__doc__
        for flag in flags.FLAGS.get_key_flags_for_module(module_name):
            flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main)


def distribute_flags(strategy_help: str) -> list:
    """--strategy, --collective_communication and --collective_timeout_s (train.search and
    train.retrain); define each in the script with `flags.DEFINE_flag`, so that --help lists
    them as the script's own."""
    return [
        flags.EnumFlag("strategy", "default", strategy_help, list(distribute.STRATEGIES)),
        flags.EnumFlag("collective_communication", "auto",
                       "--strategy=multi_worker: the all-reduce implementation (auto picks "
                       "NCCL on GPUs, ring otherwise).",
                       list(distribute.COLLECTIVE_COMMUNICATIONS)),
        flags.Flag(flags.FloatParser(), flags.ArgumentSerializer(), "collective_timeout_s",
                   distribute.DEFAULT_COLLECTIVE_TIMEOUT_S,
                   "--strategy=multi_worker: bound in seconds on each collective op and on the "
                   "start-up wait for the other workers, so a dead or hung worker fails the job "
                   "instead of hanging it (0: unbounded)."),
    ]


DISTRIBUTE_FLAGS = ("strategy", "collective_communication", "collective_timeout_s")


def mixed_precision_flag() -> flags.Flag:
    """--mixed_precision (train.search and train.retrain); define it in the script with
    `flags.DEFINE_flag`, as `distribute_flags`."""
    return flags.EnumFlag(
        "mixed_precision", "off",
        "off: float32 throughout. bf16 / fp16: convolutions and activations in bfloat16 / "
        "float16 on float32 variables (Keras' mixed_bfloat16 / mixed_float16 policies); "
        "BN statistics, the loss and the architecture parameters stay float32; fp16 adds "
        "dynamic loss scaling. A run may resume switching between off and bf16, not to or "
        "from fp16.", list(precision.MODES))


def exit_multi_worker_failure(error, job: str, model_dir: str) -> NoReturn:
    """Reports a failed collective (a worker died or timed out: the others cannot go on
    alone) and exits with status 1 at once."""
    print(f"error: multi-worker {job} failed ({type(error).__name__}: {error.message}); "
          "relaunch every worker with the same command: they resume from the chief's last "
          f"checkpoint in {model_dir}/checkpoints", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)  # collectives may still hold threads that block a normal exit
