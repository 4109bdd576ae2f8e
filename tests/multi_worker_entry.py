"""One worker of the multi-worker tests (tests/multi_worker_test.py), run as a subprocess.

  TF_CONFIG=... python -m tests.multi_worker_entry --model_dir=DIR --out=FILE.npz \
      [--overrides='{"epochs": 1}'] [--duplicate] [--step_delay=0.3]

Runs `run_search` on the tests' tiny config and synthetic deterministic data, prints its log
lines (flushed, so the test can follow them) and dumps the final alpha, beta, global step
and completion to FILE.npz. Exits 3 when the distributed run fails (e.g. a peer died).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--overrides", default="{}")
    parser.add_argument("--duplicate", action="store_true")
    parser.add_argument("--step_delay", type=float, default=0.0)
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    from auto_deeplab_tf import search as search_lib
    from tests import search_test

    overrides = json.loads(args.overrides)
    config = search_test.tiny_config(args.model_dir, **overrides)

    def dataset_fn(epoch):
        return search_test.synthetic_pairs(epoch, steps=config.steps_per_epoch,
                                           batch=config.batch_size, duplicate=args.duplicate)

    def log(line):
        print(line, flush=True)
        if args.step_delay and " step " in line:  # slows the run so a test can kill it
            time.sleep(args.step_delay)

    try:
        result = search_lib.run_search(config, dataset_fn=dataset_fn,
                                       num_classes=search_test.NUM_CLASSES, log=log)
    except tf.errors.OpError as e:
        print(f"distributed run failed: {type(e).__name__}: {e.message}", flush=True)
        sys.stderr.flush()
        os._exit(3)  # pending collectives may keep threads alive; do not wait for them
    np.savez(args.out, alpha=result.alpha, beta=result.beta,
             global_step=result.global_step, completed=result.completed)
    print(f"done: global step {result.global_step}", flush=True)
    sys.stdout.flush()
    os._exit(0)  # skip TensorFlow's slow (and with collectives, sometimes hanging) teardown


if __name__ == "__main__":
    sys.exit(main())
