import json

import pytest
import tensorflow as tf

from auto_deeplab_datasets import atomic_write


@pytest.mark.parametrize("root", ["local", "ram://atomic_write_test"])
def test_json_lands_whole_with_no_temp_file_left(tmp_path, root):
    directory = str(tmp_path) if root == "local" else root
    path = f"{directory}/sub/x.json"  # the folder is created
    atomic_write.write_json(path, {"a": [1, 2]})
    atomic_write.write_json(path, {"a": [3]}, indent=1)  # replaces the file
    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    assert text == json.dumps({"a": [3]}, indent=1)
    assert tf.io.gfile.listdir(f"{directory}/sub") == ["x.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "x.json"
    atomic_write.write_json(str(path), {"a": 1})
    with pytest.raises(TypeError):
        atomic_write.write_json(str(path), {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
