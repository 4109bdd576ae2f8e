"""train.predict: colour PNGs in the dataset palette, Cityscapes labelIds PNGs."""

import os

import numpy as np
import pytest
from PIL import Image

from auto_deeplab_tf import export as export_lib
from auto_deeplab_tf import palette as palette_lib
from auto_deeplab_tf import trained_model
from auto_deeplab_datasets import registry
from tests import data_helpers as h
from tests import segmentation_helpers as sh
from train import predict as predict_script

CITYSCAPES = registry.get("cityscapes")


def test_train_ids_to_label_ids_is_the_cityscapes_table():
    train_ids = np.arange(19).reshape(1, 19)
    label_ids = predict_script.train_ids_to_label_ids(train_ids, CITYSCAPES.train_id_to_label_id)
    assert label_ids.dtype == np.uint8
    assert label_ids.ravel().tolist() == [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26,
                                         27, 28, 31, 32, 33]


def test_colorize_uses_the_palette_and_white_for_ignore():
    labels = np.array([[0, 1], [255, 18]])
    colours = palette_lib.colorize(labels, CITYSCAPES.palette)
    assert colours.dtype == np.uint8 and colours.shape == (2, 2, 3)
    assert tuple(colours[0, 0]) == CITYSCAPES.palette[0]
    assert tuple(colours[1, 1]) == CITYSCAPES.palette[18]
    assert tuple(colours[1, 0]) == palette_lib.IGNORE_COLOR


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("predict")
    data_dir = sh.make_tiny_cityscapes(str(base))
    model_dir = str(base / "run")
    sh.tiny_retrain(model_dir, data_dir, train_steps=1)
    model, config, _ = trained_model.load_trained_model(model_dir)
    out = str(base / "export")
    export_lib.export_saved_model(model, out, {
        "dataset": "cityscapes", "palette": [list(c) for c in CITYSCAPES.palette],
        "train_id_to_label_id": list(CITYSCAPES.train_id_to_label_id)})
    return out


def test_predict_writes_palette_and_label_id_pngs(export_dir, tmp_path):
    rng = np.random.default_rng(0)
    inputs = tmp_path / "in"
    h.write_png(str(inputs / "aachen_000000_000019_leftImg8bit.png"), h.random_image(rng, 30, 41))
    h.write_jpeg(str(inputs / "other.jpg"), h.random_image(rng, 25, 20))
    out = tmp_path / "out"
    result = sh.run_module("train.predict", f"--export_dir={export_dir}",
                           f"--images={inputs}/*", f"--output_dir={out}", "--write_train_ids")
    assert result.returncode == 0, result.stderr[-3000:]
    for name, size in (("aachen_000000_000019_leftImg8bit.png", (30, 41)),
                       ("other.png", (25, 20))):
        colour = np.asarray(Image.open(out / "color" / name))
        train_ids = np.asarray(Image.open(out / "trainIds" / name))
        label_ids = np.asarray(Image.open(out / "labelIds" / name))
        assert colour.shape == (*size, 3) and train_ids.shape == size
        palette = np.asarray(CITYSCAPES.palette, np.uint8)
        np.testing.assert_array_equal(colour, palette[train_ids])
        table = np.asarray(CITYSCAPES.train_id_to_label_id)
        np.testing.assert_array_equal(label_ids, table[train_ids])


def test_predict_errors_name_the_flag(export_dir, tmp_path):
    result = sh.run_module("train.predict", f"--export_dir={export_dir}",
                           f"--images={tmp_path}/*.png", f"--output_dir={tmp_path}/o")
    assert result.returncode == 1 and "--images" in result.stderr
    result = sh.run_module("train.predict", f"--export_dir={tmp_path}",
                           f"--images={tmp_path}/*.png", f"--output_dir={tmp_path}/o")
    assert result.returncode == 1 and "--export_dir" in result.stderr


def _good_and_bad_inputs(directory):
    rng = np.random.default_rng(3)
    h.write_png(str(directory / "a_good.png"), h.random_image(rng, 20, 22))
    (directory / "b_bad.png").write_bytes(b"this is not a PNG")
    return str(directory / "b_bad.png")


def test_a_bad_input_stops_before_anything_is_written(export_dir, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    bad = _good_and_bad_inputs(inputs)
    out = tmp_path / "out"
    result = sh.run_module("train.predict", f"--export_dir={export_dir}",
                           f"--images={inputs}/*.png", f"--output_dir={out}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {bad}: cannot read the image (cannot identify image file '{bad}'); nothing "
        "was written: fix or remove it, or pass --skip_bad to predict the 1 other image(s)")
    assert not out.exists()  # not even the color/ and labelIds/ folders

    # An output folder that was there before is kept, with what it held.
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = sh.run_module("train.predict", f"--export_dir={export_dir}",
                           f"--images={inputs}/*.png", f"--output_dir={out}")
    assert result.returncode == 1
    assert sorted(os.listdir(out)) == ["notes.txt"]


def test_skip_bad_predicts_the_rest_and_counts_both(export_dir, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    bad = _good_and_bad_inputs(inputs)
    out = tmp_path / "out"
    result = sh.run_module("train.predict", f"--export_dir={export_dir}",
                           f"--images={inputs}/*.png", f"--output_dir={out}", "--skip_bad")
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.listdir(out / "color") == ["a_good.png"]
    assert os.listdir(out / "labelIds") == ["a_good.png"]
    lines = result.stdout.strip().splitlines()
    assert lines[-3:] == [
        f"wrote 1 prediction(s) to {out}/color, {out}/labelIds",
        "skipped 1 bad input(s):",
        f"  {bad}: cannot read the image (cannot identify image file '{bad}')"]


def test_only_bad_inputs_write_nothing_even_with_skip_bad(export_dir, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "bad.png").write_bytes(b"")
    out = tmp_path / "out"
    result = sh.run_module("train.predict", f"--export_dir={export_dir}",
                           f"--images={inputs}/*.png", f"--output_dir={out}", "--skip_bad")
    assert result.returncode == 1
    assert "no readable image among the 1 input(s); nothing was written" in result.stderr
    assert not out.exists()
