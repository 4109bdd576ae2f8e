"""The import names and the direction of the dependencies (README, Installation).

The folder datasets/ is installed as `auto_deeplab_datasets`, so that installing the project
never writes into, or hides, another package named `datasets` (Hugging Face's), and the data
layer imports nothing of the library: auto_deeplab_tf and train/ import the data layer, never
the other way round.
"""

from __future__ import annotations

import ast
import configparser
import glob
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_LAYER = "auto_deeplab_datasets"
DATA_FOLDER = "datasets"
# Our Python sources: the installed packages, the scripts beside them, tests and the benches.
SOURCE_FOLDERS = ("auto_deeplab_tf", DATA_FOLDER, "train", "tests", "bench")


def _python_files(*folders: str) -> list[str]:
    files = [os.path.join(REPO, DATA_LAYER + ".py")] if not folders else []
    for folder in folders or SOURCE_FOLDERS:
        files += glob.glob(os.path.join(REPO, folder, "**", "*.py"), recursive=True)
    return sorted(files)


def _imports(path: str) -> list[tuple[int, str, int]]:
    """(line, absolute module name or relative target, level) of every import in `path`,
    including those inside functions."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, node.module or "", node.level))
    return found


def _top(name: str) -> str:
    return name.split(".")[0]


def test_no_module_of_ours_imports_the_bare_name_datasets():
    bad = [f"{os.path.relpath(path, REPO)}:{line}: {name}"
           for path in _python_files() for line, name, level in _imports(path)
           if level == 0 and _top(name) == "datasets"]
    assert not bad, "import the data layer as auto_deeplab_datasets:\n" + "\n".join(bad)
    for script in glob.glob(os.path.join(REPO, "scripts", "*.sh")):
        with open(script) as f:
            text = f.read()
        assert "from datasets import" not in text and "import datasets" not in text, script


def test_the_data_layer_imports_nothing_of_the_library():
    bad = []
    for path in _python_files(DATA_FOLDER):
        for line, name, level in _imports(path):
            where = f"{os.path.relpath(path, REPO)}:{line}: {'.' * level}{name}"
            # Relative imports only, within the package: then the folder works under either
            # name (auto_deeplab_datasets installed, datasets for `python -m` in a checkout).
            if level == 0 and _top(name) in ("auto_deeplab_tf", "train", "tests", "bench",
                                             DATA_LAYER, DATA_FOLDER):
                bad.append(where)
            if level > 1:
                bad.append(where)
    assert not bad, "the data layer must not import the library (nor itself by name):\n" + \
        "\n".join(bad)


def test_setup_cfg_installs_the_folder_under_the_unique_name():
    config = configparser.ConfigParser()
    config.read(os.path.join(REPO, "setup.cfg"))
    packages = config["options"]["packages"].split()
    package_dir = dict(line.replace(" ", "").split("=")
                       for line in config["options"]["package_dir"].strip().splitlines())
    assert package_dir == {DATA_LAYER: DATA_FOLDER}
    assert DATA_FOLDER not in packages and DATA_LAYER in packages
    assert "options.packages.find" not in config  # the list above is explicit
    for package in packages:  # listed without sub-packages: there must be none
        folder = os.path.join(REPO, package_dir.get(package, package))
        assert os.path.isfile(os.path.join(folder, "__init__.py")), package
        nested = glob.glob(os.path.join(folder, "*", "__init__.py"))
        assert not nested, f"{package} has sub-packages; list them in setup.cfg: {nested}"


def test_another_datasets_package_first_on_the_path_leaves_both_importable(tmp_path):
    fake = tmp_path / "site" / "datasets"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("MARKER = 'not ours'\n")
    # No TensorFlow here: modules of the data layer that need it are located, not executed.
    code = f"""
import importlib.util, os, sys
import datasets
assert datasets.MARKER == 'not ours', datasets.__file__

from auto_deeplab_datasets import keys, registry
from auto_deeplab_tf import architecture  # a library module that uses the data layer
folder = os.path.join({REPO!r}, {DATA_FOLDER!r})
assert registry.__file__ == os.path.join(folder, 'registry.py'), registry.__file__
assert registry.get('cityscapes').num_classes == 19
assert keys.KEY_IMAGE_ENCODED == 'image/encoded'
assert architecture.atomic_write.__name__ == 'auto_deeplab_datasets.atomic_write'
for name in ('input_pipeline', 'tfrecord_io', 'build_cityscapes_tfrecord'):
    spec = importlib.util.find_spec('auto_deeplab_datasets.' + name)
    assert spec.origin == os.path.join(folder, name + '.py'), spec

assert sys.modules['datasets'] is datasets and datasets.MARKER == 'not ours'
assert 'tensorflow' not in sys.modules
print('ok')
"""
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), REPO,
                                         os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
