"""Progress lines for long loops: steps/s over the last interval and an ETA.

    meter = ProgressMeter(total_steps, done=resumed_step)
    ...
    if meter.step(global_step):          # True every `every` steps and at the last one
        log(f"step {global_step}/{total} | loss ... | {meter.summary()}")
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator


def format_eta(seconds: float) -> str:
    """'m:ss' below an hour, else 'h:mm:ss'."""
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressMeter:
    """Measures steps/s between reports; the ETA extrapolates the latest rate.

    Args:
      total_steps: the step count at which the loop ends.
      every: report interval in steps.
      done: steps already done when the meter starts (e.g. after a resume).
    """

    def __init__(self, total_steps: int, every: int = 10, done: int = 0):
        self.total_steps = int(total_steps)
        self.every = max(1, int(every))
        self._tick = time.perf_counter()
        self._tick_step = int(done)
        self.rate = 0.0

    def step(self, global_step: int) -> bool:
        """Call after each step; True when a report is due (rate and ETA are then fresh)."""
        due = (global_step - self._tick_step >= self.every
               or global_step >= self.total_steps)
        if due and global_step > self._tick_step:
            now = time.perf_counter()
            self.rate = (global_step - self._tick_step) / max(now - self._tick, 1e-9)
            self._tick, self._tick_step = now, global_step
            self.global_step = global_step
            return True
        return False

    def restart_clock(self, global_step: int) -> None:
        """Excludes a pause (e.g. tracing, checkpointing, an evaluation) from the next rate."""
        self._tick, self._tick_step = time.perf_counter(), int(global_step)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Excludes the time spent inside (e.g. saving a checkpoint) from the next rate,
        without moving the step at which the next report is due."""
        begin = time.perf_counter()
        try:
            yield
        finally:
            self._tick += time.perf_counter() - begin

    @property
    def eta_seconds(self) -> float:
        remaining = self.total_steps - getattr(self, "global_step", self._tick_step)
        return remaining / self.rate if self.rate > 0 else float("inf")

    def summary(self) -> str:
        eta = format_eta(self.eta_seconds) if self.rate > 0 else "?"
        return f"{self.rate:.2f} steps/s | ETA {eta}"
