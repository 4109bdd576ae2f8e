"""The absl converter scripts end to end, as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from tests import data_helpers as h

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module, *args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)


def test_cityscapes_script_converts_and_summarises(tmp_path):
    root, out = str(tmp_path / "cs"), str(tmp_path / "out")
    h.make_cityscapes_tree(root, {"train": 3, "val": 2})
    result = run_module("datasets.build_cityscapes_tfrecord", f"--cityscapes_root={root}",
                        f"--output_dir={out}", "--num_shards=2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "train: 3/3 (100%)" in result.stdout and "images/s" in result.stdout
    assert "  train: 3 examples in 2 shards" in result.stdout
    assert "  val: 2 examples in 2 shards" in result.stdout
    assert "WARNING: cityscapes split 'val' has 2 examples, the official split has 500" in (
        result.stdout)
    assert sorted(f for f in os.listdir(out) if f.endswith(".tfrecord")) == [
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord",
        "val-00000-of-00002.tfrecord", "val-00001-of-00002.tfrecord"]


def test_two_runs_write_byte_identical_shards(tmp_path):
    """Each run is a new process: the Example's feature map must not be serialised in a
    per-process order."""
    root = str(tmp_path / "cs")
    h.make_cityscapes_tree(root, {"val": 2})
    contents = []
    for run in ("a", "b"):
        out = str(tmp_path / run)
        result = run_module("datasets.build_cityscapes_tfrecord", f"--cityscapes_root={root}",
                            f"--output_dir={out}", "--splits=val", "--num_shards=1")
        assert result.returncode == 0, result.stderr[-2000:]
        with open(os.path.join(out, "val-00000-of-00001.tfrecord"), "rb") as f:
            contents.append(f.read())
    assert contents[0] == contents[1]


def test_cityscapes_script_fails_on_bad_input_and_skip_bad_goes_on(tmp_path):
    root, out = str(tmp_path / "cs"), str(tmp_path / "out")
    entries = h.make_cityscapes_tree(root, {"train": 3})["train"]
    h.truncate(entries[1]["image"])
    args = (f"--cityscapes_root={root}", f"--output_dir={out}", "--splits=train",
            "--num_shards=2")
    failed = run_module("datasets.build_cityscapes_tfrecord", *args)
    assert failed.returncode == 1
    assert (f"error: {entries[1]['image']}: cannot decode image (corrupt or truncated file)"
            in failed.stderr)
    assert not os.path.exists(out)  # not even an empty folder

    skipped = run_module("datasets.build_cityscapes_tfrecord", *args, "--skip_bad")
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert "  train: 2 examples in 2 shards" in skipped.stdout
    assert "  train: skipped 1 bad input(s):" in skipped.stdout
    assert f"    {entries[1]['image']}: cannot decode image" in skipped.stdout


def test_voc_and_ade20k_scripts(tmp_path):
    voc_root = str(tmp_path / "VOC2012")
    os.makedirs(os.path.join(voc_root, "ImageSets", "Segmentation"))
    with open(os.path.join(voc_root, "ImageSets", "Segmentation", "val.txt"), "w") as f:
        f.write("2007_000033\n")
    h.write_jpeg(os.path.join(voc_root, "JPEGImages", "2007_000033.jpg"),
                 np.zeros((5, 7, 3), np.uint8))
    h.write_palette_png(os.path.join(voc_root, "SegmentationClass", "2007_000033.png"),
                        np.ones((5, 7), np.uint8))
    voc = run_module("datasets.build_voc_tfrecord", f"--voc_root={voc_root}",
                     f"--output_dir={tmp_path / 'voc_out'}", "--splits=val")
    assert voc.returncode == 0, voc.stderr[-2000:]
    assert "  val: 1 examples in 1 shards" in voc.stdout

    ade = run_module("datasets.build_ade20k_tfrecord", f"--ade20k_root={tmp_path / 'none'}",
                     f"--output_dir={tmp_path / 'ade_out'}")
    assert ade.returncode == 1
    assert f"error: {tmp_path / 'none'}: dataset root does not exist" in ade.stderr
