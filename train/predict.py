"""Segments images with an exported SavedModel and writes PNGs.

  python -m train.predict --export_dir=runs/retrain_demo/export \
      --images='demo_images/*.png' --output_dir=runs/predictions

For every input image NAME.png/jpg it writes

* OUTPUT_DIR/color/NAME.png: the label map in the dataset's palette (RGB; ignore = white);
* OUTPUT_DIR/labelIds/NAME.png (Cityscapes only): 8-bit labelIds, the format the Cityscapes
  evaluation server and cityscapesScripts expect (trainId -> labelId);
* OUTPUT_DIR/trainIds/NAME.png with --write_train_ids: the raw predicted class ids.

The palette and the Cityscapes mapping come from the export's assets/metadata.json; --dataset
chooses another registered dataset's palette.

Every input is decoded before anything is written: an unreadable one stops the run with
nothing written (no output folder either), unless --skip_bad, which predicts the others and
lists the skipped ones. The run ends with the count written (and skipped).
"""

from __future__ import annotations

import glob
import os

from absl import flags

from train import cli

_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "SavedModel written by train.export.")
_IMAGES = flags.DEFINE_string("images", None, "Glob of input images (PNG or JPEG), e.g. "
                              "'leftImg8bit/test/*/*.png'.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the PNGs go.")
_DATASET = flags.DEFINE_string("dataset", None, "Dataset whose palette (and, for cityscapes, "
                               "labelIds mapping) to use; default: the export's metadata.")
_TRAIN_IDS = flags.DEFINE_bool("write_train_ids", False, "Also write the predicted class ids "
                               "as 8-bit PNGs under OUTPUT_DIR/trainIds.")
_SKIP_BAD = flags.DEFINE_bool("skip_bad", False, "Predict every readable image and list the "
                              "unreadable ones at the end, instead of stopping before anything "
                              "is written.")


def output_name(path: str) -> str:
    """'aachen_000000_000019_leftImg8bit.png' -> 'aachen_000000_000019_leftImg8bit.png';
    any extension becomes .png."""
    return os.path.splitext(os.path.basename(path))[0] + ".png"


def train_ids_to_label_ids(labels, table):
    """Maps trainIds to labelIds with `table` (trainId -> labelId); other ids -> 0."""
    import numpy as np

    lookup = np.zeros(256, np.uint8)
    lookup[: len(table)] = np.asarray(table, np.uint8)
    labels = np.asarray(labels)
    return lookup[np.clip(labels, 0, 255)]


def read_rgb(path: str):
    """The image at `path` as uint8 RGB [H, W, 3], fully decoded (so that a truncated file
    fails here).

    Raises:
      ValueError: the file cannot be read or decoded; the message names it.
    """
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: cannot read the image ({e})") from e


def run(log=print) -> int:
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    from auto_deeplab_tf import export as export_lib
    from auto_deeplab_tf import palette as palette_lib
    from auto_deeplab_datasets import script_hygiene

    for flag in (_EXPORT_DIR, _IMAGES, _OUTPUT_DIR):
        if not flag.value:
            raise ValueError(f"--{flag.name} is required")
    if not tf.io.gfile.exists(os.path.join(_EXPORT_DIR.value, "saved_model.pb")):
        raise ValueError(f"--export_dir={_EXPORT_DIR.value} holds no SavedModel "
                         "(saved_model.pb); write one with python -m train.export")
    paths = sorted(glob.glob(_IMAGES.value, recursive=True))
    if not paths:
        raise ValueError(f"--images={_IMAGES.value} matches no file")
    metadata = export_lib.read_metadata(_EXPORT_DIR.value)
    dataset = _DATASET.value or metadata.get("dataset")
    if _DATASET.value or not metadata.get("palette"):
        if not dataset:
            raise ValueError(f"--export_dir={_EXPORT_DIR.value} has no metadata naming its "
                             "dataset; pass --dataset")
        from auto_deeplab_datasets import registry

        descriptor = registry.get(dataset)
        palette = descriptor.palette
        label_ids = descriptor.train_id_to_label_id
    else:
        palette = metadata["palette"]
        label_ids = metadata.get("train_id_to_label_id")

    # Every input is decoded once before anything is written, so that a bad file cannot stop
    # the run halfway with part of the predictions written.
    skipped = []
    good = []
    for path in paths:
        try:
            read_rgb(path)
        except ValueError as e:
            skipped.append(str(e))
        else:
            good.append(path)
    if not good:
        raise ValueError(f"no readable image among the {len(paths)} input(s); nothing was "
                         f"written. First problem: {skipped[0]}")
    if skipped and not _SKIP_BAD.value:
        more = f" (and {len(skipped) - 1} more bad input(s))" if len(skipped) > 1 else ""
        raise ValueError(f"{skipped[0]}{more}; nothing was written: fix or remove it, or pass "
                         f"--skip_bad to predict the {len(good)} other image(s)")

    serve = tf.saved_model.load(_EXPORT_DIR.value).signatures["serving_default"]
    out = _OUTPUT_DIR.value
    dirs = {"color": os.path.join(out, "color")}
    if label_ids:
        dirs["labelIds"] = os.path.join(out, "labelIds")
    if _TRAIN_IDS.value:
        dirs["trainIds"] = os.path.join(out, "trainIds")
    written = 0
    # A failure from here on (a serving error, a full disk) removes the folders this run
    # created if they are still empty, and says how many predictions were written.
    with script_hygiene.removed_if_failed(*dirs.values()):
        for d in dirs.values():
            os.makedirs(d, exist_ok=True)
        for path in good:
            try:
                image = read_rgb(path)
                try:
                    semantic = serve(images=tf.constant(image[None]))["semantic"].numpy()[0]
                except tf.errors.InvalidArgumentError as e:
                    raise ValueError(f"{path}: {export_lib.serving_error_message(e)}") from e
                name = output_name(path)
                Image.fromarray(palette_lib.colorize(semantic, palette)).save(
                    os.path.join(dirs["color"], name))
                if label_ids:
                    Image.fromarray(train_ids_to_label_ids(semantic, label_ids)).save(
                        os.path.join(dirs["labelIds"], name))
                if _TRAIN_IDS.value:
                    Image.fromarray(semantic.astype(np.uint8)).save(
                        os.path.join(dirs["trainIds"], name))
            except (ValueError, OSError) as e:
                raise ValueError(f"{e}\n(stopped after writing {written} of {len(good)} "
                                 f"prediction(s) to {out})") from e
            written += 1
            if written % 50 == 0:
                log(f"  {written}/{len(good)} images")
    log(f"wrote {written} prediction(s) to {', '.join(dirs.values())}")
    if skipped:
        log(f"skipped {len(skipped)} bad input(s):")
        for problem in skipped:
            log(f"  {problem}")
    return 0


main = cli.main_from(run)


def console_main() -> None:
    """`auto-deeplab-predict`: the command setup.cfg installs for this script."""
    cli.run_command(main, __name__)


if __name__ == "__main__":
    console_main()
