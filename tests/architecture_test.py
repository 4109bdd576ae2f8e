import json

import pytest

from auto_deeplab_tf.architecture import (AUTODEEPLAB, Architecture, FORMAT,
                                          get_architecture, origin_metadata, read_metadata)


def test_builtin_is_the_papers_network():
    arch = get_architecture("autodeeplab")
    assert arch is AUTODEEPLAB
    assert arch.path == (0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1)
    assert arch.num_blocks == 5 and arch.num_layers == 12
    assert arch.cell[0] == ((1, "atrous_conv_5x5"), (0, "sep_conv_3x3"))
    assert arch.cell[4] == ((3, "sep_conv_5x5"), (5, "atrous_conv_5x5"))


def test_json_round_trip(tmp_path):
    text = AUTODEEPLAB.to_json({"epoch": 3})
    d = json.loads(text)
    assert d["format"] == FORMAT
    assert d["cell"][0] == [[1, "atrous_conv_5x5"], [0, "sep_conv_3x3"]]
    assert d["metadata"] == {"epoch": 3}
    assert Architecture.from_json(text) == AUTODEEPLAB
    path = tmp_path / "a.json"
    AUTODEEPLAB.save(str(path))
    assert Architecture.load(str(path)) == AUTODEEPLAB
    assert get_architecture(str(path)) == AUTODEEPLAB
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left


def _with(**changes):
    d = AUTODEEPLAB.to_dict()
    d.update(changes)
    return d


@pytest.mark.parametrize("d,message", [
    (_with(cell=[[[0, "sep_conv_3x3"], [2, "sep_conv_3x3"]]]),
     "block 0 input 1: state 2 is out of range; block 0 may read states 0..1 "
     "(0 = H^(l-1), 1 = H^(l-2), 2+j = block j)"),
    (_with(cell=[[[0, "sep_conv_3x3"], [-1, "sep_conv_3x3"]]]),
     "block 0 input 1: state -1 is out of range"),
    (_with(cell=[[[0, "conv_7x7"], [1, "sep_conv_3x3"]]]),
     "block 0 input 0: unknown op 'conv_7x7'; known ops: max_pool_3x3, avg_pool_3x3, "
     "skip_connect, sep_conv_3x3, sep_conv_5x5, atrous_conv_3x3, atrous_conv_5x5"),
    (_with(cell=[[[0, "zero"], [1, "sep_conv_3x3"]]]),
     "block 0 input 0: op 'zero' cannot be an input of a cell"),
    (_with(cell=[[[0, "sep_conv_3x3"]]]), "block 0 must have exactly 2 inputs, got 1"),
    (_with(cell=[[[1, "sep_conv_3x3"], [1, "skip_connect"]]]), "block 0 reads state 1 twice"),
    (_with(cell=[]), "cell must have at least one block"),
    (_with(cell=[["ab"]]), "cell must be a list of blocks, each a list of [state, op] pairs"),
    (_with(path=[0, 2]), "path[1] = 2 jumps +2 levels from path[0] = 0; consecutive layers "
                         "may differ by at most one level"),
    (_with(path=[2]), "path[0] = 2 jumps +2 levels from the stem (level 0)"),
    (_with(path=[0, 1, 2, 3, 4]), "path[4] = 4 is outside levels 0..3"),
    (_with(path=[0, -1]), "path[1] = -1 is outside levels 0..3"),
    (_with(path=[]), "path must have at least one layer"),
    (_with(format="other/v9"), "unknown format 'other/v9'"),
    ({"path": [0]}, "missing key 'cell'"),
])
def test_invalid_architectures_fail_with_their_message(d, message):
    with pytest.raises(ValueError) as e:
        Architecture.from_dict(d)
    assert message in str(e.value)


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=f"^{bad}: not valid JSON"):
        Architecture.load(str(bad))
    illegal = tmp_path / "illegal.json"
    illegal.write_text(json.dumps(_with(path=[0, 3])))
    with pytest.raises(ValueError, match=f"^{illegal}: path\\[1\\] = 3 jumps"):
        get_architecture(str(illegal))
    with pytest.raises(ValueError, match="cannot read architecture"):
        Architecture.load(str(tmp_path / "missing.json"))


def test_empty_or_non_json_file_is_named_and_said_so(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(ValueError) as e:
        Architecture.load(str(empty))
    assert str(e.value) == (f"{empty}: the architecture file is empty (expected the JSON "
                            "that train.search or train.decode writes)")
    blank = tmp_path / "blank.json"
    blank.write_text("  \n")
    with pytest.raises(ValueError, match=f"^{blank}: the architecture file is empty"):
        Architecture.load(str(blank))
    text = tmp_path / "notes.json"
    text.write_text("path: 0 0 1\n")
    with pytest.raises(ValueError) as e:
        Architecture.load(str(text))
    assert str(e.value) == (f"{text}: not valid JSON (Expecting value: line 1 column 1 (char "
                            "0)); an architecture file is the JSON that train.search or "
                            "train.decode writes")


def test_unknown_name_lists_builtins():
    with pytest.raises(ValueError, match="unknown architecture 'nasnet': expected one of "
                                         "autodeeplab or a path to a .json file"):
        get_architecture("nasnet")


def test_origin_metadata_is_read_back(tmp_path):
    path = str(tmp_path / "a.json")
    AUTODEEPLAB.save(path, origin_metadata("random", 4, index=2))
    assert read_metadata(path) == {"origin": "random", "seed": 4, "index": 2}
    AUTODEEPLAB.save(path)
    assert read_metadata(path) == {}
    (tmp_path / "bad.json").write_text('{"cell": [], "path": [0]}')
    with pytest.raises(ValueError, match=f"{tmp_path / 'bad.json'}: cell must have"):
        read_metadata(str(tmp_path / "bad.json"))


def test_genotype_text_is_one_row_per_block_and_the_path_as_strides():
    arch = Architecture(cell=[[(1, "sep_conv_3x3"), (0, "skip_connect")],
                              [(2, "atrous_conv_5x5"), (1, "max_pool_3x3")]],
                        path=[0, 1, 2, 1], num_levels=3)
    assert arch.to_text() == (
        "block 1 = sep_conv_3x3(H^{l-2}) + skip_connect(H^{l-1})\n"
        "block 2 = atrous_conv_5x5(block 1) + max_pool_3x3(H^{l-2})\n"
        "path, output stride of layers 1..4: 4 8 16 8")
    assert len(AUTODEEPLAB.to_text().splitlines()) == AUTODEEPLAB.num_blocks + 1
