"""TensorBoard scalars of a training loop, written by the chief only."""

from __future__ import annotations

import tensorflow as tf


class SummaryWriter:
    """Event files in `log_dir`; `log_dir=None` (a non-chief worker) writes nothing."""

    def __init__(self, log_dir: str | None):
        self.writer = (tf.summary.create_file_writer(log_dir) if log_dir
                       else tf.summary.create_noop_writer())

    def scalars(self, step: int, values: dict) -> None:
        with self.writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, float(value))

    def flush(self) -> None:
        self.writer.flush()
