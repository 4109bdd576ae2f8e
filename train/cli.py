"""What every train/ script's absl `main` does around its own `run()`."""

from __future__ import annotations

import sys
from typing import Callable


def main_from(run: Callable[[], int]) -> Callable[[list], int]:
    """An absl `main` that rejects stray arguments and turns the library's ValueError /
    FileNotFoundError (whose messages name the flag or file) into `error: ...`, exit 1."""

    def main(argv: list) -> int:
        if len(argv) > 1:
            print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
            return 2
        try:
            return run()
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1

    return main
