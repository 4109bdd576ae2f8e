"""Exports a retrained network as a SavedModel for serving.

  python -m train.export --model_dir=runs/retrain_demo               # -> runs/retrain_demo/export
  python -m train.export --model_dir=runs/retrain_cityscapes --export_dir=exports/adl_s \
      --with_probabilities

Signatures (see auto_deeplab_tf/export.py): `serving_default` takes uint8 images
[N, H, W, 3] of any size and returns 'semantic' int32 [N, H, W] (and 'probabilities' float32
[N, H, W, C] with --with_probabilities); `serving_encoded` takes a batch of PNG/JPEG bytes.
Inspect with `saved_model_cli show --dir EXPORT_DIR --all`; run with
`saved_model_cli run --dir EXPORT_DIR --tag_set serve --signature_def serving_default
--inputs images=img.npy` (img.npy: uint8 [N, H, W, 3]).
"""

from __future__ import annotations

import os

from absl import flags

from train import cli

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "--model_dir of a train.retrain run.")
_CHECKPOINT = flags.DEFINE_string("checkpoint_path", None, "Checkpoint prefix or directory "
                                  "(default: the latest in MODEL_DIR/checkpoints).")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Output SavedModel directory (replaced "
                                  "if it exists). Default: MODEL_DIR/export.")
_WITH_PROBS = flags.DEFINE_bool("with_probabilities", False, "Add a 'probabilities' output "
                                "(softmax, [N, H, W, num_classes]) to both signatures.")
_SCALES = flags.DEFINE_list("eval_scales", ["1.0"], "Inference scales baked into the graph "
                            "(several average the softmax probabilities).")
_FLIP = flags.DEFINE_bool("add_flipped_images", False, "Also average over left-right flips.")
_VERIFY = flags.DEFINE_bool("verify", True, "Reload the export and check that it gives the "
                            "Keras model's labels, and that both signatures run with the same "
                            "labels in the TF1 session loader that TF Serving and "
                            "`saved_model_cli run` use.")


def run(log=print) -> int:
    from auto_deeplab_tf import evaluation
    from auto_deeplab_tf import export as export_lib
    from auto_deeplab_tf import checkpointing
    from auto_deeplab_tf import trained_model
    from auto_deeplab_datasets import registry

    if not _MODEL_DIR.value:
        raise ValueError("--model_dir is required (the --model_dir of a train.retrain run)")
    scales = evaluation.parse_eval_scales(_SCALES.value)
    model_dir = _MODEL_DIR.value
    export_dir = _EXPORT_DIR.value or os.path.join(model_dir, "export")
    model, config, checkpoint = trained_model.load_trained_model(model_dir, _CHECKPOINT.value)
    descriptor = registry.get(config["dataset"])
    metadata = {
        "dataset": descriptor.name, "num_classes": config["num_classes"],
        "class_names": list(descriptor.class_names),
        "palette": [list(c) for c in descriptor.palette],
        "ignore_label": descriptor.ignore_label,
        "train_id_to_label_id": (list(descriptor.train_id_to_label_id)
                                 if descriptor.train_id_to_label_id else None),
        "architecture": config["architecture_spec"],
        "filter_multiplier": config["filter_multiplier"], "checkpoint": checkpoint,
        "global_step": checkpointing.checkpoint_step(checkpoint), "eval_scales": scales,
        "add_flipped_images": _FLIP.value, "with_probabilities": _WITH_PROBS.value,
    }
    export_lib.export_saved_model(model, export_dir, metadata, _WITH_PROBS.value, scales,
                                  _FLIP.value)
    log(f"exported {checkpoint} to {export_dir}")
    if _VERIFY.value:
        agreement = export_lib.verify_export(export_dir, model)
        log(f"verified: the reloaded SavedModel agrees with the Keras model on "
            f"{100 * agreement:.2f}% of pixels, and serves the same labels in the TF1 "
            "session loader (TF Serving, saved_model_cli run)")
        if scales == [1.0] and not _FLIP.value and agreement < 0.999:
            raise ValueError(f"the SavedModel in {export_dir} disagrees with the Keras model "
                             f"({100 * agreement:.2f}% of pixels agree)")
    log(f"inspect: saved_model_cli show --dir {export_dir} --all")
    return 0


main = cli.main_from(run)


def console_main() -> None:
    """`auto-deeplab-export`: the command setup.cfg installs for this script."""
    cli.run_command(main, __name__)


if __name__ == "__main__":
    console_main()
