"""Evaluates a retrained network: mIoU over a whole split, at the labels' full resolution.

  python -m train.evaluate --model_dir=runs/retrain_demo                # demo val split
  python -m train.evaluate --model_dir=runs/retrain_cityscapes --data_dir=TFRECORDS \
      --eval_scales=0.5,0.75,1.0,1.25,1.5,1.75 --add_flipped_images    # multi-scale + flip
  python -m train.evaluate --model_dir=runs/retrain_cityscapes --continuous  # beside training

Prints a per-class IoU table and writes MODEL_DIR/eval_<split>.json (miou, per_class_iou,
pixel_accuracy, ...) and TensorBoard scalars under MODEL_DIR/eval. The dataset, data dir and
network come from MODEL_DIR/retrain_config.json unless given. There is no multi-worker mode
(evaluation is one pass over a split): evaluate a multi-worker retraining on one machine that
reads its MODEL_DIR.
"""

from __future__ import annotations

import os
import time

from absl import flags

from train import cli

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "--model_dir of a train.retrain run.")
_CHECKPOINT = flags.DEFINE_string("checkpoint_path", None, "A checkpoint prefix "
                                  "(MODEL_DIR/checkpoints/ckpt-N) or directory; default: the "
                                  "latest one in MODEL_DIR/checkpoints.")
_DATASET = flags.DEFINE_string("dataset", None, "Dataset (default: the one retrained on).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFRecord directory (default: the one "
                                "retrained on).")
_SPLIT = flags.DEFINE_string("split", None, "Split to evaluate (default: the dataset's "
                             "evaluation split, e.g. val).")
_SCALES = flags.DEFINE_list("eval_scales", ["1.0"], "Input scales; several average the "
                            "softmax probabilities (e.g. 0.5,0.75,1.0,1.25,1.5,1.75).")
_FLIP = flags.DEFINE_bool("add_flipped_images", False, "Also average over left-right flips.")
_OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Result file (default: "
                                   "MODEL_DIR/eval_<split>.json).")
_MAX_IMAGES = flags.DEFINE_integer("max_eval_images", None, "Evaluate only the first N images "
                                   "(a quick look; the JSON records it).")
_CONTINUOUS = flags.DEFINE_bool("continuous", False, "Evaluate every new checkpoint as "
                                "retraining writes it, until the final step or the timeout.")
_TIMEOUT = flags.DEFINE_float("eval_timeout_secs", 3600.0, "With --continuous: stop when no "
                              "new checkpoint appears for this long.")
_INTERVAL = flags.DEFINE_float("eval_interval_secs", 10.0, "With --continuous: least time "
                               "between two evaluations.")


def run(log=print) -> int:
    import tensorflow as tf

    from auto_deeplab_datasets import atomic_write
    from auto_deeplab_tf import common
    from auto_deeplab_tf import evaluation
    from auto_deeplab_tf import checkpointing
    from auto_deeplab_tf import trained_model
    from auto_deeplab_datasets import input_pipeline, registry

    if not _MODEL_DIR.value:
        raise ValueError("--model_dir is required (the --model_dir of a train.retrain run)")
    model_dir = _MODEL_DIR.value
    scales = evaluation.parse_eval_scales(_SCALES.value)
    model_config = trained_model.read_model_config(model_dir)
    dataset = _DATASET.value or model_config["dataset"]
    descriptor = registry.get(dataset)
    if descriptor.num_classes != model_config["num_classes"]:
        raise ValueError(f"--dataset={dataset} has {descriptor.num_classes} classes but the "
                         f"network in {model_dir} predicts {model_config['num_classes']}")
    data_dir = input_pipeline.resolve_data_dir(
        dataset, _DATA_DIR.value or (model_config.get("data_dir")
                                     if dataset == model_config["dataset"] else None))
    split = _SPLIT.value or descriptor.eval_split
    output_json = _OUTPUT_JSON.value or os.path.join(model_dir, f"eval_{split}.json")
    model = trained_model.build_model(model_config)
    predict_fn = evaluation.make_predict_fn(model, scales, _FLIP.value)

    def evaluate(checkpoint_path: str) -> dict:
        trained_model.restore_model(model, checkpoint_path)
        step = checkpointing.checkpoint_step(checkpoint_path)
        log(f"evaluating {checkpoint_path} (step {step}) on {dataset} {split}, scales "
            f"{scales}{' + flips' if _FLIP.value else ''}...")
        start = time.perf_counter()
        result = evaluation.evaluate_split(predict_fn, descriptor, data_dir, split,
                                           _MAX_IMAGES.value, log=log)
        count = result["num_images"]
        result.update(eval_scales=scales, add_flipped_images=_FLIP.value,
                      checkpoint=checkpoint_path, global_step=step)
        log(evaluation.format_table(result))
        atomic_write.write_json(output_json, result)
        evaluation.write_summaries(os.path.join(model_dir, common.EVAL_SUMMARY_SUBDIR), step,
                                   result, split)
        log(f"{count} images in {time.perf_counter() - start:.1f} s; mIoU "
            f"{100 * result['miou']:.2f}%; wrote {output_json}")
        return result

    if not _CONTINUOUS.value:
        evaluate(trained_model.resolve_checkpoint(model_dir, _CHECKPOINT.value))
        return 0
    checkpoint_dir = os.path.join(model_dir, checkpointing.CHECKPOINT_SUBDIR)
    tf.io.gfile.makedirs(checkpoint_dir)
    final_step = model_config["train_steps"]
    log(f"waiting for checkpoints in {checkpoint_dir} (stops after step {final_step} or "
        f"{_TIMEOUT.value:.0f} s without a new one)...")
    for path in tf.train.checkpoints_iterator(checkpoint_dir,
                                              min_interval_secs=_INTERVAL.value,
                                              timeout=_TIMEOUT.value):
        try:
            evaluate(path)
        except (tf.errors.NotFoundError, ValueError) as e:
            if tf.io.gfile.exists(path + ".index"):
                raise
            log(f"skipped {path}: deleted before it could be read ({e.__class__.__name__})")
            continue
        if checkpointing.checkpoint_step(path) >= final_step:
            log(f"evaluated the final checkpoint (step {final_step}); done")
            break
    else:
        log(f"no new checkpoint for {_TIMEOUT.value:.0f} s; stopping")
    return 0


main = cli.main_from(run)


def console_main() -> None:
    """`auto-deeplab-evaluate`: the command setup.cfg installs for this script."""
    cli.run_command(main, __name__)


if __name__ == "__main__":
    console_main()
