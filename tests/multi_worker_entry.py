"""One worker of the multi-worker tests (tests/multi_worker_test.py), run as a subprocess.

  TF_CONFIG=... python -m tests.multi_worker_entry --model_dir=DIR --out=FILE.npz \
      [--job=search|retrain] [--overrides='{"epochs": 1}'] [--duplicate] [--no_dropout] \
      [--step_delay=0.3]

Runs `run_search` (or `run_retrain`) on the tests' tiny config and synthetic deterministic
data, prints its log lines (flushed, so the test can follow them) and dumps the result to
FILE.npz: search: the final alpha, beta, global step and completion; retrain: the global
step, completion and every weight of the network (keyed by checkpoint key). Exits 3 when the
distributed run fails (e.g. a peer died), 2 on a ValueError (printed as `error: ...`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
RETRAIN_STEPS_PER_EPOCH = 3  # of the synthetic retraining data


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--job", choices=("search", "retrain"), default="search")
    parser.add_argument("--overrides", default="{}")
    parser.add_argument("--duplicate", action="store_true")
    parser.add_argument("--no_dropout", action="store_true")  # retrain: ASPP dropout off
    parser.add_argument("--step_delay", type=float, default=0.0)
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    from auto_deeplab_tf import checkpointing
    from auto_deeplab_tf import retrain as retrain_lib
    from auto_deeplab_tf import search as search_lib
    from auto_deeplab_tf import trained_model
    from tests import search_test
    from tests import segmentation_helpers

    overrides = json.loads(args.overrides)
    if args.no_dropout:
        # Dropout draws a different mask for each image of a batch (2 copies of one image on
        # one process) but the same one on every replica, so it would make the two copies
        # differ on one process only.
        build_model = trained_model.build_model

        def build_model_without_dropout(*args, **kwargs):
            model = build_model(*args, **kwargs)
            for layer in model._flatten_layers(include_self=False, recursive=True):
                if isinstance(layer, keras.layers.Dropout):
                    layer.rate = 0.0
            return model

        trained_model.build_model = build_model_without_dropout

    def log(line):
        print(line, flush=True)
        if args.step_delay and " step " in line:  # slows the run so a test can kill it
            time.sleep(args.step_delay)

    try:
        if args.job == "search":
            config = search_test.tiny_config(args.model_dir, **overrides)
            result = search_lib.run_search(
                config, num_classes=search_test.NUM_CLASSES, log=log,
                dataset_fn=lambda epoch: search_test.synthetic_pairs(
                    epoch, steps=config.steps_per_epoch, batch=config.batch_size,
                    duplicate=args.duplicate))
            outputs = dict(alpha=result.alpha, beta=result.beta)
        else:
            config = segmentation_helpers.tiny_config(args.model_dir, None, **overrides)
            steps = RETRAIN_STEPS_PER_EPOCH
            # Half A of the search tests' pairs: (images, labels) batches.
            result = retrain_lib.run_retrain(
                config, num_classes=search_test.NUM_CLASSES, steps_per_epoch=steps, log=log,
                dataset_fn=lambda epoch: search_test.synthetic_pairs(
                    epoch, steps=steps, batch=config.batch_size,
                    duplicate=args.duplicate).map(lambda a, b: a))
            bundle = checkpointing.VariableBundle.for_model(result.model)
            outputs = {key: v.numpy() for key, v in bundle.variables_by_path.items()}
    except tf.errors.OpError as e:
        print(f"distributed run failed: {type(e).__name__}: {e.message}", flush=True)
        sys.stderr.flush()
        os._exit(3)  # pending collectives may keep threads alive; do not wait for them
    except ValueError as e:
        print(f"error: {e}", flush=True)
        os._exit(2)
    np.savez(args.out, global_step=result.global_step, completed=result.completed, **outputs)
    print(f"done: global step {result.global_step}", flush=True)
    sys.stdout.flush()
    os._exit(0)  # skip TensorFlow's slow (and with collectives, sometimes hanging) teardown


if __name__ == "__main__":
    sys.exit(main())
