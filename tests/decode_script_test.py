import json
import subprocess
import sys

import tensorflow as tf

from auto_deeplab_tf import checkpointing
from auto_deeplab_tf import decoding
from auto_deeplab_tf.supernet import AutoDeepLabSupernet


def _saved_supernet(tmp_path, seed):
    """A tiny supernet with random alpha/beta, checkpointed in TMP/ckpt."""
    m = AutoDeepLabSupernet(3, filter_multiplier=2, num_blocks=3, num_layers=4)
    m.build((None, None, None, 3))
    m.alpha.assign(tf.random.normal(m.alpha.shape, seed=seed))
    m.beta.assign(tf.random.normal(m.beta.shape, seed=seed + 1))
    ckpt = tf.train.Checkpoint(model=checkpointing.VariableBundle(m.variables))
    ckpt.save(str(tmp_path / "ckpt" / "ckpt"))
    return m


def _decode(*flags):
    return subprocess.run([sys.executable, "-m", "train.decode", *flags],
                          capture_output=True, text=True, timeout=300)


def test_decode_reads_a_search_checkpoint_and_writes_json(tmp_path):
    m = _saved_supernet(tmp_path, seed=4)
    out = tmp_path / "arch.json"
    result = _decode(f"--checkpoint={tmp_path / 'ckpt'}", f"--output={out}")
    assert result.returncode == 0, result.stderr
    expected, meta = decoding.decode_architecture(m.alpha.numpy(), m.beta.numpy())
    written = json.loads(out.read_text())
    assert written["cell"] == [[list(p) for p in block] for block in expected.cell]
    assert written["path"] == list(expected.path)
    assert abs(written["metadata"]["path_probability"] - meta["path_probability"]) < 1e-9
    # No search_config.json next to the checkpoint: a searched architecture of unknown seed.
    assert written["metadata"]["origin"] == "search"
    assert written["metadata"]["seed"] is None

    # Beside a search run's config, the search's seed is recorded.
    (tmp_path / "search_config.json").write_text(json.dumps({"seed": 7}))
    result = _decode(f"--checkpoint={tmp_path / 'ckpt'}", f"--output={out}")
    assert result.returncode == 0, result.stderr
    written = json.loads(out.read_text())
    assert (written["metadata"]["origin"], written["metadata"]["seed"]) == ("search", 7)


def test_decode_fails_clearly_on_a_missing_checkpoint(tmp_path):
    result = _decode(f"--checkpoint={tmp_path}")
    assert result.returncode == 1
    assert f"error: --checkpoint={tmp_path}: {tmp_path}: no checkpoint found" in result.stderr


def test_decode_takes_checkpoint_path_like_evaluate_and_export(tmp_path):
    m = _saved_supernet(tmp_path, seed=6)
    out = tmp_path / "arch.json"
    result = _decode(f"--checkpoint_path={tmp_path / 'ckpt'}", f"--output={out}")
    assert result.returncode == 0, result.stderr
    expected, _ = decoding.decode_architecture(m.alpha.numpy(), m.beta.numpy())
    written = json.loads(out.read_text())
    assert written["cell"] == [[list(p) for p in block] for block in expected.cell]
    assert written["path"] == list(expected.path)
    assert written["metadata"]["checkpoint"] == str(tmp_path / "ckpt")


def test_decode_names_the_checkpoint_flag_as_spelled(tmp_path):
    result = _decode(f"--checkpoint_path={tmp_path}")
    assert result.returncode == 1
    assert f"error: --checkpoint_path={tmp_path}: {tmp_path}: no checkpoint found" in result.stderr
    result = _decode()
    assert result.returncode != 0
    assert "--checkpoint_path is required" in result.stderr
