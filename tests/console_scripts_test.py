"""The `auto-deeplab-*` commands of setup.cfg run the scripts' absl mains."""

import ast
import configparser
import importlib.util
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPECTED = {"auto-deeplab-search", "auto-deeplab-retrain", "auto-deeplab-evaluate",
            "auto-deeplab-export", "auto-deeplab-predict", "auto-deeplab-decode",
            "auto-deeplab-model-stats"}


def _console_scripts() -> dict[str, str]:
    config = configparser.ConfigParser()
    config.read(os.path.join(REPO, "setup.cfg"))
    lines = config["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict((part.strip() for part in line.split("=")) for line in lines)


def _launcher(tmp_path, name: str, target: str) -> str:
    """A launcher as pip writes it for a console script (it is `__main__`, with no docstring
    and no flags of its own)."""
    module, function = target.split(":")
    path = tmp_path / name
    path.write_text(f"import re\nimport sys\nfrom {module} import {function}\n"
                    "if __name__ == '__main__':\n"
                    "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
                    f"    sys.exit({function}())\n")
    return str(path)


def test_every_command_names_a_script_entry():
    scripts = _console_scripts()
    assert set(scripts) == EXPECTED
    for name, target in scripts.items():
        module_name, function = target.split(":")
        assert module_name == "train." + name.removeprefix("auto-deeplab-").replace("-", "_")
        # Read, not imported: the scripts define flags of the same names, so one process
        # imports one of them (the launcher test below imports and runs one).
        spec = importlib.util.find_spec(module_name)
        assert spec is not None, target
        with open(spec.origin) as f:
            tree = ast.parse(f.read())
        functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert function in functions, target
        assert not functions[function].args.args, target  # called with no arguments
        assert "main" in functions or any(
            isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "main"
                                                 for t in node.targets)
            for node in tree.body), target
        assert "cli.run_command(main, __name__)" in ast.unparse(functions[function]), target


def test_an_installed_command_parses_flags_and_shows_the_scripts_help(tmp_path):
    launcher = _launcher(tmp_path, "auto-deeplab-decode", _console_scripts()["auto-deeplab-decode"])
    result = subprocess.run([sys.executable, launcher, "--help"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 1, result.stderr  # absl's --help exits with 1
    assert "Decodes a search checkpoint into an architecture JSON." in result.stdout
    assert "--checkpoint_path" in result.stdout and "--output" in result.stdout

    result = subprocess.run([sys.executable, launcher, f"--checkpoint_path={tmp_path}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert result.returncode == 1
    assert f"error: --checkpoint_path={tmp_path}: {tmp_path}: no checkpoint found" \
        in result.stderr
