#!/usr/bin/env bash
# Creates ./.venv with the project and its test extra when it is missing or stale.
# Sourced by the other scripts; needs only python3.11 (or python3 >= 3.11) on PATH.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AUTO_DEEPLAB_VENV:-$ROOT/.venv}"
STAMP="$VENV/.installed-$(cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" | cksum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ]; then
  PY="$(command -v python3.11 || command -v python3)"
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "error: Python >= 3.11 is required (found $("$PY" --version))" >&2; exit 1; }
  echo "[setup] creating virtualenv in $VENV (first run only; downloads TensorFlow)" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e "$ROOT[test]"
  rm -f "$VENV"/.installed-*
  touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
# 3 hides TensorFlow's C++ INFO, WARNING and ERROR lines, among them "failed call to cuInit"
# on a machine without a GPU (harmless: TensorFlow runs on the CPU); as the train/ scripts do.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
cd "$ROOT"
